"""HTTP11Connection in memory: a fake transport, a real event loop stepped explicitly, a clock
the test moves. No sockets and no sleeps: every test is deterministic and the file runs in
seconds. Each test runs on both parser backends and both event loops (the ``backend`` fixture).

The fake transport behaves like asyncio's socket transport where the connection can tell:
``close()`` reports ``connection_lost`` at the loop's next turn, ``pause_reading`` stops
``feed`` from delivering, and the write buffer calls ``pause_writing``/``resume_writing`` at its
water marks while the test "reads" from it (:meth:`FakeTransport.drain`). What piled up in that
buffer is what a flow-control test measures.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import h11
import pytest

from asgiserve.loading import new_event_loop, parser_factory
from asgiserve.transport.connection import CORK_LIMIT, HTTP11Connection
from asgiserve.transport.state import ServerState

App = Callable[[Any, Any, Any], Awaitable[None]]

#: The fake transport's write-buffer water marks (asyncio's defaults are 64 KiB / 16 KiB).
HIGH_WATER = 64 * 1024
LOW_WATER = 16 * 1024


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeTransport(asyncio.Transport):
    """Records what the connection writes; models reading, a write buffer and closing."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop = loop
        self.protocol: Any = None
        self.reading = True
        self.closed = False
        self.lost = False
        #: Everything written, in order, and what the peer has not read yet.
        self.written = bytearray()
        #: The size of each write, in order: how many there were is what corking changes.
        self.writes: list[int] = []
        self.buffered = 0
        self.max_buffered = 0
        self.writing_paused = False
        #: Bytes the peer sent while reading was paused: delivered on resume_reading.
        self.pending = bytearray()
        self.eof_pending = False
        self.stage_at_close: int | None = None

    # -- what the connection calls -------------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {
            "peername": ("127.0.0.1", 50000),
            "sockname": ("127.0.0.1", 8000),
        }.get(name, default)

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_protocol(self) -> Any:
        return self.protocol

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(len(data))  # counted first: a refused write shows too
        assert not self.closed, "write after close"
        self.written += data
        self.buffered += len(data)
        self.max_buffered = max(self.max_buffered, self.buffered)
        if self.buffered > HIGH_WATER and not self.writing_paused:
            self.writing_paused = True
            self.protocol.pause_writing()

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.stage_at_close = getattr(self.protocol, "stage", None)
            self.loop.call_soon(self._lose, None)

    def abort(self) -> None:
        self.close()

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        if not self.reading:
            self.reading = True
            if self.pending or self.eof_pending:
                self.loop.call_soon(self._deliver)

    def is_reading(self) -> bool:
        return self.reading

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def can_write_eof(self) -> bool:
        return True

    # -- what the test (the peer) does --------------------------------------------------------

    def send(self, data: bytes) -> None:
        """The peer sends ``data``: delivered now if reading, else when reading resumes."""
        self.pending += data
        if self.reading:
            self._deliver()

    def _deliver(self) -> None:
        while self.pending and self.reading and not self.lost:
            data = bytes(self.pending)
            self.pending.clear()
            self.protocol.data_received(data)
        if self.eof_pending and not self.pending and self.reading and not self.lost:
            self.eof_pending = False
            if not self.protocol.eof_received():
                self.close()

    def send_eof(self) -> None:
        """The peer shuts down its sending side (SHUT_WR)."""
        self.eof_pending = True
        self._deliver()

    def drain(self, count: int | None = None) -> None:
        """The peer reads ``count`` bytes (all) from the write buffer."""
        self.buffered = 0 if count is None else max(0, self.buffered - count)
        if self.writing_paused and self.buffered <= LOW_WATER:
            self.writing_paused = False
            self.protocol.resume_writing()

    def drop(self) -> None:
        """The peer goes away (a reset): connection_lost at once."""
        self.closed = True
        self._lose(ConnectionResetError())

    def _lose(self, exc: Exception | None) -> None:
        if not self.lost:
            self.lost = True
            self.protocol.connection_lost(exc)


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    chunked: bool = False

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass
class Harness:
    loop: asyncio.AbstractEventLoop
    connection: HTTP11Connection
    transport: FakeTransport
    clock: Clock
    state: ServerState
    read_offset: int = 0
    head_requests: int = field(default=0)

    def send(self, data: bytes, turns: int = 8) -> None:
        self.transport.send(data)
        self.step(turns)

    def step(self, turns: int = 8) -> None:
        """Let the loop run ``turns`` times: the app's tasks advance, nothing waits on time."""
        for _ in range(turns):
            self.loop.run_until_complete(asyncio.sleep(0))

    def advance(self, seconds: float) -> None:
        """Move the clock and run the server's once-a-second sweep."""
        self.clock.now += seconds
        self.state.sweep_timeouts()
        self.step()

    @property
    def output(self) -> bytes:
        return bytes(self.transport.written)

    def responses(self) -> list[Response]:
        """Every complete response written since the last call."""
        found, self.read_offset = parse_responses(self.output, self.read_offset)
        return found

    def response(self) -> Response:
        (one,) = self.responses()
        return one


def parse_responses(data: bytes, offset: int = 0) -> tuple[list[Response], int]:
    """Split ``data`` into HTTP/1.1 responses (framing by Content-Length, chunked, or close)."""
    found = []
    while True:
        end = data.find(b"\r\n\r\n", offset)
        if end < 0:
            return found, offset
        lines = data[offset:end].split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers = [
            (name.strip().lower(), value.strip())
            for name, _, value in (line.partition(b":") for line in lines[1:])
        ]
        response = Response(status, headers, b"")
        position = end + 4
        length = response.header(b"content-length")
        if response.header(b"transfer-encoding") == b"chunked":
            response.chunked = True
            body = bytearray()
            while True:
                line_end = data.find(b"\r\n", position)
                if line_end < 0:
                    return found, offset
                size = int(data[position:line_end].split(b";")[0], 16)
                position = line_end + 2
                if size == 0:
                    trailer_end = data.find(b"\r\n\r\n", position - 2)
                    if trailer_end < 0:
                        return found, offset
                    position = trailer_end + 4
                    break
                if len(data) < position + size + 2:
                    return found, offset
                body += data[position : position + size]
                position += size + 2
            response.body = bytes(body)
        elif length is not None or status in (204, 304):
            size = int(length or 0)
            if len(data) < position + size:
                return found, offset
            response.body = data[position : position + size]
            position += size
        else:
            response.body = data[position:]  # close-delimited
            position = len(data)
        found.append(response)
        offset = position


@pytest.fixture
def connect(backend: tuple[str, str]) -> Iterator[Callable[..., Harness]]:
    """Make an HTTP11Connection for ``app`` on a fake transport; ``options`` go to
    ServerState."""
    http, loop_choice = backend
    loop = new_event_loop(loop_choice)
    made: list[Harness] = []

    def make(app: App, **options: Any) -> Harness:
        clock = Clock()
        timeouts = {"keep_alive_timeout": 5.0, "head_timeout": 10.0}
        timeouts.update(options.pop("timeouts", {}))
        state = ServerState(
            app=app,
            loop=loop,
            parser_factory=parser_factory(
                http, max_request_line=8192, max_head=65536, max_fields=100, max_chunk_line=4096
            ),
            clock=clock,
            **timeouts,
            **options,
        )
        state.default_headers = b"server: asgiserve\r\n"
        connection = HTTP11Connection(state)
        transport = FakeTransport(loop)
        transport.set_protocol(connection)
        connection.connection_made(transport)
        harness = Harness(loop, connection, transport, clock, state)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        if not harness.transport.lost:
            harness.transport.drop()
    for task in list(asyncio.all_tasks(loop)):
        task.cancel()
    loop.run_until_complete(asyncio.sleep(0))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


# -- apps ---------------------------------------------------------------------------------------


async def hello(scope: Any, receive: Any, send: Any) -> None:
    body = scope["path"].encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def echo(scope: Any, receive: Any, send: Any) -> None:
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return
        body += message["body"]
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": bytes(body)})


def get(path: str = "/", extra: bytes = b"") -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: a\r\n" + extra + b"\r\n"


def post(body: bytes, path: str = "/", extra: bytes = b"") -> bytes:
    return (
        b"POST "
        + path.encode()
        + b" HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n" % len(body)
        + extra
        + b"\r\n"
        + body
    )


# -- the basics ---------------------------------------------------------------------------------


def test_a_request_gets_its_response_and_the_connection_stays_open(connect: Any) -> None:
    h = connect(hello)
    h.send(get("/a"))
    response = h.response()
    assert (response.status, response.body) == (200, b"/a")
    assert response.header(b"content-length") == b"2"
    assert not h.transport.closed


def test_the_app_runs_at_the_loops_next_turn_not_inside_data_received(connect: Any) -> None:
    # On every Python: an eager start (3.12+) answered inside data_received and served 20-35%
    # fewer requests a second on real sockets (benchmarks/RESULTS.md, "Python versions").
    called: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        called.append(scope["path"])
        await hello(scope, receive, send)

    h = connect(app)
    seen_on_return: list[tuple[list[str], bytes]] = []

    async def deliver() -> None:
        # From inside the running loop, as a real transport calls data_received (an eager
        # start needs a running loop).
        h.transport.send(get("/a"))
        seen_on_return.append((list(called), h.output))

    h.loop.run_until_complete(deliver())
    assert seen_on_return == [([], b"")]
    h.step()
    assert called == ["/a"]
    assert h.response().body == b"/a"


def test_pipelined_requests_are_answered_in_order(connect: Any) -> None:
    h = connect(hello)
    h.send(get("/1") + get("/2") + get("/3"))
    assert [r.body for r in h.responses()] == [b"/1", b"/2", b"/3"]
    assert h.transport.reading


def test_a_request_split_across_reads_is_answered(connect: Any) -> None:
    h = connect(echo)
    data = post(b"hello world")
    for i in range(len(data)):
        h.send(data[i : i + 1], turns=1)
    h.step()
    assert h.response().body == b"hello world"


def test_reading_pauses_while_the_app_does_not_read_and_resumes_when_it_does(
    connect: Any,
) -> None:
    release = asyncio.Event()

    async def slow_echo(scope: Any, receive: Any, send: Any) -> None:
        await release.wait()
        await echo(scope, receive, send)

    h = connect(slow_echo)
    body = b"x" * (256 * 1024)
    data = post(body)
    for start in range(0, len(data), 16 * 1024):
        h.send(data[start : start + 16 * 1024])
    assert not h.transport.reading  # 64 KiB buffered for an app that does not read
    assert len(h.transport.pending) > 128 * 1024
    release.set()
    h.step(20)
    assert h.response().body == body


def test_close_from_the_client_request_closes_after_the_response(connect: Any) -> None:
    h = connect(hello)
    h.send(get("/", b"Connection: close\r\n"))
    assert h.response().header(b"connection") == b"close"
    assert h.transport.closed


def test_the_app_sees_a_disconnect_when_the_client_goes_away(connect: Any) -> None:
    seen: list[str] = []

    async def waits(scope: Any, receive: Any, send: Any) -> None:
        await receive()  # the (empty) body
        seen.append((await receive())["type"])

    h = connect(waits)
    h.send(get())
    h.transport.drop()
    h.step()
    assert seen == ["http.disconnect"]


# -- timeouts -----------------------------------------------------------------------------------


def test_an_idle_connection_closes_after_the_keep_alive_timeout(connect: Any) -> None:
    h = connect(hello)
    h.send(get())
    h.responses()
    h.advance(4.9)
    assert not h.transport.closed
    h.advance(0.2)
    assert h.transport.closed
    assert h.output.count(b"HTTP/1.1") == 1  # closed quietly


def test_a_slow_request_head_gets_408(connect: Any) -> None:
    h = connect(hello)
    h.send(b"GET / HTTP/1.1\r\nHost")
    h.advance(9.9)
    assert not h.transport.closed
    h.advance(0.2)
    assert h.response().status == 408
    assert h.transport.closed


# -- receive() from several tasks (issue 16, defect 3) -----------------------------------------


def test_every_task_waiting_in_receive_sees_the_disconnect(connect: Any) -> None:
    # Starlette's Request.is_disconnected(): one task waits in receive() for the disconnect
    # (a streaming response's listener), another calls receive() and cancels it.
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()  # the (empty) body

        async def listen() -> None:
            seen.append((await receive())["type"])

        listener = asyncio.ensure_future(listen())
        await asyncio.sleep(0)
        probe = asyncio.ensure_future(receive())
        await asyncio.sleep(0)
        probe.cancel()
        await listener

    h = connect(app)
    h.send(get())
    h.transport.drop()
    h.step()
    assert seen == ["http.disconnect"]


def test_a_cancelled_receive_leaves_no_waiter_behind(connect: Any) -> None:
    counts: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        for _ in range(100):
            probe = asyncio.ensure_future(receive())
            await asyncio.sleep(0)
            probe.cancel()
            await asyncio.sleep(0)
        cycle = h.connection.active
        counts.append(len(cycle.waiters or ()))
        await hello(scope, receive, send)

    h = connect(app)
    h.send(get(), turns=300)
    assert counts == [0]
    assert h.response().status == 200


# -- the sendfile path's socket (issue 16, defect 5) ------------------------------------------


def test_a_default_socket_timeout_never_makes_the_file_sender_block(connect: Any) -> None:
    # socket.setdefaulttimeout() (set by some library) must not turn the socket object the
    # sender makes over the transport's descriptor into a blocking one: with a full socket
    # buffer, a send would wait for the timeout with the whole event loop stopped.
    import select
    import socket
    import tempfile
    import time

    from asgiserve.transport.sendfile import SocketFileSender

    h = connect(hello)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    with client, server, tempfile.TemporaryFile() as file:
        file.write(b"x" * 10)
        file.flush()
        server.setblocking(False)
        while select.select([], [server], [], 0.05)[1]:  # the client never reads
            try:
                server.send(b"y" * 65536)
            except BlockingIOError:
                pass
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(2.0)
        try:
            sender = SocketFileSender(h.loop, h.transport, server.fileno(), server.family)
            started = time.monotonic()
            sent = sender.send_now(file.fileno(), 0, 10, b"HTTP/1.1 200 OK\r\n\r\n")
            elapsed = time.monotonic() - started
            sender.release()
        finally:
            socket.setdefaulttimeout(previous)
        assert elapsed < 0.5
        assert sent in (0, 10)  # what the socket took at once (the head waits if need be)


# -- response framing is the server's (issue 16, defect 1) ------------------------------------


def chunked_app(parts: list[bytes]) -> App:
    """An app that passes on an upstream's ``transfer-encoding: chunked`` (an ASGI proxy)."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-type", b"text/plain"), (b"transfer-encoding", b"chunked")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for i, part in enumerate(parts):
            more = i < len(parts) - 1
            await send({"type": "http.response.body", "body": part, "more_body": more})

    return app


def h11_exchange(h: Harness, request: bytes, events: list[Any]) -> tuple[h11.Response, bytes]:
    """Send ``events`` as h11's client would and read the response with h11."""
    client = h11.Connection(h11.CLIENT)
    h.send(b"".join(client.send(event) for event in events))
    client.receive_data(h.output)
    response = client.next_event()
    assert isinstance(response, h11.Response), response
    body = b""
    while True:
        event = client.next_event()
        if isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return response, body
        else:
            raise AssertionError(event)


@pytest.mark.parametrize("parts", [[b"hello"], [b"hel", b"lo"], [b"hel", b"lo", b""]])
def test_an_app_transfer_encoding_chunked_is_framed_by_the_server(
    connect: Any, parts: list[bytes]
) -> None:
    h = connect(chunked_app(parts))
    request = [h11.Request(method="GET", target="/", headers=[("Host", "a")]), h11.EndOfMessage()]
    response, body = h11_exchange(h, b"", request)
    assert body == b"hello"
    names = [name for name, _ in response.headers]
    assert names.count(b"transfer-encoding") == 1
    assert b"content-length" not in names  # never both (RFC 9112 section 6.1)
    h.responses()
    h.send(get("/next"))
    assert h.response().body == b"hello"  # the connection is still in step


@pytest.mark.parametrize("parts", [[b"hello"], [b"hel", b"lo"]])
def test_an_app_transfer_encoding_chunked_is_dropped_for_http10(
    connect: Any, parts: list[bytes]
) -> None:
    # RFC 9112 section 6.1: no Transfer-Encoding to an HTTP/1.0 client; the body ends with
    # the connection (or has a Content-Length).
    h = connect(chunked_app(parts))
    h.send(b"GET / HTTP/1.0\r\n\r\n")
    head, _, body = h.output.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower()
    assert body == b"hello"
    assert h.transport.closed


# -- response headers that repeat (asgi.http's CheckedHeaders) -------------------------------


def counting_app(headers: list[Any], value_at: Callable[[int], None]) -> App:
    """Sends the same ``headers`` object every time, after ``value_at(n)`` changed it in place
    for the n-th request; the body is the request count."""
    count = 0

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal count
        count += 1
        value_at(count)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"%d" % count})

    return app


def test_header_lists_changed_in_place_are_sent_as_changed(connect: Any) -> None:
    # A list of lists, or a tuple holding a bytearray, can change after the response: the
    # server may not take it for the headers it read last time.
    as_lists: list[Any] = [[b"x-count", b"0"]]
    as_bytearray: list[Any] = [(b"x-count", bytearray(b"0"))]

    def set_list(n: int) -> None:
        as_lists[0][1] = b"%d" % n

    def set_bytearray(n: int) -> None:
        as_bytearray[0][1][:] = b"%d" % n

    for headers, value_at in ((as_lists, set_list), (as_bytearray, set_bytearray)):
        h = connect(counting_app(headers, value_at))
        for n in (1, 2, 3):
            h.send(get())
            response = h.response()
            assert response.body == b"%d" % n
            assert response.header(b"x-count") == b"%d" % n


@pytest.mark.parametrize("value", [13, "13", None])
def test_a_header_value_that_is_not_bytes_gets_a_500(connect: Any, value: Any) -> None:
    # Never what bytes(13) would make of it (13 NUL bytes), on either build.
    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"x-value", value)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    h = connect(app)
    h.send(get())
    assert h.response().status == 500
    assert b"\0" not in h.output


def test_a_declared_length_changed_in_place_is_the_one_enforced(connect: Any) -> None:
    headers: list[Any] = [[b"content-length", b"1"]]

    def set_length(n: int) -> None:
        headers[0][1] = b"%d" % len(b"%d" % n)

    h = connect(counting_app(headers, set_length))
    for _ in range(9):
        h.send(get())
        h.responses()
    h.send(get())  # the 10th: two digits, declared as such
    response = h.response()
    assert (response.status, response.body) == (200, b"10")
    assert response.header(b"content-length") == b"2"


def test_equal_headers_in_new_lists_keep_their_own_content_length(connect: Any) -> None:
    # The same headers, equal but not the same list, answer every request; the declared
    # length found the first time is still enforced: a body that does not match it is a 500,
    # not a response whose framing lies.
    bodies = [b"hello", b"hello", b"hey", b"hello"]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"5")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": bodies.pop(0)})

    h = connect(app)
    statuses = []
    for _ in range(4):
        h.send(get())
        response = h.response()
        statuses.append(response.status)
        if response.status == 200:
            assert response.body == b"hello"
            assert response.headers[1:3] == [
                (b"content-type", b"text/plain"),
                (b"content-length", b"5"),
            ]
    assert statuses == [200, 200, 500, 200]


def test_a_long_header_list_is_read_every_time_and_answered_the_same(connect: Any) -> None:
    # Over _REUSE_MAX_HEADERS the list is not remembered: still the same answer each time,
    # its Content-Length enforced.
    from asgiserve.asgi import http as asgi_http

    count = asgi_http._REUSE_MAX_HEADERS + 4
    bodies = [b"abc", b"abc", b"ab"]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"x-%d" % i, b"%d" % i) for i in range(count)]
        headers.append((b"content-length", b"3"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": bodies.pop(0)})

    h = connect(app)
    for _ in range(2):
        h.send(get())
        response = h.response()
        assert (response.status, response.body) == (200, b"abc")
        assert response.header(b"x-%d" % (count - 1)) == b"%d" % (count - 1)
    assert len(asgi_http._last_checked.headers) <= asgi_http._REUSE_MAX_HEADERS
    h.send(get())
    assert h.response().status == 500


def test_headers_that_differ_from_the_last_are_checked_again(connect: Any) -> None:
    headers = [
        [(b"x-a", b"1")],
        [(b"x-a", b"1")],
        [(b"x-a", b"bad\r\nset-cookie: evil")],
        [(b"x-a", b"1")],
    ]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": headers.pop(0)})
        await send({"type": "http.response.body", "body": b"ok"})

    h = connect(app)
    h.send(get())
    h.send(get())
    assert [r.header(b"x-a") for r in h.responses()] == [b"1", b"1"]
    h.send(get())
    assert b"evil" not in h.output
    assert h.response().status == 500
    h.send(get())
    assert h.response().header(b"x-a") == b"1"


# -- a body the app does not read (issue 16, defect 2) ----------------------------------------


def refusing(gate: asyncio.Event) -> App:
    """401 to a POST without reading its body, once ``gate`` is set (an authentication check
    that takes a while: meanwhile the body fills the buffer); hello to the rest."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["method"] == "POST":
            await gate.wait()
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": b"no"})
        else:
            await hello(scope, receive, send)

    return app


def send_in_pieces(h: Harness, data: bytes, size: int = 16 * 1024) -> None:
    for start in range(0, len(data), size):
        h.send(data[start : start + size], turns=2)
    h.step()


@pytest.mark.parametrize("chunked", [False, True])
def test_an_unread_body_is_discarded_and_the_next_request_is_answered(
    connect: Any, chunked: bool
) -> None:
    gate = asyncio.Event()
    h = connect(refusing(gate))
    body = b"x" * (512 * 1024)
    if chunked:
        request = (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"".join(
                b"4000\r\n" + body[i : i + 0x4000] + b"\r\n" for i in range(0, len(body), 0x4000)
            )
            + b"0\r\n\r\n"
        )
    else:
        request = post(body)
    data = request + get("/next")
    send_in_pieces(h, data[: 128 * 1024])
    assert not h.transport.reading  # the app is not reading
    gate.set()
    send_in_pieces(h, data[128 * 1024 :])
    assert [(r.status, r.body) for r in h.responses()] == [(401, b"no"), (200, b"/next")]
    assert h.transport.reading and not h.transport.closed
    assert not h.transport.pending


def test_an_unread_body_beyond_the_discard_limit_closes_the_connection(connect: Any) -> None:
    gate = asyncio.Event()
    h = connect(refusing(gate), limit_discard_body=200 * 1024)
    data = post(b"x" * (1024 * 1024)) + get("/next")
    send_in_pieces(h, data[: 128 * 1024])
    gate.set()
    send_in_pieces(h, data[128 * 1024 :])
    assert [r.status for r in h.responses()] == [401]
    assert h.transport.closed
    assert len(h.transport.pending) > 512 * 1024  # not read to the end


# -- slow clients: body, write and half-close (issue 16, defect 8) ----------------------------


def test_a_request_body_that_trickles_in_gets_408_and_a_close(connect: Any) -> None:
    h = connect(echo, timeouts={"body_timeout": 30.0})
    h.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n" + b"x" * 10)
    for _ in range(5):
        h.advance(20)
        h.send(b"x" * 10)  # bytes keep coming, but far too slowly
        if h.transport.closed:
            break
    assert h.transport.closed
    assert h.response().status == 408


def test_a_request_body_that_makes_progress_is_not_cut_off(connect: Any) -> None:
    h = connect(echo, timeouts={"body_timeout": 30.0})
    h.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 655360\r\n\r\n")
    for _ in range(10):
        h.advance(20)
        h.send(b"x" * 65536)
    assert h.response().body == b"x" * 655360
    assert not h.transport.closed


def test_the_body_timeout_does_not_run_while_the_app_is_not_reading(connect: Any) -> None:
    gate = asyncio.Event()

    async def slow_echo(scope: Any, receive: Any, send: Any) -> None:
        await gate.wait()
        await echo(scope, receive, send)

    h = connect(slow_echo, timeouts={"body_timeout": 30.0})
    data = post(b"x" * (256 * 1024))
    send_in_pieces(h, data[: 128 * 1024])
    assert not h.transport.reading
    h.advance(100)  # the app's fault, not the client's
    assert not h.transport.closed
    gate.set()
    send_in_pieces(h, data[128 * 1024 :])
    assert h.response().body == b"x" * (256 * 1024)


async def big_response(scope: Any, receive: Any, send: Any) -> None:
    """1 MiB in 64 KiB parts."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    for _ in range(16):
        await send({"type": "http.response.body", "body": b"z" * 65536, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


def test_a_response_the_client_never_reads_is_abandoned_after_the_write_timeout(
    connect: Any,
) -> None:
    h = connect(big_response, timeouts={"write_timeout": 60.0})
    h.send(get())
    assert h.transport.writing_paused
    written = len(h.output)
    h.advance(59)
    assert not h.transport.closed
    h.advance(2)
    assert h.transport.closed
    assert len(h.output) == written
    assert not asyncio.all_tasks(h.loop)  # the app's task is over


def test_a_client_that_reads_slowly_keeps_its_response(connect: Any) -> None:
    h = connect(big_response, timeouts={"write_timeout": 60.0})
    h.send(get())
    responses: list[Response] = []
    for _ in range(40):
        h.advance(50)  # each time, a little before the write timeout
        h.transport.drain()
        h.step()
        responses += h.responses()
        if responses:
            break
    assert [r.body for r in responses] == [b"z" * (1024 * 1024)]
    assert not h.transport.closed


def test_a_client_that_half_closes_after_its_request_gets_the_answer(connect: Any) -> None:
    gate = asyncio.Event()

    async def later(scope: Any, receive: Any, send: Any) -> None:
        await gate.wait()
        await hello(scope, receive, send)

    h = connect(later)
    h.transport.send(get("/1") + get("/2"))
    h.transport.send_eof()
    h.step()
    gate.set()
    h.step(20)
    assert [r.body for r in h.responses()] == [b"/1", b"/2"]
    assert h.transport.closed


def test_a_half_close_in_the_middle_of_a_body_is_a_disconnect(connect: Any) -> None:
    seen: list[dict[str, Any]] = []

    async def reader(scope: Any, receive: Any, send: Any) -> None:
        seen.append(await receive())
        seen.append(await receive())

    h = connect(reader)
    h.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
    h.transport.send_eof()
    h.step()
    assert [m["type"] for m in seen] == ["http.request", "http.disconnect"]
    assert h.transport.closed


def test_an_idle_client_that_half_closes_is_closed(connect: Any) -> None:
    h = connect(hello)
    h.send(get())
    h.transport.send_eof()
    h.step()
    assert h.response().status == 200
    assert h.transport.closed


# -- a client that pipelines without reading (issue 16, defect 7) -----------------------------


def test_pipelined_requests_wait_while_the_client_does_not_read(connect: Any) -> None:
    async def sixteen_k(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"r" * 16384})

    h = connect(sixteen_k)
    h.send(get() * 1000, turns=50)
    # What piles up for one connection: the write buffer's high-water mark, plus at most a
    # cork's worth of responses and one response (not 1000 x 16 KiB).
    assert h.transport.max_buffered < HIGH_WATER + 64 * 1024 + 2 * 16384
    assert not h.transport.reading
    responses: list[Response] = []
    for _ in range(2000):
        h.transport.drain()
        h.step(2)
        responses += h.responses()
        if len(responses) == 1000:
            break
    assert len(responses) == 1000


# -- flow control towards the client (issue 16, defect 9) -------------------------------------


async def big_or_hello(scope: Any, receive: Any, send: Any) -> None:
    if scope["path"] == "/big":
        await big_response(scope, receive, send)
    else:
        await hello(scope, receive, send)


def read_all(h: Harness, expected: int) -> list[Response]:
    """The client reads everything, until ``expected`` responses are complete."""
    responses: list[Response] = []
    for _ in range(1000):
        h.transport.drain()
        h.step(2)
        responses += h.responses()
        if len(responses) >= expected:
            break
    return responses


def test_a_big_response_waits_for_a_client_that_does_not_read(connect: Any) -> None:
    h = connect(big_or_hello)
    h.send(get("/big"), turns=50)
    # Without pause_writing honoured, the whole MiB would be in the buffer. With it: the
    # high-water mark, what a cork may hold before it is written, and one part.
    assert h.transport.max_buffered <= HIGH_WATER + CORK_LIMIT + 65536
    assert [len(r.body) for r in read_all(h, 1)] == [1024 * 1024]


def test_a_big_response_inside_a_pipelined_burst_keeps_flow_control(connect: Any) -> None:
    # Responses to a pipelined burst are held back to be written together: a large one among
    # them is still written as it goes, so that its send() waits for the client.
    h = connect(big_or_hello)
    h.send(get("/1") * 3 + get("/big") + get("/2"), turns=50)
    assert h.transport.max_buffered <= HIGH_WATER + 2 * 65536
    bodies = [r.body for r in read_all(h, 5)]
    assert bodies[:3] == [b"/1"] * 3 and len(bodies[3]) == 1024 * 1024 and bodies[4] == b"/2"


# -- a response in parts: what is sent within one turn of the loop leaves in one write ---------
# (issue 20, goal 5). The cork holds a response's parts until it ends or the turn does; flow
# control, latency and ordering are as without it.


def start(headers: list[tuple[bytes, bytes]] | None = None, **extra: Any) -> dict[str, Any]:
    return {"type": "http.response.start", "status": 200, "headers": headers or [], **extra}


def part(body: bytes, more_body: bool = True) -> dict[str, Any]:
    return {"type": "http.response.body", "body": body, "more_body": more_body}


def chunked(*parts: bytes) -> bytes:
    """The chunked encoding of ``parts`` with the last chunk (RFC 9112 section 7.1)."""
    return b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


#: 16 parts of 4 KiB, each its own letter: benchmarks/apps.py ``stream``, order visible.
SIXTEEN_PARTS = [bytes([65 + i]) * 4096 for i in range(16)]


def test_parts_sent_within_one_turn_leave_in_one_write(connect: Any) -> None:
    seen: list[bytes] = []

    async def stream(scope: Any, receive: Any, send: Any) -> None:
        await send(start())
        for body in SIXTEEN_PARTS:
            await send(part(body))
        await send(part(b"", more_body=False))
        seen.append(h.output)  # the last part is not held back: out when its send returns

    h = connect(stream)
    h.send(get())
    assert len(h.transport.writes) == 1
    head, _, body = h.output.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head
    assert body == chunked(*SIXTEEN_PARTS)
    assert seen == [h.output]
    assert not h.transport.closed


def test_a_slow_app_gets_each_part_written_in_the_turn_it_was_sent(connect: Any) -> None:
    # An app that awaits something else between parts (a server-sent event source): each part
    # is on its way before the app's next step, one write per turn.
    seen: list[bytes] = []

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        await send(start())
        for body in (b"one", b"two", b"three"):
            await send(part(body))
            await asyncio.sleep(0)  # one turn of the loop
            seen.append(h.output)
        await send(part(b"", more_body=False))

    h = connect(slow)
    h.send(get())
    assert [output.partition(b"\r\n\r\n")[2] for output in seen] == [
        b"3\r\none\r\n",
        b"3\r\none\r\n3\r\ntwo\r\n",
        b"3\r\none\r\n3\r\ntwo\r\n5\r\nthree\r\n",
    ]
    assert len(h.transport.writes) == 4  # head and "one", "two", "three", the last chunk
    assert h.response().body == b"onetwothree"


def test_a_head_with_more_to_come_is_written_at_the_end_of_the_turn(connect: Any) -> None:
    gate = asyncio.Event()

    async def waits(scope: Any, receive: Any, send: Any) -> None:
        await send(start())
        await send(part(b""))  # the head goes with the first body message, here an empty one
        await gate.wait()
        await send(part(b"", more_body=False))

    h = connect(waits)
    h.send(get())
    assert h.output.startswith(b"HTTP/1.1 200 OK\r\n") and h.output.endswith(b"\r\n\r\n")
    gate.set()
    h.step()
    assert h.response().body == b""


def test_parts_sent_past_a_client_that_does_not_read_make_the_app_wait(connect: Any) -> None:
    sent = 0

    async def endless(scope: Any, receive: Any, send: Any) -> None:
        nonlocal sent
        await send(start())
        for _ in range(1024):  # 1 MiB in 1 KiB parts, never awaiting anything but send()
            await send(part(b"p" * 1024))
            sent += 1024
        await send(part(b"", more_body=False))

    h = connect(endless)
    h.send(get(), turns=50)
    # The app got through the high-water mark, what a cork may hold and one part, not the MiB:
    # the parts held back were written once over CORK_LIMIT, and the transport paused it.
    assert h.transport.writing_paused
    assert sent <= HIGH_WATER + CORK_LIMIT + 1024
    assert h.transport.max_buffered <= HIGH_WATER + CORK_LIMIT + 2048
    stuck_at = sent
    h.step(20)
    assert sent == stuck_at  # it waits for as long as the client does not read
    assert [len(r.body) for r in read_all(h, 1)] == [1024 * 1024]


@pytest.mark.parametrize("slow", [False, True], ids=["one-turn", "awaiting"])
def test_pipelined_responses_in_parts_are_answered_in_order(connect: Any, slow: bool) -> None:
    async def parts(scope: Any, receive: Any, send: Any) -> None:
        await send(start())
        for index in range(3):
            await send(part(scope["path"].encode() + b".%d" % index))
            if slow:
                await asyncio.sleep(0)
        await send(part(b"", more_body=False))

    h = connect(parts)
    h.send(get("/1") + get("/2") + get("/3"), turns=20)
    assert [r.body for r in h.responses()] == [b"/1.0/1.1/1.2", b"/2.0/2.1/2.2", b"/3.0/3.1/3.2"]
    assert h.transport.reading


def test_trailers_end_a_response_in_parts_in_the_same_write(connect: Any) -> None:
    async def with_trailers(scope: Any, receive: Any, send: Any) -> None:
        await send(start(trailers=True))
        await send(part(b"abc"))
        await send(part(b"def", more_body=False))
        await send({"type": "http.response.trailers", "headers": [(b"x-checksum", b"42")]})

    h = connect(with_trailers)
    h.send(get())
    assert len(h.transport.writes) == 1
    assert h.output.endswith(b"3\r\nabc\r\n3\r\ndef\r\n0\r\nx-checksum: 42\r\n\r\n")
    assert h.response().body == b"abcdef"


def test_an_http10_response_in_parts_is_written_before_the_close(connect: Any) -> None:
    # Close-delimited (RFC 9112 section 6.3, rule 8): the parts go out, then the close.
    async def stream(scope: Any, receive: Any, send: Any) -> None:
        await send(start())
        for body in SIXTEEN_PARTS:
            await send(part(body))
        await send(part(b"", more_body=False))

    h = connect(stream)
    h.send(b"GET / HTTP/1.0\r\nHost: a\r\n\r\n")
    assert h.transport.closed
    assert len(h.transport.writes) == 1
    assert h.output.partition(b"\r\n\r\n")[2] == b"".join(SIXTEEN_PARTS)


def test_parts_held_back_go_out_before_an_abort_closes_the_connection(connect: Any) -> None:
    async def fails(scope: Any, receive: Any, send: Any) -> None:
        await send(start())
        await send(part(b"partial"))
        raise RuntimeError("boom")

    h = connect(fails)
    h.send(get())  # the fake transport refuses a write after close
    assert h.transport.closed
    assert h.output.endswith(b"7\r\npartial\r\n")
    assert len(h.transport.writes) == 1


def test_parts_held_back_are_dropped_when_the_client_is_gone(connect: Any) -> None:
    async def stream(scope: Any, receive: Any, send: Any) -> None:
        await send(start())
        await send(part(b"lost"))
        h.transport.drop()  # within the turn: nothing may be written to a lost transport

    h = connect(stream)
    errors: list[dict[str, Any]] = []  # a write from a callback would fail in the loop
    h.loop.set_exception_handler(lambda loop, context: errors.append(context))
    h.send(get())
    assert h.transport.lost
    assert h.transport.writes == []
    assert errors == []


# -- the stage table: every transition, and a disconnect in every stage ------------------------

from asgiserve.transport.connection import ALLOWED, STAGE_NAMES, Stage  # noqa: E402


def gated(gate: asyncio.Event, read_body: bool = True) -> App:
    """Reads the body (or not), waits for ``gate``, answers."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if read_body:
            while (await receive()).get("more_body"):
                pass
        await gate.wait()
        await hello(scope, receive, send)

    return app


def test_idle_head_responding_idle(connect: Any) -> None:
    gate = asyncio.Event()
    h = connect(gated(gate))
    assert h.connection.stage == Stage.IDLE
    h.send(b"GET / HTTP/1.1\r\nHo")
    assert h.connection.stage == Stage.HEAD
    h.send(b"st: a\r\n\r\n")
    assert h.connection.stage == Stage.RESPONDING
    gate.set()
    h.step()
    assert h.connection.stage == Stage.IDLE
    assert h.response().status == 200


def test_idle_receiving_responding(connect: Any) -> None:
    gate = asyncio.Event()
    h = connect(gated(gate))
    h.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nabc")
    assert h.connection.stage == Stage.RECEIVING
    h.send(b"def")
    assert h.connection.stage == Stage.RESPONDING
    gate.set()
    h.step()
    assert h.connection.stage == Stage.IDLE


def test_receiving_discarding_idle(connect: Any) -> None:
    h = connect(refusing(asyncio.Event()), timeouts={})
    h.connection.state.app = hello  # answers at once, reading nothing
    h.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nabc")
    assert h.connection.stage == Stage.DISCARDING
    h.send(b"def")
    assert h.connection.stage == Stage.IDLE
    assert h.transport.reading


def test_responding_to_the_next_pipelined_request_and_to_head(connect: Any) -> None:
    gate = asyncio.Event()
    h = connect(gated(gate))
    h.send(get("/1") + get("/2") + b"GET /3 HTTP/1.1\r\n")
    assert h.connection.stage == Stage.RESPONDING
    assert not h.transport.reading  # /2 waits its turn
    gate.set()
    h.step()
    assert [r.body for r in h.responses()] == [b"/1", b"/2"]
    assert h.connection.stage == Stage.HEAD  # part of /3's head is here
    h.send(b"Host: a\r\n\r\n")
    assert h.response().body == b"/3"
    assert h.connection.stage == Stage.IDLE


def test_idle_upgraded(connect: Any) -> None:
    from asgiserve.transport.websocket import WebSocketSettings

    async def ws(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})

    h = connect(ws, websocket=WebSocketSettings())
    h.send(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    assert h.connection.stage == Stage.UPGRADED
    assert h.output.startswith(b"HTTP/1.1 101 ")


def test_closing_then_closed(connect: Any) -> None:
    h = connect(hello)
    h.send(get(extra=b"Connection: close\r\n"))
    assert h.transport.stage_at_close == Stage.CLOSING
    assert h.connection.stage == Stage.CLOSED


def test_a_transition_the_table_does_not_allow_is_refused(connect: Any) -> None:
    h = connect(hello)
    with pytest.raises(RuntimeError, match="IDLE -> DISCARDING"):
        h.connection._enter(Stage.DISCARDING)
    assert h.connection.stage == Stage.IDLE


def test_the_table_closes_from_every_open_stage_and_never_reopens() -> None:
    for stage in range(len(STAGE_NAMES)):
        closes = ALLOWED[stage] >> Stage.CLOSED & 1
        assert closes == (stage not in (Stage.UPGRADED, Stage.CLOSED)), STAGE_NAMES[stage]
        if stage >= Stage.CLOSING:
            assert ALLOWED[stage] >> Stage.IDLE & 1 == 0


def reach(h: Harness, stage: int, gate: asyncio.Event) -> None:
    """Drive the connection (app: gated) to ``stage``."""
    if stage == Stage.HEAD:
        h.send(b"GET / HTTP/1.1\r\nHo")
    elif stage == Stage.RECEIVING:
        h.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nabc")
    elif stage == Stage.RESPONDING:
        h.send(get())
    elif stage == Stage.DISCARDING:
        h.connection.state.app = hello
        h.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nabc")
    assert h.connection.stage == stage, STAGE_NAMES[h.connection.stage]


@pytest.mark.parametrize(
    "stage", [Stage.IDLE, Stage.HEAD, Stage.RECEIVING, Stage.RESPONDING, Stage.DISCARDING]
)
def test_a_disconnect_in_every_stage(connect: Any, stage: int) -> None:
    seen: list[str] = []

    async def listener(scope: Any, receive: Any, send: Any) -> None:
        # Reads the body, then waits in receive() for the disconnect.
        while True:
            message = await receive()
            seen.append(message["type"])
            if message["type"] == "http.disconnect":
                return

    h = connect(listener)
    reach(h, stage, asyncio.Event())
    h.transport.drop()
    h.step()
    assert h.connection.stage == Stage.CLOSED
    if stage in (Stage.RECEIVING, Stage.RESPONDING):
        assert seen[-1] == "http.disconnect"
    assert not asyncio.all_tasks(h.loop)  # nothing left running


# -- an empty file after a head (issue 17, point 4) --------------------------------------------


def test_the_head_before_an_empty_file_is_not_held_back(connect: Any) -> None:
    # Sent with MSG_MORE, a head waits in the kernel for the bytes that follow it: with no
    # bytes to follow (an empty file), it would wait for the cork timer (200 ms on Linux).
    import select
    import socket
    import tempfile

    from asgiserve.transport.sendfile import SocketFileSender

    h = connect(hello)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    with client, server, tempfile.TemporaryFile() as empty:
        server.setblocking(False)
        sender = SocketFileSender(h.loop, h.transport, server.fileno(), server.family)
        head = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
        assert sender.send_now(empty.fileno(), 0, 0, head) == 0
        sender.release()
        socket_part = b""
        if select.select([client], [], [], 0.1)[0]:
            socket_part = client.recv(100)
        # All of the head, at once: on the socket, or (for the transport to write) in it.
        assert socket_part + h.output == head


def test_a_discarded_body_that_trickles_in_is_cut_off(connect: Any) -> None:
    h = connect(hello, timeouts={"body_timeout": 30.0})
    h.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n" + b"x" * 10)
    assert h.connection.stage == Stage.DISCARDING
    assert h.response().status == 200
    h.advance(29)
    h.send(b"x" * 10)
    assert not h.transport.closed
    h.advance(2)
    assert h.transport.closed
    assert h.output.count(b"HTTP/1.1") == 1  # the response was out: a quiet close


def test_a_task_waiting_in_receive_hears_of_the_completed_response(connect: Any) -> None:
    # A listener still waiting in receive() when the app completes its response (a streaming
    # helper that watches for the disconnect) is woken with http.disconnect, not left hanging.
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()  # the (empty) body

        async def listen() -> None:
            seen.append((await receive())["type"])

        listener = asyncio.ensure_future(listen())
        await asyncio.sleep(0)
        await hello(scope, receive, send)
        await listener

    h = connect(app)
    h.send(get())
    assert h.response().status == 200
    assert seen == ["http.disconnect"]


# -- ANSWERING: the server's own answer to a file (--static, --mount; issue 17) ----------------


class InlineExecutor(concurrent.futures.ThreadPoolExecutor):
    """Runs what the loop hands to a thread at once, in the caller: the buffered file send
    (the fake transport has no socket to sendfile to) then completes in a known number of
    loop turns."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


FILE_BODY = bytes(range(256)) * 40


@pytest.fixture
def answering(connect: Any, tmp_path: Any) -> Harness:
    """A connection of a server that serves ``tmp_path`` itself (as for ``--static``), with
    ``/file.bin`` already served once by the app (so remembered) and its ETag known."""
    from asgiserve.apps.mounts import served_files
    from asgiserve.apps.static import StaticFiles

    (tmp_path / "file.bin").write_bytes(FILE_BODY)
    app = StaticFiles(tmp_path)
    h = connect(app, files=served_files(app))
    h.loop.set_default_executor(InlineExecutor())
    h.send(get("/file.bin"))
    first = h.response()
    assert (first.status, first.body) == (200, FILE_BODY)
    h.etag = first.header(b"etag")  # type: ignore[attr-defined]
    assert h.connection.stage == Stage.IDLE
    return h


def answered_by_server(h: Harness) -> bool:
    return h.connection.answer is not None


def test_a_file_answer_is_sent_then_idle_and_kept_alive(answering: Harness) -> None:
    h = answering
    h.transport.send(get("/file.bin"))  # no loop turn yet
    # Without a socket the file is read in a thread: the answer is ANSWERING until it is out.
    assert h.connection.stage == Stage.ANSWERING and answered_by_server(h)
    h.step()
    assert h.connection.stage == Stage.IDLE and not answered_by_server(h)
    assert h.response().body == FILE_BODY
    assert not h.transport.closed
    assert h.connection.deadline == h.clock.now + 5.0  # the keep-alive deadline
    h.send(get("/file.bin"))  # and the next one on the same connection
    assert h.response().body == FILE_BODY and h.connection.stage == Stage.IDLE


def test_a_revalidation_is_answered_at_once_without_answering(answering: Harness) -> None:
    h = answering
    etag = h.etag  # type: ignore[attr-defined]
    h.transport.send(get("/file.bin", b"If-None-Match: " + etag + b"\r\n"))
    assert h.connection.stage == Stage.IDLE and not answered_by_server(h)
    response = h.response()
    assert (response.status, response.body, response.header(b"etag")) == (304, b"", etag)
    assert not asyncio.all_tasks(h.loop)


def test_answers_in_one_turn_wait_in_the_batch_then_finish(answering: Harness) -> None:
    # Two pipelined GETs in one read: the first is answered at once (its file then goes on in
    # a task), the second waits in the batch for the end of the turn: both ANSWERING.
    h = answering
    h.transport.send(get("/file.bin") + get("/file.bin"))
    assert h.connection.stage == Stage.ANSWERING
    h.step()
    assert [r.body for r in h.responses()] == [FILE_BODY, FILE_BODY]
    assert h.connection.stage == Stage.IDLE and not h.transport.closed


def test_a_request_pipelined_behind_a_file_answer_comes_after_it(answering: Harness) -> None:
    h = answering
    h.transport.send(get("/file.bin") + get("/missing") + get("/file.bin", b"Range: bytes=0-3\r\n"))
    assert h.connection.stage == Stage.ANSWERING
    assert len(h.connection.queue) == 2 and not h.transport.reading  # the others wait
    h.step(16)
    responses = h.responses()
    assert [(r.status, r.body) for r in responses] == [
        (200, FILE_BODY),
        (404, b"Not Found"),
        (206, FILE_BODY[:4]),
    ]
    assert h.connection.stage == Stage.IDLE and h.transport.reading


def test_a_file_answer_with_connection_close_closes_after_it(answering: Harness) -> None:
    h = answering
    h.transport.send(get("/file.bin", b"Connection: close\r\n"))
    assert h.connection.stage == Stage.ANSWERING
    h.step()
    assert h.response().body == FILE_BODY
    assert h.transport.stage_at_close == Stage.CLOSING
    assert h.connection.stage == Stage.CLOSED


def test_a_disconnect_while_answering(answering: Harness) -> None:
    h = answering
    h.transport.send(get("/file.bin"))
    assert h.connection.stage == Stage.ANSWERING
    h.transport.drop()
    assert h.connection.stage == Stage.CLOSED
    h.step()
    assert not asyncio.all_tasks(h.loop)  # the answer's task ended
    assert not h.state.tasks
