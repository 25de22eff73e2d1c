"""The ASGI HTTP request/response cycle, shared by every wire protocol.

Theory of operation
-------------------
A connection creates one :class:`HTTPCycle` per request, feeds it the request body
(:meth:`~HTTPCycle.feed_body`, :meth:`~HTTPCycle.end_body`) and tells it when the client goes
away (:meth:`~HTTPCycle.disconnect`). The application sees the cycle's bound
:meth:`~HTTPCycle.receive` and :meth:`~HTTPCycle.send`.

``send`` is a state machine over :class:`Phase`. The response head is *deferred*: it goes to the
wire together with the first body message, so that a response whose body comes in one message
is a single write. Rules that hold for every HTTP version live here and only here: message
order and types, no body for HEAD/1xx/204/304 (RFC 9110 sections 6.4.1 and 9.3.2), the declared
Content-Length honoured exactly, ``100 Continue`` sent only once the app asks for the body
(RFC 9110 section 10.1.1), a 500 when the app fails before responding and an abort after.
How a response is framed on the wire is the sink's business (:class:`ResponseSink`).

A body part may also come from a file (the ``http.response.pathsend`` and
``http.response.zerocopysend`` extensions, offered to every request): the same rules apply,
and the sink's one file method, ``send_file``, moves the bytes (``sendfile(2)`` where it can).
These message types are checked only after ``http.response.body`` fails to match, so the
ordinary path pays nothing for them.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import stat
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Final, Protocol

from asgiserve.asgi.errors import ClientDisconnected

if TYPE_CHECKING:
    from asgiserve.asgi.types import ASGIApp, Message, Scope

logger = logging.getLogger("asgiserve.error")

__all__ = [
    "HEADER_CONNECTION",
    "HEADER_DATE",
    "HEADER_SERVER",
    "HEADER_TRANSFER_ENCODING",
    "ClientDisconnected",
    "HTTPCycle",
    "Phase",
    "ResponseSink",
    "remembered_headers",
]

# Response headers a wire protocol may have to act on, noted while the cycle checks the
# headers anyway so that sinks need not scan them again: hop-by-hop framing headers and the
# headers a server adds by default.
HEADER_CONNECTION = 1
HEADER_TRANSFER_ENCODING = 2
HEADER_SERVER = 4
HEADER_DATE = 8
_CONTENT_LENGTH = 0
_WATCHED_HEADERS = {
    b"content-length": _CONTENT_LENGTH,
    b"connection": HEADER_CONNECTION,
    b"keep-alive": HEADER_CONNECTION,
    b"transfer-encoding": HEADER_TRANSFER_ENCODING,
    b"server": HEADER_SERVER,
    b"date": HEADER_DATE,
}


class Phase(enum.IntEnum):
    """Where the response stands."""

    START = 0  # waiting for http.response.start
    HEAD = 1  # start received; the head waits for the first body message
    BODY = 2  # head written; more body to come
    TRAILERS = 3  # body complete; http.response.trailers to come (trailers extension)
    DONE = 4  # response complete (or aborted)


# The phases as module constants: a member looked up on its enum class goes through EnumType's
# attribute hook, about ten times the cost of a global, and send() tests the phase per message.
_START: Final = Phase.START
_HEAD: Final = Phase.HEAD
_BODY: Final = Phase.BODY
_TRAILERS: Final = Phase.TRAILERS
_DONE: Final = Phase.DONE


class ResponseSink(Protocol):
    """What the cycle needs from a wire protocol; a connection (or a stream) implements it.

    A sink may also have ``send_head_with_file(cycle, fd, offset, count, more_body)``, which
    the cycle looks for when a file is the first body part: :meth:`send_head` (more body to
    come) and :meth:`send_file` in one, the head held back to leave in the segment that
    carries the file's first bytes. It returns None when everything was handed to the OS (or
    the client is gone) at once, else an awaitable that finishes the job. (Optional, so not
    declared here: HTTP/2 streams have none.)
    """

    @property
    def writing_paused(self) -> bool:
        """True while the client is not keeping up: ``send()`` then awaits :meth:`drain`."""

    def send_continue(self) -> None:
        """Send ``100 Continue``."""

    def send_head(self, cycle: HTTPCycle, body: bytes, more_body: bool) -> None:
        """Write the response head (``cycle.status``, ``cycle.response_headers``, ...) with
        its first body part; ``body`` is empty when ``cycle.body_allowed`` is false."""

    def send_body(self, body: bytes, more_body: bool) -> None:
        """Write a further body part; ``more_body=False`` ends the response."""

    def send_informational(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """Send a 1xx response (103 Early Hints) before the final one, or ignore it."""

    def send_trailers(self, headers: list[tuple[bytes, bytes]]) -> None:
        """End the response with trailer fields (after body parts sent with more_body)."""

    async def send_file(self, fd: int, offset: int, count: int, more_body: bool) -> None:
        """Write ``count`` bytes of the regular file ``fd`` from ``offset`` as a further body
        part (after :meth:`send_head`), without blocking the event loop; return once they are
        handed to the OS or the client is gone. ``more_body=False`` ends the response. Raise
        if the file ends early (the framing cannot be honoured: the caller aborts)."""

    async def drain(self) -> None:
        """Wait until the client has read enough of what was written."""

    def resume_body(self) -> None:
        """The app consumed the request body buffered so far: read more."""

    def abort(self) -> None:
        """Drop the connection (or stream): the response cannot be completed."""


# Request body bytes buffered before the sink is asked to stop reading.
BODY_HIGH_WATER = 65536

_NO_BODY_STATUSES = frozenset((204, 304))
#: The response headers before the app sent any (never added to: every change is a new list).
_NO_HEADERS: list[tuple[bytes, bytes]] = []
_SERVER_ERROR_BODY = b"Internal Server Error"
_TOO_LARGE_BODY = b"Content Too Large"
_TOO_LARGE_HEADERS = [
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"content-length", str(len(_TOO_LARGE_BODY)).encode()),
]
_SERVER_ERROR_HEADERS = [
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"content-length", str(len(_SERVER_ERROR_BODY)).encode()),
]


def _length_mismatch(sent: int, declared: int, more_body: bool) -> RuntimeError:
    return RuntimeError(
        f"Response body of {'at least ' if more_body else ''}{sent} bytes does not match "
        f"the declared Content-Length of {declared}"
    )


class CheckedHeaders:
    """A response's headers, as a list of (bytes, bytes) tuples of the server's own (so
    nobody changes it), and what :meth:`HTTPCycle.send` and the sinks need to know of them."""

    __slots__ = ("content_length", "flags", "headers")

    def __init__(
        self, headers: list[tuple[bytes, bytes]], content_length: int | None, flags: int
    ) -> None:
        self.headers = headers
        #: The value of the Content-Length header, if any.
        self.content_length = content_length
        #: HEADER_* bits: the watched headers present.
        self.flags = flags


def _check_headers(headers: Iterable[Any]) -> CheckedHeaders:
    """Read the app's response headers into a list of the server's own, and remember it for
    the next response."""
    global _last_checked
    own: list[tuple[bytes, bytes]] = []
    content_length: int | None = None
    flags = 0
    watched_headers = _WATCHED_HEADERS
    for pair in headers:
        name, value = pair
        if type(pair) is tuple and type(name) is bytes and type(value) is bytes:
            own.append(pair)
        else:
            # ASGI allows any pair of byte strings: a list, a bytearray can change after
            # this response, so the list holds a tuple of bytes instead.
            name, value = _header_bytes(name), _header_bytes(value)
            own.append((name, value))
        watched = watched_headers.get(name.lower())
        if watched is not None:
            if watched == _CONTENT_LENGTH:
                if not value.isdigit() or content_length is not None:
                    raise ValueError(f"Invalid or repeated Content-Length header {value!r}")
                content_length = int(value)
            else:
                flags |= watched
    checked = CheckedHeaders(own, content_length, flags)
    if len(own) <= _REUSE_MAX_HEADERS:
        # One global, replaced whole: a reader sees one response's headers and facts.
        _last_checked = checked
    return checked


def _header_bytes(data: Any) -> bytes:
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    if type(data) is not bytes:
        raise TypeError(f"Response header names and values must be bytes, got {data!r}")
    return data


#: Longer header lists are not remembered: comparing them costs what reading them would.
_REUSE_MAX_HEADERS = 16
#: The last response headers read by :meth:`HTTPCycle._start` (see CheckedHeaders): the next
#: response whose headers equal them (an endpoint repeats its own) is given the same.
_last_checked = CheckedHeaders([], None, 0)


def remembered_headers(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether ``headers`` is the list :class:`HTTPCycle` hands to every response whose
    headers equal these (a list that nobody changes, of (bytes, bytes) tuples): what a sink
    derives from it alone, such as its encoded lines, may be kept for the next."""
    return headers is _last_checked.headers


class HTTPCycle:
    """One request and its response, as the application sees them."""

    #: The trailer fields sent so far; there only once the app announced trailers.
    trailer_headers: list[tuple[bytes, bytes]]

    __slots__ = (
        "body_allowed",
        "body_budget",
        "buffered",
        "bytes_sent",
        "chunks",
        "content_length",
        "continue_sent",
        "disconnected",
        "expect_continue",
        "head_request",
        "header_flags",
        "input_ended",
        "on_complete",
        "phase",
        "reading_paused",
        "registry",
        "request_complete",
        "request_delivered",
        "response_headers",
        "running",
        "scope",
        "sink",
        "status",
        "task",
        "trailer_headers",
        "trailers_expected",
        "waiters",
    )

    def __init__(
        self,
        scope: Scope,
        sink: ResponseSink,
        expect_continue: bool,
        has_body: bool,
        on_complete: Callable[[HTTPCycle], None] | None = None,
        body_limit: int | None = None,
        declared_length: int | None = None,
    ) -> None:
        self.scope = scope
        self.sink = sink
        #: Request body bytes still allowed (``--limit-request-body``); None: no limit. Below
        #: zero once the body is known to be too large: a declared Content-Length over the
        #: limit is refused before the app runs.
        self.body_budget = body_limit
        if body_limit is not None:
            #: Set once run() starts: before that, a refusal waits for run() to answer it.
            #: (Only with a limit: nothing reads it otherwise.)
            self.running = False
            if declared_length is not None and declared_length > body_limit:
                self.body_budget = -1
        self.phase = _START
        self.status = 0
        self.response_headers: list[tuple[bytes, bytes]] = _NO_HEADERS
        self.content_length: int | None = None
        self.header_flags = 0
        self.trailers_expected = False
        self.body_allowed = True
        self.bytes_sent = 0
        self.head_request = scope["method"] == "HEAD"
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.request_complete = not has_body
        self.request_delivered = False
        self.reading_paused = False
        self.expect_continue = expect_continue and has_body
        self.continue_sent = False
        self.disconnected = False
        #: The client sends nothing more (it half-closed) but may still read the response.
        self.input_ended = False
        #: Tasks waiting in receive(): every one is woken (several tasks may wait at once,
        #: e.g. a streaming response's disconnect listener and Starlette's is_disconnected()).
        self.waiters: list[asyncio.Future[None]] | None = None
        #: Called once when the response is complete or aborted.
        self.on_complete = on_complete
        #: The task running the app, when it outlived its first step, and the set of running
        #: tasks it belongs to (for shutdown): run() takes it out when the app returns.
        self.task: asyncio.Task[None] | None = None
        self.registry: set[asyncio.Task[None]] | None = None

    # -- protocol side -------------------------------------------------------------------------

    def feed_body(self, data: bytes) -> bool:
        """Buffer request body bytes; True when the sink should stop reading for now."""
        budget = self.body_budget
        if budget is not None:
            # Counted before buffering, so the app never sees a byte beyond the limit.
            if budget - len(data) < 0:
                if budget >= 0:
                    if self.running:
                        self._reject_body()
                    else:
                        # Queued behind a pipelined request: run() answers it in turn.
                        self.body_budget = -1
                        self.chunks.clear()
                        self.buffered = 0
                return True
            self.body_budget = budget - len(data)
        self.chunks.append(data)
        self.buffered += len(data)
        self._wake()
        if self.buffered > BODY_HIGH_WATER:
            self.reading_paused = True
            return True
        return False

    def end_body(self) -> None:
        self.request_complete = True
        if self.waiters is not None:  # mostly nobody waits in receive() yet
            self._wake()

    def disconnect(self) -> None:
        """The client went away: ``receive()`` returns ``http.disconnect``, ``send()`` raises."""
        self.disconnected = True
        self._wake()
        if self.phase is not _DONE:
            self._complete()

    def end_input(self) -> None:
        """The client shut down its sending side after the whole request (a half-close): it
        may be waiting for the response, or gone. ``send()`` goes on; a ``receive()`` past
        the body reports ``http.disconnect``, so that an app that listens for one (a stream
        to a client that went away) stops."""
        self.input_ended = True
        self._wake()

    def _wake(self) -> None:
        waiters = self.waiters
        if waiters is not None:
            self.waiters = None
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def _complete(self) -> None:
        self.phase = _DONE
        if self.waiters is not None:  # mostly nobody waits in receive(): no call for nothing
            self._wake()
        on_complete = self.on_complete
        if on_complete is not None:
            self.on_complete = None
            on_complete(self)

    # -- application side ----------------------------------------------------------------------

    async def receive(self) -> Message:
        while True:
            if not self.request_delivered and (self.chunks or self.request_complete):
                chunks = self.chunks
                if not chunks:
                    body = b""
                elif len(chunks) == 1:
                    body = chunks[0]
                    chunks.clear()
                else:
                    body = b"".join(chunks)
                    chunks.clear()
                self.buffered = 0
                if self.reading_paused:
                    self.reading_paused = False
                    self.sink.resume_body()
                more_body = not self.request_complete
                if not more_body:
                    self.request_delivered = True
                return {"type": "http.request", "body": body, "more_body": more_body}
            if self.disconnected or self.input_ended or self.phase is _DONE:
                return {"type": "http.disconnect"}
            if self.expect_continue and not self.continue_sent and self.phase is _START:
                self.continue_sent = True
                self.sink.send_continue()
            waiter = asyncio.get_running_loop().create_future()
            waiters = self.waiters
            if waiters is None:
                self.waiters = [waiter]
            else:
                waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                # Not left behind: an app that polls receive() and cancels it (Starlette's
                # is_disconnected()) would grow the list until the next wake-up.
                waiters = self.waiters
                if waiters is not None and waiter in waiters:
                    waiters.remove(waiter)
                raise

    async def send(self, message: Message) -> None:
        phase = self.phase
        message_type = message["type"]
        if phase is _HEAD or phase is _BODY:
            if message_type != "http.response.body":
                # Off the hot path: a body from a file (or a wrong message type).
                await self._send_file(message, phase)
                return
            if self.disconnected:
                raise ClientDisconnected("client disconnected")
            body = message.get("body", b"")
            more_body = message.get("more_body", False)
            if type(body) is not bytes:
                body = self._coerce_body(body)
            self._count(body, more_body)
            sink = self.sink
            # With trailers to come, the wire response is not over at the last body part.
            wire_more = more_body or self.trailers_expected
            if phase is _HEAD:
                if not wire_more and self.head_request and self.content_length is None:
                    # RFC 9110 section 9.3.2: HEAD gets the headers GET would, so the length
                    # of the body the app produced (and we drop) is announced.
                    self.content_length = len(body)
                    self.response_headers = [
                        *self.response_headers,
                        (b"content-length", b"%d" % len(body)),
                    ]
                sink.send_head(self, body if self.body_allowed else b"", wire_more)
                self.phase = _BODY
            elif self.body_allowed:
                sink.send_body(body, wire_more)
            elif not wire_more:
                sink.send_body(b"", False)
            if not more_body:
                if self.trailers_expected:
                    self.phase = _TRAILERS
                else:
                    self._complete()
            elif sink.writing_paused:
                await sink.drain()
                if self.disconnected:
                    raise ClientDisconnected("client disconnected")
        elif phase is _START:
            if self.disconnected:
                raise ClientDisconnected("client disconnected")
            if message_type == "http.response.start":
                self._start(message)
            elif message_type == "http.response.early_hint":
                links = message.get("links", ())
                self.sink.send_informational(103, [(b"link", link) for link in links])
            else:
                raise RuntimeError(f"Expected 'http.response.start', got {message_type!r}")
        elif phase is _TRAILERS:
            if message_type != "http.response.trailers":
                raise RuntimeError(f"Expected 'http.response.trailers', got {message_type!r}")
            if self.disconnected:
                raise ClientDisconnected("client disconnected")
            self.trailer_headers.extend(message.get("headers", ()))
            if not message.get("more_trailers", False):
                self.sink.send_trailers(self.trailer_headers)
                self._complete()
        else:
            if self.disconnected:
                raise ClientDisconnected("client disconnected")
            raise RuntimeError(f"Unexpected {message_type!r}: the response is already complete")

    def _start(self, message: Message) -> None:
        status = message["status"]
        if type(status) is not int or not 100 <= status <= 999:
            raise TypeError(f"Invalid HTTP status code {status!r} in 'http.response.start'")
        if status < 200:
            raise RuntimeError(
                "Informational responses are not sent with 'http.response.start' "
                f"(got status {status})"
            )
        headers = message.get("headers", ())
        # The same headers as the last response read here (an endpoint repeats them): what
        # was found in them holds, and the sink gets the checked copy.
        last = _last_checked
        checked = last if headers == last.headers else _check_headers(headers)
        self.status = status
        self.response_headers = checked.headers
        self.content_length = checked.content_length
        self.header_flags = checked.flags
        if message.get("trailers", False):
            self.trailers_expected = True
            self.trailer_headers = []
        self.body_allowed = not (self.head_request or status in _NO_BODY_STATUSES)
        self.phase = _HEAD

    def _count(self, body: bytes, more_body: bool) -> None:
        if not self.body_allowed:
            return
        sent = self.bytes_sent + len(body)
        self.bytes_sent = sent
        declared = self.content_length
        if declared is not None and (sent > declared or (not more_body and sent < declared)):
            # The framing would be wrong on the wire: fail the app's send instead.
            raise _length_mismatch(sent, declared, more_body)

    def _count_length(self, size: int, more_body: bool) -> None:
        """:meth:`_count` for a body part of ``size`` bytes sent from a file."""
        if not self.body_allowed:
            return
        sent = self.bytes_sent + size
        self.bytes_sent = sent
        declared = self.content_length
        if declared is not None and (sent > declared or (not more_body and sent < declared)):
            raise _length_mismatch(sent, declared, more_body)

    async def _send_file(self, message: Message, phase: Phase) -> None:
        """``http.response.pathsend`` and ``http.response.zerocopysend`` (ASGI extensions): a
        body part taken from a file, which the sink sends without copying it through Python
        where it can (``sendfile(2)``). Same rules as ``http.response.body``: Content-Length
        accounting, no body for HEAD/204/304, completion, flow control."""
        message_type = message["type"]
        owned = False
        reposition = False
        if message_type == "http.response.pathsend":
            if phase is not _HEAD:
                raise RuntimeError(
                    "'http.response.pathsend' must directly follow 'http.response.start'"
                )
            path = message["path"]
            if not isinstance(path, str) or not os.path.isabs(path):
                raise ValueError(f"'path' must be an absolute path, got {path!r}")
            if self.disconnected:
                raise ClientDisconnected("client disconnected")
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            owned = True
            offset: int | None = 0
            count: int | None = None
            more_body = False
        elif message_type == "http.response.zerocopysend":
            file = message["file"]
            fd = file if type(file) is int else file.fileno()
            offset = message.get("offset")
            count = message.get("count")
            more_body = bool(message.get("more_body", False))
            if self.disconnected:
                raise ClientDisconnected("client disconnected")
            if offset is None:
                # Read from the file's position and advance it, as sendfile(2) would.
                offset = os.lseek(fd, 0, os.SEEK_CUR)
                reposition = True
        else:
            raise RuntimeError(f"Expected 'http.response.body', got {message_type!r}")
        try:
            if (
                type(offset) is not int
                or offset < 0
                or (count is not None and (type(count) is not int or count < 0))
            ):
                raise ValueError(f"Invalid offset {offset!r} or count {count!r}")
            if count is None:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode):
                    raise ValueError(f"{message_type!r} needs a regular file")
                count = max(info.st_size - offset, 0)
            # With a count, no fstat (a cost per response): a file shorter than that, or
            # not a regular file, fails in the sink and the response is aborted.
            wire_more = more_body or self.trailers_expected
            if (
                phase is _HEAD
                and not wire_more
                and self.content_length is None
                and self.status not in _NO_BODY_STATUSES
            ):
                # The whole body is this file: announce its length (also for HEAD, RFC 9110
                # section 9.3.2) rather than chunk it.
                self.content_length = count
                self.response_headers = [
                    *self.response_headers,
                    (b"content-length", b"%d" % count),
                ]
            self._count_length(count, more_body)
            sink = self.sink
            sending = count > 0 and self.body_allowed
            with_head: Callable[..., Awaitable[None] | None] | None = None
            if phase is _HEAD:
                if sending:
                    # An optional sink method (see ResponseSink): the head can leave
                    # together with the file's first bytes.
                    with_head = getattr(sink, "send_head_with_file", None)
                if with_head is None:
                    sink.send_head(self, b"", wire_more or sending)
                self.phase = _BODY
            elif not sending and not wire_more:
                sink.send_body(b"", False)
            if with_head is not None:
                rest = with_head(self, fd, offset, count, wire_more)
                if rest is not None:
                    await rest
            elif sending:
                await sink.send_file(fd, offset, count, wire_more)
            if reposition:
                os.lseek(fd, offset + count, os.SEEK_SET)
        finally:
            if owned:
                os.close(fd)
        if self.disconnected:
            raise ClientDisconnected("client disconnected")
        if not more_body:
            if self.trailers_expected:
                self.phase = _TRAILERS
            else:
                self._complete()
        elif sink.writing_paused:
            await sink.drain()
            if self.disconnected:
                raise ClientDisconnected("client disconnected")

    @staticmethod
    def _coerce_body(body: Any) -> bytes:
        if isinstance(body, (bytearray, memoryview)):
            return bytes(body)
        raise TypeError(f"'body' must be bytes, got {type(body).__name__}")

    # -- running the application ---------------------------------------------------------------

    async def run(self, app: ASGIApp) -> None:
        """Run the app for this request; the one place app failures become responses."""
        budget = self.body_budget
        if budget is not None:
            self.running = True
            if budget < 0:
                # The declared Content-Length is over the limit (or the body went over it
                # before our turn came): 413 without running the app (and, with "Expect:
                # 100-continue", without inviting the body).
                self._reject_body()
                self._unregister()
                return
        try:
            await app(self.scope, self.receive, self.send)
        except asyncio.CancelledError:
            self._abort_if_unfinished()
            self._unregister()
            raise
        except BaseException as exc:
            if isinstance(exc, ClientDisconnected) and self.disconnected:
                logger.debug("Client disconnected while the app was sending")
            elif self.body_budget is not None and self.body_budget < 0:
                # We told the app the client had gone (the body was too large); frameworks
                # turn that into an exception of their own.
                logger.debug("App raised after its request body was refused: %r", exc)
            else:
                logger.error("Exception in ASGI application", exc_info=exc)
                self._fail("app raised")
            if not isinstance(exc, Exception):
                self._unregister()
                raise
        else:
            if self.phase is not _DONE:
                if self.phase is _START and self.input_ended:
                    logger.debug("App returned without a response after the client half-closed")
                elif self.phase is _START:
                    logger.error("ASGI application returned without starting a response")
                else:
                    logger.error("ASGI application returned without completing the response")
                self._fail("incomplete response")
        self._unregister()

    def _unregister(self) -> None:
        task = self.task
        if task is not None:
            self.task = None
            registry = self.registry
            if registry is not None:
                registry.discard(task)

    def _fail(self, why: str) -> None:
        phase = self.phase
        if phase is _DONE or self.disconnected:
            return
        if phase is _START or phase is _HEAD:
            # Nothing is on the wire yet: the client can still get a proper answer.
            self.status = 500
            self.response_headers = _SERVER_ERROR_HEADERS
            self.content_length = len(_SERVER_ERROR_BODY)
            self.header_flags = 0
            self.body_allowed = not self.head_request
            self.sink.send_head(self, _SERVER_ERROR_BODY if self.body_allowed else b"", False)
            self.phase = _BODY
            self.bytes_sent = len(_SERVER_ERROR_BODY)
            self._complete()
        else:
            logger.debug("Aborting the connection: %s after the response started", why)
            self._abort_if_unfinished()

    def _reject_body(self) -> None:
        """The request body is larger than ``--limit-request-body``. The app sees
        ``http.disconnect`` (never the excess) and its ``send()`` raises; the client gets
        413 Content Too Large (RFC 9110 section 15.5.14) if no response has started, else
        the response is cut off. Either way the connection (or stream) does not carry on:
        the rest of the body was never read."""
        self.body_budget = -1
        self.chunks.clear()
        self.buffered = 0
        # Nothing more is delivered, not even the end of the body the parser may still
        # report: the app must not take what it got for the whole body.
        self.request_delivered = True
        self.disconnected = True
        self._wake()
        phase = self.phase
        if phase is _START or phase is _HEAD:
            self.status = 413
            self.response_headers = _TOO_LARGE_HEADERS
            self.content_length = len(_TOO_LARGE_BODY)
            self.header_flags = 0
            self.body_allowed = not self.head_request
            self.sink.send_head(self, _TOO_LARGE_BODY if self.body_allowed else b"", False)
            self.phase = _BODY
            self.bytes_sent = len(_TOO_LARGE_BODY) if self.body_allowed else 0
            self._complete()
        else:
            self._abort_if_unfinished()

    def _abort_if_unfinished(self) -> None:
        if self.phase is not _DONE:
            self.sink.abort()
            self._complete()
