"""Which build of the hot modules this installation runs: pure Python or compiled by mypyc.

A build of asgiserve compiles :data:`HOT_MODULES` to C extensions with mypyc where it can
(CPython with a C compiler; ``build_backend/asgiserve_build.py`` says when, ``setup.py`` reads
the list from this file); the ``.py`` sources stay installed beside them and the import system
prefers the extension. Both builds run the same source and the same
tests. This module imports nothing from the package, so ``setup.py`` can load it on its own.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
from importlib.machinery import EXTENSION_SUFFIXES

__all__ = ["HOT_MODULES", "build_description", "compiled_modules", "ignore_throw_warning"]

#: The per-request path, chosen by measurement (instructions per request, callgrind). Modules
#: that are not on it, or that subclass classes mypyc cannot (``OSError``), stay pure Python.
HOT_MODULES = (
    "asgiserve.asgi.http",
    "asgiserve.asgi.scope",
    "asgiserve.protocols.http11",
    "asgiserve.protocols.httptools_parser",
    "asgiserve.protocols.h11_parser",
    "asgiserve.transport.connection",
    "asgiserve.transport.state",
)


def compiled_modules() -> list[str]:
    """The hot modules that load from a C extension (found without importing them)."""
    compiled = []
    for name in HOT_MODULES:
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec is not None else None
        if origin is not None and origin.endswith(tuple(EXTENSION_SUFFIXES)):
            compiled.append(name)
    return compiled


def build_description() -> str:
    """One phrase for ``--version`` and the start-up log."""
    count = len(compiled_modules())
    if count == 0:
        return "pure Python"
    if count == len(HOT_MODULES):
        return f"compiled with mypyc: {count} hot modules"
    return f"partly compiled with mypyc: {count} of {len(HOT_MODULES)} hot modules"


# A compiled ``await`` hands an exception on to the awaited object as throw(type, value,
# traceback), a signature Python 3.12+ deprecates (https://github.com/mypyc/mypyc/issues/1214).
# It still works, but under ``-W error`` the warning would replace the exception being
# delivered: a task cancelled while its app waits would fail with DeprecationWarning instead of
# CancelledError.
_THROW_WARNING = r"the \(type, exc, tb\) signature of throw\(\) is deprecated"


def ignore_throw_warning() -> None:
    """Ignore that one warning when the compiled build runs on Python 3.12+."""
    if sys.version_info >= (3, 12) and compiled_modules():
        warnings.filterwarnings("ignore", message=_THROW_WARNING, category=DeprecationWarning)
