"""The asyncio side of a WebSocket connection, after the HTTP/1.1 upgrade or on an HTTP/2 stream.

Theory of operation
-------------------
:class:`~asgiserve.transport.connection.HTTP11Connection` hands the transport over
(``transport.set_protocol``) together with the parsed upgrade request and any bytes that came
after it. We check the handshake with the sans-I/O core; a bad one gets its HTTP error without
the app ever running. Otherwise the app runs with a :class:`~asgiserve.asgi.websocket.
WebSocketCycle` and we are its sink: the 101 response goes out when the app accepts, messages
go through the core both ways, and reading pauses while the app is ``max_queue`` messages
behind. Bytes that arrive before the app has accepted (a client must wait for the 101, RFC 6455
section 4.1, but may not) are held, with reading paused, and read after the 101 is written: the
core never answers, or fails, a connection the app has not accepted, and a denied one never
reads them.

Over HTTP/2 (RFC 8441) the same class runs on one stream: its "transport" is then a
:class:`ByteStream` that carries the bytes in DATA frames, and a :class:`HandshakeResponder`
writes the handshake's answer as HEADERS (200 instead of 101). Keep-alive pings and the closing-handshake timeout are deadlines checked by the
server's once-a-second sweep, like HTTP timeouts.

Messages the app sends are written once per event-loop iteration (``call_soon``), so an app
answering a burst of messages makes one ``write`` syscall, not one per message; past
``_FLUSH_AT`` unwritten bytes we write at once, so the transport's high-water mark (and with it
``await send()`` waiting for a slow reader) still bounds memory.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
from time import perf_counter
from typing import TYPE_CHECKING, Any, Protocol

from asgiserve.asgi.scope import ConnectionInfo, websocket_scope
from asgiserve.asgi.websocket import WebSocketCycle, WSPhase
from asgiserve.protocols.http11 import encode_response_head, status_line
from asgiserve.protocols.websocket import Message, WebSocketClosed, WebSocketCore
from asgiserve.transport.state import start_task

if TYPE_CHECKING:
    from asgiserve.protocols.http11 import RequestHead
    from asgiserve.transport.state import ServerState

logger = logging.getLogger("asgiserve.error")

__all__ = ["ByteStream", "HandshakeResponder", "WebSocketConnection", "WebSocketSettings"]

#: Unwritten message bytes past which send_message writes now instead of at the loop's turn.
_FLUSH_AT = 64 * 1024
#: The name of the app's task (what it runs, in a dump of the loop's tasks).
_APP_TASK = "asgiserve: WebSocket"


class ByteStream(Protocol):
    """Where a WebSocket's bytes go: an asyncio transport, or an HTTP/2 stream."""

    def write(self, data: bytes) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


class HandshakeResponder(Protocol):
    """Answers the handshake where the answer is not HTTP/1.1 bytes on the byte stream."""

    def accept_response(self, headers: list[tuple[bytes, bytes]]) -> None: ...
    def http_response(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """Send a whole response, then end the byte stream."""


class WebSocketSettings:
    """WebSocket limits and timers as plain values."""

    __slots__ = (
        "close_timeout",
        "max_queue",
        "max_size",
        "per_message_deflate",
        "ping_interval",
        "ping_timeout",
    )

    def __init__(
        self,
        *,
        max_size: int = 16 * 1024 * 1024,
        max_queue: int = 32,
        ping_interval: float = 20.0,
        ping_timeout: float = 20.0,
        close_timeout: float = 10.0,
        per_message_deflate: bool = True,
    ) -> None:
        self.max_size = max_size
        self.max_queue = max_queue
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.close_timeout = close_timeout
        self.per_message_deflate = per_message_deflate


class _Timer:
    NONE = 0
    PING = 1  # time to send a keep-alive ping
    PONG = 2  # the ping's pong is overdue
    CLOSE = 3  # the closing handshake is overdue


class WebSocketConnection(asyncio.Protocol):
    __slots__ = (
        "core",
        "cycle",
        "deadline",
        "drain_waiters",
        "early",
        "failure",
        "flush_scheduled",
        "handshake_headers",
        "loop",
        "pongs_seen",
        "reading_paused",
        "responder",
        "settings",
        "started_at",
        "state",
        "timer",
        "transport",
        "unflushed",
        "writing_paused",
    )

    def __init__(
        self,
        state: ServerState,
        settings: WebSocketSettings,
        transport: ByteStream,
        responder: HandshakeResponder | None = None,
    ) -> None:
        self.state = state
        self.settings = settings
        self.loop = state.loop
        self.transport: ByteStream | None = transport
        #: None: HTTP/1.1, the handshake's answer is written on the transport.
        self.responder = responder
        self.core = WebSocketCore(
            max_size=settings.max_size, per_message_deflate=settings.per_message_deflate
        )
        self.cycle: WebSocketCycle | None = None
        self.handshake_headers: list[tuple[str, str]] = []
        #: Bytes received before the app accepted, read after the 101; None once accepted.
        self.early: bytearray | None = bytearray()
        #: A failure whose close waits for the app to answer earlier messages (see _closed).
        self.failure: WebSocketClosed | None = None
        self.reading_paused = False
        self.writing_paused = False
        self.drain_waiters: list[asyncio.Future[None]] = []
        self.deadline = 0.0
        self.timer = _Timer.NONE
        self.pongs_seen = 0
        self.started_at = perf_counter()
        self.flush_scheduled = False
        self.unflushed = 0

    def start(self, head: RequestHead, info: ConnectionInfo, trailing: bytes) -> None:
        """Check the handshake and start the app; called right after the protocol switch."""
        self.start_request(head.path, head.query, head.headers, info, trailing)

    def start_request(
        self,
        path: bytes,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        info: ConnectionInfo,
        trailing: bytes = b"",
        *,
        http2: bool = False,
    ) -> None:
        """Check the handshake (an HTTP/1.1 upgrade, or with ``http2`` an extended CONNECT)
        and start the app."""
        target = path + (b"?" + query if query else b"")
        handshake = self.core.handshake(target.decode("latin-1"), headers, extended_connect=http2)
        if not handshake.accepted:
            refusal = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in handshake.headers]
            self._write_http_response(handshake.status, refusal, handshake.body)
            return
        self.handshake_headers = handshake.headers
        self.state.connections.add(self)
        scope = websocket_scope(info, path, query, headers)
        if http2:
            scope["http_version"] = "2"
        cycle = self.cycle = WebSocketCycle(scope, self, max_queue=self.settings.max_queue)
        task = start_task(
            self.loop, cycle.run(self.state.app), contextvars.copy_context(), _APP_TASK
        )
        tasks = self.state.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        if trailing:
            self.data_received(trailing)

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        if cycle is None:
            return
        early = self.early
        if early is not None:
            early += data
            if not self.reading_paused and self.transport is not None:
                self.reading_paused = True
                self.transport.pause_reading()
            return
        for event in self.core.receive_data(data):
            if type(event) is Message:
                message: dict[str, Any]
                if event.text is not None:
                    message = {"type": "websocket.receive", "text": event.text}
                else:
                    message = {"type": "websocket.receive", "bytes": event.data}
                if cycle.feed(message) and not self.reading_paused and self.transport:
                    self.reading_paused = True
                    self.transport.pause_reading()
            elif type(event) is WebSocketClosed:
                self._closed(cycle, event)
        if self.core.pongs_seen != self.pongs_seen:
            self.pongs_seen = self.core.pongs_seen
            if self.timer == _Timer.PONG:
                self._schedule_ping()
        self._flush()

    def _closed(self, cycle: WebSocketCycle, event: WebSocketClosed) -> None:
        if event.failed and cycle.defer_close() and self.core.defer_failure():
            # The peer's bytes failed the connection after valid messages the app has yet to
            # answer: it answers them, then the close goes out (Autobahn 3.2-5.15 expect the
            # echo of the message before the bad frame). Bounded by the close timeout.
            self.failure = event
            self._set_timer(_Timer.CLOSE, self.settings.close_timeout)
            return
        cycle.close_pending = False
        cycle.disconnect(event.code, event.reason)

    def messages_answered(self) -> None:
        """The app asked for a message after answering those before a failure: close now."""
        failure = self.failure
        if failure is None:
            return
        self.failure = None
        self.core.release_failure()
        self._flush()
        if self.cycle is not None:
            self.cycle.disconnect(failure.code, failure.reason)

    def eof_received(self) -> bool | None:
        for event in self.core.receive_eof():
            if type(event) is WebSocketClosed and self.cycle is not None:
                self.cycle.disconnect(event.code, event.reason)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.connections.discard(self)
        self.transport = None
        self.deadline = 0.0
        if self.cycle is not None:
            closed = self.failure or self.core.closed()
            self.failure = None
            self.cycle.disconnect(*(closed.code, closed.reason) if closed else (1006, ""))
        for waiter in self.drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.drain_waiters.clear()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        waiters, self.drain_waiters = self.drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- WebSocketSink -------------------------------------------------------------------------

    def accept(self, subprotocol: str | None, headers: list[tuple[bytes, bytes]]) -> None:
        if self.transport is None:
            return
        response_headers = [
            (k.encode("latin-1"), v.encode("latin-1")) for k, v in self.handshake_headers
        ]
        if subprotocol:
            response_headers.append((b"sec-websocket-protocol", subprotocol.encode("latin-1")))
        response_headers.extend(headers)
        if self.responder is not None:
            self.responder.accept_response(response_headers)
            self._log(200, 0, response_headers)
        else:
            head = encode_response_head(101, response_headers, self.state.default_headers, b"\r\n")
            self.transport.write(head)
            self._log(101, 0, response_headers)
        self._schedule_ping()
        early, self.early = self.early, None
        if early:
            self.resume_reading()
            self.data_received(bytes(early))

    def deny(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self._write_http_response(status, headers, body)
        self._log(status, len(body), headers)

    def _log(
        self, status: int, body_bytes: int = 0, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        access_log = self.state.access_log
        if access_log is not None and self.cycle is not None:
            access_log(self.cycle.scope, status, body_bytes, self.started_at, headers or [])

    def send_message(self, text: str | None, data: bytes | None) -> None:
        core = self.core
        if not core.sending:
            return
        if text is not None:
            core.send_text(text)
            size = len(text)
        else:
            assert data is not None
            core.send_bytes(data)
            size = len(data)
        self.unflushed += size
        if self.unflushed >= _FLUSH_AT:
            self._flush()
        elif not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self.flush_scheduled = False
        self._flush()

    def close(self, code: int, reason: str) -> None:
        if self.failure is not None:
            self.messages_answered()  # the failure's close, not the app's, goes out
            return
        self.core.send_close(code, reason)
        self._flush()
        if self.transport is not None and self.timer != _Timer.CLOSE:
            self._set_timer(_Timer.CLOSE, self.settings.close_timeout)

    async def drain(self) -> None:
        if not self.writing_paused or self.transport is None:
            return
        waiter = self.loop.create_future()
        self.drain_waiters.append(waiter)
        await waiter

    def resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()

    # -- helpers -------------------------------------------------------------------------------

    def _flush(self) -> None:
        self.unflushed = 0
        data, eof = self.core.data_to_send()
        transport = self.transport
        if transport is None:
            return
        if data:
            transport.write(data)
        if eof:
            # The closing handshake is complete (or the connection failed): the server closes
            # the TCP connection first (RFC 6455 section 7.1.1).
            transport.close()

    def _write_http_response(
        self, status: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        transport = self.transport
        if transport is None:
            return
        if self.responder is not None:
            self.responder.http_response(status, headers, body)
            return
        kept = [(k, v) for k, v in headers if k.lower() not in (b"content-length", b"connection")]
        framing = b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
        try:
            head = encode_response_head(status, kept, self.state.default_headers, framing)
        except ValueError:
            logger.error("Invalid header in the app's WebSocket denial response")
            head = status_line(500) + b"content-length: 0\r\nconnection: close\r\n\r\n"
            body = b""
        transport.write(head + body)
        transport.close()

    def _set_timer(self, kind: int, seconds: float) -> None:
        self.timer = kind
        self.deadline = self.loop.time() + seconds if seconds > 0 else 0.0

    def _schedule_ping(self) -> None:
        self._set_timer(_Timer.PING, self.settings.ping_interval)

    def on_deadline(self) -> None:
        """Called by the server's sweep when ``deadline`` has passed."""
        kind = self.timer
        self.deadline = 0.0
        self.timer = _Timer.NONE
        transport = self.transport
        if transport is None:
            return
        if kind == _Timer.PING and self.core.open:
            self.core.send_ping(os.urandom(4))
            self._flush()
            self._set_timer(_Timer.PONG, self.settings.ping_timeout)
        elif kind == _Timer.PONG:
            logger.info("WebSocket keep-alive ping timed out: closing the connection")
            self.core.fail(1011, "keepalive ping timeout")
            self._flush()
            transport.abort()
        elif kind == _Timer.CLOSE:
            if self.failure is not None:
                self.messages_answered()  # the app did not come back for more: close now
                return
            transport.abort()

    def shutdown(self) -> None:
        """Graceful shutdown: close with 1001 (going away) and let the handshake finish."""
        cycle = self.cycle
        if cycle is None or cycle.phase is WSPhase.HANDSHAKE or cycle.phase is WSPhase.RESPONSE:
            if self.transport is not None:
                self.transport.close()
            return
        if self.failure is not None:
            self.messages_answered()
            return
        self.close(1001, "server shutting down")
