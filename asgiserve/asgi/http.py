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
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

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


class ClientDisconnected(OSError):
    """Raised by ``send()`` once the client has gone away (ASGI HTTP spec 2.4)."""


class Phase(enum.IntEnum):
    """Where the response stands."""

    START = 0  # waiting for http.response.start
    HEAD = 1  # start received; the head waits for the first body message
    BODY = 2  # head written; more body to come
    DONE = 3  # response complete (or aborted)


class ResponseSink(Protocol):
    """What the cycle needs from a wire protocol; a connection (or a stream) implements it."""

    #: True while the transport's write buffer is above its high-water mark.
    writing_paused: bool

    def send_continue(self) -> None:
        """Send ``100 Continue``."""

    def send_head(self, cycle: HTTPCycle, body: bytes, more_body: bool) -> None:
        """Write the response head (``cycle.status``, ``cycle.response_headers``, ...) with
        its first body part; ``body`` is empty when ``cycle.body_allowed`` is false."""

    def send_body(self, body: bytes, more_body: bool) -> None:
        """Write a further body part; ``more_body=False`` ends the response."""

    async def drain(self) -> None:
        """Wait until the client has read enough of what was written."""

    def resume_body(self) -> None:
        """The app consumed the request body buffered so far: read more."""

    def abort(self) -> None:
        """Drop the connection (or stream): the response cannot be completed."""


# Request body bytes buffered before the sink is asked to stop reading.
BODY_HIGH_WATER = 65536

_NO_BODY_STATUSES = frozenset((204, 304))
_SERVER_ERROR_BODY = b"Internal Server Error"
_SERVER_ERROR_HEADERS = [
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"content-length", str(len(_SERVER_ERROR_BODY)).encode()),
]


class HTTPCycle:
    """One request and its response, as the application sees them."""

    __slots__ = (
        "body_allowed",
        "buffered",
        "bytes_sent",
        "chunks",
        "content_length",
        "continue_sent",
        "disconnected",
        "expect_continue",
        "head_request",
        "header_flags",
        "on_complete",
        "phase",
        "reading_paused",
        "registry",
        "request_complete",
        "request_delivered",
        "response_headers",
        "scope",
        "sink",
        "status",
        "task",
        "waiter",
    )

    def __init__(
        self,
        scope: Scope,
        sink: ResponseSink,
        *,
        expect_continue: bool,
        has_body: bool,
        on_complete: Callable[[HTTPCycle], None] | None = None,
    ) -> None:
        self.scope = scope
        self.sink = sink
        self.phase = Phase.START
        self.status = 0
        self.response_headers: list[tuple[bytes, bytes]] = []
        self.content_length: int | None = None
        self.header_flags = 0
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
        self.waiter: asyncio.Future[None] | None = None
        #: Called once when the response is complete or aborted.
        self.on_complete = on_complete
        #: The task running the app, when it outlived its first step, and the set of running
        #: tasks it belongs to (for shutdown): run() takes it out when the app returns.
        self.task: asyncio.Task[None] | None = None
        self.registry: set[asyncio.Task[None]] | None = None

    # -- protocol side -------------------------------------------------------------------------

    def feed_body(self, data: bytes) -> bool:
        """Buffer request body bytes; True when the sink should stop reading for now."""
        self.chunks.append(data)
        self.buffered += len(data)
        self._wake()
        if self.buffered > BODY_HIGH_WATER:
            self.reading_paused = True
            return True
        return False

    def end_body(self) -> None:
        self.request_complete = True
        self._wake()

    def disconnect(self) -> None:
        """The client went away: ``receive()`` returns ``http.disconnect``, ``send()`` raises."""
        self.disconnected = True
        self._wake()
        if self.phase is not Phase.DONE:
            self._complete()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _complete(self) -> None:
        self.phase = Phase.DONE
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
            if self.disconnected or self.phase is Phase.DONE:
                return {"type": "http.disconnect"}
            if self.expect_continue and not self.continue_sent and self.phase is Phase.START:
                self.continue_sent = True
                self.sink.send_continue()
            self.waiter = waiter = asyncio.get_running_loop().create_future()
            await waiter

    async def send(self, message: Message) -> None:
        phase = self.phase
        message_type = message["type"]
        if phase is Phase.HEAD or phase is Phase.BODY:
            if message_type != "http.response.body":
                raise RuntimeError(f"Expected 'http.response.body', got {message_type!r}")
            if self.disconnected:
                raise ClientDisconnected("client disconnected")
            body = message.get("body", b"")
            more_body = message.get("more_body", False)
            if type(body) is not bytes:
                body = self._coerce_body(body)
            self._count(body, more_body)
            sink = self.sink
            if phase is Phase.HEAD:
                sink.send_head(self, body if self.body_allowed else b"", more_body)
                self.phase = Phase.BODY
            elif self.body_allowed:
                sink.send_body(body, more_body)
            elif not more_body:
                sink.send_body(b"", False)
            if not more_body:
                self._complete()
            elif sink.writing_paused:
                await sink.drain()
                if self.disconnected:
                    raise ClientDisconnected("client disconnected")
        elif phase is Phase.START:
            if message_type != "http.response.start":
                raise RuntimeError(f"Expected 'http.response.start', got {message_type!r}")
            if self.disconnected:
                raise ClientDisconnected("client disconnected")
            self._start(message)
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
        if type(headers) is not list:
            headers = list(headers)
        content_length: int | None = None
        flags = 0
        watched_headers = _WATCHED_HEADERS
        # Names and values must be bytes; a str slips through here but fails loudly when the
        # head is serialised, before anything is written.
        for name, value in headers:
            watched = watched_headers.get(name.lower())
            if watched is not None:
                if watched == _CONTENT_LENGTH:
                    if not value.isdigit() or content_length is not None:
                        raise ValueError(f"Invalid or repeated Content-Length header {value!r}")
                    content_length = int(value)
                else:
                    flags |= watched
        self.status = status
        self.response_headers = headers
        self.content_length = content_length
        self.header_flags = flags
        self.body_allowed = not (self.head_request or status in _NO_BODY_STATUSES)
        self.phase = Phase.HEAD

    def _count(self, body: bytes, more_body: bool) -> None:
        if not self.body_allowed:
            return
        sent = self.bytes_sent + len(body)
        self.bytes_sent = sent
        declared = self.content_length
        if declared is not None and (sent > declared or (not more_body and sent < declared)):
            # The framing would be wrong on the wire: fail the app's send instead.
            raise RuntimeError(
                f"Response body of {'at least ' if more_body else ''}{sent} bytes does not match "
                f"the declared Content-Length of {declared}"
            )

    @staticmethod
    def _coerce_body(body: Any) -> bytes:
        if isinstance(body, (bytearray, memoryview)):
            return bytes(body)
        raise TypeError(f"'body' must be bytes, got {type(body).__name__}")

    # -- running the application ---------------------------------------------------------------

    async def run(self, app: ASGIApp) -> None:
        """Run the app for this request; the one place app failures become responses."""
        try:
            await app(self.scope, self.receive, self.send)
        except asyncio.CancelledError:
            self._abort_if_unfinished()
            self._unregister()
            raise
        except BaseException as exc:
            if isinstance(exc, ClientDisconnected) and self.disconnected:
                logger.debug("Client disconnected while the app was sending")
            else:
                logger.error("Exception in ASGI application", exc_info=exc)
                self._fail("app raised")
            if not isinstance(exc, Exception):
                self._unregister()
                raise
        else:
            if self.phase is not Phase.DONE:
                if self.phase is Phase.START:
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
        if phase is Phase.DONE or self.disconnected:
            return
        if phase is Phase.START or phase is Phase.HEAD:
            # Nothing is on the wire yet: the client can still get a proper answer.
            self.status = 500
            self.response_headers = _SERVER_ERROR_HEADERS
            self.content_length = len(_SERVER_ERROR_BODY)
            self.header_flags = 0
            self.body_allowed = not self.head_request
            self.sink.send_head(self, _SERVER_ERROR_BODY if self.body_allowed else b"", False)
            self.phase = Phase.BODY
            self.bytes_sent = len(_SERVER_ERROR_BODY)
            self._complete()
        else:
            logger.debug("Aborting the connection: %s after the response started", why)
            self._abort_if_unfinished()

    def _abort_if_unfinished(self) -> None:
        if self.phase is not Phase.DONE:
            self.sink.abort()
            self._complete()

