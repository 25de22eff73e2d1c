"""The optional compiled build of the hot modules (mypyc); everything else is in pyproject.toml.

``build_backend/asgiserve_build.py`` says which build a ``pip install`` makes and why
(``ASGISERVE_COMPILE``: unset = compile where possible, ``1`` = compile or fail, ``0`` = pure
Python) and pins the compiler. Here the hot modules named in ``asgiserve/_compiled.py`` are
handed to mypyc when a build compiles. In a checkout, for the tests::

    ASGISERVE_COMPILE=1 python setup.py build_ext --inplace   # needs mypy, a C compiler

The ``.py`` sources stay installed next to the extensions; a compiled module is preferred by
the import system. ``asgiserve --version`` says which build is in use.
"""

from __future__ import annotations

import importlib.util
import sys
import sysconfig
import tempfile
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "build_backend"))

from asgiserve_build import (  # noqa: E402
    ENV_VAR,
    MYPY_REQUIREMENT,
    Mode,
    platform_problem,
    requested_mode,
)

#: setup.py commands that build the extensions; the others (egg_info, dist_info, sdist) only
#: need the metadata, and type-checking the hot modules for them would waste a minute.
_BUILD_COMMANDS = {"build", "build_ext", "bdist_wheel", "bdist", "install", "develop"}
_EDITABLE_COMMANDS = {"editable_wheel", "develop"}


def _hot_modules() -> list[str]:
    """The source files of ``asgiserve._compiled.HOT_MODULES`` (one list for both ends)."""
    path = HERE / "asgiserve" / "_compiled.py"
    spec = importlib.util.spec_from_file_location("_asgiserve_compiled", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return [name.replace(".", "/") + ".py" for name in module.HOT_MODULES]


def _compiler_problem() -> str | None:
    """Why no C extension can be built here (compiler, linker or Python headers), or None.

    Compiles and links a one-function extension with the compiler setuptools would use
    (``CC``, ``LDSHARED`` and sysconfig, as for the real build)."""
    from distutils.ccompiler import new_compiler
    from distutils.errors import CCompilerError, DistutilsError
    from distutils.sysconfig import customize_compiler

    compiler = new_compiler()
    customize_compiler(compiler)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "probe.c"
        source.write_text("#include <Python.h>\nPyObject *probe(void) { Py_RETURN_NONE; }\n")
        try:
            objects = compiler.compile(
                [str(source)],
                output_dir=tmp,
                include_dirs=[sysconfig.get_paths()["include"]],
            )
            compiler.link_shared_object(objects, str(Path(tmp) / "probe.so"))
        except (CCompilerError, DistutilsError, OSError):
            # The compiler said why on stderr; the command line in the exception is long.
            command = " ".join(getattr(compiler, "compiler_so", ["cc"])[:1])
            return f"no working C compiler with the Python headers ({command} failed)"
    return None


def _mypyc_problem() -> str | None:
    if importlib.util.find_spec("mypyc") is None:
        return f"mypy is not installed (pip install '{MYPY_REQUIREMENT}')"
    return None


def _pure_reason(mode: Mode, commands: set[str]) -> str | None:
    """Why this build is pure Python, or None to compile. Fails when compiling was required
    and cannot be done."""
    if mode is Mode.OFF:
        return f"{ENV_VAR}=0"
    if mode is Mode.AUTO and commands & _EDITABLE_COMMANDS:
        return f"editable install, so that edits take effect ({ENV_VAR}=1 compiles in place)"
    for check in (platform_problem, _mypyc_problem, _compiler_problem):
        problem = check()
        if problem is not None:
            if mode is Mode.REQUIRED:
                raise SystemExit(
                    f"asgiserve: {ENV_VAR}=1 but the compiled build cannot be made: {problem}. "
                    f"Install what is missing, or unset {ENV_VAR} for the pure-Python build."
                )
            return problem
    return None


def _pure(reason: str) -> list[object]:
    print(f"asgiserve: building the pure-Python version: {reason}", file=sys.stderr)
    return []


def _extensions() -> list[object]:
    commands = set(sys.argv[1:])
    if not commands & (_BUILD_COMMANDS | {"editable_wheel"}):
        return []
    mode = requested_mode()
    reason = _pure_reason(mode, commands)
    if reason is not None:
        return _pure(reason)
    try:
        return _mypycify()
    except (SystemExit, Exception):  # mypy's errors are above; exits 1 on a type error
        if mode is Mode.REQUIRED:
            raise
        # This mypy cannot compile these sources here (a Python it does not know yet, typed
        # dependencies whose types changed): the install still works, pure.
        return _pure("mypyc could not compile the hot modules (its errors are above)")


def _mypycify() -> list[object]:
    import mypy.version
    from mypyc.build import mypycify

    pinned = MYPY_REQUIREMENT.partition("==")[2]
    if mypy.version.__version__ != pinned:
        print(
            f"asgiserve: compiling with mypy {mypy.version.__version__}; "
            f"the tested compiler is {MYPY_REQUIREMENT}",
            file=sys.stderr,
        )
    # Unused "type: ignore" comments depend on which optional packages (httptools, uvloop) the
    # build environment has; they do not matter to the compiler.
    mypy_options = ["--no-warn-unused-ignores"]
    # The runtime support code goes in one shared library inside the package
    # (asgiserve/_hot__mypyc), so that an editable install finds it too.
    return list(
        mypycify([*mypy_options, *_hot_modules()], opt_level="3", group_name="asgiserve._hot")
    )


setup(ext_modules=_extensions())
