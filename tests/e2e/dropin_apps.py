"""Apps a uvicorn user brings: a factory without --factory, a WSGI app, a context variable."""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterable
from typing import Any

from tests.apps import app as asgi_app

#: Set when this module is imported, which the server does inside its own task: requests see
#: it, unless --reset-contextvars runs them in an empty context.
REQUEST_SEES = contextvars.ContextVar("REQUEST_SEES", default="nothing")
REQUEST_SEES.set("the server's context")


def create_app() -> Any:
    """An app factory, as in FastAPI's docs: ``asgiserve dropin_apps:create_app`` with no
    ``--factory``."""
    return asgi_app


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = f"wsgi {environ['REQUEST_METHOD']} {environ['PATH_INFO']}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


async def two_arguments(scope: Any, receive: Any) -> None:
    """Not an ASGI app: it cannot take (scope, receive, send)."""


async def context_app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = REQUEST_SEES.get().encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
