"""The asyncio side of an HTTP/1.1 connection: bytes in, bytes out, timers, flow control.

Theory of operation
-------------------
One :class:`HTTP11Connection` per socket. ``data_received`` feeds the parser backend, which
reports requests to us (``on_request``/``on_body``/``on_request_end``); each request becomes an
:class:`~asgiserve.asgi.http.HTTPCycle` in a FIFO, and requests run one at a time in order
(pipelined requests wait their turn; reading pauses while any wait, so buffered input stays
bounded). The app for a request runs in a task that starts at the loop's next turn (on every
Python: eager starts on 3.12+ measured slower, see ``start_task``).

Writes are "corked" (held in ``cork``, then written together in one ``transport.write``) in
two cases, :class:`CorkKind`: while we work through a burst of pipelined requests (as tasks
start lazily, each takes a loop iteration, so that cork stays open across
iterations for as long as responses keep completing, checked once per iteration); and while an
app sends a response in parts (``more_body``): what it sends within one turn of the loop
leaves in one write, when the response ends or at the end of the turn, whichever is first, so
a part is never held past the turn it was sent in. A cork never keeps more than
``CORK_LIMIT`` bytes: beyond, they are written at once, so that the transport's flow control
sees them and the app's ``send()`` waits while the client does not read.

We are the cycle's :class:`~asgiserve.asgi.http.ResponseSink`: we decide the HTTP/1.1 framing
(Content-Length, chunked, or close-delimited for HTTP/1.0) and whether the connection stays
open. Protocol errors from the parser become one complete error response and a close, sent
after the responses to earlier requests. Timeouts are deadlines checked by the server's
once-a-second sweep rather than a timer per request.

Where the connection stands is one value, :class:`Stage`, moved only along the table
``_TRANSITIONS`` (docs/architecture.md has it with each stage's deadline); whether the
transport reads is derived from the stage and a few reasons (:meth:`~HTTP11Connection._may_read`),
never kept as flags of its own.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
from collections import deque
from http import HTTPStatus
from time import perf_counter
from typing import TYPE_CHECKING, Any, Final

from asgiserve.asgi.http import (
    HEADER_CONNECTION,
    HEADER_DATE,
    HEADER_SERVER,
    HEADER_TRANSFER_ENCODING,
    HTTPCycle,
    Phase,
    remembered_headers,
)
from asgiserve.asgi.scope import ConnectionInfo, decode_path, http_scope
from asgiserve.protocols.errors import ProtocolError
from asgiserve.protocols.http11 import (
    LAST_CHUNK,
    RequestHead,
    encode_chunk,
    encode_header_block,
    encode_trailers,
    end_of_head,
    error_response,
    status_line,
)
from asgiserve.transport.sendfile import SocketFileSender, send_file_buffered
from asgiserve.transport.state import start_task
from asgiserve.transport.tls import tls_extension

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from asgiserve.asgi.types import Message, Receive, Scope, Send
    from asgiserve.transport.state import (
        FileAnswer,
        RememberedFiles,
        RequestParser,
        ServerState,
    )

logger = logging.getLogger("asgiserve.error")

__all__ = ["HTTP11Connection"]

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
#: The names of the tasks this module starts (what they run, in a dump of the loop's tasks).
_APP_TASK = "asgiserve: HTTP/1.1 request"
_FILE_TASK = "asgiserve: file answer"
_OK = status_line(200)
#: Bytes a cork may hold before they are written anyway: twice the default high-water mark of
#: asyncio's and uvloop's transports, so that a 64 KiB response sent in parts leaves in one
#: write with its head and chunk framing. It bounds what an app can send past a client that
#: does not read: the transport's high-water mark, this, and one part.
CORK_LIMIT = 128 * 1024
# Offered to every HTTP request (ASGI extensions); HTTPCycle handles the messages.
_FILE_EXTENSIONS: dict[str, dict[str, Any]] = {
    "http.response.pathsend": {},
    "http.response.zerocopysend": {},
}
# upgrade_to before the first bytes of a cleartext connection when HTTP/2 is on.
_MAYBE_PRIOR_KNOWLEDGE = b"h2 prior knowledge?"


class Stage:
    """Where an HTTP/1.1 connection stands: one value, changed only through
    :meth:`HTTP11Connection._enter`, which checks :data:`TRANSITIONS` (the table is in
    docs/architecture.md). Plain ``Final`` ints rather than an ``enum``: the compiled build
    compares them natively on every request.

    Which request is active and which wait is data (``active``, ``queue``), not stage;
    whether the transport reads is derived from the stage and a few reasons
    (:meth:`HTTP11Connection._may_read`)."""

    IDLE: Final = 0  # no request in progress: waiting for one (keep-alive deadline)
    HEAD: Final = 1  # part of a request head has come (head deadline)
    RECEIVING: Final = 2  # the app runs; its request body is still arriving (body deadline)
    RESPONDING: Final = 3  # the app runs; its request body is complete (or there is none)
    ANSWERING: Final = 4  # the server's own answer to a file waits in this turn's batch
    DISCARDING: Final = 5  # the response is out; the body the app left unread is dropped
    CLOSING: Final = 6  # closed by us: nothing more is read or written
    UPGRADED: Final = 7  # a WebSocket or HTTP/2 connection took the transport over
    CLOSED: Final = 8  # the transport is gone (connection_lost)


STAGE_NAMES: Final = (
    "IDLE",
    "HEAD",
    "RECEIVING",
    "RESPONDING",
    "ANSWERING",
    "DISCARDING",
    "CLOSING",
    "UPGRADED",
    "CLOSED",
)

#: The allowed transitions, from each stage. Every stage may go to CLOSING (a protocol error,
#: a timeout, an abort, shutdown) and to CLOSED (the client went away), except the last ones.
_TRANSITIONS: Final[dict[int, tuple[int, ...]]] = {
    # A request (read whole, or the rest of its head) starts the app or the server's answer;
    # an upgrade hands the transport over.
    Stage.IDLE: (Stage.HEAD, Stage.RECEIVING, Stage.RESPONDING, Stage.ANSWERING, Stage.UPGRADED),
    # A head completes (answered at once by the server, the connection is idle again).
    Stage.HEAD: (Stage.IDLE, Stage.RECEIVING, Stage.RESPONDING, Stage.ANSWERING, Stage.UPGRADED),
    # The body ends; or the response completes first: what is left of the body is dropped
    # (DISCARDING), or the connection closes.
    Stage.RECEIVING: (Stage.RESPONDING, Stage.IDLE, Stage.HEAD, Stage.DISCARDING),
    # The response completes: idle, or the next pipelined request starts.
    Stage.RESPONDING: (Stage.IDLE, Stage.HEAD, Stage.RECEIVING, Stage.RESPONDING),
    # The batch sends the answer: done (idle), or the rest of the file needs a task
    # (RESPONDING), or the file went and the app answers after all (IDLE, then the queue).
    Stage.ANSWERING: (Stage.IDLE, Stage.HEAD, Stage.RESPONDING),
    # The dropped body ends.
    Stage.DISCARDING: (Stage.IDLE,),
    # The transport goes once closed; after an upgrade it is another protocol's.
    Stage.CLOSING: (Stage.CLOSED,),
    Stage.UPGRADED: (),
    Stage.CLOSED: (),
}
#: The same table as bitmasks, with CLOSING and CLOSED added to every open stage, for a
#: cheap check: bit ``t`` of ``ALLOWED[s]`` is set when ``s -> t`` is allowed.
ALLOWED: Final[tuple[int, ...]] = tuple(
    sum(1 << target for target in _TRANSITIONS[stage])
    | ((1 << Stage.CLOSING) | (1 << Stage.CLOSED) if stage < Stage.CLOSING else 0)
    for stage in range(len(STAGE_NAMES))
)


# The stages as module globals, for the methods below: one lookup in pure Python, where
# ``Stage.X`` costs two (this is the per-request path).
_IDLE: Final = Stage.IDLE
_HEAD: Final = Stage.HEAD
_RECEIVING: Final = Stage.RECEIVING
_RESPONDING: Final = Stage.RESPONDING
_ANSWERING: Final = Stage.ANSWERING
_DISCARDING: Final = Stage.DISCARDING
_CLOSING: Final = Stage.CLOSING
_UPGRADED: Final = Stage.UPGRADED
_CLOSED: Final = Stage.CLOSED


#: Phase.DONE as a global: a member looked up on its enum class costs about ten times as much
#: (EnumType's attribute hook), and every response passes _on_response_complete.
_RESPONSE_DONE: Final = Phase.DONE


class CorkKind:
    """Who writes a cork out (``HTTP11Connection.cork_kind``, meaningful while ``cork`` is
    set)."""

    #: Responses to a burst of pipelined requests: written by _run_queue once the burst is
    #: served, or where the cork spans loop iterations, by _check_cork or the last response.
    BURST: Final = 0
    #: The parts of one response sent within a turn of the loop (``more_body``): written when
    #: the response ends (_on_response_complete) or at the end of the turn (_check_cork).
    TURN: Final = 1


# As module globals for the per-request path, like the stages above.
_BURST: Final = CorkKind.BURST
_TURN: Final = CorkKind.TURN


class _Deadline:
    """What happens when a connection's deadline passes."""

    NONE: Final = 0
    IDLE: Final = 1  # keep-alive timeout: close quietly
    HEAD: Final = 2  # request head too slow: 408 and close
    BODY: Final = 3  # request body too slow (or a discarded one): 408 (if we can) and close
    WRITE: Final = 4  # the client does not read its response: drop the connection


#: Request body bytes that count as progress: each such amount must come within
#: ``body_timeout`` of the last.
BODY_PROGRESS = 64 * 1024


def _peer(transport: asyncio.BaseTransport, key: str) -> tuple[str, int] | None:
    address = transport.get_extra_info(key)
    if isinstance(address, (tuple, list)) and len(address) >= 2:
        return (str(address[0]), int(address[1]))
    return None


class _EncodedHeaders:
    """Response header lines, encoded, and the header list they were encoded from."""

    __slots__ = ("block", "headers")

    def __init__(self, headers: list[tuple[bytes, bytes]], block: bytes) -> None:
        self.headers = headers
        self.block = block


#: The encoded lines of the last header list that HTTPCycle remembered (asgi.http's
#: CheckedHeaders: a list of its own that nobody changes, handed to every response with the
#: same headers): such a response is told by identity, and its lines are not encoded again.
_last_block = _EncodedHeaders([], b"")


def _encode_and_remember(headers: list[tuple[bytes, bytes]]) -> bytes:
    global _last_block
    block = encode_header_block(headers)
    if remembered_headers(headers):
        _last_block = _EncodedHeaders(headers, block)
    return block


def _send_answers(state: ServerState) -> None:
    """The end of a turn of the loop that answered files: send the answers that waited."""
    batch = state.answer_batch
    state.answer_batch = None
    if not batch:
        return
    for connection in batch:
        try:
            connection._send_answer()
        except Exception:  # a bug: lose this connection, not the others' answers
            logger.exception("Exception sending a response")
            connection.abort()


class HTTP11Connection(asyncio.Protocol):
    __slots__ = (
        "active",
        "active_head",
        "answer",
        "body_progress",
        "context",
        "cork",
        "cork_bytes",
        "cork_kind",
        "cork_mark",
        "deadline",
        "deadline_kind",
        "discarded",
        "drain_waiters",
        "file_sender",
        "info",
        "keep_alive",
        "loop",
        "parser",
        "parsing",
        "pending_error",
        "proxied",
        "queue",
        "reading_paused",
        "response_chunked",
        "response_close",
        "responses_done",
        "stage",
        "started_at",
        "state",
        "transport",
        "upgrade_to",
        "writing_paused",
    )

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.loop = state.loop
        self.transport: asyncio.Transport | None = None
        self.parser: RequestParser = state.parser_factory(self)
        self.info: ConnectionInfo | None = None
        self.context = contextvars.copy_context()
        #: Requests parsed and waiting for their turn, with their heads.
        self.queue: deque[tuple[HTTPCycle, RequestHead]] = deque()
        #: The request whose response is being produced.
        self.active: HTTPCycle | None = None
        self.active_head: RequestHead | None = None
        #: The server's own answer to ``active_head`` while it is being sent (_answer_file).
        self.answer: FileAnswer | None = None
        #: Where the connection stands (see Stage).
        self.stage: int = _IDLE
        #: The request whose body the parser is reading (the active one or the last queued).
        self.parsing: HTTPCycle | None = None
        #: Bytes dropped so far while DISCARDING (bounded by ``limit_discard_body``).
        self.discarded = 0
        #: Body bytes read since the body deadline was last pushed back.
        self.body_progress = 0
        self.keep_alive = True
        self.pending_error: ProtocolError | None = None
        self.response_chunked = False
        self.response_close = False
        #: The transport's reading state as we last set it (see _may_read), and its writing
        #: state as it last told us (pause_writing).
        self.reading_paused = False
        self.writing_paused = False
        self.drain_waiters: list[asyncio.Future[None]] = []
        #: How files are sent on this connection (made on first use); told when it is lost.
        self.file_sender: SocketFileSender | None = None
        #: Bytes held back to be written together (see the module docstring), their size, who
        #: writes them (CorkKind), and for a cork that spans loop iterations,
        #: ``responses_done`` at its last check.
        self.cork: list[bytes] | None = None
        self.cork_bytes = 0
        self.cork_kind: int = CorkKind.BURST
        self.cork_mark = -1
        self.responses_done = 0
        self.deadline = 0.0
        self.deadline_kind = _Deadline.NONE
        self.started_at = 0.0
        #: Set while a cleartext connection may still turn out to be h2c with prior knowledge.
        self.upgrade_to: bytes | None = None
        #: (client, server) from a PROXY protocol header, set before connection_made.
        self.proxied: tuple[tuple[str, int] | None, tuple[str, int] | None] | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        state = self.state
        state.connections.add(self)
        server: tuple[str, int | None] | None = _peer(transport, "sockname")
        if server is None:
            sockname = transport.get_extra_info("sockname")
            server = (sockname, None) if isinstance(sockname, str) and sockname else None
        client = _peer(transport, "peername")
        proxied = self.proxied
        if proxied is not None:
            # The PROXY protocol header named the real client (transport/proxy_protocol.py).
            client = proxied[0]
            server = proxied[1] or server
        extensions = _FILE_EXTENSIONS
        tls = state.tls
        if tls is not None:
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is not None:
                # Once per connection: the handshake is over and nothing in it changes.
                extensions = {**_FILE_EXTENSIONS, "tls": tls_extension(ssl_object, tls)}
        self.info = ConnectionInfo(
            scheme="https" if transport.get_extra_info("sslcontext") else "http",
            client=client,
            server=server,
            root_path=state.root_path,
            state=state.lifespan_state,
            extensions=extensions,
        )
        self._set_deadline(_Deadline.IDLE, state.keep_alive_timeout)
        if state.http2 is not None:
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is None:
                self.upgrade_to = _MAYBE_PRIOR_KNOWLEDGE
            elif ssl_object.selected_alpn_protocol() == "h2":
                self._switch_to_http2(b"", None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.stage != _UPGRADED:
            self._enter(_CLOSED)
        self.state.connections.discard(self)
        self.deadline = 0.0
        active = self.active
        if active is not None:
            active.disconnect()
        for cycle, _head in self.queue:
            cycle.disconnect()
        self.queue.clear()
        parsing = self.parsing
        if parsing is not None and parsing is not active:
            parsing.disconnect()
        self._wake_drain_waiters()
        if self.file_sender is not None:
            self.file_sender.connection_lost()

    def eof_received(self) -> bool | None:
        # A client may shut down its sending side once its request is out (RFC 9112 section
        # 9.6 lets either side close; a half-close is how some clients say "no more
        # requests"): answer what was read, then close. Nothing more can come, so a body cut
        # short is a disconnect for its app, and an idle connection closes now.
        self.keep_alive = False
        parsing = self.parsing
        if parsing is not None:
            self.parsing = None
            if self.stage == _DISCARDING:
                self._enter(_IDLE)
            else:
                parsing.disconnect()
        if self._idle() or self.stage >= _CLOSING or self.state.tls is not None:
            # The transport closes. (Under TLS it would anyway: asyncio's TLS transport logs
            # a warning and ignores a True here; a TLS client ends with close_notify.)
            return None
        # Whether the client waits for its answers or has gone, only a write can tell: the
        # apps go on, and one that listens for a disconnect hears of it (HTTPCycle.end_input).
        active = self.active
        if active is not None:
            active.end_input()
        for cycle, _head in self.queue:
            cycle.end_input()
        return True

    def pause_writing(self) -> None:
        self.writing_paused = True
        self._set_deadline(_Deadline.WRITE, self.state.write_timeout)

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.deadline_kind == _Deadline.WRITE:
            self._rearm_deadline()
        self._wake_drain_waiters()
        if self.active is None and self.queue and self.stage < _CLOSING:
            self._run_queue()  # requests held back while the client did not read

    def data_received(self, data: bytes) -> None:
        if self.stage >= _CLOSING:
            return
        if self.upgrade_to is _MAYBE_PRIOR_KNOWLEDGE:
            self.upgrade_to = None
            if data[:14] == b"PRI * HTTP/2.0":
                # RFC 9113 section 3.3: h2c with prior knowledge, recognised by its preface.
                self._switch_to_http2(data, None)
                return
        try:
            self.parser.feed(data)
        except ProtocolError as exc:
            self._on_protocol_error(exc)
        stage = self.stage
        if stage >= _CLOSING:
            return  # an error closed us, or a WebSocket took over
        if self.active is None:
            if self.queue:
                self._run_queue()  # which stops reading if some must wait (writing paused)
            elif stage == _IDLE and self.parser.in_head:
                self._enter(_HEAD)
                self._set_deadline(_Deadline.HEAD, self.state.head_timeout)
        elif self.queue and not self.reading_paused:
            # Pipelined requests are waiting: stop reading until they have been served.
            self._pause_reading()

    # -- parser sink ---------------------------------------------------------------------------

    def on_request(self, head: RequestHead) -> bool | None:
        state = self.state
        state.total_requests += 1
        upgrade = head.upgrade
        if upgrade is not None and self._idle():
            if upgrade == b"websocket" and state.websocket is not None:
                # Switch protocols once the parser has the request; see on_upgrade.
                self.active_head = head
                self.upgrade_to = upgrade
                return True
            if (
                upgrade == b"h2c"
                and state.http2 is not None
                and not head.has_body
                and any(name == b"http2-settings" for name, _ in head.headers)
            ):
                # RFC 7540 section 3.2 (kept by RFC 9113 for compatibility): HTTP/1.1
                # Upgrade to cleartext HTTP/2, the request becoming stream 1.
                self.active_head = head
                self.upgrade_to = upgrade
                return True
        files = state.files
        if (
            files is not None
            and self._idle()
            and self.cork is None
            and head.method == "GET"
            and upgrade is None
            and not head.has_body
            and self._answer_file(head, files)
        ):
            if state.limit_max_requests is not None:
                self._count_toward_max_requests()
            return None
        scope = self._scope_of(head)
        body_limit = state.limit_request_body
        # Arguments by position: on CPython 3.11 keyword arguments to a class call cost a dict
        # per call, 1.8% of a small request's instructions (callgrind).
        if body_limit is None:
            cycle = HTTPCycle(
                scope, self, head.expect_continue, head.has_body, self._on_response_complete
            )
        else:
            cycle = HTTPCycle(
                scope,
                self,
                head.expect_continue,
                head.has_body,
                self._on_response_complete,
                body_limit,
                head.content_length,
            )
        self.parsing = cycle
        self.queue.append((cycle, head))
        if state.limit_max_requests is not None:
            self._count_toward_max_requests()
        return None

    def _count_toward_max_requests(self) -> None:
        state = self.state
        assert state.limit_max_requests is not None
        if state.total_requests >= state.limit_max_requests and state.on_max_requests:
            state.on_max_requests()

    def on_upgrade(self, rest: bytes) -> None:
        """Hand the transport to a WebSocket or HTTP/2 connection, with the bytes after the
        upgrade request."""
        head, transport = self.active_head, self.transport
        assert head is not None and transport is not None and self.info is not None
        if self.upgrade_to == b"h2c":
            settings_header = next(v for n, v in head.headers if n == b"http2-settings")
            transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: h2c\r\n\r\n"
            )
            self._switch_to_http2(rest, (head, settings_header))
            return
        from asgiserve.transport.websocket import WebSocketConnection

        settings = self.state.websocket
        assert settings is not None
        self._release()
        websocket = WebSocketConnection(self.state, settings, transport)
        transport.set_protocol(websocket)
        websocket.start(head, self.info, rest)

    def _release(self) -> None:
        """This object is done with the transport: another protocol takes it over."""
        self._enter(_UPGRADED)
        self.deadline = 0.0
        self.upgrade_to = None
        self.state.connections.discard(self)
        if self.file_sender is not None:
            self.file_sender.release()

    def _switch_to_http2(self, data: bytes, upgrade: tuple[RequestHead, bytes] | None) -> None:
        from asgiserve.transport.http2 import HTTP2Connection

        transport, settings = self.transport, self.state.http2
        assert transport is not None and settings is not None and self.info is not None
        self._release()
        connection = HTTP2Connection(self.state, settings, transport, self.info)
        transport.set_protocol(connection)
        connection.start(data, upgrade)

    def on_body(self, data: bytes) -> None:
        parsing = self.parsing
        if self.stage == _DISCARDING:
            # The app answered without reading all of it: dropped, up to a bound.
            self.discarded += len(data)
            if self.discarded > self.state.limit_discard_body:
                self._close()
            return
        if parsing is None:
            return
        if parsing.feed_body(data) and parsing is self.active:
            # The app's buffer is full (HTTPCycle.reading_paused): wait for it to read.
            self._pause_reading()
            if self.deadline_kind == _Deadline.BODY:
                self._rearm_deadline()  # the app is slow, not the client
        elif self.deadline_kind == _Deadline.BODY:
            progress = self.body_progress + len(data)
            if progress >= BODY_PROGRESS:
                progress = 0
                self._set_deadline(_Deadline.BODY, self.state.body_timeout)
            self.body_progress = progress

    def on_request_end(self) -> None:
        parsing = self.parsing
        if parsing is not None:
            self.parsing = None
            parsing.end_body()
        stage = self.stage
        if stage == _RECEIVING and parsing is self.active:
            self._enter(_RESPONDING)
            if self.deadline_kind == _Deadline.BODY:
                self.deadline = 0.0
                self.deadline_kind = _Deadline.NONE
        elif stage == _DISCARDING:
            self._enter(_IDLE)
            self._update_reading()
            self._rearm_deadline()

    # -- running requests ----------------------------------------------------------------------

    def _run_queue(self) -> None:
        """Start queued requests in order while each completes synchronously."""
        queue = self.queue
        cork: list[bytes] | None = None
        if len(queue) > 1 and self.cork is None:
            self.cork = cork = []
        try:
            while (
                self.stage <= _HEAD
                and queue
                and not self.writing_paused  # the client is not reading what we wrote
            ):
                cycle, head = queue.popleft()
                self.active = cycle
                self.active_head = head
                if cycle.request_complete:
                    self._enter(_RESPONDING)
                    self.deadline = 0.0
                    self.deadline_kind = _Deadline.NONE
                else:
                    self._enter(_RECEIVING)
                    self.body_progress = 0
                    self._set_deadline(_Deadline.BODY, self.state.body_timeout)
                self._start(cycle)
        finally:
            if cork is not None:
                if self.active is not None and self.stage < _CLOSING:
                    # The request just started runs at the loop's next turn: keep the cork.
                    self.cork_mark = self.responses_done
                    self.loop.call_soon(self._check_cork)
                else:
                    self._uncork()
        if queue:
            self._pause_reading()
        elif self.reading_paused:
            self._update_reading()

    def _check_cork(self) -> None:
        """Once per loop iteration while a cork spans iterations: write it out unless
        pipelined responses are still completing one after the other. (A TURN cork's
        response is still going, or its cork would be gone: it is written out.)"""
        if self.cork is None:
            return
        if self.responses_done != self.cork_mark and (self.active is not None or self.queue):
            self.cork_mark = self.responses_done
            self.loop.call_soon(self._check_cork)
        else:
            self._uncork()

    def _flush_cork(self) -> None:
        """Write what the cork holds; the cork stays in place."""
        cork = self.cork
        if cork:
            self.cork_bytes = 0
            data = b"".join(cork)
            cork.clear()
            if self.transport is not None and self.stage < _CLOSING:
                self.transport.write(data)

    def _uncork(self) -> None:
        self._flush_cork()
        self.cork = None
        self.cork_kind = _BURST

    def _start(self, cycle: HTTPCycle) -> None:
        """Run the app for ``cycle`` in a task."""
        state = self.state
        if state.access_log is not None:
            self.started_at = perf_counter()
        app = state.app
        limit = state.limit_concurrency
        if limit is not None and self._over_limit(limit):
            app = _service_unavailable
        task = start_task(self.loop, cycle.run(app), self.context.copy(), _APP_TASK)
        # Tracked for shutdown; the coroutine removes it when it returns. (The task starts at
        # the loop's next turn, so it is not done yet.)
        cycle.task = task
        cycle.registry = tasks = state.tasks
        tasks.add(task)

    def _idle(self) -> bool:
        """No request in progress or waiting (dropping what is left of a body is not one)."""
        stage = self.stage
        return (stage <= _HEAD or stage == _DISCARDING) and not self.queue

    def _enter(self, stage: int) -> None:
        """Move to ``stage``; a move the table does not allow is a bug."""
        if not ALLOWED[self.stage] >> stage & 1:
            raise RuntimeError(
                f"HTTP/1.1 connection: {STAGE_NAMES[self.stage]} -> {STAGE_NAMES[stage]}"
                " is not an allowed transition"
            )
        self.stage = stage

    def _may_read(self) -> bool:
        """Whether the transport should read now: not once we are done with it, not while
        pipelined requests wait their turn, not while an app leaves its request body unread
        (its buffer is full), not after a protocol error."""
        if self.stage >= _CLOSING or self.queue or self.pending_error is not None:
            return False
        active = self.active
        return not (self.stage == _RECEIVING and active is not None and active.reading_paused)

    def _over_limit(self, limit_concurrency: int) -> bool:
        state = self.state
        return len(state.connections) > limit_concurrency or len(state.tasks) >= limit_concurrency

    def _answer_file(self, head: RequestHead, files: RememberedFiles) -> bool:
        """``--static``/``--mount``: answer a GET of a file served here before with what the
        app would send (StaticFiles.borrow_remembered: the file, or a 304 to a browser's
        revalidation), without an ASGI cycle: no scope, no task, no messages; the head and the
        file go to the socket together (MSG_MORE, then sendfile). What the socket does not take
        at once (a slow client, a large file; under TLS, all of it) is sent by a task of this
        connection (_finish_answer). False when this is not such a request: it goes to the app.

        The first such answer in a turn of the event loop is sent at once; those for the other
        connections read in the same turn wait in ``state.answer_batch`` and are sent one after
        the other at the end of it (_send_answers). A client process waiting for the responses
        (a proxy in front of us, a load generator) is then woken once per burst rather than
        once per response, which on a busy server costs more kernel time than the send itself.
        """
        state = self.state
        limit = state.limit_concurrency
        if limit is not None and self._over_limit(limit):
            return False  # _start answers 503
        answer = files(decode_path(head.path), head.headers)
        if answer is None:
            return False
        if state.access_log is not None:
            self.started_at = perf_counter()
        self.answer = answer
        self.active_head = head
        self.response_chunked = False
        self.response_close = not head.keep_alive or not self.keep_alive or state.draining
        batch = state.answer_batch
        if batch is None:
            state.answer_batch = []
            self.loop.call_soon(_send_answers, state)
            self._send_answer()
        else:
            self._enter(_ANSWERING)
            self.deadline = 0.0
            self.deadline_kind = _Deadline.NONE
            batch.append(self)
        return True

    def _send_answer(self) -> None:
        """Send the answer _answer_file made (``answer``, for ``active_head``), at once or
        from the batch."""
        if self.stage >= _CLOSING:
            return  # lost while the answer waited
        answer = self.answer
        head = self.active_head
        assert answer is not None and head is not None
        status = answer.status
        fd = answer.fd
        if fd < 0 and status == 200:
            # StaticFiles closed the descriptor while the answer waited (it kept too many, or
            # the file changed): the app answers after all.
            self._answer_with_app(head)
            return
        block = answer.encoded_headers
        if block is None:
            block = answer.encoded_headers = encode_header_block(answer.headers)
        prefix = b"".join(
            (
                _OK if status == 200 else status_line(status),
                self.state.default_headers,
                block,
                end_of_head(self.response_close, head.http_version == "1.0"),
            )
        )
        size = answer.size
        if not size:
            # A 304 (RFC 9110 section 15.4.5: no body), or an empty file: the head is all.
            self._write(prefix)
            self._answered()
            return
        transport = self.transport
        assert transport is not None
        sender = self.file_sender
        if sender is None:
            sender = self.file_sender = SocketFileSender.for_transport(self.loop, transport)
        if sender.usable:
            try:
                sent = sender.send_now(fd, 0, size, prefix)
            except Exception:  # the file's fault (it shrank, EIO): the head may be out
                logger.exception("Exception sending a file")
                sent = -1
            if sent < 0:
                self._file_lost()
                self._answered()
                return
            if sent == size:
                self._answered()
                return
            fd = os.dup(fd)  # answer.fd is only lent until we return
            rest = self._send_rest(sender, fd, sent, size - sent, False)
        else:
            self._write(prefix)
            fd = os.dup(fd)
            rest = send_file_buffered(self, fd, 0, size, False)
        if self.stage != _ANSWERING:
            self._enter(_ANSWERING)  # answered at once from IDLE or HEAD
            self.deadline = 0.0
            self.deadline_kind = _Deadline.NONE
        task = start_task(self.loop, self._finish_answer(rest, fd), self.context.copy(), _FILE_TASK)
        # Tracked for shutdown, as an app's task is.
        tasks = self.state.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _finish_answer(self, rest: Awaitable[None], fd: int) -> None:
        """The rest of the server's answer: the file from ``fd`` (a duplicate, closed here)
        as the socket takes it; a failure aborts the connection (the head is out)."""
        try:
            await rest
        except asyncio.CancelledError:  # shutdown's deadline passed
            self.abort()
            raise
        except Exception:  # the file's fault (it shrank, EIO)
            logger.exception("Exception sending a file")
            self.abort()
        finally:
            os.close(fd)
            self._answered()

    def _answered(self) -> None:
        """The server's own answer is out (or lost): logged, then the connection carries on
        as after any response (_response_done)."""
        answer = self.answer
        head = self.active_head
        assert answer is not None and head is not None
        self.answer = None
        self.active_head = None
        access_log = self.state.access_log
        if access_log is not None:
            access_log(
                self._scope_for_log(head),
                answer.status,
                answer.size,
                self.started_at,
                [*answer.headers],
            )
        self._response_done(True, False)

    def _answer_with_app(self, head: RequestHead) -> None:
        """Hand a request the server meant to answer itself (a GET, no body) to the app,
        ahead of any pipelined behind it."""
        self.answer = None
        self.active_head = None
        if self.stage == _ANSWERING:
            self._enter(_IDLE)
        cycle = HTTPCycle(
            self._scope_of(head),
            self,
            expect_continue=False,
            has_body=False,
            on_complete=self._on_response_complete,
        )
        self.queue.appendleft((cycle, head))
        self._run_queue()

    def _scope_of(self, head: RequestHead) -> Scope:
        """The scope of ``head``, as the app sees it."""
        info = self.info
        assert info is not None
        return http_scope(info, head.method, head.http_version, head.path, head.query, head.headers)

    def _scope_for_log(self, head: RequestHead) -> Scope:
        """The scope of a request the server answers without the app, as the access log
        shows it: with the client the app would have seen (the proxy headers' rewrite
        changes nothing else that such a response depends on)."""
        scope = self._scope_of(head)
        rewrite = self.state.rewrite_scope
        if rewrite is not None:
            rewrite(scope)
        return scope

    def _on_response_complete(self, cycle: HTTPCycle) -> None:
        if cycle is not self.active:
            return
        if self.cork_kind == _TURN:
            # The response's last part joins those sent before it in this turn: one write.
            self._uncork()
        head = self.active_head
        self.active = None
        self.active_head = None
        access_log = self.state.access_log
        if access_log is not None:
            access_log(
                cycle.scope, cycle.status, cycle.bytes_sent, self.started_at, cycle.response_headers
            )
        keep_alive = (
            head is not None
            and head.keep_alive
            and cycle.phase is _RESPONSE_DONE
            and not cycle.disconnected
        )
        unread_body = keep_alive and not cycle.request_complete
        if unread_body:
            if cycle.expect_continue and not cycle.continue_sent:
                # RFC 9110 section 10.1.1: we answered without asking for the body, so we
                # cannot tell whether the client will send it: start afresh.
                keep_alive = unread_body = False
            else:
                cycle.chunks.clear()  # dropped with the rest of the body (DISCARDING)
        self._response_done(keep_alive, unread_body)

    def _response_done(self, keep_alive: bool, unread_body: bool) -> None:
        """Where every response ends, an app's (_on_response_complete) or the server's own
        answer (_answered): the connection closes, or carries on with what came meanwhile
        (pipelined requests, a protocol error, a graceful shutdown) or waits for the next
        request. ``keep_alive``: the response allows it; ``unread_body``: the rest of the
        request body is to be read and dropped first."""
        self.responses_done += 1
        if self.stage >= _CLOSING:
            return
        pending_error = self.pending_error
        if pending_error is not None and not self.queue:
            self._send_error(pending_error)
            return
        if not keep_alive or not self.keep_alive or self.response_close or self.state.draining:
            self._close()
            return
        if unread_body:
            # The app did not read the whole body: read and drop the rest at full speed
            # (reading resumes below), then go on.
            self._enter(_DISCARDING)
            self.discarded = 0
        else:
            # RECEIVING, RESPONDING or ANSWERING (or IDLE, HEAD for an answer sent at once)
            # to IDLE: allowed by the table; set directly, as every response passes here.
            self.stage = _IDLE
        if self.queue:
            self._run_queue()  # the next task starts at the loop's next turn
            return
        if self.cork is not None:
            self._uncork()  # the last of a pipelined burst (a cork spanning loop iterations)
        if unread_body:
            self.body_progress = 0
            self._set_deadline(_Deadline.BODY, self.state.body_timeout)
        elif self.parser.in_head:
            self._enter(_HEAD)
            self._set_deadline(_Deadline.HEAD, self.state.head_timeout)
        else:
            self._set_deadline(_Deadline.IDLE, self.state.keep_alive_timeout)
        if self.reading_paused:
            self._update_reading()

    # -- ResponseSink --------------------------------------------------------------------------

    def send_continue(self) -> None:
        self._write(_CONTINUE)

    def send_head(self, cycle: HTTPCycle, body: bytes, more_body: bool) -> None:
        head = self.active_head
        assert head is not None
        close = not head.keep_alive or not self.keep_alive or self.state.draining
        http10 = head.http_version == "1.0"
        default_headers = self.state.default_headers
        headers = cycle.response_headers
        app_chunked = False
        flags = cycle.header_flags
        if flags:
            close, app_chunked, default_headers, headers = self._app_framing(
                cycle, close, default_headers
            )
        chunked = False
        if not cycle.body_allowed or cycle.content_length is not None:
            framing = b""
        elif not more_body and not (app_chunked and not http10):
            framing = b"content-length: %d\r\n" % len(body)
        elif http10:
            framing = b""  # close-delimited (RFC 9112 section 6.3, rule 8)
            close = True
        else:
            # Also when the app asked for chunked itself: its header was taken out, so that
            # there is exactly one, ours, and the body is framed to match it.
            chunked = True
            framing = b"transfer-encoding: chunked\r\n"
        framing += end_of_head(close, http10)
        self.response_chunked = chunked
        self.response_close = close
        if chunked:
            if body:
                body = encode_chunk(body)
            if not more_body:
                body += LAST_CHUNK
        if more_body and self.cork is None:
            self._cork_turn()
        last = _last_block
        block = last.block if headers is last.headers else _encode_and_remember(headers)
        self._write(b"".join((status_line(cycle.status), default_headers, block, framing, body)))

    def _app_framing(
        self, cycle: HTTPCycle, close: bool, default_headers: bytes
    ) -> tuple[bool, bool, bytes, list[tuple[bytes, bytes]]]:
        """The slow path for responses that set hop-by-hop or default headers themselves.
        Returns the headers to send: without the app's ``transfer-encoding``, since framing
        is the server's (RFC 9112 section 6.1: a response never carries both it and
        Content-Length, and none goes to an HTTP/1.0 client)."""
        app_chunked = False
        flags = cycle.header_flags
        headers = cycle.response_headers
        if flags & (HEADER_CONNECTION | HEADER_TRANSFER_ENCODING):
            for name, value in headers:
                lowered = name.lower()
                if lowered == b"connection" and b"close" in value.lower():
                    close = True
                elif lowered == b"transfer-encoding":
                    if value.lower().strip() != b"chunked" or cycle.content_length is not None:
                        raise ValueError(f"Unsupported response Transfer-Encoding {value!r}")
                    app_chunked = True
            if app_chunked:
                headers = [item for item in headers if item[0].lower() != b"transfer-encoding"]
        if flags & (HEADER_SERVER | HEADER_DATE):
            # The app's own server/date headers replace ours.
            skip = tuple(
                prefix
                for flag, prefix in ((HEADER_SERVER, b"server:"), (HEADER_DATE, b"date:"))
                if flags & flag
            )
            default_headers = b"".join(
                line + b"\r\n"
                for line in default_headers.split(b"\r\n")
                if line and not line.lower().startswith(skip)
            )
        return close, app_chunked, default_headers, headers

    def send_body(self, body: bytes, more_body: bool) -> None:
        if self.response_chunked:
            data = encode_chunk(body) if body else b""
            if not more_body:
                data += LAST_CHUNK
        else:
            data = body
        if data:
            if more_body and self.cork is None:
                self._cork_turn()
            # The last part joins the cork, if any: _on_response_complete writes it.
            self._write(data)

    def send_informational(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        # 103 Early Hints is offered on HTTP/2 only: some HTTP/1.1 clients mishandle 1xx
        # responses they did not ask for, so here it is dropped.
        return

    def send_trailers(self, headers: list[tuple[bytes, bytes]]) -> None:
        if self.response_chunked:
            # RFC 9112 section 7.1.2: the trailer section follows the last chunk. Without
            # chunked framing there is nowhere to put trailers: they are dropped.
            self._write(encode_trailers(headers))

    async def drain(self) -> None:
        if not self.writing_paused or self.stage >= _CLOSING:
            return
        waiter = self.loop.create_future()
        self.drain_waiters.append(waiter)
        await waiter

    async def send_file(self, fd: int, offset: int, count: int, more_body: bool) -> None:
        rest = self.send_head_with_file(None, fd, offset, count, more_body)
        if rest is not None:
            await rest

    def send_head_with_file(
        self, cycle: HTTPCycle | None, fd: int, offset: int, count: int, more_body: bool
    ) -> Awaitable[None] | None:
        # The optional ResponseSink method (and send_file, without a cycle). Synchronous as far
        # as it can go: a small file is handed to the kernel at once, and only a file that must
        # wait for the socket costs a coroutine.
        transport = self.transport
        if transport is None or self.stage >= _CLOSING:
            return None
        cork = self.cork
        if cycle is not None:
            # The head is caught in a cork (its own, or a corked burst of pipelined responses
            # it joins) and goes with the file (see SocketFileSender.send_now).
            if cork is None:
                self.cork = cork = []
                try:
                    self.send_head(cycle, b"", True)
                finally:
                    self.cork = None
            else:
                self.send_head(cycle, b"", True)
        head = b""
        if cork:
            head = b"".join(cork)
            cork.clear()
            self.cork_bytes = 0
        sender = self.file_sender
        if sender is None:
            sender = self.file_sender = SocketFileSender.for_transport(self.loop, transport)
        if not sender.usable:
            # TLS or no socket: read in a thread, write through the transport.
            if head:
                transport.write(head)
            return send_file_buffered(self, fd, offset, count, more_body)
        chunked = self.response_chunked
        if chunked:
            head += b"%x\r\n" % count
        # Measured against reading in a thread and writing through the transport (server CPU
        # per response, uvloop, wrk on loopback): 106 vs 254 us for a 50 KiB file, 4.1 vs 30 ms
        # for 20 MiB. Reading a small file in the loop to send it with the head in one write
        # measured the same as this (104 us) and would block on a slow disk: not done.
        sent = sender.send_now(fd, offset, count, head)
        if sent < 0:
            self._file_lost()
            return None
        if sent < count:
            return self._send_rest(sender, fd, offset + sent, count - sent, more_body)
        if chunked:
            self._write(b"\r\n" if more_body else b"\r\n" + LAST_CHUNK)
        return None

    async def _send_rest(
        self, sender: SocketFileSender, fd: int, offset: int, count: int, more_body: bool
    ) -> None:
        if not await sender.send(fd, offset, count, resume=True):
            self._file_lost()
        elif self.response_chunked:
            self._write(b"\r\n" if more_body else b"\r\n" + LAST_CHUNK)

    def _file_lost(self) -> None:
        # The client went away mid-file: the response is lost, so is the connection.
        active = self.active
        self.abort()
        if active is not None:
            active.disconnect()

    def resume_body(self) -> None:
        if self.stage == _RECEIVING:
            self._update_reading()
            self._rearm_deadline()

    def abort(self) -> None:
        self.keep_alive = False
        self._close()

    # -- helpers -------------------------------------------------------------------------------

    def _cork_turn(self) -> None:
        """A part of a response with more to come is about to be written: hold it, and the
        parts sent after it in this turn of the loop, to be written together (a TURN cork)."""
        if self.stage < _CLOSING:
            self.cork = []
            self.cork_kind = _TURN
            self.cork_mark = self.responses_done
            # Callbacks scheduled now run after everything already due in this iteration of
            # the loop, and before the app's task can take its next step: the end of the turn.
            self.loop.call_soon(self._check_cork)

    def _write(self, data: bytes) -> None:
        cork = self.cork
        if cork is not None:
            cork.append(data)
            self.cork_bytes += len(data)
            if self.cork_bytes > CORK_LIMIT:
                # A long response: write now so that flow control sees it (the transport
                # pauses us beyond its high-water mark, and send() waits in drain()).
                self._flush_cork()
        elif self.transport is not None and self.stage < _CLOSING:
            self.transport.write(data)

    def _wake_drain_waiters(self) -> None:
        waiters = self.drain_waiters
        if waiters:
            self.drain_waiters = []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def _set_deadline(self, kind: int, timeout: float) -> None:
        if self.writing_paused and kind != _Deadline.WRITE:
            return  # the write deadline holds until writing resumes (_rearm_deadline)
        self.deadline_kind = kind
        self.deadline = self.state.clock() + timeout if timeout > 0 else 0.0

    def _rearm_deadline(self) -> None:
        """The deadline for where the connection stands, after writing resumed or the app
        took up (or stopped) reading the body."""
        self.deadline = 0.0
        self.deadline_kind = _Deadline.NONE
        stage = self.stage
        if stage >= _CLOSING:
            return
        state = self.state
        if self.writing_paused:
            self._set_deadline(_Deadline.WRITE, state.write_timeout)
        elif stage == _DISCARDING or (stage == _RECEIVING and self._may_read()):
            self.body_progress = 0
            self._set_deadline(_Deadline.BODY, state.body_timeout)
        elif self._idle():
            if self.parser.in_head:
                self._set_deadline(_Deadline.HEAD, state.head_timeout)
            else:
                self._set_deadline(_Deadline.IDLE, state.keep_alive_timeout)

    def on_deadline(self) -> None:
        """Called by the server's sweep when ``deadline`` has passed."""
        kind = self.deadline_kind
        self.deadline = 0.0
        self.deadline_kind = _Deadline.NONE
        if self.stage >= _CLOSING:
            return
        if kind == _Deadline.WRITE:
            logger.debug("Dropping a connection whose client stopped reading")
            self._file_lost()  # the same end: the response cannot be delivered
            return
        if kind == _Deadline.BODY:
            if self.stage == _DISCARDING:
                self._close()
            else:
                self._on_protocol_error(
                    ProtocolError("request body not received in time", HTTPStatus.REQUEST_TIMEOUT)
                )
            return
        if self.stage > _HEAD:
            return
        if kind == _Deadline.HEAD:
            self._send_error(
                ProtocolError("request head not received in time", HTTPStatus.REQUEST_TIMEOUT)
            )
        elif kind == _Deadline.IDLE:
            self._close()

    def _pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None and self.stage < _CLOSING:
            self.reading_paused = True
            self.transport.pause_reading()

    def _update_reading(self) -> None:
        """Resume reading if it is paused and nothing holds it any more (_may_read)."""
        if self.reading_paused and self._may_read():
            self.reading_paused = False
            if self.transport is not None:
                self.transport.resume_reading()

    def _on_protocol_error(self, exc: ProtocolError) -> None:
        # Nothing more is read; the requests read before this one are answered (kept alive),
        # then the error, which closes the connection.
        self._pause_reading()
        parsing = self.parsing
        self.parsing = None
        if parsing is not None:
            if parsing is self.active:
                # The request whose body broke is being served: the app sees a disconnect
                # and, if it has not started its response, the client gets the error.
                if parsing.phase is Phase.START or parsing.phase is Phase.HEAD:
                    self.pending_error = exc
                    parsing.disconnect()
                    return
                parsing.disconnect()
                self._close()
                return
            if self.queue and self.queue[-1][0] is parsing:
                self.queue.pop()
        if self._idle():
            self._send_error(exc)
        else:
            self.pending_error = exc

    def _send_error(self, exc: ProtocolError) -> None:
        logger.debug("Rejecting request: %s (%d)", exc.reason, exc.status)
        self._write(error_response(exc.status, exc.reason, self.state.default_headers))
        self._close()

    def _close(self) -> None:
        if self.stage >= _CLOSING:
            return
        self._uncork()  # what is held back goes before the close; nothing is written after
        self._enter(_CLOSING)
        self.deadline = 0.0
        transport = self.transport
        if transport is not None:
            transport.close()

    def shutdown(self) -> None:
        """Graceful shutdown: close now if idle, else after the response in progress."""
        self.keep_alive = False
        if self._idle():
            self._close()


async def _service_unavailable(scope: Scope, receive: Receive, send: Send) -> None:
    """Served instead of the app beyond ``--limit-concurrency``."""
    body = b"Service Unavailable"
    start: Message = {
        "type": "http.response.start",
        "status": 503,
        "headers": [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", b"%d" % len(body)),
            (b"connection", b"close"),
        ],
    }
    await send(start)
    await send({"type": "http.response.body", "body": body})
