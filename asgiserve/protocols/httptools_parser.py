"""HTTP/1.1 request parsing with httptools (llhttp, C): the fast backend.

Theory of operation
-------------------
:class:`~asgiserve.protocols.http11.RequestFramer` (shared with the pure-Python backend) finds
where each head ends, checks it against the grammar of RFC 9112 and frames the body; llhttp is
handed exactly one complete, checked head at a time and reports its fields (``on_header``) and
its end (``on_headers_complete``). llhttp never sees a body: it would frame it by rules of its
own (it skips the body of a CONNECT or upgrade request, it cannot say where in a read it
stopped), and two framings of one stream are how requests get smuggled.

After a head whose request has a body, or after a protocol upgrade (llhttp pauses), llhttp is
left mid-message, so the next head goes to a fresh parser. llhttp's version check is relaxed
(``lenient_version``): the framer accepts only ``HTTP/d.d`` and the shared rules decide (505 for
HTTP/2+ and HTTP/0.x, HTTP/1.2+ served as HTTP/1.1).
"""

from __future__ import annotations

import httptools

from asgiserve.protocols.http11 import (
    MAX_CHUNK_LINE,
    RequestFramer,
    RequestHead,
    RequestSink,
    build_request_head,
    split_fields,
)

__all__ = ["HttptoolsParser"]


class HttptoolsParser(RequestFramer):
    """The shared framer, with llhttp splitting each checked head into fields."""

    __slots__ = ("_fresh", "_headers", "_parser")

    def __init__(
        self,
        sink: RequestSink,
        *,
        max_request_line: int = 8192,
        max_head: int = 65536,
        max_fields: int = 100,
        max_chunk_line: int = MAX_CHUNK_LINE,
    ) -> None:
        # Spelled out, not **limits: mypyc passes a dict where an int is expected.
        super().__init__(
            sink,
            max_request_line=max_request_line,
            max_head=max_head,
            max_fields=max_fields,
            max_chunk_line=max_chunk_line,
        )
        self._headers: list[tuple[bytes, bytes]] = []
        self._parser = self._new_parser()
        # False once llhttp has been left inside a message: the next head needs a new parser.
        self._fresh = True

    def _new_parser(self) -> httptools.HttpRequestParser:
        parser = httptools.HttpRequestParser(self)
        parser.set_dangerous_leniencies(lenient_version=True, lenient_keep_alive=True)
        return parser

    def _parse_head(self, head: bytes, method: str, target: bytes, version: str) -> RequestHead:
        if not self._fresh:
            self._parser = self._new_parser()
        parser = self._parser
        self._fresh = False
        paused = False
        headers = self._headers
        try:
            parser.feed_data(head)
        except httptools.HttpParserUpgrade:
            paused = True  # after an upgrade request's head: the framer goes on
        except httptools.HttpParserError:
            # llhttp refuses some heads the grammar allows (it checks framing headers by its
            # own rules, e.g. "Transfer-Encoding: chunked," and methods from a fixed list):
            # the shared rules decide, on the head split in Python.
            headers = split_fields(head)
        self._headers = []
        request = build_request_head(method, target, version, headers, max_fields=self._max_fields)
        # llhttp ends a message without a body at its head; anything else leaves it inside.
        self._fresh = not (paused or request.has_body or not request.keep_alive)
        return request

    # -- llhttp callbacks ---------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        # llhttp drops the OWS before a value but keeps the OWS after it, which is not part
        # of the value either (RFC 9112 section 5).
        self._headers.append((name.lower(), value.rstrip(b" \t")))
