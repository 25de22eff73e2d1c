"""The ASGI WebSocket cycle (ASGI HTTP & WebSocket spec 2.5, with ``websocket.http.response``).

Theory of operation
-------------------
A connection creates one :class:`WebSocketCycle` per upgraded request after the handshake
request has been validated. The app's first ``receive()`` is ``websocket.connect``; it answers
with ``websocket.accept``, with ``websocket.close`` (an HTTP 403 before accept) or with a
custom HTTP denial response (``websocket.http.response.start`` / ``.body``). After accept,
messages flow both ways until either side closes; the app then receives
``websocket.disconnect`` with the close code and reason.

``send`` is a state machine over :class:`WSPhase`. The wire is the sink's business
(:class:`WebSocketSink`); incoming messages are queued here and the sink is told to stop
reading when the app falls ``max_queue`` messages behind.

When the peer's bytes fail the connection (a protocol error after some valid messages), the
sink may ask, with :meth:`WebSocketCycle.defer_close`, to let the app answer the messages that
came before the bad frame first: the app goes on receiving them, and its next ``receive()``
after the last one tells the sink (``messages_answered``), which then closes.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from typing import TYPE_CHECKING, Final, Protocol

from asgiserve.asgi.http import ClientDisconnected

if TYPE_CHECKING:
    from asgiserve.asgi.types import ASGIApp, Message, Scope

logger = logging.getLogger("asgiserve.error")

__all__ = ["WSPhase", "WebSocketCycle", "WebSocketSink"]


class WSPhase(enum.IntEnum):
    HANDSHAKE = 0  # the app has not answered websocket.connect yet
    RESPONSE = 1  # the app is sending an HTTP denial response
    OPEN = 2  # accepted: messages flow
    CLOSED = 3  # the app closed, or the connection is gone


# The phases as module constants (as in asgi/http.py): a member looked up on its enum class
# goes through EnumType's attribute hook, about ten times the cost of a global.
_HANDSHAKE: Final = WSPhase.HANDSHAKE
_RESPONSE: Final = WSPhase.RESPONSE
_OPEN: Final = WSPhase.OPEN
_CLOSED: Final = WSPhase.CLOSED


class WebSocketSink(Protocol):
    """What the cycle needs from the connection."""

    writing_paused: bool

    def accept(self, subprotocol: str | None, headers: list[tuple[bytes, bytes]]) -> None: ...
    def deny(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None: ...
    def send_message(self, text: str | None, data: bytes | None) -> None: ...
    def close(self, code: int, reason: str) -> None: ...
    async def drain(self) -> None: ...
    def resume_reading(self) -> None: ...
    def messages_answered(self) -> None: ...


_CONNECT: Message = {"type": "websocket.connect"}
_FORBIDDEN = (403, [(b"content-type", b"text/plain; charset=utf-8")], b"Forbidden")
_SERVER_ERROR = (500, [(b"content-type", b"text/plain; charset=utf-8")], b"Internal Server Error")


def _headers(raw: object) -> list[tuple[bytes, bytes]]:
    headers: list[tuple[bytes, bytes]] = []
    for name, value in raw or ():  # type: ignore[attr-defined]
        if not isinstance(name, bytes) or not isinstance(value, bytes):
            raise TypeError("WebSocket response header names and values must be bytes")
        headers.append((name, value))
    return headers


class WebSocketCycle:
    __slots__ = (
        "answering",
        "close_code",
        "close_pending",
        "close_reason",
        "connect_delivered",
        "disconnected",
        "max_queue",
        "phase",
        "queue",
        "reading_paused",
        "response_body",
        "response_headers",
        "response_status",
        "scope",
        "sink",
        "waiter",
    )

    def __init__(self, scope: Scope, sink: WebSocketSink, *, max_queue: int) -> None:
        self.scope = scope
        self.sink = sink
        self.max_queue = max_queue
        self.phase = _HANDSHAKE
        self.queue: deque[Message] = deque()
        self.connect_delivered = False
        self.disconnected = False
        self.close_code = 1006
        self.close_reason = ""
        self.reading_paused = False
        #: The app took a message and has not asked for the next one yet.
        self.answering = False
        #: The sink waits for the app to answer the queued messages before closing.
        self.close_pending = False
        self.waiter: asyncio.Future[None] | None = None
        self.response_status = 0
        self.response_headers: list[tuple[bytes, bytes]] = []
        self.response_body: list[bytes] = []

    # -- protocol side -------------------------------------------------------------------------

    def feed(self, message: Message) -> bool:
        """Queue an incoming message; True when the sink should stop reading for now."""
        self.queue.append(message)
        self._wake()
        if len(self.queue) >= self.max_queue:
            self.reading_paused = True
            return True
        return False

    def defer_close(self) -> bool:
        """True when the app has messages left to answer, which it may do before the sink
        closes: the sink is then told when the app asks for more (``messages_answered``)."""
        if self.phase is not _OPEN or not (self.queue or self.answering):
            return False
        self.close_pending = True
        return True

    def disconnect(self, code: int, reason: str = "") -> None:
        if self.disconnected:
            return
        self.disconnected = True
        self.close_code = code
        self.close_reason = reason
        if self.phase is not _CLOSED:
            self.phase = _CLOSED
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- application side ----------------------------------------------------------------------

    async def receive(self) -> Message:
        if not self.connect_delivered:
            self.connect_delivered = True
            return _CONNECT
        self.answering = False
        while True:
            queue = self.queue
            if queue and self.phase is not _HANDSHAKE:
                message = queue.popleft()
                if self.reading_paused and len(queue) < self.max_queue:
                    self.reading_paused = False
                    self.sink.resume_reading()
                self.answering = True
                return message
            if self.close_pending:
                self.close_pending = False
                self.sink.messages_answered()  # the sink closes and disconnects us
            if self.disconnected:
                return {
                    "type": "websocket.disconnect",
                    "code": self.close_code,
                    "reason": self.close_reason,
                }
            self.waiter = waiter = asyncio.get_running_loop().create_future()
            await waiter

    async def send(self, message: Message) -> None:
        phase = self.phase
        kind = message["type"]
        if phase is _OPEN:
            if kind == "websocket.send":
                text = message.get("text")
                data = message.get("bytes")
                if (text is None) == (data is None):
                    raise ValueError("'websocket.send' needs exactly one of 'text' or 'bytes'")
                sink = self.sink
                sink.send_message(text, data)
                if sink.writing_paused:
                    await sink.drain()
            elif kind == "websocket.close":
                self.phase = _CLOSED
                self.sink.close(message.get("code") or 1000, message.get("reason") or "")
            else:
                raise RuntimeError(f"Unexpected {kind!r} on an open WebSocket")
        elif phase is _HANDSHAKE:
            if self.disconnected:
                raise ClientDisconnected("client disconnected")
            if kind == "websocket.accept":
                self.phase = _OPEN
                self.sink.accept(message.get("subprotocol"), _headers(message.get("headers")))
            elif kind == "websocket.close":
                # ASGI: closing before accepting rejects the handshake with HTTP 403.
                self.phase = _CLOSED
                self.sink.deny(*_FORBIDDEN)
            elif kind == "websocket.http.response.start":
                status = message["status"]
                if type(status) is not int or not 200 <= status <= 999:
                    raise ValueError(f"Invalid status {status!r} in {kind!r}")
                self.response_status = status
                self.response_headers = _headers(message.get("headers"))
                self.phase = _RESPONSE
            else:
                raise RuntimeError(
                    "Expected 'websocket.accept', 'websocket.close' or "
                    f"'websocket.http.response.start', got {kind!r}"
                )
        elif phase is _RESPONSE:
            if kind != "websocket.http.response.body":
                raise RuntimeError(f"Expected 'websocket.http.response.body', got {kind!r}")
            self.response_body.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                self.phase = _CLOSED
                self.sink.deny(
                    self.response_status, self.response_headers, b"".join(self.response_body)
                )
        else:
            if self.disconnected:
                raise ClientDisconnected("client disconnected")
            raise RuntimeError(f"Unexpected {kind!r}: the WebSocket is closed")

    # -- running the application ---------------------------------------------------------------

    async def run(self, app: ASGIApp) -> None:
        try:
            await app(self.scope, self.receive, self.send)
        except asyncio.CancelledError:
            self._fail()
            raise
        except BaseException as exc:
            if isinstance(exc, ClientDisconnected) and self.disconnected:
                logger.debug("WebSocket client disconnected while the app was sending")
            else:
                logger.error("Exception in ASGI application", exc_info=exc)
                self._fail()
            if not isinstance(exc, Exception):
                raise
        else:
            if self.phase is _HANDSHAKE:
                logger.error("ASGI application returned without accepting the WebSocket")
                self._fail()
            elif self.phase is _OPEN:
                self.phase = _CLOSED
                self.sink.close(1000, "")
            elif self.phase is _RESPONSE:
                logger.error("ASGI application returned without completing its response")
                self._fail()

    def _fail(self) -> None:
        phase = self.phase
        self.phase = _CLOSED
        if self.disconnected:
            return
        if phase is _HANDSHAKE or phase is _RESPONSE:
            self.sink.deny(*_SERVER_ERROR)
        elif phase is _OPEN:
            self.sink.close(1011, "")
