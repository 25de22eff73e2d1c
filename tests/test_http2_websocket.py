"""WebSockets over HTTP/2 (RFC 8441) against a real server: the h2 package as a raw client on a
socket, WebSocket frames built by hand in its DATA frames."""

from __future__ import annotations

import struct
import threading
import time
import zlib
from typing import Any

import h2.events
import h2.settings
import pytest
from h2.errors import ErrorCodes

from tests.test_http2 import Client
from tests.test_websocket import frame, ws_app

ENABLE_CONNECT_PROTOCOL = h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL


@pytest.fixture(params=["uvloop", "asyncio"])
def server(request: pytest.FixtureRequest, serve: Any) -> Any:
    return serve(ws_app, loop=request.param)


class WebSocketOverH2:
    """One extended CONNECT on an h2c connection, and the WebSocket frames on its stream."""

    def __init__(
        self,
        port: int,
        path: str = "/echo",
        headers: list[tuple[bytes, bytes]] | None = None,
        *,
        protocol: bytes = b"websocket",
        version: bytes = b"13",
    ) -> None:
        self.client = Client(port)
        self.settings = self._server_settings()
        self.stream_id = self.client.conn.get_next_available_stream_id()
        self.client.conn.send_headers(
            self.stream_id,
            [
                (b":method", b"CONNECT"),
                (b":protocol", protocol),
                (b":scheme", b"http"),
                (b":path", path.encode()),
                (b":authority", b"test.local"),
                (b"sec-websocket-version", version),
                *(headers or []),
            ],
        )
        self.record = self.client.track(self.stream_id)
        self.client.flush()
        self.offset = 0

    def _server_settings(self) -> dict[int, int]:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for event in self.client.read_events():
                if isinstance(event, h2.events.RemoteSettingsChanged):
                    return {code: s.new_value for code, s in event.changed_settings.items()}
        raise TimeoutError("no SETTINGS from the server")

    def response_headers(self) -> dict[bytes, bytes]:
        deadline = time.monotonic() + 5
        while self.record["headers"] is None and self.record["reset"] is None:
            assert time.monotonic() < deadline, "no response"
            self.client.read_events()
        return self.record["headers"] or {}

    def send(self, data: bytes) -> None:
        conn = self.client.conn
        while data:
            size = min(conn.local_flow_control_window(self.stream_id), conn.max_outbound_frame_size)
            if size <= 0:
                self.client.read_events()
                continue
            conn.send_data(self.stream_id, data[:size])
            data = data[size:]
            self.client.flush()

    def read_frame(self) -> tuple[int, bytes]:
        """The next WebSocket frame the server sent on the stream (unmasked)."""
        deadline = time.monotonic() + 5
        while True:
            data = self.record["data"][self.offset :]
            if len(data) >= 2:
                length, start = data[1] & 0x7F, 2
                if length == 126:
                    length, start = struct.unpack("!H", data[2:4])[0], 4
                elif length == 127:
                    length, start = struct.unpack("!Q", data[2:10])[0], 10
                if len(data) >= start + length:
                    self.offset += start + length
                    return data[0] & 0x0F, data[start : start + length]
            if self.record["ended"] or self.record["reset"] is not None:
                raise ConnectionError(f"stream over: {self.record}")
            assert time.monotonic() < deadline, "no frame"
            self.client.read_events()

    def wait_ended(self) -> dict[str, Any]:
        return self.client.response(self.stream_id)

    def close(self) -> None:
        self.client.close()


def test_server_advertises_the_extended_connect_setting(server: Any) -> None:
    ws = WebSocketOverH2(server.port)
    assert ws.settings.get(ENABLE_CONNECT_PROTOCOL) == 1
    ws.close()


def test_no_extended_connect_without_websockets(serve: Any) -> None:
    server = serve(ws_app, ws="none")
    ws = WebSocketOverH2(server.port)
    assert ws.settings.get(ENABLE_CONNECT_PROTOCOL, 0) == 0
    # RFC 8441 section 3: :protocol without the setting is a malformed request.
    ws.wait_ended()
    assert ws.record["reset"] == ErrorCodes.PROTOCOL_ERROR
    ws.close()


def test_extended_connect_gets_200_and_messages_are_echoed(server: Any) -> None:
    ws = WebSocketOverH2(server.port)
    headers = ws.response_headers()
    assert headers[b":status"] == b"200"
    assert headers[b"x-accepted"] == b"yes"
    assert b"sec-websocket-accept" not in headers and b"upgrade" not in headers
    ws.send(frame(0x1, "héllo".encode()) + frame(0x2, b"\x00\x01"))
    assert ws.read_frame() == (0x1, "héllo".encode())
    assert ws.read_frame() == (0x2, b"\x00\x01")
    ws.send(frame(0x1, b"x" * 70_000))  # more than one DATA frame, 64-bit length
    assert ws.read_frame() == (0x1, b"x" * 70_000)
    ws.close()


def test_scope_is_the_websocket_scope_with_http_version_2(server: Any) -> None:
    ws = WebSocketOverH2(server.port, "/scope?a=1", [(b"sec-websocket-protocol", b"chat")])
    assert ws.response_headers()[b"sec-websocket-protocol"] == b"chat"
    opcode, payload = ws.read_frame()
    import json

    scope = json.loads(payload)
    assert scope["type"] == "websocket"
    assert scope["http_version"] == "2"
    assert scope["scheme"] == "ws"
    assert scope["path"] == "/scope" and scope["query_string"] == "a=1"
    assert scope["subprotocols"] == ["chat"]
    ws.close()


def test_close_handshake_ends_the_stream(server: Any) -> None:
    ws = WebSocketOverH2(server.port)
    ws.response_headers()
    ws.send(frame(0x8, struct.pack("!H", 1000) + b"bye"))
    assert ws.read_frame() == (0x8, struct.pack("!H", 1000) + b"bye")
    assert ws.wait_ended()["ended"]
    ws.close()


def test_server_close_code_reaches_the_client(server: Any) -> None:
    ws = WebSocketOverH2(server.port, "/server-close")
    assert ws.response_headers()[b":status"] == b"200"
    assert ws.read_frame() == (0x8, struct.pack("!H", 4000) + b"done here")
    ws.close()


@pytest.mark.parametrize(
    "data,code",
    [
        (frame(0x3, b"reserved opcode"), 1002),
        (frame(0x1, b"\xff\xfe"), 1007),
        (frame(0x1, b"unmasked", mask=False), 1002),
    ],
    ids=["reserved-opcode", "bad-utf8", "unmasked"],
)
def test_protocol_errors_keep_their_close_codes(server: Any, data: bytes, code: int) -> None:
    ws = WebSocketOverH2(server.port)
    ws.response_headers()
    ws.send(data)
    opcode, payload = ws.read_frame()
    assert opcode == 0x8 and struct.unpack("!H", payload[:2])[0] == code
    ws.close()


def test_max_size_is_the_same_as_over_http11(serve: Any) -> None:
    server = serve(ws_app, ws_max_size=1000)
    ws = WebSocketOverH2(server.port)
    ws.response_headers()
    ws.send(frame(0x2, b"x" * 2000))
    opcode, payload = ws.read_frame()
    assert opcode == 0x8 and struct.unpack("!H", payload[:2])[0] == 1009
    ws.close()


def test_permessage_deflate_is_negotiated(server: Any) -> None:
    ws = WebSocketOverH2(
        server.port, headers=[(b"sec-websocket-extensions", b"permessage-deflate")]
    )
    assert ws.response_headers()[b"sec-websocket-extensions"].startswith(b"permessage-deflate")
    ws.send(frame(0x1, b"plain, not compressed"))
    opcode, payload = ws.read_frame()  # compressed by the server
    inflated = zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")
    assert (opcode, inflated) == (0x1, b"plain, not compressed")
    ws.close()


def test_close_before_accept_is_a_403_on_the_stream(server: Any) -> None:
    ws = WebSocketOverH2(server.port, "/close-before-accept")
    response = ws.wait_ended()
    assert response["headers"][b":status"] == b"403"
    assert response["data"] == b"Forbidden"
    ws.close()


def test_bad_version_is_refused_without_running_the_app(server: Any) -> None:
    ws = WebSocketOverH2(server.port, "/raise-before-accept", version=b"8")
    response = ws.wait_ended()
    assert response["headers"][b":status"] == b"400"  # not the app's 500
    ws.close()


def test_unknown_protocol_is_refused(server: Any) -> None:
    ws = WebSocketOverH2(server.port, protocol=b"not-websocket")
    assert ws.wait_ended()["reset"] == ErrorCodes.REFUSED_STREAM
    ws.close()


def test_an_app_that_does_not_read_stops_the_window(serve: Any) -> None:
    # The same max_queue as over HTTP/1.1: past it the server stops acknowledging the stream's
    # data, so the client's window for it closes instead of the server buffering.
    server = serve(ws_app, ws_max_queue=4)
    ws = WebSocketOverH2(server.port, "/no-read")
    ws.response_headers()
    message = frame(0x2, b"m" * 16_000)
    sent = 0
    deadline = time.monotonic() + 2.5  # /no-read starts reading after 3 s
    while time.monotonic() < deadline:
        if ws.client.conn.local_flow_control_window(ws.stream_id) < len(message):
            break
        ws.send(message)
        sent += 1
        time.sleep(0.01)
        ws.client.sock.settimeout(0.05)
        try:
            ws.client.read_events()
        except TimeoutError:
            pass
        finally:
            ws.client.sock.settimeout(10)
    assert ws.client.conn.local_flow_control_window(ws.stream_id) < len(message)
    assert sent < 40  # the 256 KiB stream window, not an unbounded buffer
    ws.close()


def test_connection_loss_reaches_the_app(server: Any) -> None:
    from tests.test_websocket import EVENTS

    EVENTS.clear()
    ws = WebSocketOverH2(server.port, "/echo-h2-lost")
    ws.response_headers()
    ws.close()
    deadline = time.monotonic() + 5
    while not EVENTS and time.monotonic() < deadline:
        time.sleep(0.02)
    assert EVENTS == [("disconnect", "/echo-h2-lost", 1006, "")]


def test_keepalive_pings_go_out_on_the_stream(serve: Any) -> None:
    server = serve(ws_app, ws_ping_interval=0.3, ws_ping_timeout=5)
    ws = WebSocketOverH2(server.port)
    ws.response_headers()
    opcode, payload = ws.read_frame()  # the server's sweep runs once a second
    assert opcode == 0x9
    ws.send(frame(0xA, payload))  # the pong keeps the socket open
    ws.send(frame(0x1, b"still here"))
    assert ws.read_frame() == (0x1, b"still here")
    ws.close()


def test_graceful_shutdown_closes_the_websocket_with_1001(serve: Any) -> None:
    server = serve(ws_app, ws_close_timeout=0.5)
    ws = WebSocketOverH2(server.port)
    ws.response_headers()
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    # Raw bytes: h2's client state machine refuses frames that follow the server's GOAWAY,
    # which RFC 9113 section 6.8 allows on streams already open.
    received = b""
    try:
        while chunk := ws.client.sock.recv(65536):
            received += chunk
    except OSError:
        pass
    stopper.join(10)
    assert not stopper.is_alive()
    assert b"\x88\x16\x03\xe9server shutting down" in received  # a close frame, code 1001
    ws.close()
