"""Sending a file as a response body: ``sendfile(2)`` on a socket we write to directly, or
reads in a worker thread when the bytes must pass through Python (TLS, HTTP/2 framing).

Theory of operation
-------------------
The ASGI cycle turns ``http.response.pathsend``/``zerocopysend`` into one call on its sink,
``send_file(fd, offset, count, more_body)``. Over plain TCP the HTTP/1.1 connection hands the
file to the kernel (:class:`SocketFileSender`); every other sink can delegate to
:func:`send_file_buffered`, which reads the file in chunks in the default executor and writes
them through the sink's ordinary ``send_body``/``drain``, so a large file neither blocks the
event loop nor sits in memory.

Why our own sendfile loop rather than ``loop.sendfile(transport, file)``: uvloop does not
implement it, and asyncio's fallback reads the file into memory through the transport. The
loop below is safe with a transport we do not own because of three invariants, each checked:

* the transport has nothing buffered when we start (the response head must go first), and
  nothing else writes to it while we send: the connection serves one response at a time and
  the cycle is inside ``send``;
* ``os.sendfile`` is only called on the transport's descriptor after ``transport.is_closing()``
  said it is still open, in the same synchronous step, so a descriptor number closed (and
  perhaps reused by a new connection) is never written to;
* to wait for writability we register a *duplicate* of the descriptor with ``add_writer``
  (both loops refuse a descriptor owned by a transport), and unregister and close it before
  returning, so the transport's own reader registration is never disturbed.

The socket is non-blocking: ``os.sendfile`` sends what fits in the socket buffer and we wait for
writability for the rest, which is the flow control to slow clients (memory stays bounded by
the kernel's socket buffer). The file is read by the kernel from the page cache; a read that
misses it blocks in the syscall, which bounds each call to :data:`SENDFILE_CHUNK` bytes.
"""

from __future__ import annotations

import _socket
import asyncio
import errno
import os
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from asgiserve.asgi.http import ResponseSink

__all__ = [
    "READ_CHUNK",
    "SENDFILE_CHUNK",
    "FileEndedEarly",
    "SocketFileSender",
    "send_file_buffered",
]

#: Bytes per ``os.sendfile`` call: the most the event loop waits for one call on a page-cache
#: miss, and the unit of fairness between connections (we go round the loop between calls).
SENDFILE_CHUNK = 1024 * 1024
#: Bytes per read in the buffered path: large enough that the thread hop is amortised, small
#: enough that a slow client holds little memory (one chunk plus the transport's buffer).
READ_CHUNK = 256 * 1024


_SENDFILE = hasattr(os, "sendfile")
# Linux: "more data follows", the kernel holds a partial segment back for the next send.
_MSG_MORE: int = getattr(socket, "MSG_MORE", 0)
_TCP_FAMILIES = frozenset((socket.AF_INET, getattr(socket, "AF_INET6", socket.AF_INET)))
_CLIENT_GONE = frozenset(
    (
        errno.EPIPE,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.ENOTCONN,
        errno.ESHUTDOWN,
        errno.ETIMEDOUT,
    )
)


class FileEndedEarly(RuntimeError):
    """The file is shorter than the response says (it shrank while being sent)."""

    def __init__(self, missing: int) -> None:
        super().__init__(f"the file ended {missing} bytes before the announced response length")


async def send_file_buffered(
    sink: ResponseSink, fd: int, offset: int, count: int, more_body: bool
) -> None:
    """Send ``count`` bytes of ``fd`` from ``offset`` through ``sink.send_body``, reading in a
    worker thread and honouring the sink's flow control."""
    loop = asyncio.get_running_loop()
    while count > 0:
        data = await loop.run_in_executor(None, os.pread, fd, min(count, READ_CHUNK), offset)
        if not data:
            raise FileEndedEarly(count)
        offset += len(data)
        count -= len(data)
        sink.send_body(data, more_body or count > 0)
        if sink.writing_paused:
            await sink.drain()


class SocketFileSender:
    """``send_file`` for one connection over a plain socket: ``os.sendfile`` until done,
    waiting for writability on a duplicate descriptor when the socket buffer is full.

    Made once per connection (:meth:`for_transport`); ``usable`` is false under TLS, without a
    socket or without ``os.sendfile``, and the connection then uses :func:`send_file_buffered`.
    """

    __slots__ = (
        "dup",
        "family",
        "loop",
        "lost",
        "sock",
        "sock_fd",
        "transport",
        "usable",
        "waiter",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        transport: asyncio.WriteTransport,
        sock_fd: int,
        family: int = -1,
    ) -> None:
        self.loop = loop
        self.transport = transport
        self.sock_fd = sock_fd
        self.usable = sock_fd >= 0
        #: The socket's address family when a prefix can be sent with MSG_MORE (TCP), else -1.
        self.family = family if _MSG_MORE and family in _TCP_FAMILIES else -1
        self.dup = -1
        #: A socket object over the transport's descriptor, for send() with flags: made once
        #: (making one runs getsockname(2)) and detached, never closed, when we are done.
        self.sock: _socket.socket | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.lost = False

    def __del__(self) -> None:
        # Dropping an undetached socket object would close the transport's descriptor.
        self.release()

    def release(self) -> None:
        """Let go of the transport's descriptor (the connection is gone or handed over)."""
        sock = self.sock
        if sock is not None:
            self.sock = None
            sock.detach()

    @classmethod
    def for_transport(
        cls, loop: asyncio.AbstractEventLoop, transport: asyncio.WriteTransport
    ) -> SocketFileSender:
        sock = transport.get_extra_info("socket")
        if sock is None or transport.get_extra_info("sslcontext") is not None or not _SENDFILE:
            # TLS: the bytes must be encrypted in user space.
            return cls(loop, transport, -1)
        return cls(loop, transport, sock.fileno(), sock.family)

    def connection_lost(self) -> None:
        """The connection is gone: stop at the next step."""
        self.lost = True
        self.release()
        self._wake()

    def send_now(self, fd: int, offset: int, count: int, prefix: bytes = b"") -> int:
        """Start a file body part without waiting: ``prefix`` (a response head, a chunk
        header), then as much of ``count`` bytes of ``fd`` from ``offset`` as the socket takes
        at once (for a small file, all of it). Returns the bytes of the file sent (finish with
        :meth:`send`), or -1 when the connection is gone.

        Over TCP on Linux the prefix goes with MSG_MORE: the kernel holds it back and sends it
        in the segment that carries the file's first bytes (a segment, a receive and a wake-up
        of the client fewer than a write of its own).
        """
        transport = self.transport
        if self.lost or transport.is_closing():
            return -1
        if prefix:
            sent = 0
            # Not for an empty body: with nothing to follow it, a MSG_MORE head would wait
            # in the kernel for the cork timer (200 ms on Linux).
            if self.family >= 0 and count > 0 and not transport.get_write_buffer_size():
                # Used only in this synchronous step, in which is_closing() said the
                # descriptor is still the transport's. The C type: socket.socket's Python
                # layer costs three times as much and is not needed.
                sock = self.sock
                if sock is None:
                    sock = self.sock = _socket.socket(
                        self.family, socket.SOCK_STREAM, 0, self.sock_fd
                    )
                    # A new socket object takes socket.getdefaulttimeout(): with one set, a
                    # send on a full buffer would wait for it with the event loop stopped.
                    sock.setblocking(False)
                try:
                    sent = sock.send(prefix, _MSG_MORE)
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError as exc:
                    if exc.errno in _CLIENT_GONE:
                        return -1
                    raise
            if sent < len(prefix):
                # Behind what the transport holds, or what the socket did not take.
                transport.write(prefix[sent:] if sent else prefix)
                if transport.get_write_buffer_size():
                    return 0  # what the transport holds goes first: send() waits for it
        elif transport.get_write_buffer_size():
            return 0
        try:
            sent = os.sendfile(self.sock_fd, fd, offset, min(count, SENDFILE_CHUNK))
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            if exc.errno in _CLIENT_GONE:
                return -1
            raise  # EINVAL, EIO, ...: the file's fault, not the client's
        if sent == 0 and count > 0:
            raise FileEndedEarly(count)
        return sent

    async def send(self, fd: int, offset: int, count: int, *, resume: bool = False) -> bool:
        """Send ``count`` bytes of ``fd`` from ``offset``, waiting for the socket as needed
        (first of all with ``resume``: after :meth:`send_now`, which did what it could).
        True when all were handed to the kernel, False when the connection went away first;
        raises :class:`FileEndedEarly` if the file is too short."""
        transport = self.transport
        try:
            if resume and not await self._writable():
                return False
            # The head went through the transport: it must be on the wire before the file.
            while transport.get_write_buffer_size():
                if not await self._writable():
                    return False
            while count > 0:
                if self.lost or transport.is_closing():
                    return False
                try:
                    sent = os.sendfile(self.sock_fd, fd, offset, min(count, SENDFILE_CHUNK))
                except (BlockingIOError, InterruptedError):
                    sent = -1
                except OSError as exc:
                    if exc.errno in _CLIENT_GONE:
                        return False
                    raise  # EINVAL, EIO, ...: the file's fault, not the client's
                if sent == 0:
                    raise FileEndedEarly(count)
                if sent > 0:
                    offset += sent
                    count -= sent
                # Socket buffer full, or one chunk done: go round the loop (other connections
                # get their turn) until the socket is writable again.
                if count > 0 and not await self._writable():
                    return False
            return True
        finally:
            if self.dup >= 0:
                os.close(self.dup)
                self.dup = -1

    async def _writable(self) -> bool:
        if self.lost:
            return False
        if self.dup < 0:
            self.dup = os.dup(self.sock_fd)
        loop = self.loop
        self.waiter = waiter = loop.create_future()
        loop.add_writer(self.dup, self._wake)
        try:
            await waiter
        finally:
            self.waiter = None
            loop.remove_writer(self.dup)
        return not self.lost

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
