"""HTTP/1.1 request parsing in pure Python: the backend that needs no compiler (``--http h11``).

Theory of operation
-------------------
:class:`~asgiserve.protocols.http11.RequestFramer` does all the work: it finds where each head
ends, checks every byte of it against the grammar of RFC 9112 (request line, field lines,
sizes), splits it into fields and frames the body itself (Content-Length, chunked with
extensions and trailers). This class only names the backend behind ``--http h11``.

It used to hand heads and bodies to the h11 library. h11 is lenient where the shared rules are
strict (bare LF ending a trailer section, obs-fold and control characters in trailers, CR and
NUL in chunk extensions, request-line whitespace) and strict where RFC 9110 asks for leniency
(``Transfer-Encoding: ,chunked`` is a list with an empty element, which recipients must
accept): each difference was a request the two backends answered differently. Once a head has
matched the grammar, splitting it needs no library, so the verdict is the framer's alone.
"""

from __future__ import annotations

from asgiserve.protocols.http11 import RequestFramer

__all__ = ["H11Parser"]


class H11Parser(RequestFramer):
    """The pure-Python backend: the shared framer, nothing more."""

    __slots__ = ()
