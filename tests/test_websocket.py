"""WebSockets (RFC 6455, ASGI websocket spec) against a real server on a loopback port."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import resource
import socket
import struct
import time
import zlib
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import connect

from tests.apps import respond

pytestmark = pytest.mark.usefixtures("backend")

EVENTS: list[Any] = []


async def ws_app(scope: Any, receive: Any, send: Any) -> None:
    """Dispatches on the path: /echo, /close-before-accept, /deny, /raise..., /slow-reader."""
    if scope["type"] == "lifespan":
        return
    if scope["type"] == "http":
        await respond(send, body=b"http:" + scope["path"].encode())
        return
    path = scope["path"]
    assert (await receive())["type"] == "websocket.connect"
    if path == "/close-before-accept":
        await send({"type": "websocket.close"})
        return
    if path == "/deny":
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 401,
                "headers": [(b"x-why", b"token")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": b"no ", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"entry"})
        return
    if path == "/raise-before-accept":
        raise RuntimeError("boom")
    subprotocol = scope["subprotocols"][0] if scope["subprotocols"] else None
    await send(
        {
            "type": "websocket.accept",
            "subprotocol": subprotocol,
            "headers": [(b"x-accepted", b"yes")],
        }
    )
    if path == "/scope":
        visible = {
            k: v
            for k, v in scope.items()
            if k not in ("headers", "state", "raw_path", "query_string")
        }
        visible["query_string"] = scope["query_string"].decode()
        visible["extensions"] = sorted(scope["extensions"])
        await send({"type": "websocket.send", "text": json.dumps(visible)})
    elif path == "/raise-after-accept":
        raise RuntimeError("boom")
    elif path == "/take-one":
        # Takes one message and never asks for another.
        EVENTS.append(("took", (await receive()).get("text")))
        await asyncio.sleep(3)
    elif path == "/close-on-message":
        await receive()
        await send({"type": "websocket.close", "code": 4000})
    elif path == "/server-close":
        await send({"type": "websocket.close", "code": 4000, "reason": "done here"})
    elif path == "/flood":
        # Sends far more than a non-reading client can take: send() must wait.
        chunk = b"z" * 65536
        for _ in range(1600):  # 100 MiB
            await send({"type": "websocket.send", "bytes": chunk})
    elif path == "/no-read":
        await asyncio.sleep(3)
        received = 0
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                break
            received += 1
        EVENTS.append(("no-read-received", received))
        return
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            EVENTS.append(("disconnect", path, message["code"], message.get("reason")))
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})


@pytest.fixture
def server(serve: Any) -> Any:
    return serve(ws_app)


def ws_url(server: Any, path: str = "/echo") -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- happy paths with the websockets client -------------------------------------------------


def test_text_and_binary_messages_are_echoed(server: Any) -> None:
    async def main() -> list[Any]:
        async with connect(ws_url(server)) as ws:
            await ws.send("hello")
            text = await ws.recv()
            await ws.send(b"\x00\xff" * 1000)
            data = await ws.recv()
            await ws.send("é" * 300_000)  # larger than one read, compressed
            big = await ws.recv()
            return [text, data, big]

    assert run(main()) == ["hello", b"\x00\xff" * 1000, "é" * 300_000]


def test_fragmented_message_is_reassembled(server: Any) -> None:
    async def main() -> Any:
        async with connect(ws_url(server), compression=None) as ws:
            await ws.send(["frag", "men", "ted"])
            return await ws.recv()

    assert run(main()) == "fragmented"


def test_subprotocol_and_accept_headers(server: Any) -> None:
    async def main() -> Any:
        async with connect(ws_url(server), subprotocols=["chat", "superchat"]) as ws:
            return ws.subprotocol, ws.response.headers

    subprotocol, headers = run(main())
    assert subprotocol == "chat"
    assert headers["x-accepted"] == "yes"
    assert headers["server"] == "asgiserve"


def test_websocket_scope(server: Any) -> None:
    async def main() -> Any:
        async with connect(ws_url(server, "/scope?a=1"), subprotocols=["p1", "p2"]) as ws:
            return json.loads(await ws.recv())

    scope = run(main())
    assert scope["type"] == "websocket"
    assert scope["asgi"]["version"] == "3.0"
    assert scope["http_version"] == "1.1"
    assert scope["scheme"] == "ws"
    assert scope["path"] == "/scope"
    assert scope["query_string"] == "a=1"
    assert scope["subprotocols"] == ["p1", "p2"]
    assert scope["client"][0] == "127.0.0.1"
    assert scope["server"] == ["127.0.0.1", server.port]
    assert scope["extensions"] == ["websocket.http.response"]


def test_permessage_deflate_is_negotiated_by_default(server: Any) -> None:
    async def main() -> Any:
        async with connect(ws_url(server)) as ws:
            return ws.response.headers.get("sec-websocket-extensions")

    assert run(main()).startswith("permessage-deflate")


def test_permessage_deflate_can_be_turned_off(serve: Any) -> None:
    server = serve(ws_app, ws_per_message_deflate=False)

    async def main() -> Any:
        async with connect(ws_url(server)) as ws:
            await ws.send("x")
            await ws.recv()
            return ws.response.headers.get("sec-websocket-extensions")

    assert run(main()) is None


def test_client_close_code_and_reason_reach_the_app(server: Any) -> None:
    EVENTS.clear()

    async def main() -> None:
        async with connect(ws_url(server, "/echo-close")) as ws:
            await ws.send("x")
            await ws.recv()
            await ws.close(4321, "client says bye")

    run(main())
    deadline = time.monotonic() + 5
    while not EVENTS and time.monotonic() < deadline:
        time.sleep(0.02)
    assert EVENTS == [("disconnect", "/echo-close", 4321, "client says bye")]


def test_server_close_code_and_reason_reach_the_client(server: Any) -> None:
    async def main() -> Any:
        async with connect(ws_url(server, "/server-close")) as ws:
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            return ws.close_code, ws.close_reason

    assert run(main()) == (4000, "done here")


def test_client_ping_gets_a_pong(server: Any) -> None:
    async def main() -> float:
        async with connect(ws_url(server)) as ws:
            waiter = await ws.ping(b"are you there")
            return await asyncio.wait_for(waiter, 5)

    assert run(main()) >= 0


def test_many_concurrent_connections_echo(server: Any) -> None:
    async def one(i: int) -> bool:
        async with connect(ws_url(server), compression=None) as ws:
            await ws.send(f"message {i}")
            return await ws.recv() == f"message {i}"

    async def main() -> list[bool]:
        return await asyncio.gather(*(one(i) for i in range(200)))

    assert all(run(main()))


# -- refusals ----------------------------------------------------------------------------------


def test_close_before_accept_is_an_http_403(server: Any) -> None:
    async def main() -> None:
        async with connect(ws_url(server, "/close-before-accept")):
            pass

    with pytest.raises(websockets.InvalidStatus) as info:
        run(main())
    assert info.value.response.status_code == 403


def test_http_denial_response_extension(server: Any) -> None:
    async def main() -> None:
        async with connect(ws_url(server, "/deny")):
            pass

    with pytest.raises(websockets.InvalidStatus) as info:
        run(main())
    response = info.value.response
    assert response.status_code == 401
    assert response.headers["x-why"] == "token"
    assert response.body == b"no entry"


def test_app_error_before_accept_is_an_http_500(server: Any) -> None:
    with pytest.raises(websockets.InvalidStatus) as info:
        run(connect(ws_url(server, "/raise-before-accept")).__aenter__())
    assert info.value.response.status_code == 500


def test_app_error_after_accept_closes_with_1011(server: Any) -> None:
    async def main() -> Any:
        async with connect(ws_url(server, "/raise-after-accept")) as ws:
            with pytest.raises(websockets.ConnectionClosedError):
                await ws.recv()
            return ws.close_code

    assert run(main()) == 1011


def test_invalid_handshake_is_refused_without_running_the_app(server: Any, raw: Any) -> None:
    client = raw(server.port)
    client.send(
        b"GET /echo HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    response = client.read_response()
    assert response.status == 400
    assert b"Sec-WebSocket-Key" in response.body
    assert client.closed()


def test_ws_none_serves_upgrade_requests_as_http(serve: Any) -> None:
    server = serve(ws_app, ws="none")
    response = httpx.get(
        server.url + "/plain",
        headers={
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
            "Sec-WebSocket-Version": "13",
        },
    )
    assert response.text == "http:/plain"


# -- raw frames: protocol errors close with the right code -----------------------------------


def frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    mask: bool = True,
    rsv1: bool = False,
    key: bytes | None = None,
) -> bytes:
    head = bytes([(0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode])
    length = len(payload)
    mask_bit = 0x80 if mask else 0
    if length < 126:
        head += bytes([mask_bit | length])
    elif length < 65536:
        head += bytes([mask_bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", length)
    if not mask:
        return head + payload
    key = key or os.urandom(4)
    masked = (
        bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        if length < 4096
        else _mask(payload, key)
    )
    return head + key + masked


def _mask(payload: bytes, key: bytes) -> bytes:
    repeated = (key * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        len(payload), "big"
    )


class RawWebSocket:
    def __init__(self, port: int, path: str = "/echo", extensions: str | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        )
        if extensions:
            request += f"Sec-WebSocket-Extensions: {extensions}\r\n"
        self.sock.sendall((request + "\r\n").encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            assert chunk, "closed during the handshake"
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        self.head = head

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _need(self, n: int) -> None:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buffer += chunk

    def read_frame(self) -> tuple[int, bytes]:
        self._need(2)
        opcode, length = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F
        offset = 2
        if length == 126:
            self._need(4)
            length = struct.unpack("!H", self.buffer[2:4])[0]
            offset = 4
        elif length == 127:
            self._need(10)
            length = struct.unpack("!Q", self.buffer[2:10])[0]
            offset = 10
        self._need(offset + length)
        payload = self.buffer[offset : offset + length]
        self.buffer = self.buffer[offset + length :]
        return opcode, payload

    def close_code(self) -> int:
        """Read frames until the server's close frame; return its code."""
        while True:
            opcode, payload = self.read_frame()
            if opcode == 0x8:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize(
    "data,code",
    [
        (frame(0x1, b"unmasked", mask=False), 1002),
        (frame(0x1, b"\xff\xfe invalid utf-8"), 1007),
        (frame(0x1, b"caf\xc3", fin=False) + frame(0x0, b"\x28"), 1007),
        (frame(0x9, b"fragmented ping", fin=False), 1002),
        (frame(0x9, b"p" * 126), 1002),
        (frame(0x3, b"reserved opcode"), 1002),
        (frame(0x0, b"continuation without start"), 1002),
        (frame(0x1, b"rsv1 without deflate", rsv1=True), 1002),
        (frame(0x1, b"a", fin=False) + frame(0x1, b"new message inside a fragmented one"), 1002),
    ],
    ids=[
        "unmasked",
        "bad-utf8",
        "bad-utf8-across-fragments",
        "fragmented-control",
        "oversize-control",
        "reserved-opcode",
        "stray-continuation",
        "rsv1",
        "message-inside-fragment",
    ],
)
def test_protocol_error_closes_with_the_right_code(server: Any, data: bytes, code: int) -> None:
    client = RawWebSocket(server.port)
    client.send(data)
    assert client.close_code() == code
    client.close()


def test_a_burst_of_mixed_frames_is_echoed_in_order(server: Any) -> None:
    # Plain data frames take the core's short cut, the others go through websockets: one
    # write mixing both must come back complete and in order, with the pings answered.
    big = os.urandom(300 * 1024)
    small = [f"message {i}".encode() for i in range(100)]
    burst = b"".join(
        [
            *(frame(0x1, m) for m in small[:50]),
            frame(0x9, b"ping 1"),
            frame(0x2, big),
            frame(0x1, b"fragmen", fin=False),
            frame(0x9, b"ping 2"),
            frame(0x0, "ted é".encode()),
            *(frame(0x2, m) for m in small[50:]),
        ]
    )
    client = RawWebSocket(server.port)
    for i in range(0, len(burst), 50_000):  # and split across reads at arbitrary points
        client.send(burst[i : i + 50_000])
    echoes, pongs = [], []
    while len(echoes) < 102:
        opcode, payload = client.read_frame()
        (pongs if opcode == 0xA else echoes).append((opcode, payload))
    assert echoes == [
        *((0x1, m) for m in small[:50]),
        (0x2, big),
        (0x1, "fragmented é".encode()),
        *((0x2, m) for m in small[50:]),
    ]
    assert pongs == [(0xA, b"ping 1"), (0xA, b"ping 2")]
    client.close()


def test_message_over_max_size_closes_with_1009(serve: Any) -> None:
    server = serve(ws_app, ws_max_size=1024)
    client = RawWebSocket(server.port)
    # Refused from the frame header: the 1 MiB payload never has to arrive.
    client.send(frame(0x2, b"x" * (1024 * 1024))[:64])
    assert client.close_code() == 1009
    client.close()


def test_compression_bomb_closes_with_1009_and_memory_stays_bounded(server: Any) -> None:
    # Deflate cannot do better than ~1:1000, so 100 MiB of zeros takes ~100 KiB on the wire.
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = compressor.compress(b"\0" * (100 * 1024 * 1024)) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert bomb.endswith(b"\x00\x00\xff\xff")
    client = RawWebSocket(server.port, extensions="permessage-deflate")
    assert b"permessage-deflate" in client.head.lower()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    client.send(frame(0x2, bomb[:-4], rsv1=True))
    assert client.close_code() == 1009
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert after - before < 40 * 1024  # KiB: far from the 100 MiB it inflates to
    client.close()


def test_small_compressed_frame_inflating_past_the_limit_closes_with_1009(serve: Any) -> None:
    server = serve(ws_app, ws_max_size=64 * 1024)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = compressor.compress(b"\0" * (1024 * 1024)) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert len(bomb) < 1100  # ~1 KiB that inflates to 1 MiB
    client = RawWebSocket(server.port, extensions="permessage-deflate")
    client.send(frame(0x2, bomb[:-4], rsv1=True))
    assert client.close_code() == 1009
    client.close()


# -- keep-alive, flow control ---------------------------------------------------------------


def test_dead_peer_is_closed_after_the_ping_timeout(serve: Any) -> None:
    server = serve(ws_app, ws_ping_interval=1, ws_ping_timeout=1)
    client = RawWebSocket(server.port)  # never answers pings
    start = time.monotonic()
    opcode, _ = client.read_frame()
    assert opcode == 0x9  # the server's ping
    assert client.close_code() == 1011
    assert time.monotonic() - start < 6
    client.close()


def test_live_peer_survives_several_ping_intervals(serve: Any) -> None:
    server = serve(ws_app, ws_ping_interval=1, ws_ping_timeout=1)

    async def main() -> Any:
        async with connect(ws_url(server), ping_interval=None) as ws:  # the client answers pings
            await asyncio.sleep(3.5)
            await ws.send("still here")
            return await ws.recv()

    assert run(main()) == "still here"


def test_send_waits_for_a_slow_reader(server: Any) -> None:
    client = RawWebSocket(server.port, path="/flood")
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    time.sleep(1.5)  # the app could queue 100 MiB in this time if send() did not wait
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert after - before < 30 * 1024
    total = 0
    while total < 100 * 65536 * 16:
        opcode, payload = client.read_frame()
        total += len(payload)
    client.close()


def test_reading_pauses_when_the_app_does_not_receive(server: Any) -> None:
    EVENTS.clear()
    client = RawWebSocket(server.port, path="/no-read")
    client.sock.setblocking(False)
    message = frame(0x2, b"q" * 65536)
    sent = 0
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            sent += client.sock.send(message)
        except BlockingIOError:
            time.sleep(0.01)
    # 32 queued messages plus socket buffers, not the hundreds of MiB 2 s could carry.
    assert sent < 24 * 1024 * 1024
    client.close()


# -- bytes sent with the upgrade request, before the 101 -------------------------------------


def upgrade_with(port: int, path: str, data: bytes, until: bytes = b"") -> tuple[bytes, bytes]:
    """Send the upgrade request and ``data`` in one write; the response head and what followed
    it until the server closed (or sent ``until``)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        + data
    )
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
            if until and received.endswith(until):
                break
    except (ConnectionResetError, TimeoutError):
        pass
    sock.close()
    head, _, rest = received.partition(b"\r\n\r\n")
    return head, rest


def test_bad_frame_in_the_upgrade_write_gets_the_101_then_the_close(
    serve: Any, backend: tuple[str, str]
) -> None:
    server = serve(ws_app)  # on each parser and loop: both hand the bytes over
    head, rest = upgrade_with(server.port, "/echo", frame(0x3, b"reserved opcode"))
    assert head.startswith(b"HTTP/1.1 101 "), head
    assert rest[:1] == b"\x88" and struct.unpack("!H", rest[2:4])[0] == 1002, rest


def test_message_in_the_upgrade_write_is_read_after_the_101(server: Any) -> None:
    head, rest = upgrade_with(server.port, "/echo", frame(0x1, b"early"), until=b"early")
    assert head.startswith(b"HTTP/1.1 101 "), head
    assert rest == b"\x81\x05early"


def test_frames_sent_before_a_denial_are_never_read(server: Any) -> None:
    head, rest = upgrade_with(server.port, "/close-before-accept", frame(0x3, b"reserved"))
    assert head.startswith(b"HTTP/1.1 403 "), head
    assert rest == b"Forbidden"


# -- a failure after valid messages: they are answered first -------------------------------


def test_message_before_a_bad_frame_is_echoed_before_the_close(server: Any) -> None:
    # Autobahn 3.2-5.15: the echo of the valid message, then close 1002, and no pong for the
    # ping that came after the bad frame.
    client = RawWebSocket(server.port)
    client.send(frame(0x1, b"hello") + frame(0x3, b"reserved") + frame(0x9, b"ping"))
    assert client.read_frame() == (0x1, b"hello")
    assert client.read_frame() == (0x8, struct.pack("!H", 1002) + b"invalid opcode")
    with pytest.raises(ConnectionError):
        client.read_frame()
    client.close()


def test_app_that_never_asks_again_gets_the_close_after_the_close_timeout(serve: Any) -> None:
    server = serve(ws_app, ws_close_timeout=0.2)
    EVENTS.clear()
    client = RawWebSocket(server.port, "/take-one")
    started = time.monotonic()
    client.send(frame(0x1, b"one") + frame(0x3, b"reserved"))
    assert client.close_code() == 1002
    assert time.monotonic() - started < 5  # the close timeout, checked once a second
    assert EVENTS == [("took", "one")]
    client.close()


def test_app_closing_while_a_failure_waits_sends_the_failure_code(server: Any) -> None:
    client = RawWebSocket(server.port, "/close-on-message")
    client.send(frame(0x1, b"one") + frame(0x3, b"reserved"))
    assert client.close_code() == 1002
    client.close()


def test_compressed_connection_fails_at_once(server: Any) -> None:
    # With permessage-deflate the server does not frame messages itself: no answers after a
    # failure, the close goes out at once.
    client = RawWebSocket(server.port, extensions="permessage-deflate")
    client.send(frame(0x1, b"hello") + frame(0x3, b"reserved"))
    assert client.read_frame()[0] == 0x8
    client.close()
