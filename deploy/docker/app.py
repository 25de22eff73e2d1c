"""Built-in demo application of the asgiserve container image.

The image runs ``$APP`` (default ``app:app``) from ``/app``; this file is
``/app/app.py`` there, so a fresh ``docker run asgiserve`` answers on port 8000
before any code of yours is added. Replace it by copying your own code into
``/app`` and pointing ``APP`` (or the image's ``CMD``) at your application.

It is a plain ASGI 3 callable with no dependencies: ``200`` on ``/`` and on
``/healthz`` (the path the image's HEALTHCHECK and the Kubernetes probes in
``deploy/kubernetes/`` use), ``404`` elsewhere.
"""

from __future__ import annotations

import json
import os
import platform
from typing import Any

_HEALTHY = b"ok\n"


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":  # websocket: not offered by the demo
        return

    path = scope["path"]
    if path == "/healthz":
        status, content_type, body = 200, b"text/plain; charset=utf-8", _HEALTHY
    elif path == "/":
        info = {
            "server": "asgiserve",
            "app": os.environ.get("APP", "app:app"),
            "python": platform.python_version(),
            "hint": "copy your code into /app and set APP=module:attr",
        }
        status, content_type = 200, b"application/json"
        body = json.dumps(info).encode() + b"\n"
    else:
        status, content_type, body = 404, b"text/plain; charset=utf-8", b"not found\n"

    # Drain the request body so the connection can be kept alive.
    more_body = True
    while more_body:
        message = await receive()
        more_body = message.get("more_body", False)

    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body if scope["method"] != "HEAD" else b""})
