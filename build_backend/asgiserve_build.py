"""The build backend of asgiserve: setuptools', plus the choice between the two builds.

A wheel of asgiserve is either *compiled* (the hot modules named in ``asgiserve/_compiled.py``
turned into C extensions by mypyc, mypy's compiler) or *pure Python*. Both run the same source
and pass the same test suite; the compiled one costs ~40% fewer instructions per request.

``ASGISERVE_COMPILE`` chooses:

* unset or ``auto`` (the default): compile where it can be done, that is on CPython with a
  working C compiler and the Python headers; otherwise build pure Python and say why in one
  line. An *editable* install (``pip install -e .``) stays pure Python in this mode: compiled
  extensions in the checkout would shadow the ``.py`` files a developer edits.
* ``1`` (``true``, ``yes``): compile, or fail with a message that says what is missing.
* ``0`` (``false``, ``no``): pure Python, nothing compiled, mypy not even fetched.

Why compile by default: a source install only happens where no wheel fits (the pure wheel is
``py3-none-any``, so mostly ``pip install .`` in a checkout, ``--no-binary`` and the Docker
image), and there the user asked for this server's speed; where compiling is not possible the
install still succeeds, pure. The price is mypy in the build environment and about a minute of
compiling.

The compiler is a build requirement only when a build may compile (a dynamic requirement,
PEP 517 ``get_requires_for_build_wheel``), and it is pinned: mypyc's output and the runtime
support it ships inside the wheel change between mypy releases. ``setup.py`` imports this
module for the same decisions.
"""

from __future__ import annotations

import enum
import os
import sys
from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import (
    build_editable,
    build_sdist,
    build_wheel,
    get_requires_for_build_sdist,
    prepare_metadata_for_build_editable,
    prepare_metadata_for_build_wheel,
)

__all__ = [
    "build_editable",
    "build_sdist",
    "build_wheel",
    "get_requires_for_build_editable",
    "get_requires_for_build_sdist",
    "get_requires_for_build_wheel",
    "prepare_metadata_for_build_editable",
    "prepare_metadata_for_build_wheel",
]

#: The compiler, pinned (the version the compiled build is tested with in CI).
MYPY_REQUIREMENT = "mypy==2.4.1"

#: The typed packages the hot modules import, directly or through the modules mypy follows from
#: them: mypy type-checks the whole import graph before mypyc compiles it.
TYPED_DEPENDENCIES = ("a2wsgi>=1.10", "click>=8.1", "h11>=0.16", "h2>=4.1", "websockets>=13.0")

ENV_VAR = "ASGISERVE_COMPILE"


class Mode(enum.Enum):
    AUTO = "auto"  # compile where possible, else pure Python with one line saying why
    REQUIRED = "required"  # compile or fail
    OFF = "off"  # pure Python


_MODES = {
    "": Mode.AUTO,
    "auto": Mode.AUTO,
    "1": Mode.REQUIRED,
    "true": Mode.REQUIRED,
    "yes": Mode.REQUIRED,
    "0": Mode.OFF,
    "false": Mode.OFF,
    "no": Mode.OFF,
}


def requested_mode() -> Mode:
    value = os.environ.get(ENV_VAR, "").strip().lower()
    try:
        return _MODES[value]
    except KeyError:
        raise SystemExit(
            f"{ENV_VAR}={value!r}: use 1 (compile or fail), 0 (pure Python) or auto "
            "(compile where possible, the default)"
        ) from None


def platform_problem(implementation: str = sys.implementation.name) -> str | None:
    """Why this interpreter cannot run a mypyc build, or None."""
    if implementation != "cpython":
        return f"mypyc compiles for CPython only, this is {implementation}"
    return None


def compiler_requirements(
    mode: Mode, *, editable: bool, implementation: str = sys.implementation.name
) -> list[str]:
    """What a build in ``mode`` needs besides setuptools."""
    if mode is Mode.OFF or (mode is Mode.AUTO and editable):
        return []
    if mode is Mode.AUTO and platform_problem(implementation) is not None:
        return []
    # REQUIRED on PyPy still gets them: setup.py then fails with the reason.
    return [MYPY_REQUIREMENT, *TYPED_DEPENDENCIES]


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    return [
        *_setuptools.get_requires_for_build_wheel(config_settings),
        *compiler_requirements(requested_mode(), editable=False),
    ]


def get_requires_for_build_editable(config_settings: dict[str, Any] | None = None) -> list[str]:
    return [
        *_setuptools.get_requires_for_build_editable(config_settings),
        *compiler_requirements(requested_mode(), editable=True),
    ]
