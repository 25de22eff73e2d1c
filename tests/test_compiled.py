"""The optional compiled build (mypyc, ``ASGISERVE_COMPILE=1``) and the asyncio semantics it
must keep. The semantics tests run on whichever build is installed: the suite is run once pure
and once compiled (``ASGISERVE_COMPILE=1 python setup.py build_ext --inplace``)."""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
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
