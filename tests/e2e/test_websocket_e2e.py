"""WebSockets through the real CLI: frameworks, 1000 connections, shutdown, nginx in front."""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import connect

from tests.conftest import CLIServer, start_cli

STARLETTE_WS = textwrap.dedent(
    """
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept(subprotocol="v1")
        try:
            while True:
                text = await websocket.receive_text()
                if text == "bye":
                    await websocket.close(code=4100, reason="see you")
                    return
                await websocket.send_text("starlette:" + text)
        except WebSocketDisconnect:
            pass

    app = Starlette(routes=[WebSocketRoute("/ws/{room}", echo)])
    """
)

FASTAPI_WS = textwrap.dedent(
    """
    from fastapi import FastAPI, WebSocket, WebSocketDisconnect

    app = FastAPI()

    @app.websocket("/ws/{room}")
    async def echo(websocket: WebSocket, room: str, token: str | None = None) -> None:
        if token != "secret":
            await websocket.close(code=1008)
            return
        await websocket.accept()
        try:
            while True:
                data = await websocket.receive_json()
                await websocket.send_json({"room": room, "echo": data})
        except WebSocketDisconnect:
            pass
    """
)

ECHO = textwrap.dedent(
    """
    async def app(scope, receive, send):
        if scope["type"] != "websocket":
            if scope["type"] == "http":
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": b"ok"})
            return
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": message.get("text"), "bytes": message.get("bytes")})
    """
)


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("wsapps")
    (directory / "starlette_ws.py").write_text(STARLETTE_WS)
    (directory / "fastapi_ws.py").write_text(FASTAPI_WS)
    (directory / "echo_ws.py").write_text(ECHO)
    return directory


@pytest.fixture
def echo_server(app_dir: Path) -> Iterator[CLIServer]:
    server = start_cli("echo_ws:app", "--app-dir", str(app_dir), "--no-access-log")
    yield server
    server.stop()


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_starlette_websocket_route(app_dir: Path, http: str) -> None:
    server = start_cli("starlette_ws:app", "--app-dir", str(app_dir), "--http", http)
    try:

        async def main() -> Any:
            async with connect(f"ws://127.0.0.1:{server.port}/ws/lobby", subprotocols=["v1"]) as ws:
                await ws.send("hi")
                reply = await ws.recv()
                await ws.send("bye")
                with pytest.raises(websockets.ConnectionClosed):
                    await ws.recv()
                return reply, ws.subprotocol, ws.close_code, ws.close_reason

        assert asyncio.run(main()) == ("starlette:hi", "v1", 4100, "see you")
    finally:
        assert server.stop() == 0


def test_fastapi_websocket_route_with_query_auth(app_dir: Path) -> None:
    server = start_cli("fastapi_ws:app", "--app-dir", str(app_dir))
    try:

        async def main() -> Any:
            async with connect(f"ws://127.0.0.1:{server.port}/ws/room7?token=secret") as ws:
                await ws.send('{"n": 1}')
                return await ws.recv()

        assert asyncio.run(main()) == '{"room":"room7","echo":{"n":1}}'

        async def refused() -> None:
            async with connect(f"ws://127.0.0.1:{server.port}/ws/room7?token=wrong"):
                pass

        with pytest.raises(websockets.InvalidStatus) as info:
            asyncio.run(refused())
        assert info.value.response.status_code == 403
    finally:
        assert server.stop() == 0


def test_a_thousand_concurrent_connections_echo(echo_server: CLIServer) -> None:
    async def one(i: int) -> bool:
        async with connect(
            f"ws://127.0.0.1:{echo_server.port}/", compression=None, open_timeout=30
        ) as ws:
            for round_ in range(3):
                await ws.send(f"{i}:{round_}")
                if await ws.recv() != f"{i}:{round_}":
                    return False
            return True

    async def main() -> list[bool]:
        semaphore = asyncio.Semaphore(250)  # bound the connect storm, not the concurrency

        async def opened(i: int) -> Any:
            async with semaphore:
                ws = await connect(
                    f"ws://127.0.0.1:{echo_server.port}/", compression=None, open_timeout=30
                )
            return ws

        sockets = await asyncio.gather(*(opened(i) for i in range(1000)))
        try:

            async def talk(i: int, ws: Any) -> bool:
                await ws.send(f"m{i}")
                return await ws.recv() == f"m{i}"

            return await asyncio.gather(*(talk(i, ws) for i, ws in enumerate(sockets)))
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets))

    results = asyncio.run(main())
    assert len(results) == 1000 and all(results)


def test_graceful_shutdown_closes_websockets_with_1001(echo_server: CLIServer) -> None:
    async def main() -> Any:
        async with connect(f"ws://127.0.0.1:{echo_server.port}/") as ws:
            await ws.send("x")
            await ws.recv()
            echo_server.signal(signal.SIGTERM)
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            return ws.close_code

    start = time.monotonic()
    assert asyncio.run(main()) == 1001
    assert echo_server.wait() == 0
    assert time.monotonic() - start < 5


NGINX_CONF = """
worker_processes 1;
error_log {dir}/error.log;
pid {dir}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.skipif(
    shutil.which("nginx") is None, reason="nginx is not installed (Debian nginx-light)"
)
def test_websocket_upgrade_through_nginx(echo_server: CLIServer, tmp_path: Path) -> None:
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=tmp_path, port=port, upstream=echo_server.port))
    process = subprocess.Popen(
        ["nginx", "-c", str(conf), "-p", str(tmp_path), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(
                        f"nginx did not start: {process.stderr.read() if process.stderr else ''}"
                    ) from None
                time.sleep(0.05)

        async def main() -> Any:
            async with connect(f"ws://127.0.0.1:{port}/through-nginx") as ws:
                await ws.send("via nginx")
                text = await ws.recv()
                await ws.send(b"\x01\x02")
                data = await ws.recv()
                return text, data

        assert asyncio.run(main()) == ("via nginx", b"\x01\x02")
    finally:
        process.send_signal(signal.SIGQUIT)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


# -- WebSockets over HTTP/2 (RFC 8441) from a real browser -------------------------------------

H2_PAGE = b"""<!doctype html><title>waiting</title><script>
const ws = new WebSocket("wss://" + location.host + "/ws");
ws.onopen = () => ws.send("hello over h2");
ws.onmessage = (event) => { document.title = "echo: " + event.data; ws.close(1000); };
ws.onerror = () => { document.title = "error"; };
</script><img src="/wait" alt="">"""
SOCKETS_SEEN: list[str] = []
# Set when the page's socket is closed by the page, which it does after it has shown the echo.
SOCKET_CLOSED = threading.Event()


async def page_and_echo(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "http" and scope["path"] == "/wait":
        # An image the page loads: it holds the page's load event (and so Chromium's
        # --dump-dom, whose virtual time otherwise runs ahead of the real socket) until the
        # echo has been shown, or 20 s.
        deadline = time.monotonic() + 20
        while not SOCKET_CLOSED.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
    elif scope["type"] == "http":
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/html; charset=utf-8")],
            }
        )
        await send({"type": "http.response.body", "body": H2_PAGE})
    elif scope["type"] == "websocket":
        SOCKETS_SEEN.append(scope["http_version"])
        await receive()
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": message["text"]})
        SOCKET_CLOSED.set()


def test_chromium_opens_a_websocket_over_http2(serve: Any, tmp_path: Path) -> None:
    from tests.e2e.test_static_e2e import chromium_binary, run_chromium

    binary = chromium_binary()
    if binary is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    trustme = pytest.importorskip("trustme")
    certificate = trustme.CA().issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    certificate.cert_chain_pems[0].write_to_path(str(certfile))
    certificate.private_key_pem.write_to_path(str(keyfile))
    server = serve(page_and_echo, ssl_certfile=str(certfile), ssl_keyfile=str(keyfile))
    SOCKETS_SEEN.clear()
    SOCKET_CLOSED.clear()
    dom = run_chromium(
        binary,
        tmp_path / "profile",
        "--ignore-certificate-errors",
        "--dump-dom",
        f"https://127.0.0.1:{server.port}/",
    )
    assert "<title>echo: hello over h2</title>" in dom.stdout, dom.stderr[-2000:]
    # The socket went over the page's HTTP/2 connection, not an HTTP/1.1 upgrade.
    assert SOCKETS_SEEN == ["2"]
