"""Raw ASGI apps the server tests run, in-process or through the CLI (``tests.apps:app``)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

#: What the apps saw, for in-process tests to inspect (e.g. disconnects).
EVENTS: list[Any] = []


async def read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionError("client disconnected")
        body += message.get("body", b"")
        if not message.get("more_body", False):
            return body


async def respond(
    send: Send,
    status: int = 200,
    body: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    content_type: bytes = b"text/plain",
) -> None:
    all_headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
    await send(
        {"type": "http.response.start", "status": status, "headers": all_headers + (headers or [])}
    )
    await send({"type": "http.response.body", "body": body})


def query(scope: Scope) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}


async def lifespan(scope: Scope, receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            scope["state"]["started"] = "yes"
            if os.environ.get("TEST_APP_FAIL_STARTUP"):
                await send({"type": "lifespan.startup.failed", "message": "told to fail"})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            marker = os.environ.get("TEST_APP_SHUTDOWN_MARKER")
            if marker:
                with open(marker, "w") as file:
                    file.write("shutdown")
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: Scope, receive: Receive, send: Send) -> None:  # noqa: PLR0912, PLR0915
    if scope["type"] == "lifespan":
        await lifespan(scope, receive, send)
        return
    path = scope["path"].removeprefix(scope["root_path"])
    params = query(scope)
    if path == "/":
        await respond(send, body=b"Hello, world!")
    elif path == "/echo":
        await respond(send, body=await read_body(receive), content_type=b"application/octet-stream")
    elif path == "/digest":
        body = await read_body(receive)
        await respond(send, body=f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode())
    elif path == "/echo-stream":
        # Streams the request body back as it arrives (chunked response).
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while True:
            message = await receive()
            more = message.get("more_body", False)
            await send(
                {"type": "http.response.body", "body": message.get("body", b""), "more_body": more}
            )
            if not more:
                break
    elif path == "/stream":
        count, size = int(params.get("n", "4")), int(params.get("size", "5"))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        for i in range(count):
            await send(
                {
                    "type": "http.response.body",
                    "body": bytes([97 + i % 26]) * size,
                    "more_body": True,
                }
            )
        await send({"type": "http.response.body", "body": b""})
    elif path.startswith("/scope"):
        visible = {
            key: value
            for key, value in scope.items()
            if key not in ("headers", "state", "extensions", "raw_path", "query_string")
        }
        visible["headers"] = [
            [k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]
        ]
        visible["raw_path"] = scope["raw_path"].decode("latin-1")
        visible["query_string"] = scope["query_string"].decode("latin-1")
        visible["state"] = dict(scope["state"])
        visible["extensions"] = sorted(scope.get("extensions") or {})
        await respond(send, body=json.dumps(visible).encode(), content_type=b"application/json")
    elif path == "/raise":
        raise RuntimeError("boom before the response")
    elif path == "/raise-after-start":
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"100")]}
        )
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("boom after the response started")
    elif path == "/no-response":
        return
    elif path == "/incomplete":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
    elif path == "/status":
        status = int(params["code"])
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"x-status", str(status).encode())],
            }
        )
        await send({"type": "http.response.body", "body": b"body that must not be sent"})
    elif path == "/slow":
        await asyncio.sleep(float(params.get("s", "1")))
        await respond(send, body=b"slow done")
    elif path == "/no-read":
        # Answers without reading the request body.
        await respond(send, body=b"not reading")
    elif path == "/wait-disconnect":
        # Starts no response; waits until the client goes away and records it.
        EVENTS.append(("waiting", scope["client"]))
        message = await receive()
        if message["type"] == "http.request" and not message.get("more_body"):
            message = await receive()
        EVENTS.append(("received", message["type"]))
        marker = params.get("marker")
        if marker:
            with open(marker, "w") as file:
                file.write(message["type"])
    elif path == "/big":
        # A large streamed response, for flow control towards a slow reader.
        total = int(params.get("mb", "50")) * 1024 * 1024
        chunk = b"x" * 65536
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(total).encode())],
            }
        )
        sent = 0
        while sent < total:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            sent += len(chunk)
        await send({"type": "http.response.body", "body": b""})
    elif path == "/headers":
        await respond(
            send,
            body=b"ok",
            headers=[(b"server", b"custom"), (b"x-multi", b"1"), (b"x-multi", b"2")],
        )
    elif path == "/close":
        await respond(send, body=b"bye", headers=[(b"connection", b"close")])
    elif path == "/bad-header":
        await respond(send, body=b"x", headers=[(b"x-evil", b"a\r\nset-cookie: injected=1")])
    elif path == "/too-long":
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"3")]}
        )
        await send({"type": "http.response.body", "body": b"four"})
    elif path == "/state":
        await respond(send, body=scope["state"].get("started", "no").encode())
    elif path == "/send-after-disconnect":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        while (await receive())["type"] != "http.disconnect":
            pass
        try:
            await send({"type": "http.response.body", "body": b"second", "more_body": True})
        except OSError as exc:
            EVENTS.append(("send-after-disconnect", type(exc).__name__))
    else:
        await respond(send, 404, b"Not Found")


def asgi2_app(scope: Scope) -> Callable[[Receive, Send], Awaitable[None]]:
    """An ASGI 2 (double-callable) app."""

    async def instance(receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return
        await respond(send, body=b"asgi2")

    return instance


def factory() -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    return app


not_callable = 42
