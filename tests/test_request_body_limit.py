"""--limit-request-body: 413 before the app reads past the limit."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from asgiserve.asgi.http import HTTPCycle, Phase
from asgiserve.config import Config, ConfigError

on_every_backend = pytest.mark.usefixtures("backend")

LIMIT = 1000


class Recorder:
    """An app that reads the whole body and reports how much it got, remembering it."""

    def __init__(self) -> None:
        self.calls = 0
        self.received: list[int] = []
        self.saw_disconnect = False
        #: Body bytes read so far by the request being served.
        self.progress = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.calls += 1
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.saw_disconnect = True
                self.received.append(total)
                return
            total += len(message["body"])
            self.progress = total
            if not message["more_body"]:
                break
        self.received.append(total)
        body = b"%d" % total
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


def post(length: int | None, extra: bytes = b"") -> bytes:
    framing = (
        b"Transfer-Encoding: chunked\r\n" if length is None else b"Content-Length: %d\r\n" % length
    )
    return b"POST /upload HTTP/1.1\r\nHost: x\r\n" + framing + extra + b"\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@on_every_backend
def test_declared_length_over_the_limit_gets_413_without_running_the_app(
    serve: Any, raw: Any
) -> None:
    app = Recorder()
    server = serve(app, limit_request_body=LIMIT)
    client = raw(server.port)
    client.send(post(LIMIT + 1))
    response = client.read_response()
    assert response.status == 413
    assert response.body == b"Content Too Large"
    assert client.closed()  # the body was never read: the connection cannot go on
    assert app.calls == 0


@on_every_backend
def test_expect_100_continue_over_the_limit_is_answered_413_not_100(serve: Any, raw: Any) -> None:
    # RFC 9110 section 10.1.1: a server may answer with a final status instead of 100.
    app = Recorder()
    server = serve(app, limit_request_body=LIMIT)
    client = raw(server.port)
    client.send(post(10 * LIMIT, b"Expect: 100-continue\r\n"))
    response = client.read_response()
    assert response.status == 413
    assert app.calls == 0


@on_every_backend
def test_body_at_the_limit_is_served(serve: Any, raw: Any) -> None:
    app = Recorder()
    server = serve(app, limit_request_body=LIMIT)
    client = raw(server.port)
    client.send(post(LIMIT) + b"x" * LIMIT)
    response = client.read_response()
    assert (response.status, response.body) == (200, b"%d" % LIMIT)
    client.send(post(None) + chunk(b"y" * LIMIT) + b"0\r\n\r\n")
    assert client.read_response().body == b"%d" % LIMIT  # keep-alive goes on


@on_every_backend
def test_chunked_body_over_the_limit_gets_413_and_the_app_never_sees_the_excess(
    serve: Any, raw: Any
) -> None:
    app = Recorder()
    server = serve(app, limit_request_body=LIMIT)
    client = raw(server.port)
    client.send(post(None) + chunk(b"a" * 600))
    deadline = time.monotonic() + 5
    while app.progress < 600:  # the app is reading the body as it streams in
        assert time.monotonic() < deadline
        time.sleep(0.005)
    client.send(chunk(b"b" * 600) + b"0\r\n\r\n")
    response = client.read_response()
    assert response.status == 413
    assert client.closed()
    deadline = time.monotonic() + 5
    while not app.saw_disconnect:  # the app's next receive() says the client is gone
        assert time.monotonic() < deadline
        time.sleep(0.005)
    assert all(n <= LIMIT for n in app.received)


@on_every_backend
def test_no_limit_by_default(serve: Any, raw: Any) -> None:
    server = serve(Recorder())
    client = raw(server.port)
    size = 3 * 1024 * 1024
    client.send(post(size) + b"z" * size)
    assert client.read_response().body == b"%d" % size


class _Sink:
    writing_paused = False

    def __init__(self) -> None:
        self.heads: list[int] = []
        self.aborted = False

    def send_continue(self) -> None: ...

    def send_head(self, cycle: HTTPCycle, body: bytes, more_body: bool) -> None:
        self.heads.append(cycle.status)

    def send_body(self, body: bytes, more_body: bool) -> None: ...

    async def drain(self) -> None: ...

    def resume_body(self) -> None: ...

    def abort(self) -> None:
        self.aborted = True


def make_cycle(
    limit: int | None, declared: int | None = None, *, running: bool = True
) -> tuple[HTTPCycle, _Sink]:
    sink = _Sink()
    scope = {"type": "http", "method": "POST"}
    cycle = HTTPCycle(
        scope,
        sink,
        expect_continue=False,
        has_body=True,
        body_limit=limit,
        declared_length=declared,
    )
    cycle.running = running  # as if run() had started the app
    return cycle, sink


def test_cycle_counts_body_bytes_against_the_limit() -> None:
    # The protocol-neutral part, for HTTP/1.1 and HTTP/2 alike.
    cycle, sink = make_cycle(10)
    assert cycle.feed_body(b"12345") is False
    assert cycle.feed_body(b"67890") is False
    assert cycle.feed_body(b"!") is True  # stop reading
    assert cycle.chunks == []  # nothing beyond the limit is buffered, nor what came before
    assert sink.heads == [413]
    assert cycle.phase is Phase.DONE and cycle.disconnected


def test_cycle_aborts_when_the_response_already_started() -> None:
    cycle, sink = make_cycle(4)

    async def main() -> None:
        await cycle.send({"type": "http.response.start", "status": 200, "headers": []})
        await cycle.send({"type": "http.response.body", "body": b"x", "more_body": True})
        cycle.feed_body(b"12345")

    asyncio.run(main())
    assert sink.heads == [200]
    assert sink.aborted


async def never_called(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("the app must not run")


def test_cycle_refuses_a_declared_length_over_the_limit_without_the_app() -> None:
    cycle, sink = make_cycle(10, declared=11, running=False)
    asyncio.run(cycle.run(never_called))
    assert sink.heads == [413]


def test_queued_cycle_whose_body_went_over_answers_when_its_turn_comes() -> None:
    # A pipelined request waits for the one before it; its body is read meanwhile.
    cycle, sink = make_cycle(10, running=False)
    assert cycle.feed_body(b"x" * 11) is True
    assert sink.heads == []  # not its turn: nothing may be written yet
    asyncio.run(cycle.run(never_called))
    assert sink.heads == [413]


def test_limit_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="--limit-request-body"):
        Config.from_options("x:y", limit_request_body=0)
