"""uvicorn's options, as a uvicorn user writes them, turned into ours.

asgiserve takes uvicorn's command line and ``uvicorn.run()`` keywords. Most options have the same
name and meaning here and need nothing; this module handles the rest, before a
:class:`~asgiserve.config.Config` is built:

* values that name one of uvicorn's own implementations map to ours (``--ws wsproto`` and
  ``--ws websockets-sansio`` run our WebSocket support, on websockets' sans-I/O core);
* options with an equivalent of a different name map to it (``--h11-max-incomplete-event-size``
  is our ``--limit-request-head``, which both parsers enforce);
* options with no meaning here are accepted and ignored, with a line that says why.

Each such decision is a :class:`Note` for the caller to log once logging is set up; nothing is
logged here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

__all__ = ["Note", "translate_uvicorn_options"]

#: uvicorn's WebSocket implementations; ours is one, on websockets' sans-I/O core.
_UVICORN_WS = ("wsproto", "websockets-sansio")


@dataclass(frozen=True, slots=True)
class Note:
    """A decision about a uvicorn option, to be logged at ``level``."""

    level: int
    message: str


def translate_uvicorn_options(options: dict[str, Any]) -> tuple[dict[str, Any], list[Note]]:
    """``options`` with uvicorn's spellings replaced by ours, and what was done about them.

    ``options`` uses the flat names of ``asgiserve.run()`` (the long flags with ``_``); a
    uvicorn-only option whose value is None was not given and is dropped silently.
    """
    options = dict(options)
    notes: list[Note] = []
    ws = options.get("ws")
    if ws in _UVICORN_WS:
        options["ws"] = "websockets"
        notes.append(
            Note(
                logging.INFO,
                f"--ws {ws}: asgiserve's WebSocket support runs on websockets' sans-I/O core "
                "(same protocol, same ASGI messages).",
            )
        )
    if options.get("loop") == "zuvloop":
        options["loop"] = "auto"
        notes.append(
            Note(
                logging.WARNING, "--loop zuvloop is uvicorn's own loop: using uvloop if installed."
            )
        )
    if options.get("http") == "zttp":
        options["http"] = "auto"
        notes.append(
            Note(
                logging.WARNING,
                "--http zttp is uvicorn's own parser: using httptools if installed, else h11.",
            )
        )
    size = options.pop("h11_max_incomplete_event_size", None)
    if size is not None:
        # uvicorn's h11 backend buffers at most this many bytes of an unfinished request head:
        # that is our head limit (431 beyond it), which both our parsers enforce.
        options["limit_request_head"] = size
        if isinstance(size, int) and options.get("limit_request_line", 8192) > size:
            options["limit_request_line"] = size
        notes.append(
            Note(
                logging.INFO,
                f"--h11-max-incomplete-event-size {size}: the same as --limit-request-head "
                f"{size} (on every parser).",
            )
        )
    delay = options.pop("reload_delay", None)
    if delay is not None:
        notes.append(
            Note(
                logging.WARNING,
                "--reload-delay is ignored: the reloader acts on watchfiles' change events, or "
                "polls every 0.25 s without watchfiles.",
            )
        )
    return options, notes


def log_notes(notes: list[Note]) -> None:
    logger = logging.getLogger("asgiserve.error")
    for note in notes:
        logger.log(note.level, "%s", note.message)
