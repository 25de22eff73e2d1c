"""The real ``asgiserve`` command in a subprocess: options, exit codes, signals, logs."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, CLIServer, RawClient, _env, start_cli


def run_cli(
    *args: str, timeout: float = 20, env: dict[str, str] | None = None, cwd: Any = ROOT
) -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion (for commands that should exit by themselves)."""
    return subprocess.run(
        [sys.executable, "-m", "asgiserve", *args],
        cwd=cwd,
        env={**_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module", params=["httptools", "h11"])
def shared(request: pytest.FixtureRequest) -> Iterator[CLIServer]:
    """One CLI server per parser backend for the request-level tests of this module."""
    server = start_cli("tests.apps:app", "--http", request.param, "--log-level", "info")
    yield server
    server.stop()


# -- the command line ------------------------------------------------------------------------


def test_version_prints_and_exits_zero() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("asgiserve ")


def test_help_lists_the_options() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for flag in (
        "--host",
        "--port",
        "--uds",
        "--fd",
        "--loop",
        "--http",
        "--lifespan",
        "--root-path",
        "--factory",
        "--app-dir",
        "--env-file",
        "--log-level",
        "--access-log",
        "--server-header",
        "--date-header",
        "--header",
        "--timeout-keep-alive",
        "--timeout-graceful-shutdown",
        "--limit-concurrency",
        "--limit-max-requests",
        "--backlog",
        "--version",
    ):
        assert flag in result.stdout


@pytest.mark.parametrize(
    "app,message",
    [
        ("tests.apps", 'must be in format "<module>:<attribute>"'),
        ("no_such_module_xyz:app", 'Could not import module "no_such_module_xyz"'),
        ("tests.apps:missing", 'Attribute "missing" not found in module "tests.apps"'),
        ("tests.apps:not_callable", "is not callable"),
    ],
    ids=["no-colon", "no-module", "no-attribute", "not-callable"],
)
def test_bad_app_gives_one_line_and_exit_1(app: str, message: str) -> None:
    result = run_cli(app, "--port", "0")
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1


def test_bad_option_value_is_a_usage_error() -> None:
    result = run_cli("tests.apps:app", "--port", "70000")
    assert result.returncode == 2
    assert "--port must be between 0 and 65535" in result.stderr
    assert "Traceback" not in result.stderr


def test_port_in_use_exits_3() -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        result = run_cli("tests.apps:app", "--port", str(holder.getsockname()[1]))
    finally:
        holder.close()
    assert result.returncode == 3
    assert "address already in use" in result.stderr.lower()
    assert "Traceback" not in result.stderr


def test_lifespan_startup_failure_exits_3() -> None:
    result = run_cli("tests.apps:app", "--port", "0", env={"TEST_APP_FAIL_STARTUP": "1"})
    assert result.returncode == 3
    assert "Application startup failed: told to fail" in result.stderr


def test_lifespan_on_with_an_app_without_lifespan_exits_3() -> None:
    result = run_cli("tests.apps:asgi2_app", "--port", "0", "--lifespan", "on")
    assert result.returncode == 3


def test_environment_variables_set_options(cli: Any) -> None:
    server = cli(
        "tests.apps:app",
        env={"ASGISERVE_ROOT_PATH": "/mounted", "ASGISERVE_SERVER_HEADER": "false"},
    )
    response = httpx.get(server.url + "/scope")
    assert response.json()["root_path"] == "/mounted"
    assert "server" not in response.headers


def test_app_from_environment_and_port_from_environment() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    server = start_cli(env={"ASGISERVE_APP": "tests.apps:app", "ASGISERVE_PORT": str(port)})
    try:
        assert server.port == port
        assert httpx.get(server.url).text == "Hello, world!"
    finally:
        assert server.stop() == 0


def test_factory_env_file_and_app_dir(cli: Any, tmp_path: Path) -> None:
    (tmp_path / "myapp.py").write_text(
        "import os\n"
        "def create():\n"
        "    async def app(scope, receive, send):\n"
        "        if scope['type'] != 'http':\n"
        "            return\n"
        "        body = os.environ['GREETING'].encode()\n"
        "        await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "        await send({'type': 'http.response.body', 'body': body})\n"
        "    return app\n"
    )
    (tmp_path / ".env").write_text("# comment\nexport GREETING='hi from env'\n")
    server = cli(
        "myapp:create",
        "--factory",
        "--app-dir",
        str(tmp_path),
        "--env-file",
        str(tmp_path / ".env"),
    )
    assert httpx.get(server.url).text == "hi from env"


def test_startup_line_names_address_loop_and_parser(cli: Any) -> None:
    server = cli("tests.apps:app", "--loop", "asyncio", "--http", "h11")
    line = next(line for line in server.lines if "running on" in line)
    assert "http://127.0.0.1:" in line
    assert "loop: asyncio" in line and "http: h11" in line


# -- listeners -------------------------------------------------------------------------------


def test_unix_socket_serves_and_is_removed_on_exit(cli: Any, tmp_path: Path) -> None:
    path = tmp_path / "app.sock"
    server = cli("tests.apps:app", "--uds", str(path))
    transport = httpx.HTTPTransport(uds=str(path))
    with httpx.Client(transport=transport) as client:
        response = client.get("http://localhost/scope")
    assert response.status_code == 200
    assert response.json()["server"] == [str(path), None]
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    assert not path.exists()


def test_inherited_file_descriptor_is_served(tmp_path: Path) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "asgiserve", "tests.apps:app", "--fd", str(sock.fileno())],
        cwd=ROOT,
        env=_env(),
        pass_fds=[sock.fileno()],
        stderr=subprocess.PIPE,
        text=True,
    )
    sock.close()
    try:
        assert process.stderr is not None
        while "running on" not in process.stderr.readline():
            pass
        assert httpx.get(f"http://127.0.0.1:{port}/").text == "Hello, world!"
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(10)
        assert process.stderr is not None
        process.stderr.close()
    assert code == 0


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
def test_ipv6_loopback(cli: Any) -> None:
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("IPv6 loopback unavailable")
    server = cli("tests.apps:app", "--host", "::1")
    assert server.address.startswith("http://[::1]:")
    response = httpx.get(f"http://[::1]:{server.port}/scope")
    assert response.json()["client"][0] == "::1"


# -- HTTP through the CLI (one server per backend) -----------------------------------------------


def test_pipelined_requests_through_the_cli(shared: CLIServer) -> None:
    client = RawClient(shared.port)
    client.send(
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" * 3
        + b"GET /stream?n=2&size=1 HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    assert [client.read_response().body for _ in range(4)] == [b"Hello, world!"] * 3 + [b"ab"]
    client.close()


def test_chunked_upload_and_100_continue_through_the_cli(shared: CLIServer) -> None:
    client = RawClient(shared.port)
    client.send(
        b"POST /echo HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    assert client.read_response().status == 100
    client.send(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    assert client.read_response().body == b"abcde"
    client.close()


def test_20_mib_upload_through_the_cli(shared: CLIServer) -> None:
    payload = os.urandom(20 * 1024 * 1024)
    response = httpx.post(shared.url + "/digest", content=payload, timeout=60)
    assert response.text == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}"


def test_malformed_request_through_the_cli(shared: CLIServer) -> None:
    client = RawClient(shared.port)
    client.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc")
    response = client.read_response()
    assert response.status == 400
    assert client.closed()
    client.close()
    assert httpx.get(shared.url).status_code == 200


def test_disconnect_is_seen_by_the_app_through_the_cli(shared: CLIServer, tmp_path: Path) -> None:
    marker = tmp_path / "seen"
    client = RawClient(shared.port)
    client.send(f"GET /wait-disconnect?marker={marker} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    time.sleep(0.3)
    client.close()
    deadline = time.monotonic() + 5
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.read_text() == "http.disconnect"


def test_access_log_line_has_the_fields_and_escapes_control_characters(shared: CLIServer) -> None:
    client = RawClient(shared.port)
    client.send(b"GET /echo%0Aforged?q=%1B HTTP/1.1\r\nHost: a\r\n\r\n")
    client.read_response()
    client.close()
    time.sleep(0.3)
    lines = [line for line in shared.lines if '"GET /echo' in line]
    assert lines, shared.lines[-5:]
    line = lines[-1]
    # client address, method, target as sent (percent-escapes stay escaped, so no decoded
    # newline reaches the log), version, status, body bytes, duration
    assert re.search(
        r'127\.0\.0\.1:\d+ - "GET /echo%0Aforged\?q=%1B HTTP/1\.1" 404 9 \d+\.\dms$', line.rstrip()
    )


# -- shutdown --------------------------------------------------------------------------------


def test_sigterm_lets_a_request_in_flight_finish_then_exits_0(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    marker = tmp_path / "shutdown"
    server = start_cli("tests.apps:app", env={"TEST_APP_SHUTDOWN_MARKER": str(marker)})
    request.addfinalizer(server.stop)
    result: dict[str, Any] = {}

    def slow_request() -> None:
        result["response"] = httpx.get(server.url + "/slow?s=1.5", timeout=10)

    thread = threading.Thread(target=slow_request)
    thread.start()
    time.sleep(0.4)
    server.signal(signal.SIGTERM)
    # New connections are refused while the request in flight finishes.
    time.sleep(0.2)
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url, timeout=2)
    thread.join(10)
    assert result["response"].text == "slow done"
    assert result["response"].headers["connection"] == "close"
    assert server.wait() == 0
    assert marker.read_text() == "shutdown"  # lifespan shutdown ran


def test_idle_server_exits_quickly_on_sigterm(cli: Any) -> None:
    server = cli("tests.apps:app")
    idle = RawClient(server.port)  # an idle keep-alive connection must not hold shutdown up
    idle.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    idle.read_response()
    start = time.monotonic()
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    assert time.monotonic() - start < 2
    idle.close()


def test_graceful_timeout_cancels_requests_that_take_too_long(cli: Any) -> None:
    server = cli("tests.apps:app", "--timeout-graceful-shutdown", "1")
    client = RawClient(server.port, timeout=10)
    client.send(b"GET /slow?s=30 HTTP/1.1\r\nHost: a\r\n\r\n")
    time.sleep(0.3)
    start = time.monotonic()
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    assert 0.8 < time.monotonic() - start < 5
    assert client.closed()
    client.close()


def test_second_sigint_forces_the_exit(cli: Any) -> None:
    server = cli("tests.apps:app")
    client = RawClient(server.port, timeout=10)
    client.send(b"GET /slow?s=30 HTTP/1.1\r\nHost: a\r\n\r\n")
    time.sleep(0.3)
    start = time.monotonic()
    server.signal(signal.SIGINT)
    time.sleep(0.3)
    server.signal(signal.SIGINT)
    server.wait()
    assert time.monotonic() - start < 5
    assert "Second interrupt" in server.output()
    client.close()


def test_limit_max_requests_exits_cleanly_after_n_requests(cli: Any) -> None:
    server = cli("tests.apps:app", "--limit-max-requests", "3")
    with httpx.Client() as client:
        for _ in range(3):
            assert client.get(server.url).status_code == 200
    assert server.wait() == 0
    assert "Maximum request limit of 3" in server.output()


# -- help, messages and exit codes -------------------------------------------------------------

HELP_SECTIONS = [
    "Server:",
    "HTTP:",
    "WebSockets:",
    "HTTP/2:",
    "TLS:",
    "Proxies:",
    "Limits and timeouts:",
    "Processes:",
    "Logging:",
    "Static files:",
]


def test_help_is_grouped_in_sections_with_on_off_defaults() -> None:
    result = run_cli("--help", env={"COLUMNS": "100"})
    assert result.returncode == 0
    text = result.stdout
    headings = [line for line in text.splitlines() if line and not line.startswith(" ")]
    assert headings[1:] == HELP_SECTIONS  # after "Usage:"
    sections = dict(zip(HELP_SECTIONS, re.split(r"^\S.*:$", text, flags=re.M)[-10:], strict=True))
    assert "--ws-per-message-deflate" in sections["WebSockets:"]
    assert "--timeout-keep-alive" in sections["Limits and timeouts:"]
    assert "--ssl-certfile" in sections["TLS:"]
    assert "--static " in sections["Static files:"]
    assert "--help" in sections["Server:"]
    flat = " ".join(text.split())
    assert "--access-log / --no-access-log Log one line per response. [default: on]" in flat
    assert "[default: off]" in sections["Processes:"]  # --reload
    assert "[default: ws-per-message-deflate]" not in flat
    assert "[default: access-log]" not in flat


@pytest.mark.parametrize(
    "args,message",
    [
        (["--limit-concurrency", "0"], "--limit-concurrency must be a positive number"),
        (["--timeout-keep-alive", "-1"], "--timeout-keep-alive must be a positive number"),
        (["--root-path", "api"], "--root-path must start with '/'"),
        (["--ssl-keyfile-password", "x"], "--ssl-keyfile-password given without --ssl-certfile"),
        (["--limit-request-line", "9000", "--limit-request-head", "8192"], "--limit-request-line"),
    ],
)
def test_option_errors_name_the_flag_and_exit_2(args: list[str], message: str) -> None:
    result = run_cli("tests.apps:app", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "_" not in message.split(" ")[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args,flag",
    [
        (["tests.apps:app", "--ssl-certfile", "missing.pem"], "--ssl-certfile"),
        (["tests.apps:app", "--env-file", "missing.env"], "--env-file"),
        (["--static", "missing-folder"], "--static"),
        (["tests.apps:app", "--mount", "/files=missing-folder"], "--mount"),
        (["tests.apps:app", "--log-config", "missing.json"], "--log-config"),
    ],
)
def test_missing_files_and_folders_are_bad_options_exit_2(
    args: list[str], flag: str, tmp_path: Path
) -> None:
    result = run_cli(*args, "--port", "0", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert flag in result.stderr
    assert "Traceback" not in result.stderr


def test_web_concurrency_with_reload_is_named_and_ignored(cli: Any, tmp_path: Path) -> None:
    server = cli(
        "tests.apps:app", "--reload", "--reload-dir", str(tmp_path), env={"WEB_CONCURRENCY": "4"}
    )
    assert httpx.get(server.url).text == "Hello, world!"
    output = server.output()
    assert "the 4 workers from WEB_CONCURRENCY=4 are not started" in output


def test_workers_option_with_reload_is_still_an_error() -> None:
    result = run_cli("tests.apps:app", "--reload", "--workers", "2")
    assert result.returncode == 2
    assert "--reload runs a single worker" in result.stderr


def test_static_mode_has_no_application_startup(cli: Any, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a")
    server = cli("--static", str(tmp_path))
    assert httpx.get(server.url + "/a.txt").text == "a"
    server.stop()
    assert "application startup" not in server.output().lower()
    assert "application shutdown" not in server.output().lower()


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_limit_chunk_line_bounds_a_chunk_size_line_with_its_extensions(cli: Any, http: str) -> None:
    # RFC 9112 section 7.1.1: chunk extensions are unbounded in the grammar; a server caps the
    # chunk-size line (extensions included) so that they cannot hide a request or stall reading.
    extension = b";name=" + b"v" * 100
    request = (
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5" + extension + b"\r\nhello\r\n0\r\n\r\n"
    )
    default = cli("tests.apps:app", "--http", http)
    client = RawClient(default.port)
    try:
        client.send(request)
        assert client.read_response().status == 200
    finally:
        client.close()
    strict = cli("tests.apps:app", "--http", http, "--limit-chunk-line", "64")
    client = RawClient(strict.port)
    try:
        client.send(request)
        assert client.read_response().status == 400
        assert client.closed()
    finally:
        client.close()


GC_APP = """
import gc

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = str(gc.get_freeze_count()).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
"""


@pytest.mark.parametrize(("flag", "frozen"), [(None, True), ("--no-gc-freeze", False)])
def test_gc_freeze_moves_startup_objects_out_of_the_collectors_way(
    cli: Any, tmp_path: Path, flag: str | None, frozen: bool
) -> None:
    # The app, its modules and the server live as long as the process; with them frozen, a
    # full collection under load scans only what requests allocate (the p99 latency).
    (tmp_path / "gcapp.py").write_text(GC_APP)
    server = cli(
        "gcapp:app", "--app-dir", str(tmp_path), "--lifespan", "off", *filter(None, [flag])
    )
    count = int(httpx.get(server.url + "/").text)
    assert (count > 1000) is frozen, count
    if not frozen:
        assert count == 0
