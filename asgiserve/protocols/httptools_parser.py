"""HTTP/1.1 request parsing with httptools (llhttp, C): the fast backend.

Theory of operation
-------------------
llhttp calls us back as it walks the bytes: ``on_message_begin``, ``on_url`` (possibly in
pieces), ``on_header`` per field, ``on_headers_complete``, ``on_body`` and
``on_message_complete``. We collect the head, hand it to the shared
:func:`~asgiserve.protocols.http11.build_request_head` (so both backends give the same verdicts)
and report the request to the sink. Errors raised inside a callback come back out of
``feed_data`` wrapped in ``HttpParserCallbackError``; we unwrap our own.

llhttp stops ("pauses") after a request that asks for a protocol switch (``Upgrade`` or
``CONNECT``) and tells us where it stopped; when the connection does not switch we go on
parsing the rest with a fresh parser, since httptools offers no way to resume the old one.
llhttp's version check is relaxed (``lenient_version``) so that the shared rules decide: 505 for
HTTP/2+ and HTTP/0.x, HTTP/1.2+ served as HTTP/1.1.
"""

from __future__ import annotations

import re
from http import HTTPStatus

import httptools

from asgiserve.protocols.errors import ProtocolError
from asgiserve.protocols.http11 import RequestHead, RequestSink, build_request_head

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class HttptoolsParser:
    """Feeds bytes to llhttp and reports requests to a :class:`RequestSink`."""

    __slots__ = (
        "_head",
        "_head_bytes",
        "_headers",
        "_max_fields",
        "_max_head",
        "_max_request_line",
        "_parser",
        "_raw_body_left",
        "_sink",
        "_switching",
        "_url",
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
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._head: RequestHead | None = None
        # Set when the sink switches protocols after the current request: parsing stops.
        self._switching = False
        # Body bytes of a declined upgrade request, which llhttp skips: we pass them on.
        self._raw_body_left = 0
        #: True while the bytes of a request head are arriving (for the head timeout).
        self.in_head = False
        self._parser = self._new_parser()

    def _new_parser(self) -> httptools.HttpRequestParser:
        parser = httptools.HttpRequestParser(self)
        parser.set_dangerous_leniencies(lenient_version=True)
        return parser

    def feed(self, data: bytes) -> None:
        if self._switching:
            return
        if self._raw_body_left:
            data = self._pass_raw_body(data)
            if not data:
                return
        was_in_head = self.in_head
        held = self._head_bytes
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._after_upgrade_request(data[exc.args[0] :])
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, ProtocolError):
                raise exc.__context__ from None
            raise  # a bug in the sink: let the connection log it
        except httptools.HttpParserInvalidMethodError as exc:
            # llhttp lumps unknown methods and garbage together; tell them apart as h11 does:
            # a well-formed token is a method we do not implement (501), anything else is 400.
            method = data.lstrip(b"\r\n").partition(b" ")[0]
            if was_in_head or not _TOKEN.fullmatch(method):
                raise ProtocolError("malformed request line") from exc
            raise ProtocolError("unknown method", HTTPStatus.NOT_IMPLEMENTED) from exc
        except httptools.HttpParserError as exc:
            if "PRI" in str(exc):
                # llhttp stops at the HTTP/2 connection preface ("PRI * HTTP/2.0", RFC 9113
                # section 3.4) when HTTP/2 is not served: the same 505 as h11 gives.
                raise ProtocolError(
                    "HTTP version 2.0 not supported", HTTPStatus.HTTP_VERSION_NOT_SUPPORTED
                ) from exc
            raise ProtocolError(str(exc) or "malformed request") from exc
        if self.in_head:
            if was_in_head:
                # llhttp holds a partial header line without calling us back, so while a head
                # is incomplete, count whole reads (they are all head bytes after the first).
                self._head_bytes = held + len(data)
            if self._head_bytes > self._max_head:
                raise ProtocolError(
                    "request header section too large", HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
                )

    def _after_upgrade_request(self, rest: bytes) -> None:
        if self._switching:
            self._sink.on_upgrade(rest)
            return
        # We do not switch: go on with a fresh parser (llhttp cannot resume), first passing on
        # the body llhttp skipped, if any (see on_headers_complete).
        self._parser = self._new_parser()
        if rest:
            self.feed(rest)

    def _pass_raw_body(self, data: bytes) -> bytes:
        left = self._raw_body_left
        piece = data[:left]
        self._raw_body_left = left = left - len(piece)
        if piece:
            self._sink.on_body(piece)
        if not left:
            self._sink.on_request_end()
        return data[len(piece) :]

    # -- llhttp callbacks ---------------------------------------------------------------------

    # No on_message_begin: one callback fewer per request. A message's URL is its first
    # callback, and on_headers_complete leaves the per-head state empty for the next one.

    def on_url(self, piece: bytes) -> None:
        self.in_head = True
        url = self._url + piece if self._url else piece
        if len(url) > self._max_request_line:
            raise ProtocolError("request line too long", HTTPStatus.REQUEST_URI_TOO_LONG)
        self._url = url
        self._head_bytes += len(piece)

    def on_header(self, name: bytes, value: bytes) -> None:
        # The field count is checked once the head is complete (build_request_head); memory
        # is bounded by the byte count meanwhile, checked after each read.
        self._headers.append((name.lower(), value))
        self._head_bytes += len(name) + len(value) + 4

    def on_headers_complete(self) -> None:
        self.in_head = False
        if self._head_bytes > self._max_head:
            raise ProtocolError(
                "request header section too large", HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
            )
        parser = self._parser
        url, headers = self._url, self._headers
        self._url, self._headers, self._head_bytes = b"", [], 0
        head = build_request_head(
            parser.get_method().decode("ascii"),
            url,
            parser.get_http_version(),
            headers,
            max_fields=self._max_fields,
        )
        self._head = head
        self._switching = bool(self._sink.on_request(head)) and head.upgrade is not None
        if head.upgrade is not None and not self._switching and head.content_length:
            self._raw_body_left = head.content_length

    def on_body(self, body: bytes) -> None:
        self._sink.on_body(body)

    def on_message_complete(self) -> None:
        if not self._raw_body_left:  # else it ends once the skipped body has been passed on
            self._sink.on_request_end()
