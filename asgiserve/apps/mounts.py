"""Serving ASGI apps (static folders, with ``--mount``) under URL prefixes in front of an app.

A request whose path is at or below a prefix goes to that prefix's app, with the prefix added
to ``root_path`` (``path`` keeps it: ASGI since 2024, as Starlette's ``Mount`` does); every
other request, and the lifespan protocol, goes to the main app untouched.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from asgiserve.apps.static import RememberedFile, route_path

if TYPE_CHECKING:
    from asgiserve.asgi.types import ASGIApp, Receive, Scope, Send

__all__ = ["Mounts"]


class Mounts:
    """``Mounts(app, [("/static", StaticFiles("static"))])``."""

    def __init__(self, app: ASGIApp, mounts: Sequence[tuple[str, ASGIApp]]) -> None:
        for prefix, _ in mounts:
            if not prefix.startswith("/") or prefix.endswith("/"):
                raise ValueError(
                    f"mount prefix {prefix!r} must start with '/' and not end with one"
                )
        self.app = app
        # Longest first, so that /static/img wins over /static.
        self.mounts = sorted(mounts, key=lambda mount: len(mount[0]), reverse=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            mount = self._mount_for(route_path(scope))
            if mount is not None:
                prefix, app = mount
                child = dict(scope)
                child["root_path"] = scope.get("root_path", "") + prefix
                await app(child, receive, send)
                return
        await self.app(scope, receive, send)

    def borrow_remembered(
        self, route: str, request_headers: Iterable[tuple[bytes, bytes]]
    ) -> RememberedFile | None:
        """:meth:`StaticFiles.borrow_remembered` through the mounts: the file for ``route``
        (the path below the server's root path) if the app it goes to can answer it at once."""
        mount = self._mount_for(route)
        if mount is None:
            app: object = self.app
        else:
            prefix, app = mount
            route = route[len(prefix) :]
        borrow = getattr(app, "borrow_remembered", None)
        return None if borrow is None else borrow(route, request_headers)

    def _mount_for(self, route: str) -> tuple[str, ASGIApp] | None:
        """The mount whose prefix is ``route`` or a folder above it (the longest); None for
        the main app."""
        for prefix, app in self.mounts:
            if route.startswith(prefix) and (
                len(route) == len(prefix) or route[len(prefix)] == "/"
            ):
                return prefix, app
        return None
