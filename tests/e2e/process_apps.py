"""Apps for the process-model tests (``tests/e2e/test_process_model.py``).

Workers import them as ``tests.e2e.process_apps:app``. Every response names the worker
process that produced it, so a test can tell the workers apart.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

#: Memory the app holds on purpose (``/hoard``), to trip ``--limit-worker-memory``.
HOARD: list[bytes] = []


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    params = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    path = scope["path"]
    if path == "/block":
        # Blocks the whole event loop, as a CPU-bound or synchronous call in an app would.
        time.sleep(float(params.get("s", "0.05")))
    elif path == "/slow":
        await asyncio.sleep(float(params.get("s", "1")))
    elif path == "/hoard":
        # Non-zero bytes: the pages are really written, so they count in the RSS.
        HOARD.append(b"\x01" * (int(params.get("mib", "1")) * 1024 * 1024))
    body = str(os.getpid()).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})
