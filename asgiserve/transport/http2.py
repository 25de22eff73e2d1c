"""The asyncio side of an HTTP/2 connection: streams as ASGI HTTP cycles.

Theory of operation
-------------------
An :class:`~asgiserve.transport.connection.HTTP11Connection` hands its transport over when it
sees the h2c connection preface, an ``Upgrade: h2c`` request, or ALPN ``h2`` after the TLS
handshake. Every stream runs the same :class:`~asgiserve.asgi.http.HTTPCycle` as HTTP/1.1; an
:class:`H2Stream` is that cycle's :class:`~asgiserve.asgi.http.ResponseSink`.

Flow control both ways:

* inbound, request body bytes are acknowledged (WINDOW_UPDATE) as soon as they are buffered,
  unless the app is more than the cycle's high-water mark behind; then only once it reads;
* outbound, data beyond the peer's window waits on the stream, ``writing_paused`` is true,
  and the app's ``send()`` waits until WINDOW_UPDATE frames open the window again.

Writes go out once per ``data_received`` (or per app ``send``); while the transport's buffer is
over its high-water mark we stop reading, so a peer that floods PINGs or SETTINGS and never
reads the ACKs cannot grow our memory. Idle connections are closed by the server's sweep.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from time import perf_counter
from typing import TYPE_CHECKING, Any

from h2 import events as h2events
from h2.errors import ErrorCodes
from h2.exceptions import FlowControlError, FrameTooLargeError, ProtocolError, StreamClosedError
from hpack import HPACKError

from asgiserve.asgi.http import (
    HEADER_CONNECTION,
    HEADER_DATE,
    HEADER_SERVER,
    HEADER_TRANSFER_ENCODING,
    HTTPCycle,
)
from asgiserve.asgi.scope import http_scope
from asgiserve.protocols.http2 import (
    CONNECTION_PREFACE,
    FrameGuard,
    H2Request,
    ResetBudget,
    StreamError,
    goaway_frame,
    new_connection,
    parse_request,
    relax_stream_limit,
)
from asgiserve.transport.sendfile import send_file_buffered
from asgiserve.transport.state import start_task

if TYPE_CHECKING:
    from asgiserve.asgi.scope import ConnectionInfo
    from asgiserve.protocols.http11 import RequestHead
    from asgiserve.transport.http2_websocket import H2WebSocketStream
    from asgiserve.transport.state import ServerState

logger = logging.getLogger("asgiserve.error")

__all__ = ["HOP_BY_HOP", "H2Settings", "HTTP2Connection", "lower_names"]

# Extra connection-level receive window granted at start (the initial one is 64 KiB - 1).
_CONNECTION_WINDOW = 1024 * 1024
#: The name of a stream's task (what it runs, in a dump of the loop's tasks).
_STREAM_TASK = "asgiserve: HTTP/2 stream"
HOP_BY_HOP = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)


class H2Settings:
    __slots__ = (
        "initial_window_size",
        "max_concurrent_streams",
        "max_header_list_size",
        "max_resets",
    )

    def __init__(
        self,
        *,
        max_concurrent_streams: int = 100,
        max_header_list_size: int = 65536,
        initial_window_size: int = 262144,
        max_resets: int = 200,
    ) -> None:
        self.max_concurrent_streams = max_concurrent_streams
        self.max_header_list_size = max_header_list_size
        self.initial_window_size = initial_window_size
        self.max_resets = max_resets


class H2Stream:
    """One request/response exchange; the HTTP cycle's sink."""

    __slots__ = (
        "connection",
        "cycle",
        "ended",
        "pending",
        "pending_end",
        "started_at",
        "stream_id",
        "unacked",
        "waiters",
        "websocket",
    )

    def __init__(self, connection: HTTP2Connection, stream_id: int) -> None:
        self.connection = connection
        self.stream_id = stream_id
        self.cycle: HTTPCycle | None = None
        #: Set instead of ``cycle`` when the stream carries a WebSocket (RFC 8441).
        self.websocket: H2WebSocketStream | None = None
        self.started_at = perf_counter()
        #: Response bytes waiting for the peer's flow-control window, and whether the stream
        #: ends after them.
        self.pending = b""
        self.pending_end = False
        self.ended = False
        #: Request body bytes buffered for the app but not yet acknowledged to the peer.
        self.unacked = 0
        self.waiters: list[asyncio.Future[None]] = []

    # -- ResponseSink ----------------------------------------------------------------------------

    @property
    def writing_paused(self) -> bool:
        return bool(self.pending) or self.connection.writing_paused

    def send_continue(self) -> None:
        self.connection.send_headers(self.stream_id, [(b":status", b"100")], end_stream=False)

    def send_informational(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.connection.send_headers(
            self.stream_id, [(b":status", b"%d" % status), *lower_names(headers)], end_stream=False
        )

    def send_head(self, cycle: HTTPCycle, body: bytes, more_body: bool) -> None:
        connection = self.connection
        headers = [(b":status", b"%d" % cycle.status)]
        flags = cycle.header_flags
        defaults = connection.default_headers()
        if flags & (HEADER_SERVER | HEADER_DATE):
            skip = {b"server"} if flags & HEADER_SERVER else set()
            if flags & HEADER_DATE:
                skip.add(b"date")
            defaults = [(n, v) for n, v in defaults if n not in skip]
        headers += defaults
        app_headers = cycle.response_headers
        if flags & (HEADER_CONNECTION | HEADER_TRANSFER_ENCODING):
            # Hop-by-hop headers have no meaning in HTTP/2 (RFC 9113 section 8.2.2).
            headers += [(n, v) for n, v in lower_names(app_headers) if n not in HOP_BY_HOP]
        else:
            headers += lower_names(app_headers)
        if cycle.content_length is None and not more_body and cycle.body_allowed:
            headers.append((b"content-length", b"%d" % len(body)))
        end_now = not more_body and not body
        connection.send_headers(self.stream_id, headers, end_stream=end_now)
        if end_now:
            self.ended = True
        elif body or not more_body:
            self._send_data(body, end=not more_body)
        connection.flush()

    def send_body(self, body: bytes, more_body: bool) -> None:
        if body or not more_body:
            self._send_data(body, end=not more_body)
            self.connection.flush()

    def send_trailers(self, headers: list[tuple[bytes, bytes]]) -> None:
        if self.pending:
            self.pending_end = False
            self.connection.queue_trailers(self, list(lower_names(headers)))
            return
        self.connection.send_headers(self.stream_id, list(lower_names(headers)), end_stream=True)
        self.ended = True
        self.connection.flush()

    async def send_file(self, fd: int, offset: int, count: int, more_body: bool) -> None:
        # HTTP/2 frames the body itself (DATA frames, flow-control windows): the file is
        # read in a worker thread, in chunks, and sent as ordinary body parts.
        await send_file_buffered(self, fd, offset, count, more_body)

    async def drain(self) -> None:
        while self.writing_paused and not self.ended and self.connection.transport is not None:
            if self.cycle is not None and self.cycle.disconnected:
                return
            waiter = self.connection.loop.create_future()
            self.waiters.append(waiter)
            await waiter

    def resume_body(self) -> None:
        if self.unacked:
            self.connection.acknowledge(self.stream_id, self.unacked)
            self.unacked = 0

    def abort(self) -> None:
        if not self.ended:
            self.ended = True
            self.pending = b""
            self.connection.reset(self.stream_id, ErrorCodes.INTERNAL_ERROR)

    # -- flow control ----------------------------------------------------------------------------

    def _send_data(self, data: bytes, *, end: bool) -> None:
        if self.ended:
            return
        if self.pending:
            self.pending += data
            self.pending_end = end
            return
        self.pending = data
        self.pending_end = end
        self.push()

    def push(self) -> None:
        """Send what the peer's window allows."""
        connection = self.connection
        h2 = connection.h2
        stream_id = self.stream_id
        data = self.pending
        try:
            while data:
                size = min(
                    h2.local_flow_control_window(stream_id), h2.max_outbound_frame_size, len(data)
                )
                if size <= 0:
                    break
                last = size == len(data)
                h2.send_data(stream_id, data[:size], end_stream=last and self.pending_end)
                data = data[size:]
                if last and self.pending_end:
                    self.ended = True
            if not data and self.pending_end and not self.ended:
                h2.end_stream(stream_id)
                self.ended = True
        except (StreamClosedError, ProtocolError):
            data = b""
            self.ended = True
        self.pending = data
        if not data:
            self.wake()

    def wake(self) -> None:
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        if self.websocket is not None:
            self.websocket.drained()


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def lower_names(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(n.lower(), v) for n, v in headers]


class HTTP2Connection(asyncio.Protocol):
    def __init__(
        self,
        state: ServerState,
        settings: H2Settings,
        transport: asyncio.Transport,
        info: ConnectionInfo,
    ) -> None:
        self.state = state
        self.settings = settings
        self.loop = state.loop
        self.transport: asyncio.Transport | None = transport
        self.info = info
        #: RFC 8441: WebSockets over HTTP/2 whenever the server runs WebSockets.
        self.websockets = state.websocket is not None
        self.h2 = new_connection(
            max_concurrent_streams=settings.max_concurrent_streams,
            max_header_list_size=settings.max_header_list_size,
            initial_window_size=settings.initial_window_size,
            enable_connect_protocol=self.websockets,
        )
        self.streams: dict[int, H2Stream] = {}
        self.guard = FrameGuard(max_header_list_size=settings.max_header_list_size)
        self.resets = ResetBudget(settings.max_resets)
        self.writing_paused = False
        self.reading_paused = False
        self.closing = False
        self.goaway_sent = False
        self.deadline = 0.0
        self.preface_checked = False
        self.flush_scheduled = False
        self._defaults_source = b""
        self._defaults: list[tuple[bytes, bytes]] = []
        self.trailers: dict[int, list[tuple[bytes, bytes]]] = {}

    def start(self, data: bytes = b"", upgrade: tuple[RequestHead, bytes] | None = None) -> None:
        state = self.state
        state.connections.add(self)
        h2 = self.h2
        if upgrade is not None:
            head, settings_header = upgrade
            h2.initiate_upgrade_connection(settings_header)
        else:
            h2.initiate_connection()
        relax_stream_limit(
            h2,
            initial_window_size=self.settings.initial_window_size,
            max_header_list_size=self.settings.max_header_list_size,
            enable_connect_protocol=self.websockets,
        )
        h2.increment_flow_control_window(_CONNECTION_WINDOW)
        self.flush()
        if upgrade is not None:
            # RFC 7540 section 3.2: the upgrade request becomes stream 1, half-closed (remote).
            head = upgrade[0]
            self._start_stream(1, head.method, head.path, head.query, head.headers, ended=True)
        self._idle_check()
        if data:
            self.data_received(data)

    # -- asyncio.Protocol --------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if not self.preface_checked:
            self.preface_checked = True
            # RFC 9113 section 3.4: the client preface is followed by a SETTINGS frame.
            if data[:24] == CONNECTION_PREFACE and len(data) > 27 and data[27] != 0x4:
                self._fail(ErrorCodes.PROTOCOL_ERROR)
                return
        code = self.guard.feed(data)
        if code is not None:
            logger.debug("HTTP/2 connection error %d found by the frame guard", code)
            self._fail(code)
            return
        try:
            events = self.h2.receive_data(data)
        except (ProtocolError, FrameTooLargeError, FlowControlError, StreamClosedError) as exc:
            logger.debug("HTTP/2 protocol error: %s", exc)
            if isinstance(exc.__cause__, HPACKError):
                # h2 reports a bad header block as PROTOCOL_ERROR; RFC 9113 section 4.3 says
                # COMPRESSION_ERROR. Replace its GOAWAY with ours.
                self.h2.data_to_send()
                if self.transport is not None:
                    self.transport.write(
                        goaway_frame(
                            self.h2.highest_inbound_stream_id, ErrorCodes.COMPRESSION_ERROR
                        )
                    )
            else:
                self.write_now()  # h2 has queued the GOAWAY with the right error code
            self._close_transport()
            return
        for event in events:
            self._dispatch(event)
        self.write_now()

    def _dispatch(self, event: Any) -> None:
        kind = type(event)
        if kind is h2events.RequestReceived:
            self._on_request(event)
        elif kind is h2events.DataReceived:
            stream = self.streams.get(event.stream_id)
            if stream is not None and stream.websocket is not None:
                stream.websocket.data_received(event.data, event.flow_controlled_length)
                return
            if stream is None or stream.cycle is None:
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                return
            if stream.cycle.feed_body(event.data):
                stream.unacked += event.flow_controlled_length
            else:
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif kind is h2events.StreamEnded:
            stream = self.streams.get(event.stream_id)
            if stream is not None and stream.cycle is not None:
                stream.cycle.end_body()
            elif stream is not None and stream.websocket is not None:
                stream.websocket.eof_received()
        elif kind is h2events.StreamReset:
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None:
                stream.ended = True
                stream.pending = b""
                if stream.cycle is not None:
                    stream.cycle.disconnect()
                if stream.websocket is not None:
                    stream.websocket.connection_lost()
                stream.wake()
                if self.resets.spend(self.loop.time()):
                    self._enhance_your_calm()
            self._idle_check()
        elif kind is h2events.WindowUpdated or kind is h2events.RemoteSettingsChanged:
            self._push_all()
        elif kind is h2events.ConnectionTerminated:
            self._close_transport()
        elif kind is h2events.TrailersReceived:
            stream = self.streams.get(event.stream_id)
            if stream is not None and stream.cycle is not None and event.stream_ended:
                stream.cycle.end_body()
        # PING and SETTINGS are acknowledged by h2 itself; PRIORITY is ignored.

    def _on_request(self, event: Any) -> None:
        stream_id = event.stream_id
        if self.goaway_sent or len(self.streams) >= self.settings.max_concurrent_streams:
            # RFC 9113 section 5.1.2: refuse streams beyond the limit, keep the connection.
            self.h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            if self.resets.spend(self.loop.time()):
                self._enhance_your_calm()
            return
        try:
            request = parse_request(event.headers, connect_protocol=self.websockets)
        except StreamError as exc:
            logger.debug("HTTP/2 stream %d reset: %s", stream_id, exc.reason)
            self.h2.reset_stream(stream_id, exc.code)
            return
        if request.protocol is not None:
            self._start_websocket(stream_id, request)
            return
        ended = event.stream_ended is not None
        self._start_stream(
            stream_id, request.method, request.path, request.query, request.headers, ended=ended
        )

    def _start_stream(
        self,
        stream_id: int,
        method: str,
        path: bytes,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        *,
        ended: bool,
    ) -> None:
        state = self.state
        state.total_requests += 1
        stream = H2Stream(self, stream_id)
        self.streams[stream_id] = stream
        scope = http_scope(self.info, method, "2", path, query, headers)
        scope["extensions"]["http.response.trailers"] = {}
        scope["extensions"]["http.response.early_hint"] = {}
        cycle = HTTPCycle(
            scope,
            stream,
            expect_continue=False,
            has_body=not ended,
            on_complete=self._on_complete,
            body_limit=state.limit_request_body,
            declared_length=_content_length(headers),
        )
        stream.cycle = cycle
        self.deadline = 0.0
        task = start_task(self.loop, cycle.run(state.app), contextvars.copy_context(), _STREAM_TASK)
        cycle.task = task
        cycle.registry = tasks = state.tasks
        tasks.add(task)
        limit = state.limit_max_requests
        if limit is not None and state.total_requests >= limit and state.on_max_requests:
            state.on_max_requests()

    def _start_websocket(self, stream_id: int, request: H2Request) -> None:
        """RFC 8441: the stream carries a WebSocket, run as over HTTP/1.1."""
        from asgiserve.transport.http2_websocket import H2WebSocketStream
        from asgiserve.transport.websocket import WebSocketConnection

        settings = self.state.websocket
        assert settings is not None  # SETTINGS_ENABLE_CONNECT_PROTOCOL is only sent then
        self.state.total_requests += 1
        stream = H2Stream(self, stream_id)
        self.streams[stream_id] = stream
        self.deadline = 0.0
        carrier = stream.websocket = H2WebSocketStream(self, stream)
        websocket = carrier.protocol = WebSocketConnection(
            self.state, settings, carrier, responder=carrier
        )
        websocket.start_request(request.path, request.query, request.headers, self.info, http2=True)

    def forget(self, stream: H2Stream) -> None:
        """A WebSocket stream is over on our side: it no longer counts as in flight."""
        if self.streams.get(stream.stream_id) is stream:
            del self.streams[stream.stream_id]
            self._idle_check()

    def _on_complete(self, cycle: HTTPCycle) -> None:
        sink = cycle.sink
        if not isinstance(sink, H2Stream):
            return
        stream = sink
        access_log = self.state.access_log
        if access_log is not None:
            access_log(
                cycle.scope,
                cycle.status,
                cycle.bytes_sent,
                stream.started_at,
                cycle.response_headers,
            )
        if not stream.pending:
            self.streams.pop(stream.stream_id, None)
            self._idle_check()
        if not stream.ended and cycle.disconnected:
            stream.ended = True

    # -- writing ---------------------------------------------------------------------------------

    def default_headers(self) -> list[tuple[bytes, bytes]]:
        raw = self.state.default_headers
        if raw is not self._defaults_source:
            self._defaults_source = raw
            self._defaults = [
                (name.lower(), value.strip())
                for line in raw.split(b"\r\n")
                if line
                for name, _, value in (line.partition(b":"),)
            ]
        return self._defaults

    def send_headers(
        self, stream_id: int, headers: list[tuple[bytes, bytes]], *, end_stream: bool
    ) -> None:
        try:
            self.h2.send_headers(stream_id, headers, end_stream=end_stream)
        except (StreamClosedError, ProtocolError) as exc:
            logger.debug("HTTP/2 stream %d: cannot send headers: %s", stream_id, exc)
        self.flush()

    def queue_trailers(self, stream: H2Stream, headers: list[tuple[bytes, bytes]]) -> None:
        self.trailers[stream.stream_id] = headers

    def acknowledge(self, stream_id: int, size: int) -> None:
        try:
            self.h2.acknowledge_received_data(size, stream_id)
        except (StreamClosedError, ProtocolError):
            pass
        self.flush()

    def reset(self, stream_id: int, code: int) -> None:
        try:
            self.h2.reset_stream(stream_id, code)
        except (StreamClosedError, ProtocolError):
            pass
        self.streams.pop(stream_id, None)
        self.flush()
        self._idle_check()

    def flush(self) -> None:
        """Write what h2 has queued, once per loop iteration: the frames of every stream
        that answered meanwhile leave in one write (one syscall) rather than one each."""
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.write_now)

    def write_now(self) -> None:
        self.flush_scheduled = False
        data = self.h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def _push_all(self) -> None:
        for stream in list(self.streams.values()):
            if stream.pending:
                stream.push()
                if not stream.pending:
                    trailers = self.trailers.pop(stream.stream_id, None)
                    if trailers is not None and not stream.ended:
                        self.send_headers(stream.stream_id, trailers, end_stream=True)
                        stream.ended = True
                    cycle = stream.cycle
                    if cycle is not None and cycle.phase == cycle.phase.DONE:
                        self.streams.pop(stream.stream_id, None)
        self._idle_check()

    # -- flow control of the transport, limits, shutdown -----------------------------------------

    def pause_writing(self) -> None:
        self.writing_paused = True
        # A peer that does not read what we send (PING/SETTINGS ACKs included) gets no more of
        # our attention until it does: bounded memory under control-frame floods.
        if self.transport is not None and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.transport is not None and self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()
        for stream in list(self.streams.values()):
            stream.wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.connections.discard(self)
        self.transport = None
        self.closing = True
        self.deadline = 0.0
        # A copy: each stream's completion removes it from the dict.
        for stream in list(self.streams.values()):
            stream.ended = True
            if stream.cycle is not None:
                stream.cycle.disconnect()
            if stream.websocket is not None:
                stream.websocket.connection_lost()
            stream.wake()
        self.streams.clear()

    def _enhance_your_calm(self) -> None:
        logger.warning("HTTP/2 client resets too many streams: closing the connection")
        self._fail(ErrorCodes.ENHANCE_YOUR_CALM)

    def _fail(self, code: int) -> None:
        try:
            self.h2.close_connection(error_code=code)
        except ProtocolError:
            pass
        self._close_transport()

    def _close_transport(self) -> None:
        self.write_now()
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def _idle_check(self) -> None:
        if self.streams or self.closing:
            return
        if self.goaway_sent:
            self._close_transport()
            return
        timeout = self.state.keep_alive_timeout
        self.deadline = self.loop.time() + timeout if timeout > 0 else 0.0

    def on_deadline(self) -> None:
        self.deadline = 0.0
        if not self.streams:
            self.shutdown()

    def shutdown(self) -> None:
        """Graceful: GOAWAY with the last stream id; in-flight streams finish, then close."""
        if self.closing:
            return
        if not self.goaway_sent:
            self.goaway_sent = True
            # Not h2's close_connection(): its state machine would then refuse to send the
            # responses of the streams in flight, which a graceful GOAWAY lets finish (RFC 9113
            # section 6.8). New streams are refused from here on (_on_request).
            self.write_now()
            if self.transport is not None:
                self.transport.write(
                    goaway_frame(self.h2.highest_inbound_stream_id, ErrorCodes.NO_ERROR)
                )
        if not self.streams:
            self._close_transport()
