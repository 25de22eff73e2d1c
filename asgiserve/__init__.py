"""asgiserve: a fast, strict, production ASGI server."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from asgiserve._version import __version__
from asgiserve.config import Config, ConfigError
from asgiserve.server import Server

__all__ = ["Config", "ConfigError", "Server", "__version__", "run"]


def run(app: str | Callable[..., Any] | None, **options: Any) -> None:
    """Serve ``app`` (an ASGI app or ``"module:attr"``; None with ``static=DIR``) with the
    CLI's options as keywords (or ``uvicorn.run()``'s).

    Blocks until the server exits; exits the process with a non-zero status if it could not
    start.
    """
    from asgiserve.compat import log_notes, translate_uvicorn_options
    from asgiserve.logging import configure_logging_for
    from asgiserve.supervisors import run as run_config

    # uvicorn.run()'s keywords are accepted too (interface=, reload_delay=, ...).
    options, notes = translate_uvicorn_options(options)
    config = Config.from_options(app, **options)
    configure_logging_for(config)
    log_notes(notes)
    code = run_config(config)
    if code:
        sys.exit(code)
