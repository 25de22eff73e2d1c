"""State shared by the server and its connections, as plain values (no Config here)."""

from __future__ import annotations

import asyncio
import contextvars
import sys
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from asgiserve.asgi.types import ASGIApp, Scope
    from asgiserve.logging import AccessLog
    from asgiserve.protocols.http11 import RequestSink
    from asgiserve.transport.connection import HTTP11Connection
    from asgiserve.transport.http2 import H2Settings
    from asgiserve.transport.tls import TLSInfo
    from asgiserve.transport.websocket import WebSocketSettings

__all__ = [
    "FileAnswer",
    "RememberedFiles",
    "RequestParser",
    "ServerState",
    "start_task",
]


class RequestParser(Protocol):
    """What a connection needs from a parser backend (httptools or h11)."""

    in_head: bool

    def feed(self, data: bytes) -> None: ...


if TYPE_CHECKING:
    ParserFactory = Callable[[RequestSink], RequestParser]

# A request's task starts lazily, at the loop's next turn, on every version. Python 3.12+ could
# run its first step at once (eager_start), writing a simple response before data_received
# returns, in fewer instructions (callgrind, hello: about 15k a request less); but on a 2-core
# Intel Xeon (hello, wrk c64, uvloop) it served 20-35% fewer requests a second than lazy starts
# (3.12: ~45k against ~55k req/s; 3.13: ~40-45k against ~60k), the requests read in one turn of
# the loop being answered together in the next. The req/s decides.
#
# start_task builds the Task itself, on every loop and version: a name given here says what a
# task runs in a dump of the loop's tasks. (Left to itself, CPython before 3.12 formats a
# "Task-<n>" name for each task: 1.4% of a small request's instructions on 3.11.)

if sys.version_info >= (3, 11):

    def start_task(
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, None],
        context: contextvars.Context,
        name: str,
    ) -> asyncio.Task[None]:
        return asyncio.Task(coro, loop=loop, context=context, name=name)

else:

    def start_task(
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, None],
        context: contextvars.Context,
        name: str,
    ) -> asyncio.Task[None]:
        # A 3.10 Task copies the *current* context; make the fresh copy current first.
        return context.run(asyncio.Task, coro, loop=loop, name=name)


class FileAnswer(Protocol):
    """The server's own answer to a request for a file it serves (``--static``, ``--mount``),
    as the transport sees it: a 200 whose body is the file, or a 304. A server-side component
    fills it in (``apps/static.py``), so that the transport imports nothing from the apps."""

    #: 200 (the file follows the head) or 304 (no body: RFC 9110 section 15.4.5).
    @property
    def status(self) -> int: ...

    #: An open descriptor of the file, lent for the call; -1 once let go (the app answers
    #: instead) and always for a 304.
    @property
    def fd(self) -> int: ...

    #: Bytes of the body: the file's size, 0 for a 304.
    @property
    def size(self) -> int: ...

    #: The response's headers, and their wire form (made by the server on first use).
    @property
    def headers(self) -> tuple[tuple[bytes, bytes], ...]: ...

    encoded_headers: bytes | None


class RememberedFiles(Protocol):
    """``StaticFiles.borrow_remembered`` (apps/static.py), or the same through ``Mounts``:
    the answer to a GET of ``route`` with these request headers, or None (the app answers)."""

    def __call__(
        self, route: str, request_headers: Iterable[tuple[bytes, bytes]], /
    ) -> FileAnswer | None: ...


class ServerState:
    """Everything connections share: the app, limits as plain values, live bookkeeping."""

    def __init__(
        self,
        *,
        app: ASGIApp,
        loop: asyncio.AbstractEventLoop,
        parser_factory: ParserFactory,
        keep_alive_timeout: float,
        head_timeout: float,
        body_timeout: float = 30.0,
        write_timeout: float = 60.0,
        root_path: str = "",
        lifespan_state: dict[str, Any] | None = None,
        access_log: AccessLog | None = None,
        limit_concurrency: int | None = None,
        limit_max_requests: int | None = None,
        on_max_requests: Callable[[], None] | None = None,
        websocket: WebSocketSettings | None = None,
        http2: H2Settings | None = None,
        tls: TLSInfo | None = None,
        limit_request_body: int | None = None,
        limit_discard_body: int = 1024 * 1024,
        files: RememberedFiles | None = None,
        rewrite_scope: Callable[[Scope], None] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.app = app
        self.loop = loop
        #: Seconds, monotonic: what deadlines are measured with (the loop's clock; a test
        #: may give its own to drive the timeouts without waiting).
        self.clock: Callable[[], float] = loop.time if clock is None else clock
        self.parser_factory = parser_factory
        self.keep_alive_timeout = keep_alive_timeout
        self.head_timeout = head_timeout
        #: A request body being read must make progress (BODY_PROGRESS bytes) this often.
        self.body_timeout = body_timeout
        #: A client that does not read must let writing resume within this many seconds.
        self.write_timeout = write_timeout
        self.root_path = root_path
        self.lifespan_state: dict[str, Any] = lifespan_state if lifespan_state is not None else {}
        self.access_log = access_log
        self.limit_concurrency = limit_concurrency
        self.limit_max_requests = limit_max_requests
        self.on_max_requests = on_max_requests
        #: None when WebSocket support is off (``--ws none`` or no ``websockets`` package).
        self.websocket = websocket
        #: None when HTTP/2 is off (``--no-http2`` or no ``h2`` package).
        self.http2 = http2
        #: The ``tls`` extension's per-listener facts; None without TLS.
        self.tls = tls
        #: Largest request body in bytes (413 beyond); None: no limit.
        self.limit_request_body = limit_request_body
        #: Bytes of a body the app left unread that are read and dropped after its response
        #: to keep the connection; beyond, it closes.
        self.limit_discard_body = limit_discard_body
        #: The files the server serves itself (``--static``, ``--mount``): a plain GET of a
        #: file served before is answered without running the app (transport/connection.py).
        self.files = files
        #: What the server's middleware does to a scope before the app sees it (proxy
        #: headers), for the requests answered without the app.
        self.rewrite_scope = rewrite_scope
        #: Connections whose answer to a ``files`` request waits for the end of this turn of
        #: the loop, to be sent together (each holds its answer: transport/connection.py,
        #: ``_answer_file``); None while no turn is collecting them.
        self.answer_batch: list[HTTP11Connection] | None = None
        #: Pre-encoded ``server``/``date``/``--header`` lines, refreshed once a second.
        self.default_headers = b""
        self.connections: set[Any] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.total_requests = 0
        #: Set when the server shuts down: responses close their connections.
        self.draining = False

    def sweep_timeouts(self) -> None:
        """Close connections whose keep-alive or request-head deadline passed (once a second)."""
        now = self.clock()
        for connection in list(self.connections):
            deadline = connection.deadline
            if deadline and now >= deadline:
                connection.on_deadline()
