"""HTTP/1.1 rules shared by both parser backends (RFC 9110, RFC 9112).

Theory of operation
-------------------
A backend (httptools or h11) turns bytes into a request line and a header list; neither is
strict enough on its own, and they disagree with each other. So every backend hands what it
parsed to :func:`build_request_head`, which applies the same checks for both (framing headers,
Host, request-target form, version) and returns a :class:`RequestHead` that says how the body is
framed and whether the connection may be kept alive. The backend then reports the body through
the :class:`RequestSink` interface.

The response side is plain serialisation: status lines are pre-encoded, the ``date``/``server``
block is handed in already encoded by the caller (it is refreshed once a second, not per
request), and headers are checked for CR/LF injection with two ``bytes.count`` calls on the
finished head rather than per header.
"""

from __future__ import annotations

from collections.abc import Iterable
from http import HTTPStatus
from typing import Protocol

from asgiserve.protocols.errors import ProtocolError

__all__ = [
    "DEFAULT_LIMITS",
    "KNOWN_METHODS",
    "ParserLimits",
    "ProtocolError",
    "RequestHead",
    "RequestSink",
    "build_request_head",
    "encode_chunk",
    "encode_header_block",
    "encode_response_head",
    "end_of_head",
    "error_response",
]

# The request methods both backends accept. llhttp (behind httptools) only knows a fixed list
# and fails on anything else; h11 accepts any token. We answer 501 Not Implemented for the rest
# on both, which RFC 9110 section 9.1 recommends for an unrecognised method.
KNOWN_METHODS = frozenset(
    "DELETE GET HEAD POST PUT CONNECT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND PROPPATCH "
    "SEARCH UNLOCK BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY "
    "SUBSCRIBE UNSUBSCRIBE PATCH PURGE MKCALENDAR LINK UNLINK SOURCE QUERY".split()
)


class ParserLimits:
    """Size limits applied while a request head is read; plain values, no config object."""

    __slots__ = ("max_fields", "max_head", "max_request_line")

    def __init__(
        self, *, max_request_line: int = 8192, max_head: int = 65536, max_fields: int = 100
    ) -> None:
        self.max_request_line = max_request_line
        self.max_head = max_head
        self.max_fields = max_fields


DEFAULT_LIMITS = ParserLimits()


class RequestHead:
    """A validated request head and the framing facts derived from it."""

    __slots__ = (
        "chunked",
        "content_length",
        "expect_continue",
        "headers",
        "http_version",
        "keep_alive",
        "method",
        "path",
        "query",
        "target",
        "upgrade",
    )

    def __init__(
        self,
        method: str,
        target: bytes,
        path: bytes,
        query: bytes,
        http_version: str,
        headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
        expect_continue: bool,
        content_length: int | None,
        chunked: bool,
        upgrade: bytes | None,
    ) -> None:
        self.method = method
        self.target = target
        self.path = path
        self.query = query
        self.http_version = http_version
        self.headers = headers
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.content_length = content_length
        self.chunked = chunked
        self.upgrade = upgrade

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    def __repr__(self) -> str:
        return f"<RequestHead {self.method} {self.target!r} HTTP/{self.http_version}>"


class RequestSink(Protocol):
    """What a parser backend reports to; the HTTP/1.1 connection implements it."""

    def on_request(self, head: RequestHead) -> bool | None:
        """A request head arrived. Return True to switch protocols after it (an upgrade): the
        parser then stops and passes on whatever follows via :meth:`on_upgrade`."""

    def on_body(self, data: bytes) -> None: ...
    def on_request_end(self) -> None: ...
    def on_upgrade(self, rest: bytes) -> None:
        """The bytes after an upgrade request whose switch :meth:`on_request` asked for."""


def _split_tokens(values: list[bytes]) -> list[bytes]:
    return [t.strip().lower() for v in values for t in v.split(b",") if t.strip()]


def _normalise_version(version: str) -> str:
    # RFC 9112 section 2.3: a recipient of a higher minor version of HTTP/1 answers with the
    # highest 1.x it supports; any other major version gets 505.
    if len(version) == 3 and version[1] == "." and version[0].isdigit() and version[2].isdigit():
        if version[0] == "1":
            return "1.0" if version[2] == "0" else "1.1"
        raise ProtocolError(
            f"HTTP version {version} not supported", HTTPStatus.HTTP_VERSION_NOT_SUPPORTED
        )
    raise ProtocolError(f"malformed HTTP version {version!r}")


def _split_target(method: str, target: bytes) -> tuple[bytes, bytes]:
    """Return (path, query) for the request-target forms a server accepts (RFC 9112 §3.2)."""
    if b"#" in target:
        raise ProtocolError("fragment in request target")
    if target[:1] == b"/":
        path, _, query = target.partition(b"?")
        return path, query
    if target == b"*":
        if method != "OPTIONS":
            raise ProtocolError("asterisk-form request target is only allowed with OPTIONS")
        return b"*", b""
    lowered = target[:8].lower()
    if lowered.startswith((b"http://", b"https://")):
        # Absolute-form (RFC 9112 section 3.2.2): the path starts after the authority.
        rest = target[target.index(b"//") + 2 :]
        slash = rest.find(b"/")
        question = rest.find(b"?")
        if slash == -1 or (question != -1 and question < slash):
            cut = question if question != -1 else len(rest)
            path, query = b"/", rest[cut + 1 :] if question != -1 else b""
        else:
            path, _, query = rest[slash:].partition(b"?")
        if not rest[: slash if slash != -1 else len(rest)]:
            raise ProtocolError("absolute-form request target without authority")
        return path, query
    raise ProtocolError("request target is not in origin-form")


_HOST, _CONTENT_LENGTH, _TRANSFER_ENCODING, _CONNECTION, _EXPECT, _UPGRADE = range(6)
# The request headers that decide framing and persistence: one dict lookup per header.
_FRAMING_HEADERS = {
    b"host": _HOST,
    b"content-length": _CONTENT_LENGTH,
    b"transfer-encoding": _TRANSFER_ENCODING,
    b"connection": _CONNECTION,
    b"expect": _EXPECT,
    b"upgrade": _UPGRADE,
}


def build_request_head(
    method: str,
    target: bytes,
    version: str,
    headers: list[tuple[bytes, bytes]],
    *,
    max_fields: int,
) -> RequestHead:
    """Apply the checks both backends share and derive body framing and persistence.

    ``headers`` must already have lower-cased names.
    """
    http_version = "1.1" if version == "1.1" else _normalise_version(version)
    if method not in KNOWN_METHODS:
        raise ProtocolError(f"unknown method {method[:32]!r}", HTTPStatus.NOT_IMPLEMENTED)
    if len(headers) > max_fields:
        raise ProtocolError(
            f"more than {max_fields} header fields", HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
        )
    if target[:1] == b"/" and b"#" not in target:  # origin-form, the common case
        path, _, query = target.partition(b"?")
    else:
        path, query = _split_target(method, target)

    hosts = 0
    content_lengths: list[bytes] | None = None
    transfer_encodings: list[bytes] | None = None
    connection: list[bytes] | None = None
    expect: bytes | None = None
    upgrade: bytes | None = None
    framing_headers = _FRAMING_HEADERS
    for name, value in headers:
        kind = framing_headers.get(name)
        if kind is None:
            continue
        if kind == _HOST:
            hosts += 1
        elif kind == _CONTENT_LENGTH:
            if content_lengths is None:
                content_lengths = [value]
            else:
                content_lengths.append(value)
        elif kind == _TRANSFER_ENCODING:
            if transfer_encodings is None:
                transfer_encodings = [value]
            else:
                transfer_encodings.append(value)
        elif kind == _CONNECTION:
            if connection is None:
                connection = [value]
            else:
                connection.append(value)
        elif kind == _EXPECT:
            expect = value
        else:
            upgrade = value

    # RFC 9112 section 3.2: exactly one Host in HTTP/1.1.
    if hosts != 1 and (hosts > 1 or http_version == "1.1"):
        raise ProtocolError("missing Host header" if hosts == 0 else "duplicate Host header")

    content_length: int | None = None
    chunked = False
    if transfer_encodings is not None:
        # RFC 9112 section 6.1: Transfer-Encoding with Content-Length is a smuggling vector;
        # an HTTP/1.0 message with Transfer-Encoding has faulty framing; chunked must be last
        # and, since we decode no other coding, the only one.
        if content_lengths is not None:
            raise ProtocolError("both Transfer-Encoding and Content-Length")
        if http_version == "1.0":
            raise ProtocolError("Transfer-Encoding in an HTTP/1.0 request")
        if _split_tokens(transfer_encodings) != [b"chunked"]:
            raise ProtocolError("unsupported Transfer-Encoding")
        chunked = True
    elif content_lengths is not None:
        # RFC 9112 section 6.3: a list, a duplicate or anything but plain ASCII digits is
        # rejected rather than guessed at.
        if len(content_lengths) != 1:
            raise ProtocolError("duplicate Content-Length")
        raw = content_lengths[0]
        if not raw.isdigit() or len(raw) > 18:
            raise ProtocolError("invalid Content-Length")
        content_length = int(raw)

    if connection is None:
        keep_alive = http_version == "1.1"
        upgrade_requested = False
    else:
        tokens = _split_tokens(connection)
        if b"close" in tokens:
            keep_alive = False
        else:
            keep_alive = http_version == "1.1" or b"keep-alive" in tokens
        upgrade_requested = b"upgrade" in tokens
        if upgrade_requested and chunked and upgrade is not None:
            # llhttp skips the body of an upgrade request; the httptools backend passes a
            # Content-Length body on itself but cannot decode chunks, so neither backend
            # accepts them.
            raise ProtocolError("chunked body on a protocol upgrade request")

    return RequestHead(
        method,
        target,
        path,
        query,
        http_version,
        headers,
        keep_alive,
        expect is not None and http_version == "1.1" and expect.lower() == b"100-continue",
        content_length,
        chunked,
        upgrade.strip().lower() if upgrade is not None and upgrade_requested else None,
    )


# ---------------------------------------------------------------------------------------------
# Response serialisation


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase.encode("ascii"))


_STATUS_LINES: dict[int, bytes] = {int(s): _status_line(int(s)) for s in HTTPStatus}


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        if not 100 <= status <= 999:
            raise ValueError(f"invalid HTTP status code {status!r}")
        line = _status_line(status)
    return line


class InvalidResponseHeader(ValueError):
    """An application tried to send a header that would corrupt the response framing."""


def encode_response_head(
    status: int,
    headers: Iterable[tuple[bytes, bytes]],
    default_headers: bytes,
    framing: bytes,
    body: bytes = b"",
) -> bytes:
    """Serialise a response head, followed by ``body`` (already framed) for a single write.

    ``default_headers`` is the already-encoded server/date block (ending in CRLF, may be
    empty); ``framing`` the already-encoded framing and connection headers plus the final CRLF.
    """
    parts: list[bytes] = []
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    app_headers = b"".join(parts)
    # Exactly one CRLF per header: anything more means a name or value smuggled in a line
    # break (response splitting).
    lines = len(parts) >> 2
    if app_headers.count(b"\n") != lines or app_headers.count(b"\r") != lines:
        raise InvalidResponseHeader("response header name or value contains CR or LF")
    return b"".join((status_line(status), default_headers, app_headers, framing, body))


def encode_header_block(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Response header lines, each ending in CRLF, checked as :func:`encode_response_head`
    checks them (it is kept whole, without a call to this, for speed)."""
    return encode_response_head(200, headers, b"", b"")[len(_STATUS_LINES[200]) :]


def end_of_head(close: bool, http10: bool) -> bytes:
    """The connection header (if any) and the blank line that end a response head."""
    if close:
        return b"connection: close\r\n\r\n"
    if http10:
        return b"connection: keep-alive\r\n\r\n"
    return b"\r\n"


def encode_chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


def encode_trailers(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The last chunk followed by a trailer section (RFC 9112 section 7.1.2)."""
    lines = [b"%s: %s\r\n" % (name, value) for name, value in headers]
    block = b"".join(lines)
    if block.count(b"\n") != len(lines) or block.count(b"\r") != len(lines):
        raise InvalidResponseHeader("trailer name or value contains CR or LF")
    return b"0\r\n" + block + b"\r\n"


def error_response(status: int, reason: str, default_headers: bytes = b"") -> bytes:
    """A complete plain-text error response that closes the connection."""
    body = f"{HTTPStatus(status).phrase}: {reason}\n".encode("ascii", "replace")
    return (
        status_line(status)
        + default_headers
        + b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n%b" % (len(body), body)
    )
