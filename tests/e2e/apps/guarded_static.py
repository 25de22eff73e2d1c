"""A user's app for the e2e tests: the files of ``$GUARDED_DIR`` behind a password, in the two
shapes that once let the server answer for it (issue 17): a subclass of StaticFiles, and a
middleware that forwards attribute lookups to the app it wraps."""

from __future__ import annotations

import os
from typing import Any

from asgiserve.apps.static import StaticFiles

PASSWORD = (b"authorization", b"Bearer letmein")


async def _deny(send: Any) -> None:
    await send(
        {"type": "http.response.start", "status": 401, "headers": [(b"content-length", b"0")]}
    )
    await send({"type": "http.response.body", "body": b""})


class PasswordStaticFiles(StaticFiles):
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and PASSWORD not in scope["headers"]:
            await _deny(send)
            return
        await super().__call__(scope, receive, send)


class PasswordWrapper:
    def __init__(self, app: Any) -> None:
        self.app = app

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and PASSWORD not in scope["headers"]:
            await _deny(send)
            return
        await self.app(scope, receive, send)


subclass = PasswordStaticFiles(os.environ.get("GUARDED_DIR", "."))
wrapper = PasswordWrapper(StaticFiles(os.environ.get("GUARDED_DIR", ".")))
