"""HTTP/1.1 request parsing with h11 (pure Python): the backend that needs no compiler.

Theory of operation
-------------------
h11 is lenient where llhttp is strict (bare LF line endings, obs-fold, a missing version), so
before h11 sees a request head we look at the raw head bytes ourselves: the request line and
header section sizes, bare CR or LF, obs-fold (RFC 9112 section 5.2), and HTTP/0.9-style request
lines. Then the head goes to a *fresh* ``h11.Connection`` per request: we only use h11 to read
requests — responses are serialised by :mod:`asgiserve.protocols.http11` for both backends — and
a new connection per request spares us from driving h11's response state machine. After the
request's ``EndOfMessage``, whatever h11 has not consumed (a pipelined request, or the bytes
after an upgrade request) starts the next round.
"""

from __future__ import annotations

import re
from http import HTTPStatus

import h11

from asgiserve.protocols.errors import ProtocolError
from asgiserve.protocols.http11 import RequestSink, build_request_head

# llhttp rejects chunk sizes that overflow 64 bits; h11 would wait for the bytes. Same verdict.
_MAX_CHUNK_SIZE = 2**64 - 1
_METHOD = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]{0,32}")


class H11Parser:
    """Feeds bytes to h11, one ``h11.Connection`` per request, and reports to a sink."""

    __slots__ = (
        "_buffer",
        "_conn",
        "_max_fields",
        "_max_head",
        "_max_request_line",
        "_sink",
        "_switching",
        "in_head",
    )

    def __init__(
        self,
        sink: RequestSink,
        *,
        max_request_line: int = 8192,
        max_head: int = 65536,
        max_fields: int = 100,
    ) -> None:
        self._sink = sink
        self._max_request_line = max_request_line
        self._max_head = max_head
        self._max_fields = max_fields
        self._buffer = b""
        self._conn: h11.Connection | None = None
        self.in_head = False
        # Set when the sink switches protocols after the current request: parsing stops.
        self._switching = False

    def feed(self, data: bytes) -> None:
        try:
            while data and not self._switching:
                if self._conn is None:
                    data = self._feed_head(data)
                else:
                    self._conn.receive_data(data)
                    data = self._drain()
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            if status != HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE:
                status = HTTPStatus.BAD_REQUEST  # h11 says 501 for codings we reject with 400
            raise ProtocolError(str(exc) or "malformed request", status) from exc

    def _feed_head(self, data: bytes) -> bytes:
        """Collect a request head; once complete, check it and start an h11 round."""
        buffer = self._buffer + data if self._buffer else data
        if buffer[:1] in (b"\r", b"\n"):
            # RFC 9112 section 2.2: ignore empty lines received before a request line.
            buffer = buffer.lstrip(b"\r\n")
            if not buffer:
                self._buffer = b""
                return b""
        self.in_head = True
        method = _METHOD.match(buffer)
        if method is None or (method.end() < len(buffer) and buffer[method.end()] != 32):
            # Not even the start of a request line (a TLS handshake, say): no use waiting.
            raise ProtocolError("malformed request line")
        end = buffer.find(b"\r\n\r\n")
        line_end = buffer.find(b"\n")
        if (line_end == -1 and len(buffer) > self._max_request_line) or (
            line_end > self._max_request_line
        ):
            raise ProtocolError("request line too long", HTTPStatus.REQUEST_URI_TOO_LONG)
        if end == -1:
            if len(buffer) > self._max_head:
                raise ProtocolError(
                    "request header section too large", HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
                )
            if b"\n\n" in buffer or b"\n\r\n" in buffer:
                raise ProtocolError("bare LF line ending in request head")
            self._buffer = buffer
            return b""
        head_size = end + 4
        if head_size > self._max_head:
            raise ProtocolError(
                "request header section too large", HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
            )
        head = buffer[:head_size]
        lines = head.count(b"\r\n")
        if head.count(b"\n") != lines or head.count(b"\r") != lines:
            raise ProtocolError("bare CR or LF in request head")
        if b"\n " in head or b"\n\t" in head:
            raise ProtocolError("obsolete line folding in request head")
        if lines - 2 > self._max_fields:
            raise ProtocolError(
                f"more than {self._max_fields} header fields",
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
            )
        lowered = head.lower()
        at = lowered.find(b"\ncontent-length:")
        if at != -1:
            # h11 folds repeated or listed Content-Length values into one; the shared rules
            # reject both, so look at the raw lines while we still can.
            if lowered.find(b"\ncontent-length:", at + 1) != -1:
                raise ProtocolError("duplicate Content-Length")
            value = head[at + 16 : head.index(b"\r\n", at + 1)].strip(b" \t")
            if not value.isdigit():
                raise ProtocolError("invalid Content-Length")
        request_line = head[:line_end]
        if b"  " in request_line:
            # Runs of spaces between the words are accepted (RFC 9112 section 3), as llhttp does.
            request_line = b" ".join(request_line.split())
            buffer = request_line + buffer[line_end:]
        if request_line.count(b" ") != 2:
            if request_line.count(b" ") == 1:
                raise ProtocolError(
                    "HTTP/0.9 is not supported", HTTPStatus.HTTP_VERSION_NOT_SUPPORTED
                )
            raise ProtocolError("malformed request line")
        self._buffer = b""
        conn = self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self._max_head)
        conn.receive_data(buffer)
        return self._drain()

    def _drain(self) -> bytes:
        """Report h11's events; return the bytes left over once a request has ended."""
        conn = self._conn
        assert conn is not None
        sink = self._sink
        while True:
            event = conn.next_event()
            event_type = type(event)
            if event_type is h11.Data:
                data = event.data  # type: ignore[union-attr]
                sink.on_body(data if type(data) is bytes else bytes(data))
                if event.chunk_start:  # type: ignore[union-attr]
                    self._check_chunk(conn)
            elif event_type is h11.Request:
                self._on_request(event)  # type: ignore[arg-type]
            elif event_type is h11.EndOfMessage:
                sink.on_request_end()
                self._conn = None
                rest, _closed = conn.trailing_data
                if self._switching:
                    sink.on_upgrade(bytes(rest))
                    return b""
                return bytes(rest)
            else:  # NEED_DATA; PAUSED and ConnectionClosed cannot precede EndOfMessage
                if getattr(conn, "_reader", None) is not None and conn.their_state is h11.SEND_BODY:
                    self._check_chunk(conn)
                return b""

    @staticmethod
    def _check_chunk(conn: h11.Connection) -> None:
        # h11 keeps the remaining size of the current chunk on its reader; llhttp refuses
        # sizes past 64 bits, so refuse them here too instead of waiting for exabytes.
        remaining = getattr(getattr(conn, "_reader", None), "_bytes_in_chunk", 0)
        if isinstance(remaining, int) and remaining > _MAX_CHUNK_SIZE:
            raise ProtocolError("chunk size too large")

    def _on_request(self, event: h11.Request) -> None:
        self.in_head = False
        version = event.http_version.decode("ascii")
        head = build_request_head(
            event.method.decode("ascii"),
            event.target,
            version,
            # raw_items() is one list; iterating h11's Headers goes item by item through
            # Sequence.__iter__ and __getitem__ (several Python calls per header).
            [(name.lower(), value) for name, value in event.headers.raw_items()],
            max_fields=self._max_fields,
        )
        self._switching = bool(self._sink.on_request(head)) and head.upgrade is not None
