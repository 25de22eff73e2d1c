"""The server: sockets, lifespan, signals, the once-a-second tick, graceful shutdown.

``await Server(config).serve()`` runs inside an existing event loop (embedding);
:func:`asgiserve.run` makes the loop and returns the process exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import gc
import logging
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

from asgiserve._compiled import build_description, ignore_throw_warning
from asgiserve.asgi.lifespan import Lifespan, LifespanFailure
from asgiserve.config import Config
from asgiserve.loading import (
    LoadError,
    http2_available,
    load_app,
    load_env_file,
    load_tls,
    parser_factory,
    resolve_http,
    resolve_loop,
    resolve_ws,
    wrap_app,
)
from asgiserve.logging import TRACE, configure_logging_for, logging_configured, make_access_log
from asgiserve.transport.binding import (
    BindError,
    bind_listeners,
    describe,
    plan_listeners,
    release_listeners,
)
from asgiserve.transport.connection import HTTP11Connection
from asgiserve.transport.state import ServerState

if TYPE_CHECKING:
    import ssl
    from collections.abc import Sequence

    from asgiserve.asgi.types import ASGIApp
    from asgiserve.protocols.http11 import RequestHead, RequestSink
    from asgiserve.transport.binding import Listener
    from asgiserve.transport.state import ParserFactory, RequestParser

logger = logging.getLogger("asgiserve.error")

__all__ = ["EXIT_STARTUP_FAILURE", "Server", "StartupFailure"]

#: Exit status when the server could not start (bind failed, lifespan startup failed, ...).
EXIT_STARTUP_FAILURE = 3

#: Seconds idle keep-alive connections stay open on shutdown, so a request already on its way
#: is answered (with ``connection: close``) rather than cut off.
IDLE_CONNECTION_GRACE = 0.5


class StartupFailure(Exception):
    """The server could not start; the message says why in one line."""

    def __init__(self, message: str, exit_code: int = EXIT_STARTUP_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Server:
    """One server process.

    A worker under a supervisor (:mod:`asgiserve.supervisors`) passes two hooks:
    ``on_started`` runs on the event loop once the listeners accept (the supervisor announces
    the listeners, so the worker does not print its own "running on" lines), and
    ``on_max_requests`` replaces the default exit when ``--limit-max-requests`` is reached, so
    that the supervisor can start a replacement before this worker drains.
    """

    def __init__(
        self,
        config: Config,
        *,
        on_started: Callable[[], None] | None = None,
        on_max_requests: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self._on_started = on_started
        self._on_max_requests_hook = on_max_requests
        limits = config.limits
        # The jitter is drawn once per server: workers started together (or the replicas of a
        # deployment) then reach their limits at different moments, not all at once.
        self._max_requests = (
            None
            if limits.max_requests is None
            else limits.max_requests + random.randint(0, limits.max_requests_jitter)  # noqa: S311
        )
        self.should_exit = asyncio.Event() if _has_running_loop() else None
        self.force_exit = False
        self.started = False
        self.state: ServerState | None = None
        self.sockets: list[socket.socket] = []
        #: asyncio servers, or PROXY protocol listeners (close() and wait_closed() alike).
        self._servers: list[Any] = []
        self._tick_handle: asyncio.TimerHandle | None = None
        self._signals: list[int] = []

    # -- public --------------------------------------------------------------------------------

    async def serve(self, sockets: Sequence[socket.socket] | None = None) -> None:
        """Run until told to exit; raise :class:`StartupFailure` if startup fails."""
        if self.should_exit is None:
            self.should_exit = asyncio.Event()
        setup_logging(self.config)
        ignore_throw_warning()
        self._install_signal_handlers()
        try:
            await self._serve(sockets)
        finally:
            self._remove_signal_handlers()

    def exit(self, *, force: bool = False) -> None:
        """Ask the server to shut down gracefully (``force``: without waiting)."""
        self.force_exit = self.force_exit or force
        if self.should_exit is not None:
            self.should_exit.set()

    # -- startup -------------------------------------------------------------------------------

    async def _serve(self, sockets: Sequence[socket.socket] | None) -> None:
        config = self.config
        loop = asyncio.get_running_loop()
        try:
            if config.env_file:
                load_env_file(config.env_file)
            app = wrap_app(load_app(config), config)
            tls = load_tls(config.tls, http2=http2_available(config.http2))
            ws_enabled = resolve_ws(config.ws) == "websockets"
            factory = parser_factory(
                config.http,
                max_request_line=config.limits.request_line,
                max_head=config.limits.request_head,
                max_fields=config.limits.request_fields,
                max_chunk_line=config.limits.chunk_line,
            )
            if logger.isEnabledFor(TRACE):
                factory = _traced_parser_factory(factory)
        except LoadError as exc:
            raise StartupFailure(str(exc), exit_code=1) from exc
        except Exception as exc:
            # The app's own module failed to import: the user needs the whole traceback.
            logger.exception("Error loading the app %r", config.app)
            raise StartupFailure(f"could not load the app: {exc!r}", exit_code=1) from exc
        own_sockets = sockets is None
        try:
            self.sockets = list(sockets) if sockets is not None else self._bind()
        except BindError as exc:
            raise StartupFailure(str(exc)) from exc

        lifespan_state: dict[str, Any] = {}
        # With --static there is no app of the user's to wait for: the folder app's lifespan
        # (which closes the files it keeps open) runs without the "Waiting for ..." lines.
        lifespan = Lifespan(app, config.lifespan, lifespan_state, announce=config.static is None)
        try:
            try:
                await lifespan.startup()
            except LifespanFailure as exc:
                raise StartupFailure(f"Application startup failed: {exc}") from exc
            state = self.state = self._make_state(app, loop, factory, lifespan_state, ws_enabled)
            if config.gc_freeze:
                # What is alive now (the app, its modules, the server) lives as long as the
                # process: keep it out of the collector's way. Under load the requests in flight
                # are promoted to the oldest generation, which is then collected every few
                # seconds; scanning ~30k long-lived objects each time took 20 ms, the whole of
                # the p99 latency at 256 connections.
                gc.collect()
                gc.freeze()
            if tls is not None:
                state.tls = tls[1]
            self._tick()
            ssl_context = tls[0] if tls is not None else None
            for sock in self.sockets:
                if config.proxy_protocol != "off":
                    self._servers.append(self._listen_proxy_protocol(loop, sock, ssl_context))
                    continue
                server = await loop.create_server(
                    self._protocol_factory(),
                    sock=sock,
                    backlog=config.backlog,
                    # asyncio and uvloop both drop a client that connects and never completes
                    # its handshake after this long.
                    **({} if ssl_context is None else self._ssl_options(ssl_context)),
                )
                self._servers.append(server)
            self._log_started(loop)
            self.started = True
            if self._on_started is not None:
                self._on_started()
            assert self.should_exit is not None
            await self.should_exit.wait()
            await self._shutdown()
            await lifespan.shutdown()
        finally:
            if self._tick_handle is not None:
                self._tick_handle.cancel()
            if own_sockets:
                self._close_sockets()

    def _ssl_options(self, ssl_context: ssl.SSLContext) -> dict[str, Any]:
        return {"ssl": ssl_context, "ssl_handshake_timeout": self.config.timeouts.tls_handshake}

    def _listen_proxy_protocol(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        ssl_context: ssl.SSLContext | None,
    ) -> Any:
        """A listener that reads the PROXY header before TLS and HTTP (--proxy-protocol)."""
        from asgiserve.transport.proxy_protocol import ProxyProtocolListener

        config, state = self.config, self.state
        assert state is not None and config.proxy_protocol != "off"
        listener = ProxyProtocolListener(
            loop,
            sock,
            # Not traced: the listener sets the PROXY addresses on the connection itself.
            self._connection_factory(),
            mode=config.proxy_protocol,
            timeout=config.timeouts.proxy_protocol,
            ssl=ssl_context,
            ssl_handshake_timeout=config.timeouts.tls_handshake,
            backlog=config.backlog,
        )
        listener.start()
        return listener

    def _connection_factory(self) -> Callable[[], HTTP11Connection]:
        """What makes each connection's protocol: an HTTP/1.1 connection (which switches to
        WebSocket or HTTP/2 itself); with ``reset_contextvars``, made in an empty context,
        which its requests then copy."""
        state = self.state
        assert state is not None
        if self.config.reset_contextvars:
            return functools.partial(_in_empty_context, state)
        return functools.partial(HTTP11Connection, state)

    def _protocol_factory(self) -> Callable[[], asyncio.Protocol]:
        """:meth:`_connection_factory`; at trace level, wrapped to log opening and closing."""
        factory = self._connection_factory()
        if logger.isEnabledFor(TRACE):
            return functools.partial(TracedProtocol, factory)
        return factory

    def _listeners(self) -> list[Listener]:
        config = self.config
        return plan_listeners(
            host=config.host, port=config.port, uds=config.uds, fd=config.fd, binds=config.bind
        )

    def _bind(self) -> list[socket.socket]:
        return bind_listeners(self._listeners())

    def _make_state(
        self,
        app: ASGIApp,
        loop: asyncio.AbstractEventLoop,
        factory: Any,
        lifespan_state: dict[str, Any],
        ws_enabled: bool,
    ) -> ServerState:
        config = self.config
        websocket = None
        if ws_enabled:
            from asgiserve.transport.websocket import WebSocketSettings

            ws = config.websocket
            websocket = WebSocketSettings(
                max_size=ws.max_size,
                max_queue=ws.max_queue,
                ping_interval=ws.ping_interval,
                ping_timeout=ws.ping_timeout,
                close_timeout=ws.close_timeout,
                per_message_deflate=ws.per_message_deflate,
            )
        files = rewrite_scope = None
        if config.static is not None or config.mounts:
            # Folders the server serves itself (loading.py built their apps): plain GETs of
            # files already served are answered without the app (transport/connection.py).
            # Never an attribute of the user's app: served_files knows our own classes only.
            from asgiserve.apps.mounts import served_files
            from asgiserve.middleware.proxy_headers import ProxyHeadersMiddleware

            inner = app
            if isinstance(inner, ProxyHeadersMiddleware):
                rewrite_scope, inner = inner.rewrite, inner.app
            files = served_files(inner)
        return ServerState(
            app=app,
            loop=loop,
            parser_factory=factory,
            keep_alive_timeout=config.timeouts.keep_alive,
            head_timeout=config.timeouts.request_head,
            body_timeout=config.timeouts.request_body,
            write_timeout=config.timeouts.response_write,
            root_path=config.root_path,
            lifespan_state=lifespan_state,
            access_log=(
                make_access_log(time.perf_counter, config.access_log_format)
                if config.access_log
                else None
            ),
            limit_request_body=config.limits.request_body,
            limit_discard_body=config.limits.discard_body,
            limit_concurrency=config.limits.concurrency,
            limit_max_requests=self._max_requests,
            on_max_requests=self._on_max_requests,
            websocket=websocket,
            http2=self._h2_settings(),
            files=files,
            rewrite_scope=rewrite_scope,
        )

    def _h2_settings(self) -> Any:
        if not http2_available(self.config.http2):
            return None
        from asgiserve.transport.http2 import H2Settings

        h2 = self.config.h2
        return H2Settings(
            max_concurrent_streams=h2.max_concurrent_streams,
            max_header_list_size=h2.max_header_list_size,
            initial_window_size=h2.initial_window_size,
            max_resets=h2.max_resets,
        )

    def _log_started(self, loop: asyncio.AbstractEventLoop) -> None:
        loop_name = "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
        http = resolve_http(self.config.http)
        ws = resolve_ws(self.config.ws)
        if http2_available(self.config.http2):
            http += "+h2"
        elif self.config.http2 and not _h2_notice_logged:
            # Once per process: HTTP/2 is on by default, but the h2 package is an extra. An h2c
            # request then gets a 505 from the HTTP/1.1 parser.
            _h2_notice_logged.append(True)
            logger.info(
                "HTTP/2 is off: it needs the h2 package (install the http2 extra; from a clone: "
                "pip install -e '.[http2]'). --no-http2 silences this line."
            )
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("Hot path: %s", build_description())
        if self._on_started is not None:
            # A supervised worker: the supervisor announces the listeners, once for all workers.
            logger.info(
                "Worker %d serving (loop: %s, http: %s, ws: %s)", os.getpid(), loop_name, http, ws
            )
            return
        for sock in self.sockets:
            logger.info(
                "asgiserve running on %s (loop: %s, http: %s, ws: %s, pid: %d)"
                " - press CTRL+C to quit",
                describe(sock, "https" if self.config.tls.enabled else "http"),
                loop_name,
                http,
                ws,
                os.getpid(),
            )

    def _on_max_requests(self) -> None:
        if self._on_max_requests_hook is not None:
            self._on_max_requests_hook()
        elif self.should_exit is not None and not self.should_exit.is_set():
            logger.warning(
                "Maximum request limit of %d reached: shutting down.", self._max_requests
            )
            self.exit()

    # -- the tick ------------------------------------------------------------------------------

    def _tick(self) -> None:
        """Once a second: refresh the date header, enforce connection deadlines."""
        state = self.state
        assert state is not None
        state.default_headers = self._default_headers()
        state.sweep_timeouts()
        loop = state.loop
        # Fire just after the next wall-clock second so the Date header is never a second stale.
        delay = 1.0 - (loop.time() % 1.0) + 0.001
        self._tick_handle = loop.call_later(delay, self._tick)

    def _default_headers(self) -> bytes:
        config = self.config
        lines: list[str] = []
        if config.server_header:
            lines.append("server: asgiserve\r\n")
        if config.date_header:
            lines.append(f"date: {formatdate(usegmt=True)}\r\n")
        lines.extend(f"{name}: {value}\r\n" for name, value in config.headers)
        return "".join(lines).encode("latin-1")

    # -- shutdown ------------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        state = self.state
        assert state is not None
        logger.info("Shutting down")
        for server in self._servers:
            server.close()
        state.draining = True
        timeout = self.config.timeouts.graceful_shutdown
        loop = state.loop
        deadline = loop.time() + timeout
        # A keep-alive client may be sending its next request on an idle connection right now;
        # closing under it would fail that request (a client cannot tell whether it was
        # processed). For a moment, such a request is still answered, with "connection: close"
        # (``draining``), before idle connections are closed. Under a supervisor, this is what
        # lets a busy client through a rolling restart without a single failed request.
        grace = loop.time() + min(IDLE_CONNECTION_GRACE, timeout)
        while state.connections and loop.time() < grace and not self.force_exit:
            await asyncio.sleep(0.02)
        for connection in list(state.connections):
            connection.shutdown()
        if (state.connections or state.tasks) and not self.force_exit:
            logger.info(
                "Waiting for %d connection(s) and %d request(s) to finish (up to %gs).",
                len(state.connections),
                len(state.tasks),
                timeout,
            )
        while (state.connections or state.tasks) and not self.force_exit:
            if loop.time() >= deadline:
                logger.warning("Graceful shutdown timed out: cancelling requests in flight.")
                break
            await asyncio.sleep(0.05)
        for task in list(state.tasks):
            task.cancel()
        for connection in list(state.connections):
            if connection.transport is not None:
                connection.transport.abort()
        if state.tasks:
            await asyncio.wait(list(state.tasks), timeout=1.0)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)

    def _close_sockets(self) -> None:
        release_listeners(self.sockets, self._listeners())

    # -- signals -------------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed in the main thread
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self._on_signal, sig)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - not on Unix
                continue
            self._signals.append(sig)

    def _remove_signal_handlers(self) -> None:
        if not self._signals:
            return
        loop = asyncio.get_running_loop()
        for sig in self._signals:
            loop.remove_signal_handler(sig)
        self._signals.clear()

    def _on_signal(self, sig: int) -> None:
        if self.should_exit is not None and self.should_exit.is_set():
            if sig == signal.SIGINT:
                logger.warning("Second interrupt: exiting without waiting.")
                self.exit(force=True)
            return
        logger.info("Received %s: shutting down gracefully.", signal.Signals(sig).name)
        self.exit()


_h2_notice_logged: list[bool] = []


def setup_logging(config: Config) -> None:
    """Set up logging from ``config`` unless this process already has (the CLI, ``run()``, a
    worker), or the program that embeds the server configured logging itself, which is then
    left exactly as it is."""
    if not logging_configured():
        configure_logging_for(config)


def _in_empty_context(state: ServerState) -> HTTP11Connection:
    return contextvars.Context().run(HTTP11Connection, state)


def _traced_parser_factory(factory: ParserFactory) -> ParserFactory:
    """At ``--log-level trace``: parsers that report to a :class:`TracedSink` in front of the
    connection, so that parser events are logged without a check on the untraced path."""

    def make(sink: RequestSink) -> RequestParser:
        return factory(TracedSink(sink))

    return make


class TracedSink:
    """Logs what the parser reports (request heads, body bytes, ends, upgrades), then passes it
    on to the connection."""

    def __init__(self, sink: RequestSink) -> None:
        self.sink = sink

    def on_request(self, head: RequestHead) -> bool | None:
        logger.log(
            TRACE,
            "parser: request head %s %s HTTP/%s (%d fields, %s)",
            head.method,
            head.target.decode("latin-1"),
            head.http_version,
            len(head.headers),
            "chunked body"
            if head.chunked
            else f"{head.content_length} body bytes"
            if head.content_length
            else "no body",
        )
        return self.sink.on_request(head)

    def on_body(self, data: bytes) -> None:
        logger.log(TRACE, "parser: %d body bytes", len(data))
        self.sink.on_body(data)

    def on_request_end(self) -> None:
        logger.log(TRACE, "parser: request complete")
        self.sink.on_request_end()

    def on_upgrade(self, rest: bytes) -> None:
        logger.log(TRACE, "parser: protocol switch (%d bytes after the head)", len(rest))
        self.sink.on_upgrade(rest)


class TracedProtocol(asyncio.Protocol):
    """At ``--log-level trace``: logs a connection's opening and closing around the protocol
    that serves it, and its switch to another protocol (WebSocket, HTTP/2)."""

    def __init__(self, make: Callable[[], asyncio.Protocol]) -> None:
        self.inner = make()
        self.peer = "-"
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "-")
        logger.log(TRACE, "%s - connection made", self.peer)
        self.inner.connection_made(transport)
        self._log_switch()  # ALPN h2 switches at once

    def connection_lost(self, exc: Exception | None) -> None:
        logger.log(TRACE, "%s - connection lost%s", self.peer, f" ({exc})" if exc else "")
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)
        self._log_switch()

    def _log_switch(self) -> None:
        """After the protocol handed the transport to another one, wrap that one instead, so
        that its connection's closing is logged too."""
        transport = self.transport
        if transport is None:
            return
        current = transport.get_protocol()
        if current is not self:
            logger.log(TRACE, "%s - connection switched to %s", self.peer, type(current).__name__)
            if isinstance(current, asyncio.Protocol):
                self.inner = current
                transport.set_protocol(self)
            else:
                self.transport = None  # not ours to wrap: its closing goes unlogged

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


def _has_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def run_server(
    config: Config,
    *,
    sockets: Sequence[socket.socket] | None = None,
    on_started: Callable[[], None] | None = None,
    on_max_requests: Callable[[], None] | None = None,
) -> int:
    """Run a server in a new event loop until it exits; return the process exit code.

    A worker passes the sockets its supervisor bound, and the hooks described on :class:`Server`.
    """
    loop_choice = resolve_loop(config.loop)
    from asgiserve.loading import new_event_loop

    loop = new_event_loop(loop_choice)
    server = Server(config, on_started=on_started, on_max_requests=on_max_requests)
    try:
        loop.run_until_complete(server.serve(sockets))
    except StartupFailure as exc:
        debug = logger.isEnabledFor(logging.DEBUG)
        logger.error("%s", exc, exc_info=exc.__cause__ if debug else None)
        return exc.exit_code
    except KeyboardInterrupt:  # pragma: no cover - only without signal handlers
        return 1
    finally:
        with contextlib.suppress(Exception):
            loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    return 0
