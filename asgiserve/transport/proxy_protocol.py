"""Listeners that read a PROXY protocol header before TLS and HTTP (``--proxy-protocol``).

Theory of operation
-------------------
The header comes first on the connection, before the TLS handshake. The obvious design (an
``asyncio.Protocol`` that reads the header from the transport, then ``loop.start_tls()`` on
that transport) loses bytes: a transport reads whatever the socket has, so the start of the
client's TLS ClientHello arrives together with the header and cannot be handed back, and
uvloop starts reading right after ``connection_made`` even if the protocol paused it.

So we read the header from the socket ourselves, before any transport exists, and never
read past it. For each accepted socket we *peek* (``MSG_PEEK``) at what has arrived, ask the
sans-I/O parser (:mod:`asgiserve.protocols.proxy_protocol`) how long the header is, and
``recv`` exactly that many bytes: whatever follows stays in the kernel. Then
``loop.connect_accepted_socket()`` (public API on both asyncio and uvloop) makes the socket an
ordinary connection, with TLS if configured, and the HTTP/1.1 protocol learns the client's
address from the header (``HTTP11Connection.proxied``).

While the header is incomplete, the bytes seen so far are consumed when they certainly belong
to it (the signature has been seen, or the mode is ``v1``/``v2`` where nothing else may come
first), so a slow proxy does not make the level-triggered reader fire in a loop. In ``auto``
mode with only a prefix of a signature (``P`` could start ``PROXY`` or ``POST``), nothing can
be consumed and the socket is polled again shortly instead.

A header that does not arrive within ``--timeout-proxy-protocol``, or is malformed, closes the
connection: the spec leaves no way to answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from asgiserve.protocols.proxy_protocol import (
    INCOMPLETE,
    V1_PREFIX,
    V2_SIGNATURE,
    Mode,
    ProxyHeader,
    ProxyProtocolError,
    parse_proxy_header,
)

if TYPE_CHECKING:
    import ssl

    from asgiserve.transport.connection import HTTP11Connection

logger = logging.getLogger("asgiserve.error")

__all__ = ["ProxyProtocolListener"]

#: The longest header: version 2's 16 fixed bytes and a 16-bit length.
_MAX_HEADER = 16 + 0xFFFF
#: How often a socket holding only an ambiguous prefix (``auto`` mode) is looked at again.
_REPOLL = 0.01
#: Connections accepted per readiness event before yielding to the loop.
_ACCEPT_BATCH = 64
#: Malformed headers are logged as warnings at most this often (seconds); a flood of them is
#: no reason to flood the log.
_WARN_EVERY = 60.0


class ProxyProtocolListener:
    """Serve one listening socket whose connections start with a PROXY protocol header.

    Quacks like the ``asyncio.Server`` that ``create_server`` returns, as far as the server
    uses it: :meth:`close` and :meth:`wait_closed`.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol_factory: Callable[[], HTTP11Connection],
        *,
        mode: Mode,
        timeout: float,
        ssl: ssl.SSLContext | None = None,
        ssl_handshake_timeout: float | None = None,
        backlog: int = 2048,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.protocol_factory = protocol_factory
        self.mode = mode
        self.timeout = timeout
        self.ssl = ssl
        self.ssl_handshake_timeout = ssl_handshake_timeout
        self.backlog = backlog
        self.pending: set[_PendingHeader] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.closed = False
        self._last_warning = -_WARN_EVERY

    def start(self) -> None:
        sock = self.sock
        sock.listen(self.backlog)
        sock.setblocking(False)
        self.loop.add_reader(sock.fileno(), self._accept)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        for pending in list(self.pending):
            pending.close()
        for task in list(self.tasks):
            task.cancel()

    async def wait_closed(self) -> None:
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=1.0)

    # -- accepting ---------------------------------------------------------------------------

    def _accept(self) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                conn, _address = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of file descriptors or memory: stop accepting for a moment rather
                    # than spin on a socket that stays readable (asyncio does the same).
                    logger.error("Cannot accept connections: %s; pausing for 1s", exc)
                    self.loop.remove_reader(self.sock.fileno())
                    self.loop.call_later(1.0, self._resume_accepting)
                    return
                logger.debug("accept() failed: %s", exc)
                continue
            conn.setblocking(False)
            pending = _PendingHeader(self, conn)
            self.pending.add(pending)
            pending.start()

    def _resume_accepting(self) -> None:
        if not self.closed:
            self.loop.add_reader(self.sock.fileno(), self._accept)

    # -- after the header -----------------------------------------------------------------------

    def header_received(self, conn: socket.socket, header: ProxyHeader) -> None:
        task = self.loop.create_task(self._connect(conn, header))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _connect(self, conn: socket.socket, header: ProxyHeader) -> None:
        proxied = (header.source, header.destination) if header.source is not None else None

        def factory() -> HTTP11Connection:
            connection = self.protocol_factory()
            connection.proxied = proxied
            return connection

        kwargs: dict[str, Any] = {}
        if self.ssl is not None:
            kwargs = {"ssl": self.ssl, "ssl_handshake_timeout": self.ssl_handshake_timeout}
        try:
            await self.loop.connect_accepted_socket(factory, conn, **kwargs)
        except asyncio.CancelledError:
            conn.close()
            raise
        except (OSError, asyncio.TimeoutError) as exc:  # ssl.SSLError is an OSError
            # A failed or timed-out TLS handshake: the client's problem, not an event.
            logger.debug("Connection from %s failed before HTTP: %r", header.source, exc)
            conn.close()

    def header_failed(self, reason: str) -> None:
        now = time.monotonic()
        if now - self._last_warning >= _WARN_EVERY:
            self._last_warning = now
            logger.warning(
                "Closing a connection without a valid PROXY protocol header (%s); is the "
                "proxy in front sending one (--proxy-protocol %s)? (logged once a minute)",
                reason,
                self.mode,
            )
        else:
            logger.debug("Closing a connection without a valid PROXY protocol header: %s", reason)


class _PendingHeader:
    """One accepted socket whose header is being read."""

    __slots__ = ("buffer", "conn", "fd", "listener", "poll_handle", "timer")

    def __init__(self, listener: ProxyProtocolListener, conn: socket.socket) -> None:
        self.listener = listener
        self.conn = conn
        self.fd = conn.fileno()
        #: Header bytes already consumed from the socket.
        self.buffer = b""
        self.timer: asyncio.TimerHandle | None = None
        self.poll_handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        loop = self.listener.loop
        self.timer = loop.call_later(self.listener.timeout, self._timed_out)
        loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        try:
            peeked = self.conn.recv(_MAX_HEADER - len(self.buffer), socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            logger.debug("Connection lost before its PROXY header: %s", exc)
            self.close()
            return
        if not peeked:
            self.close()  # the peer went away
            return
        data = self.buffer + peeked
        mode = self.listener.mode
        try:
            result = parse_proxy_header(data, mode)
        except ProxyProtocolError as exc:
            self.listener.header_failed(str(exc))
            self.close()
            return
        if result is INCOMPLETE:
            if mode != "auto" or data.startswith((V1_PREFIX, V2_SIGNATURE)):
                # Every byte so far is header: take them, so the socket stops being readable.
                self._consume(len(peeked))
            else:
                # "P" or "\r\n": a header, or a client's first bytes? Look again shortly.
                loop = self.listener.loop
                loop.remove_reader(self.fd)
                self.poll_handle = loop.call_later(_REPOLL, self._repoll)
            return
        assert isinstance(result, ProxyHeader)
        if result.length > len(self.buffer) and not self._consume(result.length - len(self.buffer)):
            return
        self._detach()
        self.listener.header_received(self.conn, result)

    def _consume(self, count: int) -> bool:
        """Read ``count`` bytes that have been peeked at (so they are there)."""
        try:
            data = self.conn.recv(count)
        except OSError as exc:
            logger.debug("Connection lost while reading its PROXY header: %s", exc)
            self.close()
            return False
        self.buffer += data
        if len(data) != count:  # pragma: no cover - the kernel gave us less than it showed
            self.close()
            return False
        return True

    def _repoll(self) -> None:
        self.poll_handle = None
        self.listener.loop.add_reader(self.fd, self._readable)

    def _timed_out(self) -> None:
        self.timer = None
        logger.debug("No PROXY header within %gs: closing the connection", self.listener.timeout)
        self.close()

    def _detach(self) -> None:
        """Stop watching the socket; it is handed on, not closed."""
        self.listener.pending.discard(self)
        with contextlib.suppress(Exception):
            self.listener.loop.remove_reader(self.fd)
        for handle in (self.timer, self.poll_handle):
            if handle is not None:
                handle.cancel()
        self.timer = self.poll_handle = None

    def close(self) -> None:
        self._detach()
        self.conn.close()
