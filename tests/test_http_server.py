"""HTTP/1.1 behaviour of a real server on a loopback port, on every parser × loop backend."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

import httpx
import pytest

from tests import apps
from tests.conftest import RawClient

pytestmark = pytest.mark.usefixtures("backend")


@pytest.fixture
def server(serve: Any) -> Any:
    return serve(apps.app)


def get(
    port: int, path: str = "/", extra: bytes = b"", version: bytes = b"1.1", method: bytes = b"GET"
) -> bytes:
    return (
        method
        + b" "
        + path.encode()
        + b" HTTP/"
        + version
        + b"\r\nHost: test\r\n"
        + extra
        + b"\r\n"
    )


# -- basics --------------------------------------------------------------------------------


def test_hello_world_with_date_and_server_headers(server: Any) -> None:
    response = httpx.get(server.url)
    assert response.status_code == 200
    assert response.text == "Hello, world!"
    assert response.headers["server"] == "asgiserve"
    assert response.headers["date"].endswith("GMT")
    assert response.headers["content-length"] == "13"


def test_scope_is_complete(server: Any) -> None:
    response = httpx.get(server.url + "/scope?x=%C3%A9&y=2", headers={"X-Custom": "Value"})
    scope = response.json()
    assert scope["type"] == "http"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.5"}
    assert scope["http_version"] == "1.1"
    assert scope["method"] == "GET"
    assert scope["scheme"] == "http"
    assert scope["path"] == "/scope"
    assert scope["raw_path"] == "/scope"
    assert scope["query_string"] == "x=%C3%A9&y=2"
    assert scope["root_path"] == ""
    assert ["x-custom", "Value"] in scope["headers"]
    assert scope["client"][0] == "127.0.0.1" and isinstance(scope["client"][1], int)
    assert scope["server"] == ["127.0.0.1", server.port]
    assert scope["state"] == {"started": "yes"}


def test_path_is_percent_decoded_utf8_and_raw_path_is_not(server: Any) -> None:
    raw = RawClient(server.port)
    raw.send(get(server.port, "/scope/caf%C3%A9%20x"))
    scope = json.loads(raw.read_response().body)
    assert scope["path"] == "/scope/café x"
    assert scope["raw_path"] == "/scope/caf%C3%A9%20x"
    raw.close()


def test_root_path_prefixes_path_and_raw_path(serve: Any) -> None:
    server = serve(apps.app, root_path="/api")
    scope = httpx.get(server.url + "/scope").json()
    assert scope["root_path"] == "/api"
    assert scope["path"] == "/api/scope"
    assert scope["raw_path"] == "/api/scope"


def test_keep_alive_serves_many_requests_on_one_connection(server: Any, raw: Any) -> None:
    client = raw(server.port)
    for _ in range(5):
        client.send(get(server.port))
        response = client.read_response()
        assert response.body == b"Hello, world!"
        assert response.header(b"connection") is None


def test_pipelined_requests_are_answered_in_order(server: Any, raw: Any) -> None:
    client = raw(server.port)
    paths = ["/slow?s=0.2", "/", "/echo", "/stream?n=3&size=2", "/"]
    data = b""
    for path in paths:
        if path == "/echo":
            data += b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nping"
        else:
            data += get(server.port, path)
    client.send(data)
    bodies = [client.read_response().body for _ in paths]
    assert bodies == [b"slow done", b"Hello, world!", b"ping", b"aabbcc", b"Hello, world!"]


def test_a_burst_of_pipelined_requests_is_served_completely(server: Any, raw: Any) -> None:
    client = raw(server.port)
    client.send(get(server.port) * 200)
    for _ in range(200):
        assert client.read_response().body == b"Hello, world!"


def test_http10_request_gets_a_response_and_a_close(server: Any, raw: Any) -> None:
    client = raw(server.port)
    client.send(b"GET / HTTP/1.0\r\n\r\n")
    response = client.read_response()
    assert response.status == 200
    assert response.header(b"connection") == b"close"
    assert client.closed()


def test_http10_keep_alive_is_honoured_with_a_content_length(server: Any, raw: Any) -> None:
    client = raw(server.port)
    for _ in range(2):
        client.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        response = client.read_response()
        assert response.header(b"connection") == b"keep-alive"
        assert response.body == b"Hello, world!"


def test_http10_streaming_response_is_close_delimited(server: Any, raw: Any) -> None:
    client = raw(server.port)
    client.send(b"GET /stream?n=3&size=2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    data = client.recv_until_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower()
    assert b"connection: close" in head
    assert body == b"aabbcc"


def test_streaming_response_without_length_is_chunked(server: Any) -> None:
    response = httpx.get(server.url + "/stream?n=10&size=100")
    assert response.headers["transfer-encoding"] == "chunked"
    assert len(response.content) == 1000


def test_single_body_message_without_length_gets_a_content_length(server: Any, raw: Any) -> None:
    client = raw(server.port)
    client.send(get(server.port, "/status?code=200"))
    response = client.read_response()
    assert response.header(b"content-length") == b"26"
    assert response.header(b"transfer-encoding") is None


def test_connection_close_from_the_client_closes_after_the_response(server: Any, raw: Any) -> None:
    client = raw(server.port)
    client.send(get(server.port, extra=b"Connection: close\r\n"))
    response = client.read_response()
    assert response.header(b"connection") == b"close"
    assert client.closed()


def test_connection_close_from_the_app_closes_the_connection(server: Any, raw: Any) -> None:
    client = raw(server.port)
    client.send(get(server.port, "/close"))
    assert client.read_response().body == b"bye"
    assert client.closed()


def test_app_server_header_replaces_ours_and_repeated_headers_survive(
    server: Any, raw: Any
) -> None:
    client = raw(server.port)
    client.send(get(server.port, "/headers"))
    response = client.read_response()
    assert [v for k, v in response.headers if k.lower() == b"server"] == [b"custom"]
    assert [v for k, v in response.headers if k == b"x-multi"] == [b"1", b"2"]
    assert response.header(b"date") is not None


def test_extra_headers_and_disabled_defaults(serve: Any, raw: Any) -> None:
    server = serve(
        apps.app, server_header=False, date_header=False, headers=["X-Frame-Options:DENY"]
    )
    client = raw(server.port)
    client.send(get(server.port))
    response = client.read_response()
    assert response.header(b"server") is None
    assert response.header(b"date") is None
    assert response.header(b"x-frame-options") == b"DENY"


# -- HEAD, 204, 304 --------------------------------------------------------------------------


def test_head_response_keeps_content_length_without_body(server: Any, raw: Any) -> None:
    client = raw(server.port)
    client.head_request = True
    client.send(get(server.port, method=b"HEAD") + get(server.port))
    response = client.read_response()
    assert response.header(b"content-length") == b"13"
    client.head_request = False
    # The next response on the connection starts right away: no body bytes were sent.
    assert client.read_response().body == b"Hello, world!"


@pytest.mark.parametrize("code", [204, 304])
def test_no_body_for_204_and_304(server: Any, raw: Any, code: int) -> None:
    client = raw(server.port)
    client.send(get(server.port, f"/status?code={code}") + get(server.port))
    response = client.read_response()
    assert response.status == code
    assert response.header(b"content-length") is None
    assert response.header(b"transfer-encoding") is None
    assert client.read_response().body == b"Hello, world!"


# -- request bodies ----------------------------------------------------------------------


def test_chunked_upload_is_reassembled(server: Any, raw: Any) -> None:
    client = raw(server.port)
    client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    for piece in (b"hello", b" ", b"world"):
        client.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        time.sleep(0.01)
    client.send(b"0\r\n\r\n")
    assert client.read_response().body == b"hello world"


def test_large_upload_is_echoed_intact(server: Any) -> None:
    payload = bytes(range(256)) * (20 * 4096)  # 20 MiB
    response = httpx.post(server.url + "/echo", content=payload, timeout=30)
    assert response.status_code == 200
    assert response.content == payload


def test_streaming_echo_of_a_chunked_upload(server: Any) -> None:
    def chunks() -> Any:
        for i in range(50):
            yield b"%03d" % i

    response = httpx.post(server.url + "/echo-stream", content=chunks())
    assert response.content == b"".join(b"%03d" % i for i in range(50))


def test_unread_body_is_discarded_and_the_connection_goes_on(server: Any, raw: Any) -> None:
    client = raw(server.port)
    body = b"x" * 200_000
    client.send(
        b"POST /no-read HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )
    assert client.read_response().body == b"not reading"
    client.send(get(server.port))
    assert client.read_response().body == b"Hello, world!"


# -- Expect: 100-continue --------------------------------------------------------------------


def test_100_continue_is_sent_when_the_app_reads_the_body(server: Any, raw: Any) -> None:
    client = raw(server.port)
    client.send(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
    )
    interim = client.read_response()
    assert interim.status == 100
    client.send(b"hello")
    assert client.read_response().body == b"hello"


def test_100_continue_is_not_sent_when_the_app_answers_without_reading(
    server: Any, raw: Any
) -> None:
    client = raw(server.port)
    client.send(
        b"POST /no-read HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
    )
    response = client.read_response()
    assert response.status == 200
    assert response.body == b"not reading"
    # We cannot know whether the client will still send the body: the connection closes.
    assert client.closed()


# -- errors from the app -------------------------------------------------------------------


def test_exception_before_the_response_gives_500_and_keeps_serving(
    server: Any, raw: Any, caplog: Any
) -> None:
    client = raw(server.port)
    client.send(get(server.port, "/raise"))
    response = client.read_response()
    assert response.status == 500
    assert response.body == b"Internal Server Error"
    client.send(get(server.port))
    assert client.read_response().status == 200


def test_exception_after_the_response_started_aborts_the_connection(server: Any, raw: Any) -> None:
    client = raw(server.port)
    client.send(get(server.port, "/raise-after-start"))
    data = client.recv_until_closed()
    assert data.startswith(b"HTTP/1.1 200 OK")
    assert data.endswith(b"partial")  # truncated: content-length said 100


def test_app_returning_without_a_response_gives_500(server: Any) -> None:
    assert httpx.get(server.url + "/no-response").status_code == 500


def test_app_returning_mid_response_aborts(server: Any, raw: Any) -> None:
    client = raw(server.port)
    client.send(get(server.port, "/incomplete"))
    data = client.recv_until_closed()
    assert data.startswith(b"HTTP/1.1 200 OK")
    assert not data.endswith(b"0\r\n\r\n")


def test_header_injection_by_the_app_gives_500(server: Any, raw: Any) -> None:
    client = raw(server.port)
    client.send(get(server.port, "/bad-header"))
    response = client.read_response()
    assert response.status == 500
    assert b"injected" not in b"".join(v for _, v in response.headers)


def test_body_longer_than_content_length_is_refused(server: Any) -> None:
    assert httpx.get(server.url + "/too-long").status_code == 500


def test_asgi2_app_is_adapted(serve: Any) -> None:
    server = serve("tests.apps:asgi2_app")
    assert httpx.get(server.url).text == "asgi2"


# -- the client goes away --------------------------------------------------------------------


def wait_for(predicate: Any, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_app_sees_http_disconnect_when_the_client_goes_away(server: Any) -> None:
    apps.EVENTS.clear()
    client = RawClient(server.port)
    client.send(get(server.port, "/wait-disconnect"))
    assert wait_for(lambda: any(e[0] == "waiting" for e in apps.EVENTS))
    client.close()
    assert wait_for(lambda: ("received", "http.disconnect") in apps.EVENTS)


def test_send_after_disconnect_raises_oserror(server: Any) -> None:
    apps.EVENTS.clear()
    client = RawClient(server.port)
    client.send(get(server.port, "/send-after-disconnect"))
    client.sock.recv(100)
    client.close()
    assert wait_for(lambda: ("send-after-disconnect", "ClientDisconnected") in apps.EVENTS)


# -- flow control ----------------------------------------------------------------------------


def _streamer(progress: list[int]) -> Any:
    """/big: 50 MiB in 64 KiB parts, each a fresh object, counting in ``progress`` what
    send() let through; anything else: hello."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] != "/big":
            await apps.respond(send, body=b"Hello, world!")
            return
        total = 50 * 1024 * 1024
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"%d" % total)],
            }
        )
        while progress[0] < total:
            await send({"type": "http.response.body", "body": bytes(65536), "more_body": True})
            progress[0] += 65536
        await send({"type": "http.response.body", "body": b""})

    return app


def _read_until(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(1 << 20)
        assert chunk, "closed early"
        data += chunk
    return bytes(data)


# What the kernel may hold for one loopback connection (both socket buffers, autotuned) plus
# the transport's high-water mark: far below the 50 MiB an app gets through when
# pause_writing is ignored.
_IN_FLIGHT = 16 * 1024 * 1024


def test_an_app_streaming_to_a_slow_reader_waits_for_it(serve: Any) -> None:
    progress = [0]
    server = serve(_streamer(progress))
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.sendall(get(server.port, "/big"))
    time.sleep(1.0)  # the app would send all 50 MiB in this time without flow control
    assert 0 < progress[0] < _IN_FLIGHT
    sock.settimeout(10)
    _read_until(sock, 50 * 1024 * 1024)
    sock.close()
    assert progress[0] == 50 * 1024 * 1024


def test_big_response_inside_a_pipelined_burst_keeps_flow_control(serve: Any) -> None:
    # Responses to a burst of pipelined requests are held back to be written together: a
    # large one among them must still be written as it goes, so that send() waits for the
    # slow reader.
    progress = [0]
    server = serve(_streamer(progress))
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.sendall(get(server.port) * 3 + get(server.port, "/big") + get(server.port))
    time.sleep(1.0)
    assert 0 < progress[0] < _IN_FLIGHT
    sock.settimeout(10)
    received, tail, hellos = 0, b"", 0
    while hellos < 4 or received < 50 * 1024 * 1024:
        chunk = sock.recv(1 << 20)
        assert chunk, "closed early"
        received += len(chunk)
        tail = tail[-64:] + chunk
        hellos += tail.count(b"Hello, world!") - tail[: -len(chunk)].count(b"Hello, world!")
    sock.close()
    assert hellos == 4


def test_reading_pauses_when_the_app_does_not_consume_the_body(serve: Any) -> None:
    release = threading.Event()
    seen: list[int] = []

    async def lazy_reader(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        import asyncio

        while not release.is_set():
            await asyncio.sleep(0.02)
        total = 0
        while True:
            message = await receive()
            total += len(message["body"])
            if not message["more_body"]:
                break
        seen.append(total)
        await apps.respond(send, body=b"%d" % total)

    server = serve(lazy_reader)
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    sock.setblocking(False)
    total = 32 * 1024 * 1024
    sock.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % total)
    sent = 0
    chunk = b"y" * 65536
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            sent += sock.send(chunk)
        except BlockingIOError:
            time.sleep(0.01)
    # The server stopped reading: far less than the whole body could be sent.
    assert sent < 8 * 1024 * 1024
    release.set()
    sock.setblocking(True)
    sock.sendall(b"y" * (total - sent))
    sock.settimeout(10)
    data = b""
    while not data.endswith(b"%d" % total):
        more = sock.recv(65536)
        if not more:
            break
        data += more
    sock.close()
    assert seen == [total]


# -- limits and timeouts ---------------------------------------------------------------------


async def _refuse_posts(scope: Any, receive: Any, send: Any) -> None:
    """401 to a POST without reading its body; hello to the rest."""
    if scope["type"] == "http":
        await apps.respond(send, status=401 if scope["method"] == "POST" else 200, body=b"ok")


def test_an_unread_body_is_discarded_to_keep_the_connection(serve: Any, raw: Any) -> None:
    server = serve(_refuse_posts)
    client = raw(server.port)
    client.send(
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 300000\r\n\r\n"
        + b"x" * 300_000
        + get(server.port)
    )
    assert client.read_response().status == 401
    assert client.read_response().status == 200
    assert not client.closed(timeout=0.2)


def test_limit_discard_body_closes_the_connection_beyond_it(serve: Any, raw: Any) -> None:
    server = serve(_refuse_posts, limit_discard_body=65536)
    client = raw(server.port)
    client.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 300000\r\n\r\n" + b"x" * 200_000)
    assert client.read_response().status == 401
    assert client.closed()


def test_the_new_limits_and_timeouts_have_cli_flags() -> None:
    from asgiserve.cli import main

    names = {param.name for param in main.params}
    assert {"limit_discard_body", "timeout_request_body", "timeout_response_write"} <= names


def test_a_request_body_that_trickles_in_gets_408(serve: Any, raw: Any) -> None:
    server = serve(apps.app, timeout_request_body=1)
    client = raw(server.port)
    client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\nabc")
    started = time.monotonic()
    for _ in range(8):  # a byte every half second: never 64 KiB in a second
        time.sleep(0.5)
        try:
            client.send(b"x")
        except OSError:
            break
    assert client.read_response().status == 408
    assert client.closed()
    assert time.monotonic() - started < 4


def test_a_client_that_stops_reading_is_dropped_after_the_write_timeout(serve: Any) -> None:
    server = serve(apps.app, timeout_response_write=1)
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.sendall(get(server.port, "/big?mb=50"))
    time.sleep(3.5)  # write timeout, plus the once-a-second sweep, plus slack
    sock.settimeout(5)
    received = 0
    try:
        while chunk := sock.recv(1 << 20):
            received += len(chunk)
    except ConnectionResetError:
        pass
    sock.close()
    assert received < 50 * 1024 * 1024  # dropped, not waited for


def test_a_client_that_half_closes_after_its_request_gets_the_answer(serve: Any) -> None:
    server = serve(apps.app)
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(get(server.port) + get(server.port))
    sock.shutdown(socket.SHUT_WR)
    sock.settimeout(5)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    assert data.count(b"HTTP/1.1 200 OK") == 2


def test_idle_keep_alive_connection_is_closed_after_the_timeout(serve: Any, raw: Any) -> None:
    server = serve(apps.app, timeout_keep_alive=1)
    client = raw(server.port)
    client.send(get(server.port))
    client.read_response()
    start = time.monotonic()
    assert client.closed(timeout=4)
    assert 0.5 < time.monotonic() - start < 3.5


def test_slow_request_head_gets_408(serve: Any, raw: Any) -> None:
    server = serve(apps.app, timeout_request_head=1)
    client = raw(server.port)
    client.send(b"GET / HTTP/1.1\r\nHost: t\r\n")
    start = time.monotonic()
    response = client.read_response()
    assert response.status == 408
    assert response.header(b"connection") == b"close"
    assert 0.5 < time.monotonic() - start < 3.5
    assert client.closed()


def test_limit_concurrency_answers_503_beyond_the_limit(serve: Any) -> None:
    server = serve(apps.app, limit_concurrency=2)
    holders = [RawClient(server.port) for _ in range(2)]
    for holder in holders:
        holder.send(get(server.port, "/slow?s=1.5"))
    time.sleep(0.3)
    response = httpx.get(server.url)
    assert response.status_code == 503
    for holder in holders:
        assert holder.read_response().body == b"slow done"
        holder.close()
    assert httpx.get(server.url).status_code == 200


def test_request_limits_are_configurable(serve: Any, raw: Any) -> None:
    server = serve(apps.app, limit_request_line=64, limit_request_fields=3, limit_request_head=1024)
    cases = [
        (get(server.port, "/" + "a" * 100), 414),
        (get(server.port, extra=b"A: 1\r\nB: 2\r\nC: 3\r\n"), 431),
        (get(server.port, extra=b"A: " + b"x" * 2000 + b"\r\n"), 431),
        (get(server.port, extra=b"A: 1\r\n"), 200),
    ]
    for request, status in cases:
        client = raw(server.port)
        client.send(request)
        assert client.read_response().status == status, request[:40]


# -- malformed requests end to end ---------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes,status",
    [
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n folded\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        (b"BREW / HTTP/1.1\r\nHost: a\r\n\r\n", 501),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),  # a TLS ClientHello
    ],
    ids=[
        "cl+te",
        "space-colon",
        "obs-fold",
        "no-host",
        "http2-line",
        "unknown-method",
        "tls-hello",
    ],
)
def test_malformed_request_gets_an_error_response_and_a_close(
    server: Any, raw: Any, request_bytes: bytes, status: int
) -> None:
    client = raw(server.port)
    client.send(request_bytes)
    response = client.read_response()
    assert response.status == status
    assert response.header(b"connection") == b"close"
    assert client.closed()
    # The server keeps serving everybody else.
    assert httpx.get(server.url).status_code == 200


def test_error_for_a_pipelined_request_comes_after_earlier_responses(server: Any, raw: Any) -> None:
    client = raw(server.port)
    client.send(get(server.port, "/slow?s=0.2") + b"GET / HTTP/1.1\r\nHost : bad\r\n\r\n")
    assert client.read_response().body == b"slow done"
    assert client.read_response().status == 400
    assert client.closed()


def test_every_request_read_before_a_malformed_one_is_answered(server: Any, raw: Any) -> None:
    # Not only the one being served: those queued behind it too, kept alive, then the error.
    client = raw(server.port)
    client.send(
        get(server.port, "/slow?s=0.2")
        + get(server.port, "/")
        + get(server.port, "/")
        + b"GET / HTTP/1.1\r\nHost : bad\r\n\r\n"
    )
    responses = [client.read_response() for _ in range(3)]
    assert [r.body for r in responses] == [b"slow done", b"Hello, world!", b"Hello, world!"]
    assert [r.header(b"connection") for r in responses] == [None, None, None]
    assert client.read_response().status == 400
    assert client.closed()


def test_broken_chunked_body_gets_400(server: Any, raw: Any) -> None:
    client = raw(server.port)
    client.send(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\n"
    )
    response = client.read_response()
    assert response.status == 400
    assert client.closed()


def test_an_empty_static_file_is_answered_at_once(serve: Any, raw: Any, tmp_path: Any) -> None:
    # The server answers a remembered file itself (--static): an empty one must not leave
    # its head waiting in the kernel for bytes that never come (issue 17, point 4).
    (tmp_path / "empty.txt").write_bytes(b"")
    server = serve(None, static=str(tmp_path))
    client = raw(server.port)
    request = b"GET /empty.txt HTTP/1.1\r\nHost: t\r\n\r\n"
    client.send(request)
    assert client.read_response().status == 200  # now remembered
    for _ in range(3):
        started = time.monotonic()
        client.send(request)
        response = client.read_response()
        assert (response.status, response.body) == (200, b"")
        assert time.monotonic() - started < 0.1
