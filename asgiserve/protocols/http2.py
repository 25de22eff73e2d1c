"""HTTP/2 (RFC 9113) rules on top of the ``h2`` package's sans-I/O connection.

Theory of operation
-------------------
``h2`` frames, HPACK-codes and flow-controls; we create its connection with our settings and
add what a server needs around it:

* request header validation (RFC 9113 section 8.2 and 8.3) done here rather than by ``h2``,
  so that a malformed request is a *stream* error (RST_STREAM PROTOCOL_ERROR) and the
  connection goes on, and so that valid requests are not checked twice;
* the concurrent-stream limit: we advertise ``max_concurrent_streams`` but keep ``h2``'s own
  enforcement (a connection error) out of the way, and refuse excess streams one by one with
  RST_STREAM REFUSED_STREAM (RFC 9113 section 5.1.2);
* WebSockets over HTTP/2 (RFC 8441): with ``enable_connect_protocol`` we advertise
  SETTINGS_ENABLE_CONNECT_PROTOCOL and accept the extended CONNECT (``:protocol``) it allows;
  :func:`parse_request` reports the protocol, the transport runs the WebSocket on the stream;
* "rapid reset" protection (CVE-2023-44487): a client that keeps opening and resetting
  streams is sent GOAWAY ENHANCE_YOUR_CALM;
* a :class:`FrameGuard` that reads the frame headers before ``h2`` does, for the connection
  errors ``h2`` misses or names wrongly: an unfinished header block is bounded in bytes and
  frames (the 2024 "CONTINUATION flood" class: ``h2`` buffers up to 64 frames of any size),
  and a SETTINGS ACK with a payload is FRAME_SIZE_ERROR, not PROTOCOL_ERROR.
"""

from __future__ import annotations

import re
import struct

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.settings import SettingCodes, Settings

__all__ = [
    "CONNECTION_PREFACE",
    "FrameGuard",
    "H2Request",
    "ResetBudget",
    "StreamError",
    "goaway_frame",
    "new_connection",
    "parse_request",
]

#: What a client sends first on a prior-knowledge h2c connection (RFC 9113 section 3.4).
CONNECTION_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Headers that only make sense hop by hop in HTTP/1.1 (RFC 9113 section 8.2.2).
_CONNECTION_SPECIFIC = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)
#: RFC 9113 section 8.2.1: no CR, LF or NUL in a field value. One search instead of three
#: `in` tests: bytes.__contains__ tries its operand as an integer first and raises and clears a
#: TypeError for a bytes one, which costs far more than the search.
_FORBIDDEN_IN_VALUE = re.compile(b"[\r\n\0]")
_PSEUDO = frozenset((b":method", b":scheme", b":authority", b":path", b":protocol"))


class StreamError(Exception):
    """A malformed request: reset the stream with ``code``; the connection goes on."""

    def __init__(self, reason: str, code: int = ErrorCodes.PROTOCOL_ERROR) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = int(code)


class H2Request:
    __slots__ = ("headers", "method", "path", "protocol", "query", "scheme")

    def __init__(
        self,
        method: str,
        scheme: str | None,
        path: bytes,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        protocol: str | None = None,
    ) -> None:
        self.method = method
        self.scheme = scheme
        self.path = path
        self.query = query
        self.headers = headers
        #: The extended CONNECT's ``:protocol`` (RFC 8441 section 4): "websocket" or None.
        self.protocol = protocol


def new_connection(
    *,
    max_concurrent_streams: int,
    max_header_list_size: int,
    initial_window_size: int,
    enable_connect_protocol: bool = False,
) -> H2Connection:
    """An ``h2`` server connection that advertises our limits (send the preface yourself:
    ``initiate_connection()`` or ``initiate_upgrade_connection()``)."""
    config = H2Configuration(
        client_side=False,
        header_encoding=None,
        validate_inbound_headers=False,  # parse_request() does it, as stream errors
        normalize_inbound_headers=False,
        validate_outbound_headers=False,  # the ASGI cycle and the stream build clean headers
        normalize_outbound_headers=False,
    )
    connection = H2Connection(config=config)
    connection.local_settings = Settings(
        client=False,
        initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: max_concurrent_streams,
            SettingCodes.MAX_HEADER_LIST_SIZE: max_header_list_size,
            SettingCodes.INITIAL_WINDOW_SIZE: initial_window_size,
            SettingCodes.ENABLE_CONNECT_PROTOCOL: int(enable_connect_protocol),
        },
    )
    return connection


def relax_stream_limit(
    connection: H2Connection,
    *,
    initial_window_size: int,
    max_header_list_size: int,
    enable_connect_protocol: bool = False,
) -> None:
    """Call after the preface is sent. ``h2`` would turn one stream too many into a connection
    error; replace its (already advertised) settings with the same ones minus that limit, which
    the caller enforces per stream instead. The replacement has no pending changes, so the
    client's SETTINGS ACK leaves it as it is."""
    connection.local_settings = Settings(
        client=False,
        initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: 2**31 - 1,
            SettingCodes.MAX_HEADER_LIST_SIZE: max_header_list_size,
            SettingCodes.INITIAL_WINDOW_SIZE: initial_window_size,
            SettingCodes.ENABLE_CONNECT_PROTOCOL: int(enable_connect_protocol),
        },
    )


def parse_request(
    raw_headers: list[tuple[bytes, bytes]], *, connect_protocol: bool = False
) -> H2Request:
    """Validate a request header list (RFC 9113 sections 8.2, 8.3) into the request facts and
    the regular headers, with ``:authority`` turned into ``host``. With ``connect_protocol``
    (SETTINGS_ENABLE_CONNECT_PROTOCOL advertised), an extended CONNECT for a WebSocket
    (RFC 8441 sections 4, 5) is a request too."""
    method = scheme = authority = path = protocol = None
    headers: list[tuple[bytes, bytes]] = []
    regular_seen = False
    for name, value in raw_headers:
        if name[:1] == b":":
            if regular_seen:
                raise StreamError("pseudo-header after a regular header")
            if name not in _PSEUDO:
                raise StreamError(f"unknown pseudo-header {name!r}")
            if name == b":method":
                if method is not None:
                    raise StreamError("duplicate :method")
                method = value
            elif name == b":path":
                if path is not None:
                    raise StreamError("duplicate :path")
                path = value
            elif name == b":scheme":
                if scheme is not None:
                    raise StreamError("duplicate :scheme")
                scheme = value
            elif name == b":protocol":
                if protocol is not None or not connect_protocol:
                    # RFC 8441 section 3: without the setting, :protocol is malformed.
                    raise StreamError("unexpected :protocol")
                protocol = value
            else:
                if authority is not None:
                    raise StreamError("duplicate :authority")
                authority = value
            continue
        regular_seen = True
        if name in _CONNECTION_SPECIFIC:
            raise StreamError(f"connection-specific header {name!r}")
        if name == b"te" and value.lower() != b"trailers":
            raise StreamError("te header other than 'trailers'")
        if not name or name != name.lower():
            raise StreamError("header name is empty or not lower-case")
        if _FORBIDDEN_IN_VALUE.search(value) is not None:
            raise StreamError("CR, LF or NUL in a header value")
        headers.append((name, value))
    if method is None:
        raise StreamError("missing :method")
    if protocol is not None:
        # RFC 8441 section 4: :protocol only on a CONNECT, which then has :scheme, :path and
        # :authority like any request.
        if method != b"CONNECT" or path is None or scheme is None or authority is None:
            raise StreamError("malformed extended CONNECT")
        if protocol != b"websocket":
            raise StreamError(f"unsupported :protocol {protocol!r}", ErrorCodes.REFUSED_STREAM)
    elif method == b"CONNECT":
        raise StreamError("CONNECT is not supported", ErrorCodes.REFUSED_STREAM)
    if path is None or scheme is None:
        raise StreamError("missing :path or :scheme")
    if path[:1] != b"/":
        if path == b"*" and method == b"OPTIONS":
            return H2Request("OPTIONS", scheme.decode("latin-1"), b"*", b"", headers)
        raise StreamError("invalid :path")
    if authority is not None and not any(n == b"host" for n, _ in headers):
        headers.insert(0, (b"host", authority))
    target, _, query = path.partition(b"?")
    if target.find(b"#") >= 0:  # not `in`: see _FORBIDDEN_IN_VALUE
        raise StreamError("fragment in :path")
    return H2Request(
        method.decode("latin-1"),
        scheme.decode("latin-1"),
        target,
        query,
        headers,
        None if protocol is None else "websocket",
    )


def goaway_frame(last_stream_id: int, error_code: int) -> bytes:
    """A GOAWAY frame (RFC 9113 section 6.8), for the cases h2 gets the code wrong."""
    return b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" + struct.pack(
        "!II", last_stream_id & 0x7FFFFFFF, error_code
    )


_FRAME_HEADERS = 0x1
_FRAME_SETTINGS = 0x4
_FRAME_PUSH_PROMISE = 0x5
_FRAME_CONTINUATION = 0x9
_FLAG_ACK = 0x1
_FLAG_END_HEADERS = 0x4


class FrameGuard:
    """Reads the frame headers of the client's byte stream (RFC 9113 section 4.1) and names the
    connection error, if any, that the bytes so far amount to. ``feed`` every read before
    ``h2`` sees it; it keeps at most the 9 bytes of a split frame header."""

    __slots__ = (
        "block_bytes",
        "block_frames",
        "header",
        "max_block_bytes",
        "max_block_frames",
        "skip",
    )

    def __init__(self, *, max_header_list_size: int) -> None:
        # An unfinished header block may hold as many bytes as the decoded header list may
        # (HPACK never makes a list much larger than its encoding), in as many frames as a
        # client splitting it into 1 KiB pieces would send: real clients send one frame, or
        # pieces of the 16 KiB frame size.
        self.max_block_bytes = max_header_list_size
        self.max_block_frames = max(8, max_header_list_size // 1024)
        #: Bytes still to pass over: the client preface, then the payload of the current frame.
        self.skip = len(CONNECTION_PREFACE)
        self.header = b""
        #: Payload bytes and frames of the header block being received; -1 when none is open.
        self.block_bytes = -1
        self.block_frames = 0

    def feed(self, data: bytes) -> int | None:
        """The error code to close the connection with, or None while the stream is sound."""
        pos = 0
        end = len(data)
        while True:
            if self.skip:
                taken = min(self.skip, end - pos)
                self.skip -= taken
                pos += taken
                if self.skip:
                    return None
            need = 9 - len(self.header)
            if end - pos < need:
                self.header += data[pos:end]
                return None
            header = self.header + data[pos : pos + need] if self.header else data[pos : pos + 9]
            self.header = b""
            pos += need
            length = int.from_bytes(header[:3], "big")
            kind = header[3]
            flags = header[4]
            self.skip = length
            if kind == _FRAME_SETTINGS and flags & _FLAG_ACK and length:
                # RFC 9113 section 6.5: an ACK with a payload is a FRAME_SIZE_ERROR.
                return ErrorCodes.FRAME_SIZE_ERROR
            if kind in (_FRAME_HEADERS, _FRAME_PUSH_PROMISE):
                self.block_bytes = 0
                self.block_frames = 0
            elif kind != _FRAME_CONTINUATION:
                continue  # h2 checks that nothing else interrupts a header block
            if self.block_bytes < 0:
                continue
            self.block_bytes += length
            self.block_frames += 1
            if flags & _FLAG_END_HEADERS:
                self.block_bytes = -1
            elif (
                self.block_bytes > self.max_block_bytes or self.block_frames > self.max_block_frames
            ):
                # RFC 9113 section 10.5.1: a header block must be decoded whole to keep the
                # HPACK state, so one too large to accept ends the connection.
                return ErrorCodes.ENHANCE_YOUR_CALM


class ResetBudget:
    """Counts streams the client reset (or we refused) per time window; over the budget, the
    connection is abused (rapid reset) and should be told ENHANCE_YOUR_CALM."""

    __slots__ = ("count", "limit", "window", "window_start")

    def __init__(self, limit: int, window: float = 10.0) -> None:
        self.limit = limit
        self.window = window
        self.window_start = 0.0
        self.count = 0

    def spend(self, now: float) -> bool:
        """Record one reset; True when the budget is exhausted."""
        if now - self.window_start > self.window:
            self.window_start = now
            self.count = 0
        self.count += 1
        return self.count > self.limit
