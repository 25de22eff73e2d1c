"""The examples answer every scope type a server sends them: lifespan, HTTP and WebSocket."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect


@pytest.mark.parametrize(
    "app,path,ws_path",
    [
        ("examples.hello:app", "/", "/"),
        ("examples.fastapi_app:app", "/items", "/ws"),
    ],
)
def test_example_answers_http_and_websocket(cli: Any, app: str, path: str, ws_path: str) -> None:
    server = cli(app)
    assert httpx.get(server.url + path).status_code == 200
    with connect(server.url.replace("http", "ws") + ws_path) as websocket:
        websocket.send("ping")
        assert websocket.recv(timeout=5) == "ping"
    assert server.stop() == 0
    log = server.output()
    assert "Traceback" not in log
    assert "500" not in log.split("running on", 1)[1]


def test_fastapi_example_refuses_a_websocket_it_has_no_route_for(cli: Any) -> None:
    server = cli("examples.fastapi_app:app")
    with pytest.raises(InvalidStatus) as refused:
        connect(server.url.replace("http", "ws") + "/nowhere")
    assert refused.value.response.status_code == 403
    server.stop()
    assert "Traceback" not in server.output()
