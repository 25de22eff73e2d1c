"""WebSocket (RFC 6455) on the ``websockets`` package's sans-I/O ``ServerProtocol``.

Theory of operation
-------------------
The HTTP/1.1 core has already parsed the upgrade request, so the protocol object is created in
the OPEN state (its parser goes straight to frames) and the handshake is computed from the
parsed request with ``ServerProtocol.accept``: it validates the request and negotiates
permessage-deflate. Subprotocol choice belongs to the ASGI app, so we add that header ourselves
when the app accepts. Nothing is re-serialised and re-parsed.

``websockets`` parses frames, enforces ``max_size`` from the frame header *before* buffering the
payload and again while inflating (so a small compressed frame cannot inflate past the limit),
answers pings and echoes close frames. What it leaves to its callers we do here: reassembling
fragmented messages and validating UTF-8 in text messages (close code 1007).

The common case has a short cut. When no extension was negotiated and the connection is
open, a complete, unfragmented, masked text or binary frame of at most ``max_size`` bytes
(and at most ``_FAST_FRAME_LIMIT``) is decoded here, and an outgoing text or binary message is
framed here: both are a few lines of RFC 6455 section 5.2, and doing them without the general
frame machinery is what makes small-message echo fast. Every other frame (control frames,
fragments and any frame while a fragmented message is open, reserved bits or opcodes,
unmasked, oversize, compressed) is handed whole, or as a stream of exactly its own bytes, to
``websockets``, so its parser is always at a frame boundary when the short cut runs, and
every error keeps its close code.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    from websockets.utils import apply_mask

from websockets.datastructures import Headers
from websockets.exceptions import InvalidState
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

__all__ = ["Handshake", "Message", "WebSocketClosed", "WebSocketCore"]

BytesLike = bytes | bytearray | memoryview

#: Frames bigger than this go to ``websockets`` even when simple: its reader streams them,
#: while the short cut would hold the whole frame before decoding it.
_FAST_FRAME_LIMIT = 256 * 1024
_FIN_TEXT = 0x81
_FIN_BINARY = 0x82
_PLAIN_DATA_HEADS = (_FIN_TEXT, _FIN_BINARY)  # FIN, no RSV bits, text or binary
#: A masked, empty, final continuation frame (see _read_frame_head).
_EMPTY_FINAL_FRAGMENT = b"\x80\x80\x00\x00\x00\x00"
#: Server frame heads (FIN set, unmasked) for payloads under 126 bytes, by opcode and length.
_SMALL_HEADS = {
    opcode: [bytes((opcode, n)) for n in range(126)] for opcode in (_FIN_TEXT, _FIN_BINARY)
}


class Message:
    """A complete data message: ``text`` for text frames, ``data`` for binary ones."""

    __slots__ = ("data", "text")

    def __init__(self, text: str | None, data: bytes | None) -> None:
        self.text = text
        self.data = data


class WebSocketClosed:
    """The closing handshake completed or the connection failed; code and reason, and whether
    it failed (our close frame names the peer's error, or ours)."""

    __slots__ = ("code", "failed", "reason")

    def __init__(self, code: int, reason: str, failed: bool = False) -> None:
        self.code = code
        self.reason = reason
        self.failed = failed


#: Stands in for the key an HTTP/2 extended CONNECT does not carry (see handshake).
_PLACEHOLDER_KEY = b"AAAAAAAAAAAAAAAAAAAAAA=="
_DROPPED = frozenset(("date",))  # the server adds its own
#: RFC 8441 section 5: no Sec-WebSocket-Accept; connection-specific fields are not HTTP/2.
_DROPPED_OVER_HTTP2 = frozenset(("date", "upgrade", "connection", "sec-websocket-accept"))


class Handshake:
    """The outcome of checking an upgrade request: a 101 (200 over HTTP/2) to send later, or a
    refusal now."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def accepted(self) -> bool:
        return self.status in (101, 200)


class WebSocketCore:
    """One WebSocket connection's protocol state: bytes in, messages out, bytes to send."""

    def __init__(self, *, max_size: int, per_message_deflate: bool) -> None:
        extensions = [ServerPerMessageDeflateFactory()] if per_message_deflate else None
        self._protocol = ServerProtocol(extensions=extensions, state=State.OPEN, max_size=max_size)
        # A fragmented message being reassembled: its opcode and parts so far.
        self._opcode: Opcode | None = None
        self._parts: list[BytesLike] = []
        self._decoder: codecs.IncrementalDecoder | None = None
        #: The message ended by a close frame (see _read_frame_head): not delivered.
        self._drop_message = False
        # What the frame heads handed to websockets said, read before their payload arrives:
        # the fragmented message open on the wire, the UTF-8 state of its text, and for the
        # text frame being received its mask key, header bytes still to skip, payload offset.
        self._wire_message: Opcode | None = None
        self._wire_decoder: codecs.IncrementalDecoder | None = None
        self._text_key: bytes | None = None
        self._text_skip = 0
        self._text_offset = 0
        self._closed_reported = False
        self._failed = False
        self._max_size = max_size
        #: Set after the handshake: True when no extension was negotiated (short cut allowed).
        self._plain = False
        #: Bytes of an incomplete frame held for the short cut.
        self._held = bytearray()
        #: Bytes still owed to ``websockets`` for the frame it is parsing (see receive_data).
        self._owed = 0
        #: Frames framed by the short cut, waiting for data_to_send.
        self._out: list[bytes] = []
        #: Pong frames received so far (keep-alive pings are answered by pongs).
        self.pongs_seen = 0
        #: A failure's output (its close frame) held back while messages are answered.
        self._deferred: list[bytes] | None = None

    # -- handshake -------------------------------------------------------------------------

    def handshake(
        self, path: str, headers: Sequence[tuple[bytes, bytes]], *, extended_connect: bool = False
    ) -> Handshake:
        """Check an upgrade request; with ``extended_connect``, an HTTP/2 extended CONNECT
        (RFC 8441 section 5), which carries no Upgrade, Connection or Sec-WebSocket-Key and
        is accepted with a 200 that has no Sec-WebSocket-Accept."""
        if extended_connect:
            # websockets checks an HTTP/1.1 upgrade: give it the parts HTTP/2 does without, so
            # that the version check and extension negotiation stay its own.
            headers = [
                *((k, v) for k, v in headers if k != b"sec-websocket-key"),
                (b"upgrade", b"websocket"),
                (b"connection", b"Upgrade"),
                (b"sec-websocket-key", _PLACEHOLDER_KEY),
            ]
        request = Request(
            path, Headers((k.decode("latin-1"), v.decode("latin-1")) for k, v in headers)
        )
        response = self._protocol.accept(request)
        self._plain = not self._protocol.extensions
        dropped = _DROPPED_OVER_HTTP2 if extended_connect else _DROPPED
        kept = [
            (name, value)
            for name, value in response.headers.raw_items()
            if name.lower() not in dropped
        ]
        status = response.status_code
        if extended_connect and status == 101:
            status = 200
        return Handshake(status, kept, bytes(response.body))

    # -- receiving ---------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Message | WebSocketClosed]:
        protocol = self._protocol
        held = self._held
        if held:
            held += data
            buf: bytes | bytearray = held
        else:
            buf = data
        out: list[Message | WebSocketClosed] = []
        end = len(buf)
        pos = 0
        while pos < end:
            owed = self._owed
            if owed:
                # websockets is inside a frame: give it that frame's bytes and no more, so
                # that an error is found at the same byte whatever the reads were.
                take = min(owed, end - pos)
                self._owed = owed - take
                piece = buf[pos : pos + take]
                protocol.receive_data(piece)
                pos += take
                if self._text_key is not None and not self._check_streamed_text(piece):
                    out.extend(self._events())
                    pos = end  # the connection is failing: the rest is discarded
                    break
                out.extend(self._events())
                continue
            if protocol.state is not State.OPEN:
                # Closing or failed: websockets has the rest.
                protocol.receive_data(buf[pos:])
                pos = end
                out.extend(self._events())
                break
            if end - pos < 2:
                break
            head = buf[pos]
            length = buf[pos + 1] & 0x7F
            start = pos + 2
            if length == 126:
                if end - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                start = pos + 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                start = pos + 10
            masked = buf[pos + 1] & 0x80
            if masked:
                if end < start + 4:
                    break
                start += 4
            frame_end = start + length
            if (
                head not in _PLAIN_DATA_HEADS
                or not self._plain
                or self._wire_message is not None  # inside a fragmented message
                or not masked
                or length > self._max_size
                or length > _FAST_FRAME_LIMIT
                or (frame_end > end and head == _FIN_TEXT)  # validated as it arrives
            ):
                self._owed = frame_end - pos
                self._read_frame_head(head, bool(masked), buf[start - 4 : start], start - pos)
                continue
            if frame_end > end:
                break  # wait for the rest of this frame
            payload = apply_mask(buf[start:frame_end], bytes(buf[start - 4 : start]))
            pos = frame_end
            if head == _FIN_BINARY:
                out.append(Message(None, payload))
                continue
            try:
                out.append(Message(payload.decode("utf-8"), None))
            except UnicodeDecodeError:
                self._fail(CloseCode.INVALID_DATA, "invalid UTF-8 in text message")
                out.extend(self._events())
                pos = end  # the connection is failing: the rest is discarded
                break
        if held:
            del held[:pos]
        elif pos < end:
            held += buf[pos:]
        return out

    def _read_frame_head(self, head: int, masked: bool, key: BytesLike, head_size: int) -> None:
        """Follow the message structure of the frames handed to websockets, which parses them:
        which message is open, and whether this frame's text is checked as it arrives."""
        opcode = head & 0x0F
        self._text_key = None
        if opcode == Opcode.CLOSE and self._wire_message is not None:
            # RFC 6455 section 5.4: a close may come between the fragments of a message, and it
            # ends the connection: the message is dropped (Autobahn 7.1.5 expects the peer's
            # code echoed). websockets calls it a protocol error, so it gets the message ended
            # by an empty final fragment of our own first, and we drop that message.
            self._protocol.receive_data(_EMPTY_FINAL_FRAGMENT)
            self._drop_message = True
            self._wire_message = None
            return
        if opcode in (Opcode.TEXT, Opcode.BINARY):
            if self._wire_message is not None:
                return  # websockets fails it: a new message inside a fragmented one
            # Reserved bits: compressed (checked once inflated) or an error websockets reports.
            text = opcode == Opcode.TEXT and self._plain and not head & 0x70
            self._wire_decoder = codecs.getincrementaldecoder("utf-8")() if text else None
            if not head & 0x80:
                self._wire_message = Opcode(opcode)
        elif opcode == Opcode.CONT:
            if self._wire_message is None:
                return  # websockets fails it: nothing to continue
            if head & 0x80:
                self._wire_message = None
            if head & 0x70:
                return
        else:
            return  # a control frame
        if self._wire_decoder is not None and masked:
            # RFC 6455 section 8.1: fail as soon as the bytes cannot be UTF-8, not once the
            # frame or message is whole (Autobahn 6.4.3, 6.4.4).
            self._text_key = bytes(key)
            self._text_skip = head_size
            self._text_offset = 0

    def _check_streamed_text(self, piece: BytesLike) -> bool:
        skip = min(self._text_skip, len(piece))
        self._text_skip -= skip
        payload = piece[skip:]
        if not payload:
            return True
        key = self._text_key
        assert key is not None and self._wire_decoder is not None
        turn = self._text_offset % 4
        self._text_offset += len(payload)
        try:
            self._wire_decoder.decode(apply_mask(payload, key[turn:] + key[:turn]))
        except UnicodeDecodeError:
            self._text_key = None
            self._fail(CloseCode.INVALID_DATA, "invalid UTF-8 in text message")
            return False
        return True

    def receive_eof(self) -> list[Message | WebSocketClosed]:
        self._protocol.receive_eof()
        return self._events()

    def _events(self) -> list[Message | WebSocketClosed]:
        out: list[Message | WebSocketClosed] = []
        for frame in self._protocol.events_received():
            if not isinstance(frame, Frame):  # pragma: no cover - only frames once OPEN
                continue
            opcode = frame.opcode
            if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
                if frame.fin:
                    message = self._message(opcode, [frame.data])
                    if message is None:
                        break
                    out.append(message)
                else:
                    self._opcode = opcode
                    self._parts = [frame.data]
                    if opcode is Opcode.TEXT and not self._check_text_part(frame.data):
                        break
            elif opcode is Opcode.CONT:
                if self._drop_message:
                    # Our own final fragment before a close: the message is dropped.
                    self._drop_message = False
                    self._opcode, self._parts, self._decoder = None, [], None
                    continue
                self._parts.append(frame.data)
                if (
                    self._opcode is Opcode.TEXT
                    and not frame.fin
                    and not self._check_text_part(frame.data)
                ):
                    break
                if frame.fin:
                    assert self._opcode is not None
                    message = self._message(self._opcode, self._parts)
                    self._opcode, self._parts, self._decoder = None, [], None
                    if message is None:
                        break
                    out.append(message)
            elif opcode is Opcode.PONG:
                self.pongs_seen += 1
            # PING is answered by the protocol itself; CLOSE is reported below.
        closed = self.closed()
        if closed is not None:
            out.append(closed)
        return out

    def _check_text_part(self, data: BytesLike) -> bool:
        # Validate a fragmented text message as it arrives, so bad UTF-8 closes it early.
        # Without extensions its bytes were checked on the wire already (_check_streamed_text);
        # a compressed message can only be checked once inflated.
        if self._plain:
            return True
        if self._decoder is None:
            self._decoder = codecs.getincrementaldecoder("utf-8")()
        try:
            self._decoder.decode(data)
        except UnicodeDecodeError:
            self._fail(CloseCode.INVALID_DATA, "invalid UTF-8 in text message")
            return False
        return True

    def _message(self, opcode: Opcode, parts: list[BytesLike]) -> Message | None:
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        if opcode is Opcode.BINARY:
            return Message(None, data if type(data) is bytes else bytes(data))
        try:
            return Message(str(data, "utf-8"), None)
        except UnicodeDecodeError:
            self._fail(CloseCode.INVALID_DATA, "invalid UTF-8 in text message")
            return None

    def _fail(self, code: int, reason: str) -> None:
        self._failed = True
        try:
            self._protocol.fail(code, reason)
        except InvalidState:  # pragma: no cover - already closing
            pass

    def closed(self) -> WebSocketClosed | None:
        """Report the end of the connection once: the peer's close frame when it sent one;
        our code when the connection failed (1002, 1007, 1009, ...); else 1006."""
        if self._closed_reported:
            return None
        protocol = self._protocol
        close = protocol.close_rcvd
        failed = False
        if close is None:
            failed = self._failed or protocol.parser_exc is not None
            if not failed and protocol.state is not State.CLOSED:
                return None
            close = protocol.close_sent
        self._closed_reported = True
        if close is None:
            return WebSocketClosed(CloseCode.ABNORMAL_CLOSURE, "")
        return WebSocketClosed(close.code, close.reason, failed)

    # -- a failure held back -----------------------------------------------------------------

    def defer_failure(self) -> bool:
        """After a failure: hold its close frame back so that messages can still be sent (the
        answers to those that came before the bad frame), until ``release_failure``. Only
        without extensions, where we frame messages ourselves."""
        if not self._plain or self._deferred is not None:
            return False
        self._deferred = self._protocol.data_to_send()
        return True

    def release_failure(self) -> None:
        """Queue the held close frame after what was sent meanwhile (see data_to_send)."""
        if self._deferred is not None:
            self._out.extend(self._deferred)
            self._deferred = None

    @property
    def sending(self) -> bool:
        """Data messages may be sent: the connection is open, or a failure is held back."""
        return self._protocol.state is State.OPEN or self._deferred is not None

    # -- sending -----------------------------------------------------------------------------

    def send_text(self, text: str) -> None:
        if self._plain and self.sending:
            self._frame(_FIN_TEXT, text.encode("utf-8"))
        else:
            self._protocol.send_text(text.encode("utf-8"))

    def send_bytes(self, data: bytes) -> None:
        if self._plain and self.sending:
            self._frame(_FIN_BINARY, data)
        else:
            self._protocol.send_binary(data)

    def _frame(self, head: int, payload: bytes) -> None:
        # Anything websockets queued (pongs) was produced first and must go out first.
        out = self._out
        if self._protocol.writes:
            out.extend(self._protocol.data_to_send())
        length = len(payload)
        if length < 126:
            out.append(_SMALL_HEADS[head][length] + payload)
        elif length < 65536:
            out.append(bytes((head, 126)) + length.to_bytes(2, "big") + payload)
        else:
            out.append(bytes((head, 127)) + length.to_bytes(8, "big"))
            out.append(payload)

    def send_ping(self, data: bytes) -> None:
        self._protocol.send_ping(data)

    def send_close(self, code: int = 1000, reason: str = "") -> None:
        if self._protocol.state is State.OPEN:
            self._protocol.send_close(code, reason)

    def fail(self, code: int, reason: str = "") -> None:
        """Close because of an error on our side (or the peer's), without waiting."""
        self._fail(code, reason)

    def data_to_send(self) -> tuple[bytes, bool]:
        """Bytes to write, and whether the protocol is done writing (time to close TCP)."""
        writes = self._protocol.data_to_send()
        if self._out:
            writes = [*self._out, *writes]
            self._out.clear()
        if not writes:
            return b"", False
        # websockets marks "end of output" with an empty chunk.
        eof = writes[-1] == b""
        return (writes[0] if len(writes) == 1 else b"".join(writes)), eof

    @property
    def state(self) -> State:
        return self._protocol.state

    @property
    def open(self) -> bool:
        return self._protocol.state is State.OPEN

    @property
    def close_expected(self) -> bool:
        """True once the TCP connection should be closed (the handshake is over or failed)."""
        return bool(self._protocol.close_expected())
