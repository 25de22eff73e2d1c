"""Logging helpers."""

import re
from typing import Any

import httpx

from asgiserve.logging import escape


def test_escape_leaves_printable_text_alone() -> None:
    assert escape("/café?x=1") == "/café?x=1"


def test_escape_neutralises_control_characters() -> None:
    assert escape("a\nb\rc\x1b[31m\x7f") == "a\\x0ab\\x0dc\\x1b[31m\\x7f"
    assert "\n" not in escape("line\nbreak\u2028")


# -- --log-level trace ---------------------------------------------------------------------------


def test_trace_logs_connections_and_asgi_messages(cli: Any) -> None:
    server = cli("tests.apps:app", "--log-level", "trace", "--http", "h11")
    assert httpx.get(f"{server.url}/echo", params={"q": "1"}).status_code == 200
    assert server.stop() == 0
    log = server.output()
    assert re.search(r"TRACE:    127\.0\.0\.1:\d+ - connection made", log)
    assert re.search(r"TRACE:    127\.0\.0\.1:\d+ - connection lost", log)
    assert "TRACE:    ASGI [1] started scope={'type': 'lifespan'" in log
    assert re.search(r"ASGI \[2\] started scope=\{'type': 'http'.*'path': '/echo'", log)
    assert "ASGI [2] receive {'type': 'http.request', 'body': '<0 bytes>'" in log
    assert "ASGI [2] send {'type': 'http.response.start', 'status': 200" in log
    assert "ASGI [2] send {'type': 'http.response.body', 'body': '<0 bytes>'" in log
    assert "ASGI [2] completed" in log


def test_trace_logs_a_websocket_switch(cli: Any) -> None:
    from websockets.sync.client import connect

    server = cli("examples.hello:app", "--log-level", "trace")
    with connect(server.url.replace("http", "ws") + "/") as websocket:
        websocket.send("hi")
        assert websocket.recv(timeout=5) == "hi"
    server.stop()
    log = server.output()
    assert re.search(r"connection switched to \w+", log)
    # The WebSocket connection's closing is logged too, once.
    assert len(re.findall(r"127\.0\.0\.1:\d+ - connection lost", log)) == 1
    assert "send {'type': 'websocket.send', 'text': '<2 chars>'}" in log


def test_info_logs_no_trace_lines(cli: Any) -> None:
    server = cli("tests.apps:app")
    httpx.get(server.url)
    server.stop()
    assert "TRACE" not in server.output()
    assert "ASGI [" not in server.output()
