"""Optional compiled build of the hot modules (mypyc); everything else is in pyproject.toml.

A plain ``pip install .`` is pure Python and needs neither a compiler nor mypy. With
``ASGISERVE_COMPILE=1`` the hot modules named in ``asgiserve/_compiled.py`` are compiled to C
extensions by mypyc (mypy's compiler), which needs mypy and a C compiler with the Python
headers::

    ASGISERVE_COMPILE=1 pip install .                     # compiled wheel
    ASGISERVE_COMPILE=1 python setup.py build_ext --inplace   # in a checkout, for tests

The ``.py`` sources stay installed next to the extensions; a compiled module is preferred by
the import system. ``asgiserve --version`` says which build is in use.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from setuptools import setup


def _hot_modules() -> list[str]:
    """The source files of ``asgiserve._compiled.HOT_MODULES`` (one list for both ends)."""
    path = Path(__file__).parent / "asgiserve" / "_compiled.py"
    spec = importlib.util.spec_from_file_location("_asgiserve_compiled", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return [name.replace(".", "/") + ".py" for name in module.HOT_MODULES]


# The typed packages the hot modules import, directly or through the modules mypy follows from
# them: mypy checks the whole import graph before mypyc compiles.
_TYPED_DEPENDENCIES = ["click>=8.1", "h11>=0.16", "h2>=4.1", "websockets>=13.0"]


def _compile_requested() -> bool:
    return os.environ.get("ASGISERVE_COMPILE", "").strip().lower() in {"1", "true", "yes"}


if _compile_requested():
    try:
        from mypyc.build import mypycify
    except ImportError:
        # pip's isolated build first asks which packages the build needs: name them and get
        # run again with them installed.
        setup(setup_requires=[*_TYPED_DEPENDENCIES, "mypy>=1.11"])
        raise SystemExit("ASGISERVE_COMPILE=1 needs mypy: pip install mypy") from None
    # Unused "type: ignore" comments depend on which optional packages (httptools, uvloop) the
    # build environment has; they do not matter to the compiler.
    mypy_options = ["--no-warn-unused-ignores"]
    # The runtime support code goes in one shared library inside the package
    # (asgiserve/_hot__mypyc), so that an editable install finds it too.
    setup(
        ext_modules=mypycify(
            [*mypy_options, *_hot_modules()], opt_level="3", group_name="asgiserve._hot"
        )
    )
else:
    setup()
