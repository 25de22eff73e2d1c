"""The static-file apps that ``benchmarks/static.py`` runs under uvicorn.

The folder comes from ``STATIC_BENCH_DIR`` (the script sets it).
"""

from __future__ import annotations

import os
from typing import Any

_DIR = os.environ.get("STATIC_BENCH_DIR", ".")


def _starlette() -> Any:
    from starlette.staticfiles import StaticFiles

    return StaticFiles(directory=_DIR)


def _asgiserve() -> Any:
    from asgiserve.apps.static import StaticFiles

    return StaticFiles(_DIR)


# uvicorn imports "module:attribute": build the apps at import, in the server process.
starlette = _starlette()
asgiserve_app = _asgiserve()
