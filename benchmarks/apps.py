"""Raw ASGI applications used by the benchmark harness.

Every server under test runs exactly these callables (``benchmarks.apps:<name>``), so the
numbers compare servers, not frameworks.  No framework, no routing: one callable per test.

All apps answer the ``lifespan`` scope (startup/shutdown complete) so that every server goes
through the same start-up path, and every app answers any scope it was not written for with a
short error instead of hanging.
"""

from __future__ import annotations

import json as _json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

__all__ = ["echo", "hello", "json", "stream", "ws_echo"]

HELLO_BODY = b"Hello, world!"
JSON_PAYLOAD = {"message": "Hello, world!", "id": 12345, "ok": True, "tags": ["a", "b", "c"]}
STREAM_CHUNK = b"x" * 4096
STREAM_CHUNKS = 16  # 16 x 4 KiB = 64 KiB, no content-length (chunked on HTTP/1.1)
#: The item benchmarks/fastapi_app.py answers ``GET /items/ID`` with, the id aside (here so
#: that the harness can check the answer without importing FastAPI).
ITEM_FIELDS = {"name": "widget", "price": 9.5, "tags": ["a", "b", "c"]}

_TEXT_HEADERS = [(b"content-type", b"text/plain"), (b"content-length", b"13")]
_STREAM_HEADERS = [(b"content-type", b"application/octet-stream")]


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif kind == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _unexpected(scope: Scope, receive: Receive, send: Send) -> None:
    """Answer a scope the app was not written for (404 for HTTP, close for websocket)."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
    elif scope["type"] == "http":
        await send(
            {
                "type": "http.response.start",
                "status": 404,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"9")],
            }
        )
        await send({"type": "http.response.body", "body": b"Not Found"})
    elif scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.close", "code": 1003})


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    """13-byte text/plain "Hello, world!"."""
    if scope["type"] != "http":
        await _unexpected(scope, receive, send)
        return
    await send({"type": "http.response.start", "status": 200, "headers": _TEXT_HEADERS})
    await send({"type": "http.response.body", "body": HELLO_BODY})


async def json(scope: Scope, receive: Receive, send: Send) -> None:
    """A small dict serialised with json.dumps on every request, application/json."""
    if scope["type"] != "http":
        await _unexpected(scope, receive, send)
        return
    body = _json.dumps(JSON_PAYLOAD).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Read the whole request body and send it back."""
    if scope["type"] != "http":
        await _unexpected(scope, receive, send)
        return
    chunks = []
    more_body = True
    while more_body:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect
            return
        chunks.append(message.get("body", b""))
        more_body = message.get("more_body", False)
    body = b"".join(chunks)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/octet-stream"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def stream(scope: Scope, receive: Receive, send: Send) -> None:
    """64 KiB in 16 chunks of 4 KiB with more_body=True, no content-length."""
    if scope["type"] != "http":
        await _unexpected(scope, receive, send)
        return
    await send({"type": "http.response.start", "status": 200, "headers": _STREAM_HEADERS})
    for _ in range(STREAM_CHUNKS):
        await send({"type": "http.response.body", "body": STREAM_CHUNK, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def ws_echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Websocket: accept, then echo every message back as it came (text or bytes)."""
    if scope["type"] != "websocket":
        await _unexpected(scope, receive, send)
        return
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "websocket.receive":
            text = message.get("text")
            if text is not None:
                await send({"type": "websocket.send", "text": text})
            else:
                await send({"type": "websocket.send", "bytes": message.get("bytes")})
        elif kind == "websocket.disconnect":
            return
