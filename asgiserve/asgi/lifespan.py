"""The ASGI lifespan protocol: startup and shutdown around the server's life.

The app runs once with a ``lifespan`` scope in its own task. ``startup()`` returns when the app
reports ``lifespan.startup.complete`` and raises :class:`LifespanFailure` when it reports a
failure (or, in ``on`` mode, raises). In ``auto`` mode an app that raises before answering is
taken not to support lifespan: that is logged at debug level and the server goes on.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from asgiserve.asgi.types import ASGI_VERSION

if TYPE_CHECKING:
    from asgiserve.asgi.types import ASGIApp, Message

logger = logging.getLogger("asgiserve.error")

__all__ = ["Lifespan", "LifespanFailure"]


class LifespanFailure(Exception):
    """The app reported (or raised) a lifespan startup or shutdown failure."""


class Lifespan:
    def __init__(
        self, app: ASGIApp, mode: str, state: dict[str, Any], *, announce: bool = True
    ) -> None:
        self.app = app
        self.mode = mode
        #: Log "Waiting for application startup." and the like: not for an app of the
        #: server's own (``--static``), where the user has no application to wait for.
        self.announce = announce
        self.state = state
        self.supported = mode != "off"
        self.events: asyncio.Queue[Message] = asyncio.Queue()
        self.startup_done = asyncio.Event()
        self.shutdown_done = asyncio.Event()
        self.error: str | None = None
        self.task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        if not self.supported:
            return
        if self.announce:
            logger.info("Waiting for application startup.")
        self.task = asyncio.get_running_loop().create_task(self._run())
        await self.events.put({"type": "lifespan.startup"})
        await self.startup_done.wait()
        if self.error is not None:
            raise LifespanFailure(self.error)
        if self.supported and self.announce:
            logger.info("Application startup complete.")

    async def shutdown(self) -> None:
        if not self.supported or self.task is None or self.task.done():
            return
        if self.announce:
            logger.info("Waiting for application shutdown.")
        await self.events.put({"type": "lifespan.shutdown"})
        await self.shutdown_done.wait()
        if self.error is not None:
            logger.error("Application shutdown failed: %s", self.error)
        elif self.announce:
            logger.info("Application shutdown complete.")

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": ASGI_VERSION, "state": self.state}
        try:
            await self.app(scope, self.receive, self.send)
        except BaseException as exc:
            if not self.startup_done.is_set() and self.mode == "auto":
                self.supported = False
                logger.debug("The app does not support ASGI lifespan (it raised %r).", exc)
            else:
                self.error = f"exception in lifespan: {exc!r}"
                logger.error("Exception in 'lifespan' protocol", exc_info=exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            if not self.startup_done.is_set() and self.supported and self.error is None:
                if self.mode == "auto":
                    self.supported = False
                    logger.debug("The app returned from 'lifespan' without answering it.")
                else:
                    self.error = "the app returned before completing startup"
            self.startup_done.set()
            self.shutdown_done.set()

    async def receive(self) -> Message:
        return await self.events.get()

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "lifespan.startup.complete":
            self.startup_done.set()
        elif kind == "lifespan.startup.failed":
            self.error = message.get("message") or "startup failed"
            self.startup_done.set()
        elif kind == "lifespan.shutdown.complete":
            self.shutdown_done.set()
        elif kind == "lifespan.shutdown.failed":
            self.error = message.get("message") or "shutdown failed"
            self.shutdown_done.set()
        else:
            raise RuntimeError(f"Unexpected ASGI lifespan message {kind!r}")
