"""Serving ASGI apps (static folders, with ``--mount``) under URL prefixes in front of an app.

A request whose path is at or below a prefix goes to that prefix's app, with the prefix added
to ``root_path`` (``path`` keeps it: ASGI since 2024, as Starlette's ``Mount`` does); every
other request goes to the main app untouched. The lifespan protocol goes to the main app, and
its shutdown also closes the descriptors the mounted :class:`StaticFiles` keep.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from asgiserve.apps.static import NotModified, RememberedFile, StaticFiles, route_path

if TYPE_CHECKING:
    from asgiserve.asgi.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["Mounts", "served_files"]

#: ``StaticFiles.borrow_remembered``, or the same through ``Mounts``.
BorrowRemembered = Callable[
    [str, Iterable[tuple[bytes, bytes]]], "RememberedFile | NotModified | None"
]


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
        kind = scope["type"]
        if kind in ("http", "websocket"):
            mount = self._mount_for(route_path(scope))
            if mount is not None:
                prefix, app = mount
                child = dict(scope)
                child["root_path"] = scope.get("root_path", "") + prefix
                await app(child, receive, send)
                return
        elif kind == "lifespan":

            async def receive_closing() -> Message:
                message = await receive()
                if message["type"] == "lifespan.shutdown":
                    self.close()
                return message

            await self.app(scope, receive_closing, send)
            return
        await self.app(scope, receive, send)

    def close(self) -> None:
        """Close the descriptors the mounted :class:`StaticFiles` keep (done at lifespan
        shutdown); they are opened again as needed."""
        for _, app in self.mounts:
            if isinstance(app, StaticFiles):
                app.close()

    def borrow_remembered(
        self, route: str, request_headers: Iterable[tuple[bytes, bytes]]
    ) -> RememberedFile | NotModified | None:
        """:meth:`StaticFiles.borrow_remembered` through the mounts: the answer for ``route``
        (the path below the server's root path) if a mounted :class:`StaticFiles` would
        answer it at once.

        Only a mount that is exactly a :class:`StaticFiles` is asked: a subclass, or any other
        app, may do more in its ``__call__`` (check credentials, log, add headers) than the
        remembered answer would, so its requests run it. The main app is never asked."""
        mount = self._mount_for(route)
        if mount is None:
            return None
        prefix, app = mount
        if type(app) is not StaticFiles:
            return None
        return app.borrow_remembered(route[len(prefix) :], request_headers)

    def _mount_for(self, route: str) -> tuple[str, ASGIApp] | None:
        """The mount whose prefix is ``route`` or a folder above it (the longest); None for
        the main app."""
        for prefix, app in self.mounts:
            if route.startswith(prefix) and (
                len(route) == len(prefix) or route[len(prefix)] == "/"
            ):
                return prefix, app
        return None


def served_files(app: object) -> BorrowRemembered | None:
    """What lets the server answer remembered files without running ``app``: for the app it
    built from ``--static`` (a :class:`StaticFiles`) or ``--mount`` (a :class:`Mounts` in
    front of the user's app), their ``borrow_remembered``; None for anything else.

    Found by exact type, never by looking up an attribute: a user's app (a subclass of
    StaticFiles that checks credentials, a wrapper forwarding attributes with ``__getattr__``)
    must always run, so the server may only skip apps whose ``__call__`` is ours."""
    if type(app) is StaticFiles or type(app) is Mounts:
        return app.borrow_remembered
    return None
