"""The process model through the real CLI: workers, supervision, signals, recycling, reload,
several listeners, the PID file. Plus the pure pieces behind it (``--bind`` parsing, option
checks, the reload path filter and poller)."""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from asgiserve.config import Config, ConfigError
from asgiserve.supervisors.reload import PathFilter, poll_changes
from asgiserve.transport.binding import Listener, parse_bind, plan_listeners
from tests.conftest import CLIServer
from tests.e2e.test_cli import run_cli

APP = "tests.e2e.process_apps:app"

pytestmark = pytest.mark.skipif(
    sys.platform == "win32" or not os.path.isdir("/proc"), reason="POSIX signals and /proc"
)


# -- helpers ---------------------------------------------------------------------------------


def wait_for(condition: Callable[[], Any], timeout: float = 10, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def children(pid: int) -> set[int]:
    """Live child processes of ``pid`` (the workers of a supervisor)."""
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the fields follow the last ")".
        state, parent = stat.rsplit(")", 1)[1].split()[:2]
        if int(parent) == pid and state != "Z":
            found.add(int(entry))
    return found


def count(server: CLIServer, pattern: str) -> int:
    return len(re.findall(pattern, server.output()))


def pids_answering(url: str, requests: int = 16, block: float = 0.05) -> set[int]:
    """PIDs of the workers that answer concurrent requests. Each request blocks its worker's
    event loop a moment, so a busy worker cannot take the next connection: the others must."""
    seen: set[int] = set()

    def one() -> None:
        with httpx.Client(timeout=10) as client:
            seen.add(int(client.get(f"{url}/block?s={block}").text))

    threads = [threading.Thread(target=one) for _ in range(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    return seen


class Load:
    """Clients requesting continuously in background threads, counting every failure.

    Half reuse keep-alive connections, half open a new connection per request: a rolling
    restart must not fail either kind.
    """

    def __init__(self, url: str, clients: int = 4) -> None:
        self.url = url
        self.sent = 0
        self.failures: list[str] = []
        self.pids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, args=(i % 2 == 0,), daemon=True)
            for i in range(clients)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    def _loop(self, keep_alive: bool) -> None:
        limits = httpx.Limits(max_keepalive_connections=1 if keep_alive else 0)
        with httpx.Client(limits=limits, timeout=10) as client:
            while not self._stop.is_set():
                failure = None
                pid = 0
                try:
                    response = client.get(self.url + "/pid")
                    if response.status_code == 200:
                        pid = int(response.text)
                    else:
                        failure = f"status {response.status_code}"
                except httpx.HTTPError as exc:
                    failure = repr(exc)
                with self._lock:
                    self.sent += 1
                    if failure:
                        self.failures.append(failure)
                    else:
                        self.pids.add(pid)


@pytest.fixture
def workers(cli: Callable[..., CLIServer]) -> Callable[..., CLIServer]:
    """``workers(n, *args)``: the CLI with ``n`` workers serving the test app."""

    def start(n: int, *args: str, **kwargs: Any) -> CLIServer:
        return cli(
            APP, "--workers", str(n), "--log-level", "info", "--no-access-log", *args, **kwargs
        )

    return start


# -- workers ---------------------------------------------------------------------------------


def test_workers_share_the_listening_socket(workers: Callable[..., CLIServer]) -> None:
    server = workers(2)
    pids = children(server.process.pid)
    assert len(pids) == 2
    assert pids_answering(server.url) == pids
    # The supervisor announces the listener once, not once per worker.
    assert count(server, "running on") == 1
    assert "workers: 2" in server.output()


def test_web_concurrency_sets_the_number_of_workers(cli: Callable[..., CLIServer]) -> None:
    server = cli(APP, env={"WEB_CONCURRENCY": "2"})
    assert "workers: 2" in server.output()
    assert len(children(server.process.pid)) == 2


def test_a_killed_worker_is_replaced_and_requests_keep_succeeding(
    workers: Callable[..., CLIServer],
) -> None:
    server = workers(2)
    before = children(server.process.pid)
    victim = min(before)
    clients = 2
    with Load(server.url, clients=clients) as load:
        time.sleep(0.3)
        os.kill(victim, signal.SIGKILL)
        sent_at_kill = load.sent
        wait_for(lambda: len(children(server.process.pid) - before) == 1, what="a replacement")
        time.sleep(0.5)
    assert victim not in children(server.process.pid)
    assert f"Worker {victim} died (signal SIGKILL)" in server.output()
    # What the killed worker held dies with it: at most one connection per client (a request
    # in flight, or a keep-alive connection reused before the reset arrived). Everything else,
    # including the connections waiting in the shared backlog, is served by the other worker.
    assert len(load.failures) <= clients, load.failures
    assert load.sent - sent_at_kill > 20
    assert len(pids_answering(server.url)) == 2


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_hung_worker_is_killed_and_replaced(workers: Callable[..., CLIServer], loop: str) -> None:
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    server = workers(1, "--timeout-worker-healthcheck", "0.3", "--loop", loop)
    (hung,) = children(server.process.pid)
    # A worker whose event loop runs answers every ping, even with a short timeout.
    time.sleep(1.2)
    assert "did not answer the health check" not in server.output()
    assert children(server.process.pid) == {hung}
    outcome: list[object] = []

    def blocked_request() -> None:
        try:
            outcome.append(httpx.get(server.url + "/block?s=30", timeout=20))
        except httpx.HTTPError as exc:
            outcome.append(exc)

    blocker = threading.Thread(target=blocked_request)
    blocker.start()
    wait_for(lambda: "did not answer the health check" in server.output(), what="the health check")
    # The replacement serves; the connection to the hung worker died with it.
    response = httpx.get(server.url + "/pid", timeout=10)
    assert int(response.text) != hung
    blocker.join(10)
    assert isinstance(outcome[0], httpx.HTTPError)  # its worker was killed under it
    assert hung not in children(server.process.pid)


def test_sigterm_drains_every_worker_then_exits_0(
    workers: Callable[..., CLIServer], tmp_path: Path
) -> None:
    pid_file = tmp_path / "asgiserve.pid"
    server = workers(2, "--pid-file", str(pid_file))
    assert pid_file.read_text() == f"{server.process.pid}\n"
    pids = children(server.process.pid)
    result: dict[str, httpx.Response] = {}
    thread = threading.Thread(
        target=lambda: result.setdefault("r", httpx.get(server.url + "/slow?s=1", timeout=10))
    )
    thread.start()
    time.sleep(0.3)
    server.signal(signal.SIGTERM)
    thread.join(10)
    assert result["r"].status_code == 200
    assert server.wait() == 0
    assert not pid_file.exists()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists()  # exited and reaped


@pytest.mark.parametrize(
    "app,env",
    [
        ("tests.e2e.process_apps:missing", {}),  # an import error: exit 1 in the worker
        ("tests.apps:app", {"TEST_APP_FAIL_STARTUP": "1"}),  # lifespan startup failed: exit 3
    ],
    ids=["import-error", "lifespan-failure"],
)
def test_a_worker_failing_at_startup_stops_the_server_with_exit_3(
    app: str, env: dict[str, str]
) -> None:
    started = time.monotonic()
    result = run_cli(app, "--workers", "2", "--port", "0", env=env)
    assert result.returncode == 3
    assert "failed to start" in result.stderr
    assert time.monotonic() - started < 10  # stopped, not restarting in a loop


# -- signals ---------------------------------------------------------------------------------


def test_sighup_rolling_restart_under_load_fails_no_request(
    workers: Callable[..., CLIServer],
) -> None:
    server = workers(2)
    original = children(server.process.pid)
    hangups = 3
    with Load(server.url, clients=4) as load:
        time.sleep(0.3)
        for round_ in range(1, hangups + 1):
            server.signal(signal.SIGHUP)
            # Each worker is replaced in turn: its replacement serves before it drains.
            wait_for(
                lambda r=round_: count(server, r"is replaced: stopping it gracefully") == 2 * r,
                what=f"rolling restart {round_}",
            )
            time.sleep(0.3)
    print(
        f"\nSIGHUP under load: {load.sent} requests, {len(load.failures)} failed, {hangups} SIGHUPs"
    )
    assert load.failures == []
    assert load.sent > 100

    # The last replaced worker may still be finishing its graceful drain (on a loaded machine
    # that takes longer than the pause above): wait for it to exit, then two new workers remain.
    def two_workers() -> set[int] | None:
        found = children(server.process.pid)
        return found if len(found) == 2 else None

    now = wait_for(two_workers, what="the replaced workers to exit")
    assert not now & original


def test_sigttin_adds_a_worker_and_sigttou_removes_one(workers: Callable[..., CLIServer]) -> None:
    server = workers(1)
    supervisor = server.process.pid
    (first,) = children(supervisor)
    server.signal(signal.SIGTTIN)
    wait_for(lambda: count(server, r"Worker \d+ serving") == 2, what="a second worker")
    assert len(pids_answering(server.url)) == 2
    server.signal(signal.SIGTTOU)
    wait_for(lambda: len(children(supervisor)) == 1, what="one worker less")
    # The oldest goes; the server keeps serving with the other.
    assert children(supervisor) != {first}
    assert httpx.get(server.url + "/pid").status_code == 200
    server.signal(signal.SIGTTOU)  # never below one worker
    time.sleep(0.3)
    assert "keeping the last worker" in server.output()
    assert len(children(supervisor)) == 1


# -- recycling -------------------------------------------------------------------------------


def test_max_requests_recycles_workers_without_a_failed_request(
    workers: Callable[..., CLIServer],
) -> None:
    server = workers(2, "--limit-max-requests", "25", "--limit-max-requests-jitter", "10")
    with Load(server.url, clients=4) as load:
        wait_for(lambda: count(server, "is replaced: stopping") >= 4, what="4 recycled workers")
    assert load.failures == []
    assert len(load.pids) >= 4
    assert count(server, "reached its request limit") >= 4


def test_worker_memory_limit_recycles_the_worker(workers: Callable[..., CLIServer]) -> None:
    server = workers(1, "--limit-worker-memory", "150")
    (before,) = children(server.process.pid)
    assert httpx.get(server.url + "/hoard?mib=200", timeout=10).text == str(before)
    with Load(server.url, clients=2) as load:
        wait_for(lambda: before not in children(server.process.pid), what="recycling")
    assert re.search(
        rf"Worker {before} uses \d+ MiB, above --limit-worker-memory 150", server.output()
    )
    assert load.failures == []
    assert int(httpx.get(server.url + "/pid").text) != before


# -- reload ----------------------------------------------------------------------------------

APP_SOURCE = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": b"{version}"}})
"""


def served_within(url: str, body: str, seconds: float) -> float:
    """Poll until ``url`` answers ``body``; return how long that took."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        try:
            if httpx.get(url, timeout=seconds).text == body:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{body!r} not served within {seconds}s")


def test_reload_serves_a_change_and_survives_a_syntax_error(
    cli: Callable[..., CLIServer], tmp_path: Path
) -> None:
    module = tmp_path / "reloaded_app.py"
    module.write_text(APP_SOURCE.format(version="v1"))
    server = cli("reloaded_app:app", "--reload", "--app-dir", str(tmp_path), "--log-level", "info")
    assert httpx.get(server.url).text == "v1"
    (first,) = children(server.process.pid)

    module.write_text(APP_SOURCE.format(version="v2"))
    elapsed = served_within(server.url, "v2", 5)
    print(f"\nreload: change served after {elapsed:.2f}s")
    assert elapsed < 2
    assert first not in children(server.process.pid)

    module.write_text("async def app(scope, receive, send)\n")  # a syntax error
    wait_for(lambda: "waiting for a file change" in server.output(), what="the error report")
    assert "SyntaxError" in server.output()
    assert server.process.poll() is None  # the reloader did not die

    module.write_text(APP_SOURCE.format(version="v3"))
    assert served_within(server.url, "v3", 5) < 2


def test_reload_ignores_files_that_do_not_match(
    cli: Callable[..., CLIServer], tmp_path: Path
) -> None:
    (tmp_path / "reloaded_app2.py").write_text(APP_SOURCE.format(version="v1"))
    server = cli("reloaded_app2:app", "--reload", "--app-dir", str(tmp_path))
    (worker,) = children(server.process.pid)
    (tmp_path / "notes.txt").write_text("not code")
    (tmp_path / "__pycache__").mkdir(exist_ok=True)
    (tmp_path / "__pycache__" / "x.py").write_text("# cache")
    time.sleep(0.6)
    assert children(server.process.pid) == {worker}
    assert "Changes detected" not in server.output()


# -- listeners and the PID file ----------------------------------------------------------------


@pytest.mark.parametrize("mode", [[], ["--workers", "2"]], ids=["one-process", "workers"])
def test_several_binds_ipv4_and_unix_socket(
    cli: Callable[..., CLIServer], tmp_path: Path, mode: list[str]
) -> None:
    path = tmp_path / "app.sock"
    server = cli(APP, "--bind", "127.0.0.1:0", "--bind", f"unix:{path}", *mode)
    wait_for(lambda: count(server, "running on") == 2, what="two listeners")
    assert f"running on unix:{path}" in server.output()
    assert httpx.get(server.url + "/pid").status_code == 200
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(path))) as client:
        assert client.get("http://localhost/pid").status_code == 200
    assert server.stop() == 0
    assert not path.exists()


def test_pid_file_in_one_process_mode(cli: Callable[..., CLIServer], tmp_path: Path) -> None:
    pid_file = tmp_path / "run" / "server.pid"
    pid_file.parent.mkdir()
    server = cli(APP, "--pid-file", str(pid_file))
    assert int(pid_file.read_text()) == server.process.pid
    assert server.stop() == 0
    assert not pid_file.exists()


def test_unwritable_pid_file_exits_3(tmp_path: Path) -> None:
    result = run_cli(APP, "--port", "0", "--pid-file", str(tmp_path / "missing" / "x.pid"))
    assert result.returncode == 3
    assert "Cannot write the PID file" in result.stderr


# -- the pure pieces ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address,listener",
    [
        ("127.0.0.1:8000", Listener("tcp", host="127.0.0.1", port=8000)),
        ("localhost:0", Listener("tcp", host="localhost", port=0)),
        ("[::1]:8443", Listener("tcp", host="::1", port=8443)),
        ("unix:/run/app.sock", Listener("unix", path="/run/app.sock")),
        ("fd://3", Listener("fd", fd=3)),
    ],
)
def test_parse_bind(address: str, listener: Listener) -> None:
    assert parse_bind(address) == listener


@pytest.mark.parametrize(
    "address",
    ["8000", "::1:8000", "host:http", "host:70000", "unix:", "fd://x", "[::1]8000", ":80"],
)
def test_bad_bind_is_a_config_error_naming_the_option(address: str) -> None:
    with pytest.raises(ConfigError, match=r"^--bind "):
        Config.from_options(APP, bind=[address])


def test_host_and_port_count_only_without_other_listeners() -> None:
    plan = plan_listeners(host="0.0.0.0", port=80, uds=None, fd=None, binds=())
    assert plan == [Listener("tcp", host="0.0.0.0", port=80)]
    plan = plan_listeners(host="0.0.0.0", port=80, uds="/s", fd=None, binds=("[::]:81",))
    assert plan == [Listener("unix", path="/s"), Listener("tcp", host="::", port=81)]


async def _asgi_app(scope: Any, receive: Any, send: Any) -> None:
    pass


@pytest.mark.parametrize(
    "options,message",
    [
        ({"workers": 0}, "--workers must be a whole number of at least 1"),
        ({"reload": True, "workers": 2}, "cannot be combined with --workers > 1"),
        (
            {"limit_max_requests_jitter": 5},
            "--limit-max-requests-jitter needs --limit-max-requests",
        ),
        ({"limit_max_requests": 5, "limit_max_requests_jitter": -1}, "whole number >= 0"),
        ({"limit_worker_memory": 100}, "--limit-worker-memory needs --workers"),
        ({"workers": 2, "limit_worker_memory": 0}, "--limit-worker-memory must be a positive"),
        ({"timeout_worker_healthcheck": 0}, "--timeout-worker-healthcheck must be a positive"),
    ],
)
def test_bad_process_options_are_config_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Config.from_options(APP, **options)


@pytest.mark.parametrize("option", ["workers", "reload"])
def test_workers_and_reload_need_an_import_string(option: str) -> None:
    with pytest.raises(ConfigError, match="import string"):
        Config.from_options(_asgi_app, **{option: 2 if option == "workers" else True})


def test_process_options_map_to_their_groups() -> None:
    config = Config.from_options(
        APP,
        workers=3,
        bind="unix:/x",
        reload_dirs=["src"],
        reload_includes="*.html",
        timeout_worker_healthcheck=2,
        limit_max_requests=10,
        limit_max_requests_jitter=4,
        pid_file="/run/x.pid",
    )
    assert config.workers == 3
    assert config.bind == ("unix:/x",)
    assert config.reloader.dirs == ("src",)
    assert config.reloader.includes == ("*.html",)
    assert config.timeouts.worker_healthcheck == 2
    assert config.limits.max_requests_jitter == 4
    assert config.pid_file == "/run/x.pid"


def test_reload_filter_defaults_and_overrides(tmp_path: Path) -> None:
    root = str(tmp_path)
    default = PathFilter([root])
    assert default(f"{root}/app.py")
    assert default(f"{root}/pkg/models.py")
    for ignored in ("notes.txt", "app.pyc", "__pycache__/app.py", ".git/x.py", "app.py~"):
        assert not default(f"{root}/{ignored}"), ignored
    custom = PathFilter([root], includes=["*.html", ".env"], excludes=["migrations"])
    assert custom(f"{root}/templates/index.html")
    assert custom(f"{root}/.env")  # the user's include wins over the hidden-file default
    assert not custom(f"{root}/migrations/0001.py")


def test_stat_poller_reports_changes(tmp_path: Path) -> None:
    path_filter = PathFilter([str(tmp_path)])
    (tmp_path / "a.py").write_text("1")
    stop = threading.Event()
    changes: list[set[str]] = []

    def watch() -> None:
        for changed in poll_changes([str(tmp_path)], path_filter, stop):
            changes.append(changed)

    thread = threading.Thread(target=watch)
    thread.start()
    try:
        time.sleep(0.1)
        (tmp_path / "a.py").write_text("22")
        (tmp_path / "ignored.txt").write_text("x")
        wait_for(lambda: changes, timeout=3, what="a change")
    finally:
        stop.set()
        thread.join(3)
    assert changes[0] == {str(tmp_path / "a.py")}
