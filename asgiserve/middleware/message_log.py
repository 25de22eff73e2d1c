"""``--log-level trace``: every ASGI message between the server and the app, on ``asgiserve.asgi``.

The server puts this middleware outermost, only at trace level, so the normal path pays
nothing for it. Each scope gets a number; its lines read ``ASGI [3] receive {...}``. Bodies and
WebSocket payloads are logged by size, never by content (they may be large or private).
"""

from __future__ import annotations

import itertools
import logging
from typing import TYPE_CHECKING, Any

from asgiserve.logging import TRACE

if TYPE_CHECKING:
    from asgiserve.asgi.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["MessageLogMiddleware", "summarise"]

logger = logging.getLogger("asgiserve.asgi")

#: Message keys whose values are payloads: logged as their size.
_PAYLOADS = ("body", "bytes", "text")


def summarise(message: Any) -> dict[str, Any]:
    """``message`` (a scope or an ASGI message) with payloads replaced by ``<N bytes>`` /
    ``<N chars>``, and header values kept (they are what a trace is for)."""
    if not isinstance(message, dict):
        return {"unexpected": repr(message)}
    summary: dict[str, Any] = {}
    for key, value in message.items():
        if key in _PAYLOADS and isinstance(value, (bytes, str)):
            unit = "bytes" if isinstance(value, bytes) else "chars"
            summary[key] = f"<{len(value)} {unit}>"
        elif key in ("state", "extensions", "app"):
            continue  # objects, not protocol data
        else:
            summary[key] = value
    return summary


class MessageLogMiddleware:
    """Logs each scope, each message received and sent, and how the app finished, at TRACE."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._ids = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        number = next(self._ids)
        logger.log(TRACE, "ASGI [%d] started scope=%s", number, summarise(scope))

        async def logged_receive() -> Message:
            message = await receive()
            logger.log(TRACE, "ASGI [%d] receive %s", number, summarise(message))
            return message

        async def logged_send(message: Message) -> None:
            logger.log(TRACE, "ASGI [%d] send %s", number, summarise(message))
            await send(message)

        try:
            await self.app(scope, logged_receive, logged_send)
        except BaseException as exc:
            logger.log(TRACE, "ASGI [%d] raised %s", number, type(exc).__name__)
            raise
        logger.log(TRACE, "ASGI [%d] completed", number)
