"""HTTP/1.1 rules shared by both parser backends (RFC 9110, RFC 9112).

Theory of operation
-------------------
Neither parser library is strict enough on its own, and they disagree with each other (llhttp
and h11 differed on 31,753 of 200,000 generated streams, and llhttp's verdicts depended on
where reads began). So the bytes are framed here, once, for both backends:
:class:`RequestFramer` finds where each head ends, checks it against the grammar of RFC 9112
(one regex per head; line by line, left to right, only to name the first fault), enforces the
size limits at the byte that crosses them, and reads bodies itself (Content-Length, and chunked
with a capped chunk-size line, extensions and trailers). It splits a checked head into fields
(both backends: neither library is run over a head), then :func:`build_request_head` applies
the semantic checks (framing headers, Host, request-target form, method, version) and
returns a :class:`RequestHead` that says how the body is framed and whether the connection may
be kept alive. Requests and bodies are reported
through the :class:`RequestSink` interface. Every step is linear in the bytes received, however
they are split into reads.

The response side is plain serialisation: status lines are pre-encoded, the ``date``/``server``
block is handed in already encoded by the caller (it is refreshed once a second, not per
request), and headers are checked for CR/LF injection with two ``bytes.count`` calls on the
finished head rather than per header.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from http import HTTPStatus
from typing import Protocol

from asgiserve.protocols.errors import ProtocolError

__all__ = [
    "DEFAULT_LIMITS",
    "KNOWN_METHODS",
    "MAX_CHUNK_LINE",
    "ParserLimits",
    "ProtocolError",
    "RequestFramer",
    "RequestHead",
    "RequestSink",
    "build_request_head",
    "check_request_line",
    "encode_chunk",
    "encode_header_block",
    "encode_response_head",
    "end_of_head",
    "error_response",
    "split_fields",
]

# The request methods both backends accept. llhttp (behind httptools) only knows a fixed list
# and fails on anything else; h11 accepts any token. We answer 501 Not Implemented for the rest
# on both, which RFC 9110 section 9.1 recommends for an unrecognised method.
KNOWN_METHODS = frozenset(
    "DELETE GET HEAD POST PUT CONNECT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND PROPPATCH "
    "SEARCH UNLOCK BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY "
    "SUBSCRIBE UNSUBSCRIBE PATCH PURGE MKCALENDAR LINK UNLINK SOURCE QUERY".split()
)


#: The most bytes a chunk-size line may have, extensions and CRLF included. llhttp and Node cap
#: them since chunk extensions were used to make servers buffer without end (CVE-2024-22019).
MAX_CHUNK_LINE = 4096


class ParserLimits:
    """Size limits applied while a request is read; plain values, no config object."""

    __slots__ = ("max_chunk_line", "max_fields", "max_head", "max_request_line")

    def __init__(
        self,
        *,
        max_request_line: int = 8192,
        max_head: int = 65536,
        max_fields: int = 100,
        max_chunk_line: int = MAX_CHUNK_LINE,
    ) -> None:
        self.max_request_line = max_request_line
        self.max_head = max_head
        self.max_fields = max_fields
        self.max_chunk_line = max_chunk_line


DEFAULT_LIMITS = ParserLimits()


class RequestHead:
    """A validated request head and the framing facts derived from it."""

    __slots__ = (
        "chunked",
        "content_length",
        "expect_continue",
        "has_body",
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
        self.has_body = chunked or bool(content_length)

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
    """Return (path, query) for the request-target forms a server accepts (RFC 9112 §3.2),
    other than origin-form. ``target`` holds no fragment: the request line's grammar says so."""
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


# uri-host [":" port] (RFC 3986 section 3.2.2): an IP-literal or a reg-name, which covers IPv4.
_HOST_VALUE = re.compile(
    rb"(?:\[[0-9A-Za-z:._~!$&'()*+,;=%-]+\]|(?:[0-9A-Za-z._~!$&'()*+,;=-]|%[0-9A-Fa-f]{2})*)"
    rb"(?::[0-9]*)?"
)

_VALID_HOSTS: set[bytes] = set()

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


#: The methods a request line may have without a closer look (check_request_line).
_PLAIN_METHODS = KNOWN_METHODS - {"CONNECT"}


def check_request_line(method: str, version: str) -> str:
    """The request line's verdict (505, 501, 400 for CONNECT); return the version served."""
    http_version = "1.1" if version == "1.1" else _normalise_version(version)
    if method not in KNOWN_METHODS:
        raise ProtocolError(f"unknown method {method[:32]!r}", HTTPStatus.NOT_IMPLEMENTED)
    if method == "CONNECT":
        # RFC 9110 section 9.3.6: CONNECT takes only the authority-form, which opens a tunnel;
        # we are no proxy. Accepting it in origin-form let the two backends disagree on where
        # the request ends (llhttp skips a CONNECT body), a smuggling primitive.
        raise ProtocolError("CONNECT is not supported")
    return http_version


def build_request_head(
    method: str,
    target: bytes,
    version: str,
    headers: list[tuple[bytes, bytes]],
    seen: RequestHead | None = None,
) -> RequestHead:
    """Apply the checks both backends share and derive body framing and persistence.

    ``headers`` must already have lower-cased names, and be no more than the limit allows:
    the framer's grammar counts them (``_head_pattern``, ``_check_lines``).

    ``seen``: an earlier request whose field section was byte for byte this one's (clients
    repeat theirs). What the fields decide depends on them and the HTTP version alone, so
    with the same version it is taken from ``seen`` rather than worked out again.
    """
    if version == "1.1" and method in _PLAIN_METHODS:
        http_version = "1.1"  # what check_request_line says to the usual request line
    else:
        http_version = check_request_line(method, version)
    # origin-form, the common case (the request line's grammar left out any fragment).
    if target[:1] == b"/":
        path, _, query = target.partition(b"?")
    else:
        path, query = _split_target(method, target)
    if seen is not None and seen.http_version == http_version:
        keep_alive = seen.keep_alive
        expect_continue = seen.expect_continue
        content_length = seen.content_length
        chunked = seen.chunked
        upgrade = seen.upgrade
    else:
        keep_alive, expect_continue, content_length, chunked, upgrade = _field_facts(
            headers, http_version
        )
    return RequestHead(
        method,
        target,
        path,
        query,
        http_version,
        headers,
        keep_alive,
        expect_continue,
        content_length,
        chunked,
        upgrade,
    )


def _field_facts(
    headers: list[tuple[bytes, bytes]], http_version: str
) -> tuple[bool, bool, int | None, bool, bytes | None]:
    """What a request's fields decide, for its HTTP version: keep-alive, Expect:
    100-continue, Content-Length, chunked, the protocol an upgrade asks for."""
    hosts = 0
    host = b""
    content_lengths: list[bytes] | None = None
    transfer_encodings: list[bytes] | None = None
    connection: list[bytes] | None = None
    expect: bytes | None = None
    upgrade: bytes | None = None
    framing_headers = _FRAMING_HEADERS
    for name, value in headers:
        if name not in framing_headers:
            continue
        kind = framing_headers[name]
        if kind == _HOST:
            hosts += 1
            host = value
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
    if hosts and host not in _VALID_HOSTS:
        # RFC 9112 section 3.2: a Host that is not uri-host [":" port] (RFC 3986 section 3.2,
        # so no userinfo and no whitespace) gets 400.
        if _HOST_VALUE.fullmatch(host) is None:
            raise ProtocolError("invalid Host header")
        if len(_VALID_HOSTS) < 64 and len(host) <= 255:  # few names: remember them, boundedly
            _VALID_HOSTS.add(host)

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
        if upgrade_requested and upgrade is not None and (chunked or content_length):
            # Where would the new protocol start: after the body, or where llhttp stops (it
            # skips the body of an upgrade request)? Peers disagree, so the request is refused
            # (RFC 9110 section 7.8 lets a server ignore Upgrade; it need not serve a body).
            raise ProtocolError("body on a protocol upgrade request")

    return (
        keep_alive,
        expect is not None and http_version == "1.1" and expect.lower() == b"100-continue",
        content_length,
        chunked,
        upgrade.strip().lower() if upgrade is not None and upgrade_requested else None,
    )


# ---------------------------------------------------------------------------------------------
# Request framing, shared by both backends
#
# Where a request head ends, whether its bytes are well formed, and how its body is framed are
# decided here, byte for byte the same for both backends; a backend only turns a complete,
# already checked head into a RequestHead. The rules are checked left to right, so that the
# verdict on a byte stream never depends on how it was split into reads: a size limit counts as
# broken at the byte that crosses it, a malformed line when its LF arrives, and the first of
# these wins. Every step looks at each byte a bounded number of times (linear time, whatever
# the read sizes).

_TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
# RFC 9112 section 3: method SP request-target SP HTTP-version CRLF, with single spaces (the
# lenient whitespace parsing section 3 allows is how request lines get smuggled past proxies).
# Without its CRLF, its three parts captured: method, request-target, version. No form of
# request-target (RFC 9112 section 3.2) holds a fragment: "#" is left out of its bytes.
_REQUEST_LINE_PARTS = (
    rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]{1,32}) ([\x21\x22\x24-\x7e]+) HTTP/([0-9]\.[0-9])"
)
_REQUEST_LINE = _REQUEST_LINE_PARTS + rb"\r\n"
# RFC 9112 section 5: field-name ":" OWS field-value OWS CRLF; a value holds VCHAR, obs-text,
# SP and HTAB, never another control character; no obs-fold (a line may not start with SP).
_FIELD_CONTENT = _TCHAR + rb"+:[\t\x20-\x7e\x80-\xff]*"  # without its CRLF
_FIELD_LINE = _FIELD_CONTENT + rb"\r\n"
# Possessive repeats (``*+``, ``{}+``) need Python 3.11; on 3.10 the head pattern uses plain
# ones, which match exactly the same heads (see _head_pattern), only a little slower.
_POSSESSIVE = b"+" if sys.version_info >= (3, 11) else b""
_FIELD_LINE_IN_HEAD = _TCHAR + rb"+%b:[\t\x20-\x7e\x80-\xff]*%b\r\n" % (_POSSESSIVE, _POSSESSIVE)
_REQUEST_LINE_RE = re.compile(_REQUEST_LINE)
_FIELD_LINE_RE = re.compile(_FIELD_LINE)
_HEAD_PATTERNS: dict[tuple[int, int], re.Pattern[bytes]] = {}


def _head_pattern(max_request_line: int, max_fields: int) -> re.Pattern[bytes]:
    """The whole-head check for a pair of limits, one regex call per head: the request line
    (at most ``max_request_line`` bytes before its CRLF, its three parts captured), at most
    ``max_fields`` field lines, the empty line."""
    pattern = _HEAD_PATTERNS.get((max_request_line, max_fields))
    if pattern is None:
        # Possessive repeats (``*+``, ``{}+``): no part of the grammar can give back what a
        # repeat took (a field name holds no ":", a value no CR, a field line never starts
        # with CR), so nothing is lost by never backtracking, and the match is a third cheaper.
        pattern = _HEAD_PATTERNS[max_request_line, max_fields] = re.compile(
            rb"(?=[^\n]{0,%d}\n)%b\r\n(?:%b){0,%d}%b\r\n"
            % (
                max_request_line + 1,
                _REQUEST_LINE_PARTS,
                _FIELD_LINE_IN_HEAD,
                max_fields,
                _POSSESSIVE,
            )
        )
    return pattern


# Decoding the common methods and versions is a dictionary lookup.
_METHOD_NAMES = {name.encode("ascii"): name for name in KNOWN_METHODS}
_VERSIONS = {b"1.1": "1.1", b"1.0": "1.0"}
_HTTP09_LINE_RE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,32} [\x21-\x7e]+\r\n")
# What a request line may start with: a method, then a space. Anything else (a TLS handshake,
# say) is refused at once rather than after the head timeout.
_METHOD_PREFIX_RE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]{0,32}")
# RFC 9112 section 7.1.1: chunk-size [chunk-ext] CRLF, chunk-ext = *(BWS ";" BWS ext-name
# [BWS "=" BWS ext-value]), ext-value = token / quoted-string. No whitespace after the size
# without an extension ("5 \r\n"), no bare CR or NUL, a quoted string must be closed.
_CHUNK_LINE_RE = re.compile(
    rb"([0-9A-Fa-f]+)(?:[ \t]*;[ \t]*" + _TCHAR + rb"+(?:[ \t]*=[ \t]*(?:" + _TCHAR + rb"+|"
    rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"))?)*\r\n'
)

# Framing states: one value says what the next bytes are.
_HEAD, _LENGTH_BODY, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_DATA_END, _TRAILERS, _SWITCHED = range(7)


#: Field lines seen before, and the (name, value) pair each split into. Clients send the same
#: lines again and again (Host, User-Agent, the Accept-* set, a session's Cookie), and a lookup
#: is cheaper than checking a line against the grammar and partition(), lower() and strip()
#: (callgrind: see _read_head); the cached names also keep their hash for the lookups that
#: follow. Only lines that matched the field-line grammar get in, so being here is proof of
#: being well formed. Bounded in entries and line length, and emptied when full, so traffic
#: that never repeats only costs the misses.
_FIELD_CACHE: dict[bytes, tuple[bytes, bytes]] = {}
_FIELD_CACHE_ENTRIES = 256
_FIELD_CACHE_LINE = 512
#: The longest field section a connection remembers for its next head (_read_whole_head), so
#: that what each connection keeps stays small.
_LAST_SECTION_MAX = 4096
_FIELD_CONTENT_RE = re.compile(_FIELD_CONTENT)  # for the lines the cache has not seen


def split_fields(lines: list[bytes], max_fields: int) -> list[tuple[bytes, bytes]] | None:
    """The fields of a head's field lines (each without its CRLF): names lower-cased, the OWS
    around values dropped; ``None`` if a line is not a field line of the grammar (RFC 9112
    section 5: ``name ":" OWS value OWS`` with no CR, LF or other control character in it) or
    there are more than ``max_fields`` lines.
    """
    if len(lines) > max_fields:
        return None
    cache = _FIELD_CACHE
    headers = []
    for line in lines:
        field = cache.get(line)
        if field is None:
            if _FIELD_CONTENT_RE.fullmatch(line) is None:
                return None
            name, _, value = line.partition(b":")
            # RFC 9112 section 5: OWS around the value is not part of it. (The grammar allows
            # no other whitespace in a value, so strip() takes exactly SP and HTAB.)
            field = (name.lower(), value.strip())
            if len(line) <= _FIELD_CACHE_LINE:
                if len(cache) >= _FIELD_CACHE_ENTRIES:
                    cache.clear()
                cache[line] = field
        headers.append(field)
    return headers


def _line_fault(line: bytes, first: bool) -> str:
    """Say what is wrong with a request line or field line that did not match."""
    if not line.endswith(b"\r\n"):
        return "bare LF line ending"
    if b"\r" in line[:-2]:
        return "bare CR"
    if not first and line[:1] in (b" ", b"\t"):
        return "obsolete line folding"
    if first and b"#" in line.partition(b" ")[2]:  # past the method, whose tokens may hold "#"
        return "fragment in request target"
    return "malformed request line" if first else "malformed header field line"


class RequestFramer:
    """Split a byte stream into requests and bodies and report them to a sink.

    The backends (``--http httptools``, ``--http h11``) are this class under their names:
    each checked head is split here (:func:`split_fields`) and turned into a
    :class:`RequestHead` by :func:`build_request_head`.
    """

    __slots__ = (
        "_chunk_left",
        "_fields",
        "_head_pattern",
        "_last_fields",
        "_last_head",
        "_last_section",
        "_line_start",
        "_max_chunk_line",
        "_max_fields",
        "_max_head",
        "_max_request_line",
        "_pending",
        "_scanned",
        "_section",
        "_sink",
        "_state",
        "in_head",
    )

    def __init__(
        self,
        sink: RequestSink,
        *,
        max_request_line: int = 8192,
        max_head: int = 65536,
        max_fields: int = 100,
        max_chunk_line: int = MAX_CHUNK_LINE,
    ) -> None:
        self._sink = sink
        self._max_request_line = max_request_line
        self._max_head = max_head
        self._max_fields = max_fields
        self._max_chunk_line = max_chunk_line
        self._head_pattern = _head_pattern(max_request_line, max_fields)
        self._state = _HEAD
        # The field section (its lines and the empty line) of the last whole head read, and
        # its fields, for the next head: see _read_whole_head. A head with no fields first.
        self._last_section = b"\r\n"
        self._last_fields: tuple[tuple[bytes, bytes], ...] = ()
        # The request built from that section, once one was: what its fields decided.
        self._last_head: RequestHead | None = None
        # Bytes kept from earlier reads: always the start of an unfinished element (a head,
        # a chunk-size line, the CRLF after chunk data, a trailer section).
        self._pending = bytearray()
        # How far the unfinished element has been searched for its end, and where its first
        # unchecked line starts (both relative to its start), so no byte is looked at twice.
        self._scanned = 0
        self._line_start = 0
        self._fields = 0
        # The bytes of the current head or trailer section counted so far (limits).
        self._section = 0
        # Body bytes still expected: of a Content-Length body, or of the current chunk.
        self._chunk_left = 0
        #: True while the bytes of a request head are arriving (for the head timeout).
        self.in_head = False

    def feed(self, data: bytes) -> None:
        if self._state == _SWITCHED:
            return
        pending = self._pending
        buffer: bytes | bytearray
        if pending:
            pending += data
            buffer = pending
        else:
            buffer = data
        end = len(buffer)
        pos = 0
        while pos < end:
            state = self._state
            if state == _HEAD:
                consumed = self._read_head(buffer, pos, end)
            elif state in (_LENGTH_BODY, _CHUNK_DATA):
                consumed = self._read_data(buffer, pos, end)
            elif state == _CHUNK_SIZE:
                consumed = self._read_chunk_size(buffer, pos, end)
            elif state == _CHUNK_DATA_END:
                consumed = self._read_chunk_data_end(buffer, pos, end)
            elif state == _TRAILERS:
                consumed = self._read_trailers(buffer, pos, end)
            else:  # _SWITCHED: the rest went to the sink
                consumed = end
            if consumed < 0:  # an unfinished element: keep it for the next read
                break
            pos = consumed
        if pos == 0 and buffer is pending:
            return
        if pos < end:
            self._pending = bytearray(buffer[pos:])
        elif pending:
            self._pending = bytearray()

    # -- the head ---------------------------------------------------------------------------

    def _read_head(self, buffer: bytes | bytearray, start: int, end: int) -> int:
        if not self.in_head and type(buffer) is bytes:
            stop = self._read_whole_head(buffer, start, end)
            if stop >= 0:
                return stop
        scanned = 0
        if self.in_head:
            # The head was cut by a read: resume the search where the last one stopped.
            scanned = self._scanned
            stop = buffer.find(b"\r\n\r\n", start + scanned - 3 if scanned > 3 else start)
        elif buffer[start] == 13 and (end - start == 1 or buffer[start + 1] == 10):
            # RFC 9112 section 2.2: ignore empty lines (CRLF) before a request line.
            return start + 2 if end - start > 1 else -1
        else:
            stop = buffer.find(b"\r\n\r\n", start)
        if stop == -1:
            self.in_head = True
            self._check_lines(buffer, start, end, True, start + scanned)
            self._scanned = end - start
            return -1
        stop += 4
        head = bytes(buffer[start:stop])
        match = self._head_pattern.fullmatch(head) if len(head) <= self._max_head else None
        fields = split_fields(head[:-4].split(b"\r\n")[1:], self._max_fields) if match else None
        if match is None or fields is None:
            # Something is wrong: find the first fault, line by line, for its exact status.
            self._check_lines(head, 0, len(head), True, 0)
            raise ProtocolError("malformed request head")  # pragma: no cover (both agree)
        if self.in_head:
            self.in_head = False
            self._scanned = self._line_start = self._fields = 0
        return self._start_request(match, fields, buffer, stop, end)

    def _read_whole_head(self, buffer: bytes, start: int, end: int) -> int:
        """The usual read: a whole, well-formed head at ``start``, which is then reported (as
        :meth:`_start_request` does); -1, having reported nothing, for anything else (a cut
        head, a fault, a limit), which :meth:`_read_head` then decides exactly.

        This accepts exactly the heads of the grammar and limits of the whole-head pattern
        (:func:`_head_pattern`), without matching each byte against it (a browser's 900-byte
        head cost about 27k instructions there): the request line is checked; then a field
        section byte for byte the same as this connection's previous one (its field lines and
        the empty line; clients repeat them) is taken as it was split then, and any other is
        found (its end is the first empty line: no line of the grammar holds CRLF CRLF or
        starts with CR) and split by :func:`split_fields`, which checks only the lines it has
        not seen before.
        """
        # The request line with its CRLF, in one match that looks no further than the
        # longest line allowed: no byte of a line of the grammar is CR or LF, so a match ends
        # at the line's first CRLF.
        request_line = _REQUEST_LINE_RE.match(buffer, start, start + self._max_request_line + 2)
        if request_line is None:
            return -1
        section_start = request_line.end()
        line_end = section_start - 2
        section = self._last_section
        stop = section_start + len(section)
        # A slice compared, not startswith(): its arguments are parsed the slow way (as
        # find()'s), which costs more than the copy.
        seen: RequestHead | None = None
        remember = False
        if buffer[section_start:stop] == section:
            fields = list(self._last_fields)
            seen = self._last_head
            remember = seen is None
        else:
            stop = buffer.find(b"\r\n\r\n", line_end) + 4
            if stop == 3:
                return -1
            found = split_fields(
                buffer[section_start : stop - 4].split(b"\r\n") if stop - 4 > line_end else [],
                self._max_fields,
            )
            if found is None:
                return -1
            fields = found
            if stop - section_start <= _LAST_SECTION_MAX:
                self._last_section = buffer[section_start:stop]
                self._last_fields = tuple(fields)
                self._last_head = None
                remember = True
        if stop - start > self._max_head:
            return -1
        return self._start_request(request_line, fields, buffer, stop, end, seen, remember)

    def _start_request(
        self,
        request_line: re.Match[bytes],
        fields: list[tuple[bytes, bytes]],
        buffer: bytes | bytearray,
        stop: int,
        end: int,
        seen: RequestHead | None = None,
        remember: bool = False,
    ) -> int:
        """Report a checked head whose bytes end at ``stop``; where the next element starts.
        ``seen``: the request whose field section was this one's (build_request_head);
        ``remember``: keep this request as the one of the section kept (_read_whole_head)."""
        method, target, version = request_line.groups()
        request = build_request_head(
            _METHOD_NAMES.get(method) or method.decode("ascii"),
            target,
            _VERSIONS.get(version) or version.decode("ascii"),
            fields,
            seen,
        )
        if remember:
            self._last_head = request
        self._start_body(request, buffer, stop, end)
        return stop if self._state != _SWITCHED else end

    def _check_lines(
        self, buffer: bytes | bytearray, start: int, end: int, is_head: bool, searched: int
    ) -> None:
        """Check the complete lines of a head (or trailer section) not checked yet, then the
        limits on the unfinished line; raise the first fault found, left to right.

        ``searched``: the bytes before it were searched by an earlier call and hold no LF
        after the first unchecked line's start (so a line arriving byte by byte stays linear).
        """
        max_head = self._max_head
        line_start = start + self._line_start
        while True:
            first = is_head and line_start == start
            if first:
                method = _METHOD_PREFIX_RE.match(buffer, start, end)
                assert method is not None  # {0,32} always matches
                fault = method.end()
                if (
                    fault < end
                    and buffer[fault] != 32
                    # Unless a size limit is crossed before that byte (then the limit wins).
                    and fault - start < min(max_head, self._max_request_line + 2)
                ):
                    raise ProtocolError("malformed request line")
            newline = buffer.find(b"\n", max(line_start, searched), end)
            line_end = end if newline == -1 else newline + 1
            # A limit is broken at the byte that crosses it: check before the line's content.
            size = line_end - start
            if (
                first
                and size > self._max_request_line + 2
                # When both limits are crossed, the one crossed at the earlier byte wins.
                and not (size > max_head and max_head < self._max_request_line + 2)
            ):
                raise ProtocolError("request line too long", HTTPStatus.REQUEST_URI_TOO_LONG)
            if size > max_head:
                raise ProtocolError(
                    "request header section too large" if is_head else "trailer section too large",
                    HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                )
            if newline == -1:
                self._line_start = line_start - start
                return
            line = bytes(buffer[line_start:line_end])
            if first:
                if _REQUEST_LINE_RE.fullmatch(line) is None:
                    if _HTTP09_LINE_RE.fullmatch(line) is not None:
                        raise ProtocolError(
                            "HTTP/0.9 is not supported", HTTPStatus.HTTP_VERSION_NOT_SUPPORTED
                        )
                    raise ProtocolError(_line_fault(line, True))
            elif line == b"\r\n":
                return  # the end of the section: every line was fine
            else:
                if _FIELD_LINE_RE.fullmatch(line) is None:
                    raise ProtocolError(_line_fault(line, False))
                self._fields += 1
                if self._fields > self._max_fields:
                    raise ProtocolError(
                        f"more than {self._max_fields} header fields",
                        HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                    )
            line_start = line_end

    def _start_body(
        self, head: RequestHead, buffer: bytes | bytearray, stop: int, end: int
    ) -> None:
        sink = self._sink
        switching = bool(sink.on_request(head)) and head.upgrade is not None
        if head.chunked:
            self._state = _CHUNK_SIZE
        elif head.content_length:
            self._state = _LENGTH_BODY
            self._chunk_left = head.content_length
        else:
            sink.on_request_end()
            if switching:
                # The connection switches protocols: what follows is no longer ours.
                self._state = _SWITCHED
                sink.on_upgrade(bytes(buffer[stop:end]))

    # -- the body ---------------------------------------------------------------------------

    def _read_data(self, buffer: bytes | bytearray, start: int, end: int) -> int:
        left = self._chunk_left
        stop = end if end - start <= left else start + left
        piece = buffer[start:stop]
        self._sink.on_body(piece if type(piece) is bytes else bytes(piece))
        left -= stop - start
        self._chunk_left = left
        if not left:
            if self._state == _LENGTH_BODY:
                self._state = _HEAD
                self._sink.on_request_end()
            else:
                self._state = _CHUNK_DATA_END
        return stop

    def _read_chunk_size(self, buffer: bytes | bytearray, start: int, end: int) -> int:
        newline = buffer.find(b"\n", start, end)
        line_end = end if newline == -1 else newline + 1
        if line_end - start > self._max_chunk_line:
            raise ProtocolError("chunk-size line too long")
        if newline == -1:
            return -1
        match = _CHUNK_LINE_RE.fullmatch(buffer, start, line_end)
        if match is None:
            raise ProtocolError("malformed chunk-size line")
        size = match.group(1).lstrip(b"0")
        if len(size) > 16:  # RFC 9112 section 7.1: guard against overflow, as llhttp does
            raise ProtocolError("chunk size too large")
        left = int(size, 16) if size else 0
        if left:
            self._chunk_left = left
            self._state = _CHUNK_DATA
        else:
            self._state = _TRAILERS
        return line_end

    def _read_chunk_data_end(self, buffer: bytes | bytearray, start: int, end: int) -> int:
        if buffer[start] != 13 or (end - start > 1 and buffer[start + 1] != 10):
            raise ProtocolError("chunk data not followed by CRLF")
        if end - start == 1:
            return -1
        self._state = _CHUNK_SIZE
        return start + 2

    def _read_trailers(self, buffer: bytes | bytearray, start: int, end: int) -> int:
        # RFC 9112 section 7.1.2: the trailer section has the syntax of a header section; its
        # fields are dropped (ASGI has no request trailers).
        scanned = self._scanned
        if buffer[start : start + 2] == b"\r\n":
            stop = start + 2
        else:
            stop = buffer.find(b"\r\n\r\n", start + scanned - 3 if scanned > 3 else start)
            if stop != -1:
                stop += 4
        if stop == -1:
            self._check_lines(buffer, start, end, False, start + scanned)
            self._scanned = end - start
            return -1
        self._check_lines(buffer, start, stop, False, start + scanned)
        self._scanned = self._line_start = self._fields = 0
        self._state = _HEAD
        self._sink.on_request_end()
        return stop


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


def _one_break_per_line(block: bytes, lines: int) -> bool:
    """Whether ``block``, ``lines`` field lines each ended by our CRLF, holds no other line
    break: a CR or LF in a name or value (response splitting) adds at least one more, and
    bytes.splitlines breaks at CR, LF and CRLF only. (One call: bytes.count parses its
    arguments the slow way, and counting CR and LF took two.)"""
    return len(block.splitlines()) == lines


def encode_header_block(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Response header lines, each ending in CRLF; a name or value holding CR or LF (response
    splitting) raises :class:`InvalidResponseHeader`."""
    parts: list[bytes] = []
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    block = b"".join(parts)
    if not _one_break_per_line(block, len(parts) >> 2):
        raise InvalidResponseHeader("response header name or value contains CR or LF")
    return block


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
    return b"".join(
        (status_line(status), default_headers, encode_header_block(headers), framing, body)
    )


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
    if not _one_break_per_line(block, len(lines)):
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
