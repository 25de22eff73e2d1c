"""HTTP/1.1 request parsing behind ``--http httptools`` (the default when httptools is installed).

Theory of operation
-------------------
:class:`~asgiserve.protocols.http11.RequestFramer` (shared with the pure-Python backend) finds
where each head ends, checks it against the grammar of RFC 9112, splits it into fields and
frames the body; llhttp is not run over the bytes at all.

It used to be: llhttp re-parsed each head the framer had already checked, only to split it
into fields. That was the work done twice, and no cheaper than the framer's own split
(``split_fields``: measured under callgrind, 10.4k instructions for a three-field head against
11k for ``feed_data`` and its ``on_header`` callbacks, which call back into Python once per
field), while every difference between llhttp's rules and ours had to be worked around (it
checks framing headers by rules of its own, skips the body of a CONNECT or upgrade request,
and is left mid-message after a head with a body). The class stays so that ``--http
httptools`` keeps its meaning for configurations that name it; both backends now give the
same verdict by construction.
"""

from __future__ import annotations

from asgiserve.protocols.http11 import RequestFramer

__all__ = ["HttptoolsParser"]


class HttptoolsParser(RequestFramer):
    """The shared framer, under the name ``--http httptools`` selects."""

    __slots__ = ()
