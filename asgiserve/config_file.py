"""Options from a TOML file: ``--config asgiserve.toml``, or ``[tool.asgiserve]`` in
``pyproject.toml`` in the working directory.

Keys are the command-line options' long names with ``_`` for ``-`` (``root_path = "/api"``,
``timeout_keep_alive = 75``, ``header = ["x-frame-options: DENY"]``). This module only reads
the file; the CLI checks the keys against its options and hands the values to click as
defaults, which is what gives the precedence command line > environment > file > built-in
defaults.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10: the tomli backport (a dependency there)
    tomllib = importlib.import_module("tomli")

__all__ = ["ConfigFileError", "find_config", "read_config"]

PYPROJECT = "pyproject.toml"


class ConfigFileError(ValueError):
    """The file cannot be read or is not valid TOML; the message names it."""


def find_config(directory: str = ".") -> str | None:
    """``pyproject.toml`` in ``directory`` if it has a ``[tool.asgiserve]`` table."""
    path = os.path.join(directory, PYPROJECT)
    if not os.path.isfile(path):
        return None
    options, _ = read_config(path)
    return path if options else None


def read_config(path: str) -> tuple[dict[str, Any], str]:
    """The options in ``path`` and a description of where they came from, for messages.
    In a ``pyproject.toml`` they are the ``[tool.asgiserve]`` table; elsewhere, the whole
    document."""
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except OSError as exc:
        raise ConfigFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"{path} is not valid TOML: {exc}") from None
    if os.path.basename(path) == PYPROJECT:
        table = document.get("tool", {}).get("asgiserve", {})
        if not isinstance(table, dict):
            raise ConfigFileError(f"{path}: [tool.asgiserve] must be a table")
        return table, f"{path} [tool.asgiserve]"
    return document, path
