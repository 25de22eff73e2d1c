"""The container image builds, serves, and shuts down gracefully on SIGTERM.

Runs the real ``Dockerfile`` with rootful Podman through ``container-check``
(``<repo>/../shared/tools/container-check``), which provides a local
``python:3.11-slim`` base without a registry, then reuses the built image for
the checks the tool does not do (a request in flight during SIGTERM, the
image's HEALTHCHECK command).

Skipped, with the reason, when the tool is absent, when not root, when neither
podman nor apt-get is available to get it, or when ``ASGISERVE_SKIP_CONTAINER=1``.
Knobs: ``ASGISERVE_CONTAINER_PYTHON`` (base image version, default 3.11, the one
container-check provides).
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import socket
import subprocess
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from asgiserve._compiled import HOT_MODULES

pytestmark = [pytest.mark.container, pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO.parent / "shared" / "tools" / "container-check"
IMAGE = "localhost/asgiserve-e2e:latest"
STATE_DIR = Path(os.environ.get("CC_STATE_DIR", "/var/tmp/container-check"))
PYTHON_VERSION = os.environ.get("ASGISERVE_CONTAINER_PYTHON", "3.11")

READY_WITHIN_S = 5.0  # HTTP 200 this soon after `podman run`
IDLE_STOP_WITHIN_S = 2.0  # an idle server exits this soon after SIGTERM

SUMMARY = re.compile(
    r"container-check: (?P<verdict>PASS|FAIL) \(build (?P<build>[\d.]+)s, "
    r"ready (?P<ready>[\d.]+)s, HTTP (?P<http>\d+), "
    r"SIGTERM exit (?P<exit>\S+) in (?P<stop>[>\d.]+)s\)"
)


# --------------------------------------------------------------------------- helpers


def _skip_reason() -> str | None:
    if os.environ.get("ASGISERVE_SKIP_CONTAINER") == "1":
        return "ASGISERVE_SKIP_CONTAINER=1"
    if not TOOL.is_file():
        return (
            "the container-check tool is missing: it is expected in shared/tools/ beside the "
            "repository (the project's shared tools checkout)"
        )
    if os.geteuid() != 0:
        return "container checks need root (rootful podman): run the suite as root"
    if shutil.which("podman") is None and shutil.which("apt-get") is None:
        return "podman is not installed and apt-get is not available to install it"
    return None


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _podman_env() -> dict[str, str]:
    # The same engine configuration container-check writes and uses (runc,
    # cgroupfs, ulimits that need no CAP_SYS_RESOURCE).
    return {**os.environ, "CONTAINERS_CONF": str(STATE_DIR / "containers.conf")}


def _podman(
    *args: str, check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args],
        env=_podman_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


def _get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _wait_for_200(port: int, path: str, deadline_s: float, container: str) -> float:
    start = time.monotonic()
    last_error: object = None
    while time.monotonic() - start < deadline_s:
        try:
            status, _ = _get(port, path, timeout=1.0)
            if status == 200:
                return time.monotonic() - start
            last_error = f"HTTP {status}"
        except OSError as exc:
            last_error = exc
        time.sleep(0.05)
    logs = _podman("logs", container, check=False).stdout
    raise AssertionError(f"no 200 on {path} within {deadline_s}s ({last_error}); logs:\n{logs}")


@dataclass(frozen=True)
class CheckResult:
    output: str
    build_s: float
    ready_s: float
    http: int
    exit_code: str
    stop_s: str


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def container_check() -> CheckResult:
    """Build the image and run it once through container-check (cached per module)."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)

    env = {
        **os.environ,
        "CC_STATE_DIR": str(STATE_DIR),
        "CC_IMAGE": IMAGE,
        # --format docker keeps HEALTHCHECK in the image (the OCI format drops it).
        "CC_BUILD_ARGS": f"--build-arg PYTHON_VERSION={PYTHON_VERSION} --format docker",
        "CC_READY_TIMEOUT": "30",  # generous, so a slow start is measured, not cut off
        "CC_STOP_TIMEOUT": "10",
        "CC_OK_EXIT_CODES": "0",  # 143 (killed by the signal) is not a clean shutdown
    }
    if not _port_is_free(8000):
        # Something else (a parallel test server?) holds 8000: serve elsewhere.
        port = _free_port()
        env["CC_PORT"] = str(port)
        env["CC_RUN_ARGS"] = f"-e ASGISERVE_PORT={port}"
    proc = subprocess.run(
        [str(TOOL), str(REPO)], env=env, capture_output=True, text=True, timeout=880
    )
    output = proc.stdout + proc.stderr
    match = SUMMARY.search(output)
    if match is None:
        pytest.fail(f"container-check gave no summary (exit {proc.returncode}):\n{output}")
    return CheckResult(
        output=output,
        build_s=float(match["build"]),
        ready_s=float(match["ready"]),
        http=int(match["http"]),
        exit_code=match["exit"],
        stop_s=match["stop"],
    )


@pytest.fixture
def slow_app_container(container_check: CheckResult, tmp_path: Path) -> Iterator[tuple[str, int]]:
    """The built image serving a mounted app with a slow endpoint; yields (name, port)."""
    if "image build failed" in container_check.output:
        pytest.fail(f"image did not build:\n{container_check.output}")
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "slow_app.py").write_text(SLOW_APP)
    app_dir.chmod(0o755)
    (app_dir / "slow_app.py").chmod(0o644)
    name = f"asgiserve-e2e-{uuid.uuid4().hex[:8]}"
    port = _free_port()
    _podman(
        "run", "-d", "--name", name, "--network", "host",
        "-v", f"{app_dir}:/srv/app:ro",
        "-e", "APP=slow_app:app",
        "-e", "PYTHONPATH=/srv/app",
        "-e", f"ASGISERVE_PORT={port}",
        IMAGE,
        # options only: the entrypoint takes the app from $APP
        "--timeout-graceful-shutdown", "10",
    )  # fmt: skip
    try:
        yield name, port
    finally:
        _podman("rm", "-f", "-t", "0", name, check=False)


SLOW_APP = textwrap.dedent(
    '''
    """Test app: /slow answers after 2 s; /state reports how many /slow are running."""
    import asyncio

    in_flight = 0


    async def app(scope, receive, send):
        global in_flight
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b"ok"
        if scope["path"] == "/slow":
            in_flight += 1
            try:
                await asyncio.sleep(2.0)
            finally:
                in_flight -= 1
            body = b"slow done"
        elif scope["path"] == "/state":
            body = str(in_flight).encode()
        await send({
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"),
                        (b"content-length", str(len(body)).encode())],
        })
        await send({"type": "http.response.body", "body": body})
    '''
)


# --------------------------------------------------------------------------- tests


def test_image_builds_serves_and_stops_cleanly_on_sigterm(container_check: CheckResult) -> None:
    r = container_check
    assert "image build failed" not in r.output, r.output
    assert r.http == 200, f"expected HTTP 200 from the container:\n{r.output}"
    assert r.ready_s <= READY_WITHIN_S, f"first 200 after {r.ready_s}s (> {READY_WITHIN_S}s)"
    assert r.exit_code == "0", f"exit code after SIGTERM was {r.exit_code}, not 0:\n{r.output}"
    assert not r.stop_s.startswith(">"), f"did not exit after SIGTERM (SIGKILL needed):\n{r.output}"
    assert float(r.stop_s) <= IDLE_STOP_WITHIN_S, (
        f"idle server took {r.stop_s}s to exit after SIGTERM (> {IDLE_STOP_WITHIN_S}s)"
    )
    assert "image USER='10001:10001'" in r.output, "image must run as the unprivileged user"


def test_healthcheck_command_passes_against_running_server(
    slow_app_container: tuple[str, int],
) -> None:
    name, port = slow_app_container
    _wait_for_200(port, "/state", 15, name)
    result = _podman("healthcheck", "run", name, check=False)
    assert result.returncode == 0, f"HEALTHCHECK failed: {result.stdout}{result.stderr}"


def test_sigterm_lets_in_flight_request_finish_then_exits_zero(
    slow_app_container: tuple[str, int],
) -> None:
    name, port = slow_app_container
    _wait_for_200(port, "/state", 15, name)

    outcome: dict[str, object] = {}

    def slow_request() -> None:
        try:
            outcome["response"] = _get(port, "/slow", timeout=15)
        except Exception as exc:  # reported by the assertion below
            outcome["error"] = exc

    client = threading.Thread(target=slow_request, daemon=True)
    client.start()
    # Send SIGTERM only once the app is really inside /slow.
    deadline = time.monotonic() + 5
    while _get(port, "/state")[1] != b"1":
        assert time.monotonic() < deadline, "the /slow request never reached the app"
        time.sleep(0.02)

    sigterm_at = time.monotonic()
    _podman("kill", "--signal", "TERM", name)

    # The listener closes at once: new connections are refused during the drain.
    time.sleep(0.5)
    with pytest.raises(OSError):
        _get(port, "/state", timeout=1)

    client.join(timeout=15)
    assert not client.is_alive(), "the in-flight request never completed"
    assert "error" not in outcome, f"in-flight request failed: {outcome['error']!r}"
    assert outcome["response"] == (200, b"slow done")

    waited = _podman("wait", name, timeout=20)
    stopped_after = time.monotonic() - sigterm_at
    logs = _podman("logs", name, check=False)
    assert waited.stdout.strip() == "0", (
        f"exit code {waited.stdout.strip()} after SIGTERM; logs:\n{logs.stdout}{logs.stderr}"
    )
    # /slow had <= 2 s left; the server must not wait for the full 10 s budget.
    assert stopped_after < 5, f"exited {stopped_after:.1f}s after SIGTERM"


def test_two_line_derived_image_serves_the_users_app(
    container_check: CheckResult, tmp_path: Path
) -> None:
    """The documented way in: `FROM asgiserve` + `COPY . /app`, app named by CMD."""
    if "image build failed" in container_check.output:
        pytest.fail(f"image did not build:\n{container_check.output}")
    (tmp_path / "hello_user.py").write_text(
        textwrap.dedent(
            """
            async def app(scope, receive, send):
                if scope["type"] != "http":
                    return
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-type", b"text/plain")]})
                await send({"type": "http.response.body", "body": b"hello from /app"})
            """
        )
    )
    (tmp_path / "Dockerfile").write_text(f'FROM {IMAGE}\nCOPY . /app\nCMD ["hello_user:app"]\n')
    derived = "localhost/asgiserve-e2e-derived:latest"
    _podman("build", "--pull=never", "-t", derived, str(tmp_path), timeout=120)
    name = f"asgiserve-e2e-{uuid.uuid4().hex[:8]}"
    port = _free_port()
    try:
        _podman("run", "-d", "--name", name, "--network", "host",
                "-e", f"ASGISERVE_PORT={port}", derived)  # fmt: skip
        _wait_for_200(port, "/", 15, name)
        assert _get(port, "/") == (200, b"hello from /app")
    finally:
        _podman("rm", "-f", "-t", "0", name, check=False)
        _podman("rmi", derived, check=False)


def test_the_image_runs_the_compiled_build_without_a_compiler(
    container_check: CheckResult,
) -> None:
    # The compiler and mypy stay in the build stage; the runtime image has the extensions.
    if "image build failed" in container_check.output:
        pytest.fail(f"image did not build:\n{container_check.output}")
    version = _podman("run", "--rm", "--network", "none", IMAGE, "asgiserve", "--version")
    assert f"compiled with mypyc: {len(HOT_MODULES)} hot modules" in version.stdout, version.stdout
    found = _podman(
        "run", "--rm", "--network", "none", IMAGE, "python", "-c",
        "import shutil; print([t for t in ('cc', 'gcc', 'mypy') if shutil.which(t)])",
    )  # fmt: skip
    assert found.stdout.strip() == "[]", found.stdout
