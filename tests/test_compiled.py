"""The optional compiled build (mypyc, ``ASGISERVE_COMPILE=1``) and the asyncio semantics it
must keep. The semantics tests run on whichever build is installed: the suite is run once pure
and once compiled (``ASGISERVE_COMPILE=1 python setup.py build_ext --inplace``)."""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from asgiserve._compiled import HOT_MODULES, build_description, compiled_modules
from tests.conftest import ROOT, RawClient, start_cli

COMPILED = bool(compiled_modules())


# -- which build ----------------------------------------------------------------------------


@pytest.mark.skipif(
    not COMPILED,
    reason="pure-Python build: compile the hot modules with "
    "`ASGISERVE_COMPILE=1 python setup.py build_ext --inplace` to test the compiled build",
)
def test_every_hot_module_is_compiled_when_the_build_is() -> None:
    # A partial build would silently run part of the hot path as Python.
    assert compiled_modules() == list(HOT_MODULES)
    for name in HOT_MODULES:
        if name == "asgiserve.protocols.httptools_parser":
            pytest.importorskip("httptools")
        module = importlib.import_module(name)
        assert module.__file__ is not None
        assert module.__file__.endswith(tuple(EXTENSION_SUFFIXES)), name
    from asgiserve.asgi.http import HTTPCycle

    # Compiled to native code, not merely an extension module wrapping Python functions.
    assert "compiled with mypyc" in type(HTTPCycle.send).__name__


def test_version_says_which_build_is_in_use() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "asgiserve", "--version"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert build_description() in result.stdout
    assert ("compiled with mypyc" in result.stdout) == COMPILED
    assert ("pure Python" in result.stdout) == (not COMPILED)


# -- which build a source install makes (build_backend/asgiserve_build.py, setup.py) ---------


def _build_backend() -> ModuleType:
    path = ROOT / "build_backend" / "asgiserve_build.py"
    spec = importlib.util.spec_from_file_location("_asgiserve_build_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_build_that_may_compile_requires_the_pinned_compiler() -> None:
    backend = _build_backend()
    auto, required, off = backend.Mode.AUTO, backend.Mode.REQUIRED, backend.Mode.OFF
    requirements = backend.compiler_requirements(auto, editable=False, implementation="cpython")
    assert backend.MYPY_REQUIREMENT in requirements
    assert backend.MYPY_REQUIREMENT.startswith("mypy==")  # pinned, not a range
    assert "h11>=0.16" in requirements  # mypy type-checks what the hot modules import
    # An editable install stays pure unless compiling is asked for; PyPy cannot run mypyc.
    assert backend.compiler_requirements(auto, editable=True, implementation="cpython") == []
    assert backend.compiler_requirements(auto, editable=False, implementation="pypy") == []
    assert backend.compiler_requirements(off, editable=False, implementation="cpython") == []
    assert backend.MYPY_REQUIREMENT in backend.compiler_requirements(
        required, editable=True, implementation="cpython"
    )
    assert "CPython only" in backend.platform_problem("pypy")
    assert backend.platform_problem("cpython") is None


def test_asgiserve_compile_takes_1_0_or_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = _build_backend()
    for value, mode in (("", "AUTO"), ("auto", "AUTO"), ("1", "REQUIRED"), ("no", "OFF")):
        monkeypatch.setenv("ASGISERVE_COMPILE", value)
        assert backend.requested_mode() is backend.Mode[mode]
    monkeypatch.setenv("ASGISERVE_COMPILE", "maybe")
    with pytest.raises(SystemExit, match="use 1 .compile or fail., 0 .pure Python. or auto"):
        backend.requested_mode()


def _source_tree(tmp_path: Path) -> Path:
    """What an sdist holds, copied, so that the build leaves the checkout alone."""
    tree = tmp_path / "source"
    tree.mkdir()
    for name in ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md"):
        shutil.copy2(ROOT / name, tree / name)
    for name in ("asgiserve", "build_backend"):
        shutil.copytree(
            ROOT / name, tree / name, ignore=shutil.ignore_patterns("*.so", "__pycache__")
        )
    return tree


def _pip_wheel(
    tmp_path: Path, tree: Path | None = None, **env: str
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """``pip wheel`` of the sources, with this environment's setuptools and mypy (no download)."""
    if int(importlib.metadata.version("setuptools").split(".")[0]) < 77:
        pytest.skip("needs setuptools>=77 (the test extra)")
    out = tmp_path / "wheels"
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation"]
    result = subprocess.run(
        [*pip_wheel, "--wheel-dir", str(out), str(tree or _source_tree(tmp_path))],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return result, out


def _assert_pure_wheel_saying(
    result: subprocess.CompletedProcess[str], out: Path, why: str
) -> None:
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    wheels = sorted(out.glob("*.whl"))
    assert len(wheels) == 1 and wheels[0].name.endswith("-py3-none-any.whl"), wheels
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = wheel.namelist()
    assert "asgiserve/transport/connection.py" in names
    assert not [name for name in names if name.endswith(tuple(EXTENSION_SUFFIXES))]
    said = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if "asgiserve: building the pure-Python version" in line
    ]
    assert len(said) == 1 and why in said[0], said


def test_a_source_install_without_a_c_compiler_is_pure_python_and_says_so(
    tmp_path: Path,
) -> None:
    # CC=/bin/false: a compiler that fails whatever it is given, as a missing one does.
    result, out = _pip_wheel(tmp_path, CC="/bin/false", ASGISERVE_COMPILE="")
    _assert_pure_wheel_saying(result, out, "no working C compiler")


def test_a_source_install_that_mypyc_cannot_compile_is_pure_python_and_says_so(
    tmp_path: Path,
) -> None:
    # As with a mypy that does not know this Python yet, or typed dependencies whose types
    # changed: the compiler refuses the sources, and the install still works.
    pytest.importorskip("mypyc")
    tree = _source_tree(tmp_path)
    with (tree / "asgiserve" / "asgi" / "scope.py").open("a") as scope:
        scope.write('\n_REFUSED: int = "not an int"\n')
    result, out = _pip_wheel(tmp_path, tree, ASGISERVE_COMPILE="")
    _assert_pure_wheel_saying(result, out, "mypyc could not compile the hot modules")


def test_asgiserve_compile_1_without_a_c_compiler_fails_and_says_why(tmp_path: Path) -> None:
    pytest.importorskip("mypyc")
    result, out = _pip_wheel(tmp_path, CC="/bin/false", ASGISERVE_COMPILE="1")
    assert result.returncode != 0
    assert (
        "ASGISERVE_COMPILE=1 but the compiled build cannot be made: no working C compiler"
        in result.stdout + result.stderr
    )
    assert not list(out.glob("*.whl"))


# -- asyncio semantics the app relies on (both builds) --------------------------------------

request_path: contextvars.ContextVar[str] = contextvars.ContextVar("request_path")


async def task_app(scope: Any, receive: Any, send: Any) -> None:
    """Reports what the app sees of asyncio: its task, and a timeout scope that needs it."""
    task = asyncio.current_task()
    await asyncio.sleep(0)
    same_task = asyncio.current_task() is task
    timed_out = False
    try:
        # asyncio.timeout cancels the *current task*: it fails without one.
        async with asyncio.timeout(0.01):
            await asyncio.sleep(5)
    except TimeoutError:
        timed_out = True
    body = f"{task is not None} {same_task} {timed_out}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def task_name_app(scope: Any, receive: Any, send: Any) -> None:
    """Reports the name of the task it runs in."""
    task = asyncio.current_task()
    assert task is not None
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": task.get_name().encode()})


async def context_app(scope: Any, receive: Any, send: Any) -> None:
    """Sets a context variable per request; reports the value it found first."""
    seen = request_path.get("unset")
    request_path.set(scope["path"])
    await asyncio.sleep(0)
    body = f"{seen} {request_path.get()}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def _get(path: str) -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: test\r\n\r\n"


@pytest.mark.usefixtures("backend")
@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout is new in 3.11")
def test_the_app_runs_in_a_task_that_asyncio_timeout_can_cancel(serve: Any, raw: Any) -> None:
    server = serve(task_app)
    client = raw(server.port)
    client.send(_get("/"))
    assert client.read_response().body == b"True True True"


@pytest.mark.usefixtures("backend")
def test_the_app_task_is_named_for_what_it_runs(serve: Any, raw: Any) -> None:
    server = serve(task_name_app)
    client = raw(server.port)
    client.send(_get("/") + _get("/"))
    assert [client.read_response().body for _ in range(2)] == [b"asgiserve: HTTP/1.1 request"] * 2


@pytest.mark.usefixtures("backend")
def test_context_variables_set_by_one_request_do_not_reach_the_next(serve: Any, raw: Any) -> None:
    server = serve(context_app)
    client = raw(server.port)
    # Pipelined, so that the requests are served one after the other on one connection.
    client.send(_get("/first") + _get("/second") + _get("/third"))
    bodies = [client.read_response().body for _ in range(3)]
    assert bodies == [b"unset /first", b"unset /second", b"unset /third"]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout is new in 3.11")
def test_the_app_task_is_cancelled_cleanly_under_warnings_as_errors() -> None:
    # The compiled build on 3.12+ hands exceptions on with a deprecated throw() signature
    # (asgiserve/_compiled.py): that warning must not replace the CancelledError.
    server = start_cli(
        "tests.test_compiled:task_app", "--log-level", "info", env={"PYTHONWARNINGS": "error"}
    )
    try:
        client = RawClient(server.port)
        try:
            client.send(_get("/"))
            body = client.read_response().body
        finally:
            client.close()
    finally:
        server.stop()
    assert body == b"True True True"
    assert "DeprecationWarning" not in server.output()
