"""Log setup and the access log.

Two loggers: ``asgiserve.error`` (server events and app tracebacks) and ``asgiserve.access``
(one line per response). Both write to stderr with a level prefix, coloured only on a TTY.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from asgiserve.asgi.types import Scope

__all__ = ["TRACE", "AccessLog", "configure_logging", "escape", "make_access_log"]

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

_LEVELS = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": TRACE,
}
_COLOURS = {
    logging.CRITICAL: "\033[1;31m",
    logging.ERROR: "\033[31m",
    logging.WARNING: "\033[33m",
    logging.INFO: "\033[32m",
    logging.DEBUG: "\033[34m",
    TRACE: "\033[34m",
}


class _LevelFormatter(logging.Formatter):
    def __init__(self, colour: bool) -> None:
        super().__init__("%(levelprefix)s %(message)s")
        self.colour = colour

    def formatMessage(self, record: logging.LogRecord) -> str:
        name = record.levelname + ":"
        if self.colour:
            name = f"{_COLOURS.get(record.levelno, '')}{name}\033[0m"
        record.__dict__["levelprefix"] = name.ljust(9 + (9 if self.colour else 0))
        return super().formatMessage(record)


def configure_logging(level: str, *, access_log: bool) -> None:
    numeric = _LEVELS[level]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LevelFormatter(colour=sys.stderr.isatty()))
    for name in ("asgiserve.error", "asgiserve.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(numeric)
        logger.propagate = False
    if not access_log:
        logging.getLogger("asgiserve.access").setLevel(logging.CRITICAL + 1)


_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}


def escape(text: str) -> str:
    """Make request-controlled text safe to log: no control characters (no log injection)."""
    if text.isprintable():
        return text
    return "".join(
        _ESCAPES[ord(c)] if ord(c) in _ESCAPES else (c if c.isprintable() else repr(c)[1:-1])
        for c in text
    )


AccessLog = Callable[["Scope", int, int, float], None]


def make_access_log(clock: Callable[[], float]) -> AccessLog | None:
    """An access-log callback ``(scope, status, body_bytes, started_at)`` for connections, or
    None when access logging is off."""
    logger = logging.getLogger("asgiserve.access")
    if not logger.isEnabledFor(logging.INFO):
        return None

    def log_access(scope: Scope, status: int, body_bytes: int, started_at: float) -> None:
        client = scope.get("client")
        where = f"{client[0]}:{client[1]}" if client else "-"
        target = scope["raw_path"].decode("latin-1")
        if scope["query_string"]:
            target += "?" + scope["query_string"].decode("latin-1")
        logger.info(
            '%s - "%s %s HTTP/%s" %d %d %.1fms',
            where,
            scope.get("method", "GET"),
            escape(target),
            scope["http_version"],
            status,
            body_bytes,
            (clock() - started_at) * 1000.0,
        )

    return log_access

