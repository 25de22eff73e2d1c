#!/usr/bin/env python
"""asgiserve benchmark harness.

    python benchmarks/run.py            # full run (~30-40 min), writes benchmarks/RESULTS.md
    python benchmarks/run.py --quick    # ~1-2 min smoke run, report under benchmarks/results/

Every server runs the same raw ASGI apps (benchmarks/apps.py) on 127.0.0.1, pinned to one CPU
(``taskset -c 0``); the load generator (wrk, or benchmarks/wsload.py for websockets) is pinned
to the other (``taskset -c 1``), and so is this script.  For each test, all servers are started,
each gets a warm-up run, then ``--repeats`` rounds run round-robin over the servers (the start
rotates each round) so that drift on a shared machine hits everyone alike.  The figure kept is
the median; ratios are to ``--baseline`` (uvicorn-httptools) within the same run.

See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime as _dt
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LUA = HERE / "lua"
RESULTS_DIR = HERE / "results"
HOST = "127.0.0.1"

sys.path.insert(0, str(HERE))
import apps as bench_apps  # noqa: E402
import wsload  # noqa: E402

# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Test:
    name: str
    app: str  # an app of benchmarks/apps.py, or "module:attr"
    kind: str  # "wrk" | "ws" | "idle"
    description: str
    lua: str | None = None
    path: str = "/"
    connections: int | None = None  # fixed connection count (else --connections)
    latency: bool = False
    ws_size: int = 0
    ws_text: bool = True
    unit: str = "req/s"

    @property
    def target(self) -> str:
        """The app as the servers are given it."""
        return self.app if ":" in self.app else f"benchmarks.apps:{self.app}"


TESTS: dict[str, Test] = {
    t.name: t
    for t in (
        Test("hello", "hello", "wrk", 'GET, 13-byte text/plain "Hello, world!"'),
        Test("json", "json", "wrk", "GET, small dict through json.dumps per request"),
        Test(
            "fastapi",
            "benchmarks.fastapi_app:app",
            "wrk",
            "FastAPI: GET /items/42, int path parameter, pydantic model as JSON",
            path="/items/42",
        ),
        Test(
            "echo", "echo", "wrk", "POST 1 KiB body, app reads it all and returns it", "post1k.lua"
        ),
        Test("stream", "stream", "wrk", "GET, 64 KiB as 16 x 4 KiB more_body chunks (chunked)"),
        Test(
            "pipelined",
            "hello",
            "wrk",
            "hello with 16 pipelined requests per write",
            "pipeline16.lua",
        ),
        Test(
            "ws64",
            "ws_echo",
            "ws",
            "websocket echo, 64-byte text messages",
            ws_size=64,
            ws_text=True,
            unit="msg/s",
        ),
        Test(
            "ws16k",
            "ws_echo",
            "ws",
            "websocket echo, 16 KiB binary messages",
            ws_size=16384,
            ws_text=False,
            unit="msg/s",
        ),
        Test(
            "hello256",
            "hello",
            "wrk",
            "hello at 256 connections with wrk --latency (p50/p99)",
            connections=256,
            latency=True,
        ),
        Test(
            "idle1000",
            "hello",
            "idle",
            "RSS growth with 1000 idle keep-alive connections (fresh server)",
            unit="KiB/conn",
        ),
    )
}
THROUGHPUT_TESTS = ["hello", "json", "fastapi", "echo", "stream", "pipelined", "ws64", "ws16k"]

# --------------------------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------------------------


@dataclass
class ServerSpec:
    name: str
    command: Callable[[str, str, int], list[str]]  # (python, "benchmarks.apps:x", port) -> argv
    check: Callable[[str], list[str]]  # (python) -> argv that exits 0 when the server is usable
    tests: frozenset[str] | None = None  # None: every test
    note: str = ""
    #: (python) -> a directory to put first on PYTHONPATH (the compiled build), made on demand.
    source_tree: Callable[[str], Path] | None = None


def compiled_tree(python: str) -> Path:
    """A copy of asgiserve with its hot modules compiled by mypyc (``ASGISERVE_COMPILE=1``,
    see setup.py), built once per source version under benchmarks/results/ (git-ignored), so
    that the pure and the compiled build run side by side in one run."""
    import hashlib

    sources = [
        ROOT / "setup.py",
        ROOT / "pyproject.toml",
        *sorted((ROOT / "build_backend").rglob("*.py")),
        *sorted((ROOT / "asgiserve").rglob("*.py")),
    ]
    digest = hashlib.sha256(python.encode())
    for path in sources:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    tree = HERE / "results" / f"compiled-{digest.hexdigest()[:12]}"
    if (tree / "built").exists():
        return tree
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, tree / name)
    for package in ("asgiserve", "build_backend"):
        shutil.copytree(
            ROOT / package, tree / package, ignore=shutil.ignore_patterns("*.so", "__pycache__")
        )
    print(f"building the compiled asgiserve in {tree.relative_to(ROOT)} (mypyc, ~1 min)...")
    env = dict(os.environ, ASGISERVE_COMPILE="1")
    proc = subprocess.run(
        [python, "setup.py", "-q", "build_ext", "--inplace"],
        cwd=tree,
        env=env,
        capture_output=True,
        timeout=900,
        check=False,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).decode(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError("compiled build failed: " + " | ".join(tail))
    (tree / "built").write_text("ok\n")
    return tree


def server_env(spec: ServerSpec, python: str) -> tuple[dict[str, str], Path]:
    """Environment and working directory for a server (or its check) process."""
    env = dict(os.environ)
    paths = [str(ROOT), env.get("PYTHONPATH")]
    cwd = ROOT
    if spec.source_tree is not None:
        # Its own tree first, and as the working directory: `python -m` puts that first.
        cwd = spec.source_tree(python)
        paths.insert(0, str(cwd))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    return env, cwd


def _asgiserve(http: str) -> Callable[[str, str, int], list[str]]:
    def build(py: str, target: str, port: int) -> list[str]:
        return [
            py, "-m", "asgiserve", target, "--host", HOST, "--port", str(port),
            "--no-access-log", "--log-level", "warning", "--loop", "uvloop", "--http", http,
        ]  # fmt: skip

    return build


def _uvicorn(http: str) -> Callable[[str, str, int], list[str]]:
    def build(py: str, target: str, port: int) -> list[str]:
        return [
            py, "-m", "uvicorn", target, "--host", HOST, "--port", str(port),
            "--loop", "uvloop", "--http", http, "--ws", UVICORN_WS,
            "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip

    return build


def _hypercorn(py: str, target: str, port: int) -> list[str]:
    # --workers 0: serve in this process (no supervisor), like uvicorn; --backlog 2048 as
    # uvicorn's default (hypercorn's 100 makes 256+ simultaneous connects retry SYNs for 1 s).
    return [
        py, "-m", "hypercorn", target, "--bind", f"{HOST}:{port}",
        "--worker-class", "uvloop", "--workers", "0", "--backlog", "2048",
        "--log-level", "warning",
    ]  # fmt: skip


def _granian(py: str, target: str, port: int) -> list[str]:
    return [
        py, "-m", "granian", "--interface", "asgi", "--host", HOST, "--port", str(port),
        "--workers", "1", "--runtime-threads", "1", "--loop", "uvloop", "--http", "1",
        "--no-access-log", "--log-level", "warning", target,
    ]  # fmt: skip


def _gunicorn(py: str, target: str, port: int) -> list[str]:
    # gunicorn 27's own ASGI worker (-k asgi, not uvicorn's worker class): one worker under
    # gunicorn's arbiter, uvloop, gunicorn's HTTP parser (its C one, gunicorn_h1c, where
    # installed); access log off by default; --backlog as for hypercorn.
    return [
        py, "-m", "gunicorn", "-k", "asgi", "--workers", "1", "--asgi-loop", "uvloop",
        "--bind", f"{HOST}:{port}", "--backlog", "2048", "--log-level", "warning", target,
    ]  # fmt: skip


def _ceiling(py: str, target: str, port: int) -> list[str]:
    return [py, str(HERE / "ceiling.py"), "--host", HOST, "--port", str(port)]


def _imports(*modules: str) -> Callable[[str], list[str]]:
    return lambda py: [py, "-c", "import " + ", ".join(modules)]


_REQUIRE_COMPILED = (
    "import asgiserve._compiled as c, sys; d = c.build_description(); print(d); "
    "sys.exit(not d.startswith('compiled'))"
)

_REQUIRE_GUNICORN_27 = "import gunicorn, uvloop, sys; sys.exit(gunicorn.version_info < (27,))"

# uvicorn 0.54 offers websockets (legacy asyncio protocol), websockets-sansio and wsproto;
# websockets-sansio measured fastest here (see README), so it is used for both uvicorn rows.
UVICORN_WS = "websockets-sansio"

SERVERS: dict[str, ServerSpec] = {
    s.name: s
    for s in (
        ServerSpec(
            "asgiserve",
            _asgiserve("httptools"),
            lambda py: [py, "-m", "asgiserve", "--version"],
            note="the product, uvloop + httptools",
        ),
        ServerSpec(
            "asgiserve-compiled",
            _asgiserve("httptools"),
            lambda py: [py, "-c", _REQUIRE_COMPILED],
            note="the product, uvloop + httptools, hot modules compiled with mypyc "
            "(ASGISERVE_COMPILE=1)",
            source_tree=compiled_tree,
        ),
        ServerSpec(
            "asgiserve-h11",
            _asgiserve("h11"),
            lambda py: [py, "-m", "asgiserve", "--version"],
            note="the product, uvloop + h11",
        ),
        ServerSpec(
            "uvicorn-httptools",
            _uvicorn("httptools"),
            _imports("uvicorn", "uvloop", "httptools", "websockets"),
            note=f"uvloop + httptools, --ws {UVICORN_WS}",
        ),
        ServerSpec(
            "uvicorn-h11",
            _uvicorn("h11"),
            _imports("uvicorn", "uvloop", "h11", "websockets"),
            note=f"uvloop + h11, --ws {UVICORN_WS}",
        ),
        ServerSpec(
            "hypercorn",
            _hypercorn,
            _imports("hypercorn", "uvloop"),
            note="uvloop worker class, single process",
        ),
        ServerSpec(
            "granian",
            _granian,
            _imports("granian"),
            note="Rust HTTP, ASGI interface, 1 worker, 1 runtime thread, HTTP/1 only",
        ),
        ServerSpec(
            "gunicorn",
            _gunicorn,
            lambda py: [py, "-c", _REQUIRE_GUNICORN_27],
            note="gunicorn 27+ native ASGI worker (-k asgi), 1 worker, uvloop",
        ),
        ServerSpec(
            "ceiling",
            _ceiling,
            _imports("uvloop"),
            tests=frozenset({"hello", "pipelined", "hello256", "idle1000", "ws64", "ws16k"}),
            note="bare uvloop Protocol, canned response, no ASGI (upper bound)",
        ),
    )
}

VERSION_PACKAGES = [
    "uvicorn", "httptools", "uvloop", "websockets", "wsproto", "h11", "h2",
    "hypercorn", "granian", "gunicorn", "gunicorn_h1c", "click", "fastapi", "pydantic",
]  # fmt: skip

# --------------------------------------------------------------------------------------------
# Process management: everything we start is registered and killed on the way out.
# --------------------------------------------------------------------------------------------

_LIVE: set[subprocess.Popen[Any]] = set()


def _kill_group(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    # Leftovers in the group (worker processes) get SIGKILL whatever the leader did.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(2.0)
    _LIVE.discard(proc)


def kill_all() -> None:
    for proc in list(_LIVE):
        _kill_group(proc, grace=2.0)


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def spawn(argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
    proc = subprocess.Popen(argv, start_new_session=True, **kwargs)
    _LIVE.add(proc)
    return proc


def wait_with_rusage(proc: subprocess.Popen[Any], timeout: float) -> tuple[int, float]:
    """Wait for ``proc`` (bounded), return (returncode, cpu seconds it used)."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            _LIVE.discard(proc)
            return proc.returncode, usage.ru_utime + usage.ru_stime
        if time.monotonic() > deadline:
            _kill_group(proc, grace=1.0)
            raise TimeoutError(f"{proc.args[2:5]}... did not finish in {timeout:.0f}s")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def proc_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime (fields 14, 15)
    return total / _CLK_TCK


def cpu_busy() -> dict[str, float]:
    """Busy seconds per CPU since boot, from /proc/stat ("cpu0", "cpu1", ...).

    user + nice + system + steal: irq/softirq time is left out because loopback packet
    processing lands there without being charged to any process.
    """
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *vals = line.split()
                ticks = [int(v) for v in vals]
                out[name] = (ticks[0] + ticks[1] + ticks[2] + ticks[7]) / _CLK_TCK
    return out


def wait_quiet(servers: list[Server], limit: float = 5.0, threshold: float = 0.05) -> float:
    """Wait (bounded) until none of our servers uses CPU, e.g. still draining a previous load."""
    pids = [p for s in servers for p in s.pids]
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        c0 = cpu_seconds(pids)
        time.sleep(0.1)
        if cpu_seconds(pids) - c0 <= threshold * 0.1:
            break
    return time.monotonic() - t0


def wait_quiet_machine(args: argparse.Namespace, ours: list[Server]) -> float:
    """Wait (at most --quiet-wait s) until other processes leave both our cores alone.

    The time spent counts against the session's --disturbance-budget.
    """
    limit = min(args.quiet_wait, args.budget_left)
    if limit <= 0:
        return 0.0
    pids = [p for s in ours for p in s.pids]
    server_core, load_core = f"cpu{args.server_cpu}", f"cpu{args.load_cpu}"
    t0 = time.monotonic()
    while True:
        b0, c0, w0 = cpu_busy(), cpu_seconds(pids), time.monotonic()
        time.sleep(0.5)
        b1, c1, w1 = cpu_busy(), cpu_seconds(pids), time.monotonic()
        wall = w1 - w0
        foreign = max(
            100.0 * (b1[server_core] - b0[server_core] - (c1 - c0)) / wall,
            100.0 * (b1[load_core] - b0[load_core]) / wall,
        )
        if foreign <= args.max_foreign or w1 - t0 >= limit:
            args.budget_left -= w1 - t0
            return w1 - t0


# --------------------------------------------------------------------------------------------
# A tiny blocking HTTP/1.1 client for correctness checks and the idle-connection test
# --------------------------------------------------------------------------------------------


class HTTPCheckError(Exception):
    pass


def _recv_more(sock: socket.socket, buf: bytes) -> bytes:
    chunk = sock.recv(262144)
    if not chunk:
        raise HTTPCheckError("connection closed by server")
    return buf + chunk


def read_response(
    sock: socket.socket, buf: bytes = b""
) -> tuple[int, dict[bytes, bytes], bytes, bytes]:
    """Read one response; returns (status, headers, body, leftover bytes)."""
    while b"\r\n\r\n" not in buf:
        buf = _recv_more(sock, buf)
    head, buf = buf.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    parts = lines[0].split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise HTTPCheckError(f"bad status line {lines[0][:80]!r}")
    status = int(parts[1])
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if b"content-length" in headers:
        n = int(headers[b"content-length"])
        while len(buf) < n:
            buf = _recv_more(sock, buf)
        return status, headers, buf[:n], buf[n:]
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        body = []
        while True:
            while b"\r\n" not in buf:
                buf = _recv_more(sock, buf)
            size_line, buf = buf.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            while len(buf) < size + 2:
                buf = _recv_more(sock, buf)
            if size == 0:
                # no trailers expected: the terminating CRLF follows
                return status, headers, b"".join(body), buf[2:]
            body.append(buf[:size])
            buf = buf[size + 2 :]
    if status in (204, 304) or 100 <= status < 200:
        return status, headers, b"", buf
    while True:  # read to EOF
        try:
            buf = _recv_more(sock, buf)
        except HTTPCheckError:
            return status, headers, buf, b""


def _get(path: str = "/") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()


def check_http(port: int, test: Test, timeout: float = 5.0) -> str | None:
    """None when the server gives the right answer for ``test``; else what was wrong."""
    try:
        if test.kind == "ws":
            return wsload.verify(HOST, port, test.ws_size, test.ws_text, timeout)
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            if test.app == "echo":
                body = bytes(range(256)) * 4
                sock.sendall(
                    f"POST / HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/octet-stream\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                status, _, got, _ = read_response(sock)
                return None if status == 200 and got == body else f"echo: {status} {got[:40]!r}"
            if test.name == "pipelined":
                sock.sendall(_get() * 16)
                buf = b""
                for i in range(16):
                    status, _, got, buf = read_response(sock, buf)
                    if status != 200 or got != bench_apps.HELLO_BODY:
                        return f"pipelined response {i}: {status} {got[:40]!r}"
                return None
            sock.sendall(_get(test.path))
            status, headers, got, _ = read_response(sock)
            if status != 200:
                return f"status {status}"
            if test.app == "hello":
                ok = got == bench_apps.HELLO_BODY
            elif test.app == "json":
                ok = json.loads(got) == bench_apps.JSON_PAYLOAD and headers.get(
                    b"content-type", b""
                ).startswith(b"application/json")
            elif test.app == "stream":
                ok = got == bench_apps.STREAM_CHUNK * bench_apps.STREAM_CHUNKS
            elif test.name == "fastapi":
                ok = json.loads(got) == {"id": 42, **bench_apps.ITEM_FIELDS}
            else:
                ok = True
            return None if ok else f"unexpected body {got[:40]!r}"
    except (OSError, HTTPCheckError, ValueError) as exc:
        return repr(exc)


# --------------------------------------------------------------------------------------------
# Server process
# --------------------------------------------------------------------------------------------


class Server:
    def __init__(self, spec: ServerSpec, test: Test, args: argparse.Namespace, logdir: Path):
        self.spec = spec
        self.test = test
        self.port = free_port()
        self.python = args.python
        self.argv = spec.command(args.python, test.target, self.port)
        self.cpu = args.server_cpu
        self.log_path = logdir / f"{test.name}-{spec.name}.log"
        self.proc: subprocess.Popen[Any] | None = None
        self.pids: list[int] = []
        self.error: str | None = None

    def start(self) -> None:
        env, cwd = server_env(self.spec, self.python)
        env["PYTHONUNBUFFERED"] = "1"
        with open(self.log_path, "wb") as log:
            self.proc = spawn(
                ["taskset", "-c", str(self.cpu), *self.argv],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log_tail(self, n: int = 6) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(lines[-n:])

    def wait_ready(self, timeout: float) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        last = "no answer"
        wrong_since: float | None = None  # a server that answers wrongly fails after 3 s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.error = f"exited with {self.proc.returncode}: {self.log_tail()}"
                return False
            try:
                with socket.create_connection((HOST, self.port), timeout=1.0):
                    pass
            except OSError as exc:
                last = repr(exc)
                time.sleep(0.1)
                continue
            problem = check_http(self.port, self.test)
            if problem is None:
                time.sleep(0.2)  # let multi-process servers settle
                self.pids = proc_tree(self.proc.pid)
                return True
            last = problem
            now = time.monotonic()
            wrong_since = wrong_since or now
            if now - wrong_since > 3.0:
                self.error = f"wrong answer: {problem}"
                return False
            time.sleep(0.2)
        self.error = f"not ready in {timeout:.0f}s ({last}) {self.log_tail(3)}"
        return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def refresh_pids(self) -> list[int]:
        if self.proc is not None:
            self.pids = proc_tree(self.proc.pid)
        return self.pids

    def stop(self) -> None:
        if self.proc is not None:
            _kill_group(self.proc)


# --------------------------------------------------------------------------------------------
# Load generators
# --------------------------------------------------------------------------------------------

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        return float("nan")
    return float(m.group(1)) * _UNITS_MS[m.group(2)]


def parse_wrk(out: str) -> dict[str, Any]:
    res: dict[str, Any] = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["rate"] = float(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in ([\d.]+\w+)", out)
    if m:
        res["requests"] = int(m.group(1))
    m = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", out)
    if m:
        res["latency_avg_ms"], res["latency_stdev_ms"], res["latency_max_ms"] = (
            _ms(m.group(1)),
            _ms(m.group(2)),
            _ms(m.group(3)),
        )
    for pct, value in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)\s*$", out, re.MULTILINE):
        res[f"p{pct}_ms"] = _ms(value)
    errors = {}
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors.update(
            {
                k: int(v)
                for k, v in zip(("connect", "read", "write", "timeout"), m.groups(), strict=True)
                if int(v)
            }
        )
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors["non2xx"] = int(m.group(1))
    res["errors"] = errors
    return res


def wrk_argv(args: argparse.Namespace, test: Test, port: int, duration: int) -> list[str]:
    conns = test.connections or args.connections
    argv = [
        "taskset", "-c", str(args.load_cpu), args.wrk, "-t1", f"-c{conns}",
        f"-d{duration}s", "--timeout", "5s",
    ]  # fmt: skip
    if test.lua:
        argv += ["-s", str(LUA / test.lua)]
    if test.latency:
        argv.append("--latency")
    argv.append(f"http://{HOST}:{port}{test.path}")
    return argv


def ws_argv(args: argparse.Namespace, test: Test, port: int, duration: int) -> list[str]:
    argv = [
        "taskset", "-c", str(args.load_cpu), sys.executable, str(HERE / "wsload.py"),
        "--host", HOST, "--port", str(port), "--connections", str(args.ws_connections),
        "--size", str(test.ws_size), "--inflight", str(args.ws_inflight),
        "--duration", str(duration),
    ]  # fmt: skip
    if not test.ws_text:
        argv.append("--binary")
    return argv


def run_load(
    args: argparse.Namespace, server: Server, test: Test, duration: int, others: list[Server]
) -> dict[str, Any]:
    argv = (wrk_argv if test.kind == "wrk" else ws_argv)(args, test, server.port, duration)
    settle = wait_quiet(others)
    quiet = wait_quiet_machine(args, others)
    pids = server.refresh_pids()
    other_pids = [p for o in others if o is not server for p in o.pids]
    core = f"cpu{args.server_cpu}"
    busy0 = cpu_busy()
    cpu0, other0, t0 = cpu_seconds(pids), cpu_seconds(other_pids), time.monotonic()
    proc = spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        rc, load_cpu = wait_with_rusage(proc, duration + 30.0)
        out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    finally:
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
    wall = time.monotonic() - t0
    cpu1, other1 = cpu_seconds(pids), cpu_seconds(other_pids)
    busy1 = cpu_busy()
    res: dict[str, Any] = {
        "argv": argv,
        "returncode": rc,
        "wall": wall,
        "settle_s": settle,
        "quiet_wait_s": quiet,
    }
    res["cpu_busy_pct"] = {k: 100.0 * (busy1[k] - busy0.get(k, 0.0)) / wall for k in busy1}
    # CPU time on the server's core not used by any of our servers: someone else's load.
    res["foreign_server_cpu_pct"] = max(
        0.0, res["cpu_busy_pct"].get(core, 0.0) - 100.0 * ((cpu1 - cpu0) + (other1 - other0)) / wall
    )
    if test.kind == "wrk":
        res.update(parse_wrk(out))
        res["loadgen_cpu_pct"] = 100.0 * load_cpu / wall
        res["output"] = out
    else:
        try:
            data = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            data = {"error": f"no JSON from wsload: {err.strip()[-300:]}"}
        res["rate"] = data.get("msgs_per_sec")
        res["loadgen_cpu_pct"] = data.get("client_cpu_pct")
        res["errors"] = {}
        if data.get("error"):
            res["errors"]["client"] = data["error"]
        if data.get("lost_connections"):
            res["errors"]["lost_connections"] = data["lost_connections"]
        if data.get("errors"):
            res["errors"]["server_close"] = len(data["errors"])
        res["ws"] = data
    # Same on the load generator's core (this script's own polling is included, it is small).
    res["foreign_load_cpu_pct"] = max(
        0.0, res["cpu_busy_pct"].get(f"cpu{args.load_cpu}", 0.0) - 100.0 * load_cpu / wall
    )
    if err.strip() and test.kind == "wrk":
        res["stderr"] = err[-500:]
    res["server_cpu_pct"] = 100.0 * (cpu1 - cpu0) / wall
    res["others_cpu_pct"] = 100.0 * (other1 - other0) / wall
    if rc != 0 and not res.get("rate"):
        res["errors"]["exit"] = rc
    if not res.get("rate"):
        res["errors"]["no_responses"] = True
    if not server.alive():
        res["errors"]["server_died"] = server.log_tail()
    return res


def idle_connections(server: Server, count: int, timeout: float = 10.0) -> dict[str, Any]:
    """RSS growth of a fresh server when ``count`` keep-alive connections are held open."""
    with socket.create_connection((HOST, server.port), timeout=timeout) as sock:
        for _ in range(200):  # warm the request path first
            sock.sendall(_get())
            read_response(sock)
    time.sleep(0.5)
    base = rss_kib(server.refresh_pids())
    socks: list[socket.socket] = []
    t0 = time.monotonic()
    try:
        # In batches of 50 so that no server's accept backlog overflows (SYN retries take 1 s).
        while len(socks) < count:
            batch = [
                socket.create_connection((HOST, server.port), timeout=timeout)
                for _ in range(min(50, count - len(socks)))
            ]
            socks.extend(batch)
            for s in batch:
                s.sendall(_get())
            for s in batch:
                status, _, _, _ = read_response(s)
                if status != 200:
                    raise HTTPCheckError(f"status {status}")
        opened = time.monotonic() - t0
        time.sleep(0.5)
        after = rss_kib(server.refresh_pids())
        # Are they still open (no server-side close yet)?
        still_open = 0
        for s in socks:
            s.setblocking(False)
            try:
                still_open += s.recv(1) != b""
            except BlockingIOError:
                still_open += 1
            except OSError:
                pass
    finally:
        for s in socks:
            s.close()
    return {
        "connections": count,
        "rss_before_kib": base,
        "rss_after_kib": after,
        "delta_kib": after - base,
        "per_conn_kib": (after - base) / count,
        "open_seconds": opened,
        "still_open": still_open,
    }


# --------------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------------


@dataclass
class Session:
    path: Path
    data: dict[str, Any] = field(default_factory=dict)

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        tmp.replace(self.path)


def _fmt_rate(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def start_servers(
    specs: list[ServerSpec], test: Test, args: argparse.Namespace, session: Session
) -> list[Server]:
    servers = [Server(spec, test, args, Path(session.data["meta"]["logdir"])) for spec in specs]
    for server in servers:  # start them all, then wait: start-up overlaps
        server.start()
    ready = []
    for server in servers:
        if server.wait_ready(args.start_timeout):
            ready.append(server)
        else:
            print(f"  ! {server.spec.name} failed to start for {test.name}: {server.error}")
            session.data["failures"].append(
                {"server": server.spec.name, "test": test.name, "error": server.error}
            )
            server.stop()
    return ready


def _run_rounds(
    test: Test, servers: list[Server], args: argparse.Namespace, session: Session
) -> list[dict[str, Any]]:
    """``--repeats`` rounds over ``servers``, each round starting one server later."""
    kept: list[dict[str, Any]] = []
    for rep in range(args.repeats):
        k = rep % len(servers)
        order = servers[k:] + servers[:k]
        for server in order:
            if not server.alive():
                continue
            for attempt in range(args.retries + 1):
                res = run_load(args, server, test, args.duration, servers)
                res.update(server=server.spec.name, test=test.name, repeat=rep)
                foreign = max(
                    res.get("foreign_server_cpu_pct", 0.0), res.get("foreign_load_cpu_pct", 0.0)
                )
                if foreign <= args.max_foreign:
                    break
                if attempt == args.retries or args.budget_left < args.duration:
                    res["disturbed"] = True  # kept, but marked in the report
                    break
                args.budget_left -= args.duration + args.retry_pause
                res["discarded"] = f"foreign load {foreign:.0f}% of a CPU"
                session.data["discarded"].append(res)
                print(
                    f"  [{rep + 1}/{args.repeats}] {server.spec.name:18} "
                    f"{_fmt_rate(res.get('rate')):>10} {test.unit}  disturbed "
                    f"(foreign load {foreign:.0f}% of a CPU): again"
                )
                time.sleep(args.retry_pause)
            kept.append(res)
            flag = f"  ERRORS {res['errors']}" if res.get("errors") else ""
            if res.get("quiet_wait_s", 0) > 1.5:
                flag += f"  (waited {res['quiet_wait_s']:.0f}s for a quiet machine)"
            if res.get("disturbed"):
                flag += (
                    f"  DISTURBED (foreign load {res['foreign_server_cpu_pct']:.0f}%"
                    f" / {res['foreign_load_cpu_pct']:.0f}%)"
                )
            extra = ""
            if test.latency:
                extra = f"  p50 {res.get('p50_ms', float('nan')):.2f}ms p99 {res.get('p99_ms', float('nan')):.2f}ms"
            print(
                f"  [{rep + 1}/{args.repeats}] {server.spec.name:18} "
                f"{_fmt_rate(res.get('rate')):>10} {test.unit}  "
                f"srv {res['server_cpu_pct']:3.0f}% cpu, load {res['loadgen_cpu_pct'] or 0:3.0f}% cpu"
                f"{extra}{flag}"
            )
    return kept


def _spreads(runs: list[dict[str, Any]]) -> dict[str, float]:
    """(max - min) / median of each server's rates, in %."""
    rates: dict[str, list[float]] = {}
    for run in runs:
        if run.get("rate"):
            rates.setdefault(run["server"], []).append(run["rate"])
    return {
        name: 100.0 * (max(xs) - min(xs)) / statistics.median(xs)
        for name, xs in rates.items()
        if len(xs) > 1
    }


def run_throughput_test(
    test: Test, specs: list[ServerSpec], args: argparse.Namespace, session: Session
) -> None:
    servers = start_servers(specs, test, args, session)
    try:
        if not servers:
            return
        if args.warmup > 0:
            for server in servers:
                res = run_load(args, server, test, args.warmup, servers)
                print(
                    f"  warm-up {server.spec.name:18} {_fmt_rate(res.get('rate')):>10} {test.unit}"
                )
        # A set of rounds where some server's rates spread over --max-spread is run again
        # (all servers, so that they stay comparable), up to --spread-redos times and within
        # --disturbance-budget; the set with the smallest worst spread is kept, the others go
        # to the raw data's "discarded".
        attempts: list[list[dict[str, Any]]] = []
        for attempt in range(args.spread_redos + 1):
            runs = _run_rounds(test, servers, args, session)
            attempts.append(runs)
            worst = max(_spreads(runs).values(), default=0.0)
            cost = len(servers) * args.repeats * (args.duration + 1.0)
            if worst <= args.max_spread or attempt == args.spread_redos:
                break
            if args.budget_left < cost:  # the same budget as the disturbed runs' redos
                print(f"  spread {worst:.1f}% > {args.max_spread:.0f}%, no budget left to redo")
                break
            args.budget_left -= cost
            print(f"  spread {worst:.1f}% > {args.max_spread:.0f}%: the rounds run again")
        best = min(attempts, key=lambda runs: max(_spreads(runs).values(), default=0.0))
        for runs in attempts:
            if runs is best:
                session.data["runs"].extend(runs)
            else:
                for res in runs:
                    res["discarded"] = "spread of its set of rounds over --max-spread"
                session.data["discarded"].extend(runs)
        session.save()
        if test.name == "hello":
            for server in servers:
                rss = rss_kib(server.refresh_pids())
                session.data["rss_after_load"][server.spec.name] = {
                    "rss_kib": rss,
                    "processes": len(server.pids),
                }
                print(
                    f"  RSS after load {server.spec.name:18} {rss / 1024:7.1f} MiB ({len(server.pids)} proc)"
                )
            session.save()
    finally:
        for server in servers:
            server.stop()


def run_idle_test(
    test: Test, specs: list[ServerSpec], args: argparse.Namespace, session: Session
) -> None:
    for spec in specs:  # one fresh server at a time
        servers = start_servers([spec], test, args, session)
        try:
            if not servers:
                continue
            try:
                res = idle_connections(servers[0], args.idle_connections)
            except (OSError, HTTPCheckError) as exc:
                res = {"error": repr(exc)}
            res["processes"] = len(servers[0].pids)
            session.data["idle"][spec.name] = res
            session.save()
            if "error" in res:
                print(f"  ! {spec.name}: {res['error']}")
            else:
                print(
                    f"  {spec.name:18} +{res['delta_kib'] / 1024:6.1f} MiB for {res['connections']} conns "
                    f"({res['per_conn_kib']:.1f} KiB/conn, {res['still_open']} still open)"
                )
        finally:
            for server in servers:
                server.stop()


def check_available(spec: ServerSpec, python: str) -> str | None:
    """None when the server can run here, else the reason to skip it."""
    try:
        env, cwd = server_env(spec, python)
        proc = subprocess.run(
            spec.check(python), cwd=cwd, env=env, capture_output=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
        return str(exc)
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).decode(errors="replace").strip().splitlines()
        return (
            f"`{shlex.join(spec.check(python)[1:])}` failed: {msg[-1] if msg else proc.returncode}"
        )
    return None


def collect_versions(python: str, wrk: str) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {'python': sys.version.split()[0], 'python_full': sys.version.replace('\\n', ' ')}\n"
        f"for p in {VERSION_PACKAGES!r}:\n"
        "    try: out[p] = m.version(p)\n"
        "    except m.PackageNotFoundError: pass\n"
        "try:\n"
        "    import asgiserve._version as v; out['asgiserve'] = v.__version__\n"
        "    import asgiserve._compiled as c; out['asgiserve build'] = c.build_description()\n"
        "except Exception: pass\n"
        "print(json.dumps(out))\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    versions: dict[str, str] = {}
    try:
        out = subprocess.run(
            [python, "-c", code], cwd=ROOT, env=env, capture_output=True, timeout=30, check=True
        ).stdout
        versions.update(json.loads(out))
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        versions["error"] = repr(exc)
    try:
        out = subprocess.run([wrk, "-v"], capture_output=True, timeout=10, check=False)
        text = (out.stdout + out.stderr).decode(errors="replace")
        m = re.search(r"wrk (\S+)", text)
        versions["wrk"] = m.group(1) if m else text.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError) as exc:
        versions["wrk"] = repr(exc)
    versions["wsload client"] = f"{platform.python_version()} ({sys.executable})"
    return versions


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()
        info["memory_gib"] = round(int(mem[1]) / 1024 / 1024, 1)
    return info


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarise(data: dict[str, Any]) -> dict[str, Any]:
    by: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in data["runs"]:
        by.setdefault((run["server"], run["test"]), []).append(run)
    summary: dict[str, Any] = {}
    for (server, test), runs in by.items():
        rates = [r["rate"] for r in runs if r.get("rate")]
        med = _median(rates)
        entry = {
            "median": med,
            "min": min(rates) if rates else None,
            "max": max(rates) if rates else None,
            "n": len(rates),
            "spread_pct": (100.0 * (max(rates) - min(rates)) / med) if rates and med else None,
            "errors": [r["errors"] for r in runs if r.get("errors")],
            "disturbed": sum(1 for r in runs if r.get("disturbed")),
            "server_cpu_pct": _median([r.get("server_cpu_pct") for r in runs]),
            "loadgen_cpu_pct_max": max((r.get("loadgen_cpu_pct") or 0) for r in runs),
            "others_cpu_pct_max": max((r.get("others_cpu_pct") or 0) for r in runs),
            "foreign_cpu_pct_max": max((r.get("foreign_server_cpu_pct") or 0) for r in runs),
            "foreign_load_cpu_pct_max": max((r.get("foreign_load_cpu_pct") or 0) for r in runs),
        }
        for key in ("p50_ms", "p75_ms", "p90_ms", "p99_ms", "latency_max_ms"):
            vals = [r[key] for r in runs if key in r and r.get("rate")]
            if vals:
                entry[key] = _median(vals)
        summary.setdefault(test, {})[server] = entry
    return summary


def _server_order(data: dict[str, Any]) -> list[str]:
    return [s for s in data["meta"]["servers"] if s in data["servers_run"]]


def render_tables(data: dict[str, Any]) -> str:
    summary = summarise(data)
    servers = _server_order(data)
    baseline = data["meta"]["baseline"]
    tests = [t for t in data["meta"]["tests"] if t in summary and t in THROUGHPUT_TESTS]
    out: list[str] = []

    def table(header: list[str], rows: list[list[str]]) -> None:
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
        out.extend("| " + " | ".join(r) + " |" for r in rows)
        out.append("")

    if tests:
        out.append("### Throughput (median of repeats; req/s, websocket tests msg/s)\n")
        rows = []
        for s in servers:
            cells = []
            for t in tests:
                e = summary[t].get(s)
                if not e or e["median"] is None:
                    cells.append("-")
                else:
                    cells.append(
                        _fmt_rate(e["median"])
                        + (" (!)" if e["errors"] else "")
                        + (" (~)" if e.get("disturbed") else "")
                    )
            rows.append([f"`{s}`", *cells])
        table(["server", *tests], rows)

        out.append(f"### Ratio to `{baseline}` (same run)\n")
        rows = []
        for s in servers:
            cells = []
            for t in tests:
                e, b = summary[t].get(s), summary[t].get(baseline)
                if not e or not b or not e["median"] or not b["median"]:
                    cells.append("-")
                else:
                    r = e["median"] / b["median"]
                    cells.append(f"**{r:.2f}x**" if s.startswith("asgiserve") else f"{r:.2f}x")
            rows.append([f"`{s}`", *cells])
        table(["server", *tests], rows)

        out.append("### Run-to-run spread ((max - min) / median over the repeats)\n")
        rows = []
        for s in servers:
            cells = []
            for t in tests:
                e = summary[t].get(s)
                cells.append(
                    "-"
                    if not e or e["spread_pct"] is None
                    else f"{e['spread_pct']:.1f}% (n={e['n']})"
                )
            rows.append([f"`{s}`", *cells])
        table(["server", *tests], rows)

    lat = summary.get("hello256")
    if lat:
        conns = TESTS["hello256"].connections
        out.append(
            f"### Latency: hello at {conns} connections (wrk --latency, median of repeats)\n"
        )
        rows = []
        for s in servers:
            e = lat.get(s)
            if not e:
                continue

            def ms(key: str, e: dict[str, Any] = e) -> str:
                return f"{e[key]:.2f}" if e.get(key) is not None else "-"

            rows.append(
                [
                    f"`{s}`",
                    _fmt_rate(e["median"]),
                    ms("p50_ms"),
                    ms("p75_ms"),
                    ms("p90_ms"),
                    ms("p99_ms"),
                    ms("latency_max_ms"),
                ]
            )
        table(["server", "req/s", "p50 ms", "p75 ms", "p90 ms", "p99 ms", "max ms"], rows)

    rss, idle = data.get("rss_after_load", {}), data.get("idle", {})
    if rss or idle:
        n_idle = data["meta"].get("idle_connections", 1000)
        out.append("### Memory (RSS summed over the server's process tree)\n")
        rows = []
        for s in servers:
            r, i = rss.get(s), idle.get(s)
            if not r and not i:
                continue
            procs = (r or i or {}).get("processes", "-")
            rows.append(
                [
                    f"`{s}`",
                    f"{r['rss_kib'] / 1024:.1f}" if r else "-",
                    f"{i['rss_before_kib'] / 1024:.1f}" if i and "rss_before_kib" in i else "-",
                    f"{i['delta_kib'] / 1024:+.1f}"
                    if i and "delta_kib" in i
                    else (i or {}).get("error", "-"),
                    f"{i['per_conn_kib']:.1f}" if i and "per_conn_kib" in i else "-",
                    str(procs),
                ]
            )
        table(
            [
                "server",
                "RSS after hello load (MiB)",
                "RSS fresh (MiB)",
                f"+{n_idle} idle conns (MiB)",
                "KiB/conn",
                "processes",
            ],
            rows,
        )

    # Load generator sanity
    checks = []
    for t in [t for t in data["meta"]["tests"] if t in summary]:
        entries = summary[t]
        lg = max(e["loadgen_cpu_pct_max"] for e in entries.values())
        srv = [e["server_cpu_pct"] for e in entries.values() if e["server_cpu_pct"] is not None]
        oth = max(e["others_cpu_pct_max"] for e in entries.values())
        foreign = max(e.get("foreign_cpu_pct_max", 0) for e in entries.values())
        foreign_lg = max(e.get("foreign_load_cpu_pct_max", 0) for e in entries.values())
        checks.append(
            [
                t,
                f"{lg:.0f}%",
                f"{min(srv):.0f}-{max(srv):.0f}%" if srv else "-",
                f"{oth:.1f}%",
                f"{foreign:.0f}% / {foreign_lg:.0f}%",
            ]
        )
    if checks:
        out.append("### Sanity: CPU use during the measured runs\n")
        out.append(
            "Load generator = wrk or wsload on CPU 1 (max over runs); server = the server under load "
            "on CPU 0 (range of medians); idle peers = CPU used by the other, idle servers during a run; "
            "foreign = CPU time on the server's / load generator's core used by processes that are not ours "
            "(other jobs on the shared machine): high values mean that run was disturbed.\n"
        )
        table(
            [
                "test",
                "load generator CPU (max)",
                "server CPU",
                "idle peers CPU (max)",
                "foreign load CPU 0 / CPU 1 (max)",
            ],
            checks,
        )

    problems = []
    for t, entries in summary.items():
        for s, e in entries.items():
            for err in e["errors"]:
                problems.append(f"- `{s}` / {t}: {err}")
    disturbed = [
        f"`{s}`/{t} ({e['disturbed']} of {e['n']})"
        for t, entries in summary.items()
        for s, e in entries.items()
        if e.get("disturbed")
    ]
    if disturbed:
        problems.append(
            "- (~) runs kept although other processes used more than "
            f"{data['meta'].get('max_foreign', '?')}% of the server's or load generator's CPU after "
            f"{data['meta'].get('retries', '?')} redos: " + ", ".join(disturbed)
        )
    discarded = data.get("discarded", [])
    by_spread = sum(1 for r in discarded if "spread" in str(r.get("discarded")))
    if len(discarded) > by_spread:
        problems.append(
            f"- {len(discarded) - by_spread} disturbed runs were redone (kept in the raw JSON "
            "under `discarded`)"
        )
    if by_spread:
        tests = sorted({r["test"] for r in discarded if "spread" in str(r.get("discarded"))})
        problems.append(
            f"- the rounds of {', '.join(tests)} ran again because a server's spread was over "
            f"{data['meta'].get('max_spread', '?')}%; the set with the smaller worst spread is "
            f"kept ({by_spread} runs of the other set in the raw JSON under `discarded`)"
        )
    for f in data.get("failures", []):
        problems.append(f"- `{f['server']}` failed to start for {f['test']}: {f['error']}")
    for s, reason in data.get("skipped", {}).items():
        problems.append(f"- `{s}` skipped: {reason}")
    if problems:
        out.append("### Errors, failures and skipped servers\n")
        out.extend(problems)
        out.append("")
    return "\n".join(out)


def spread_rule(meta: dict[str, Any]) -> str:
    if not meta.get("spread_redos"):
        return ""
    return (
        f" (a test whose rounds spread over {meta['max_spread']:.0f}% for some server ran its "
        f"rounds again, up to {meta['spread_redos']} time(s), and kept the tighter set)"
    )


# The figures that the performance goals (issue 20) are about, each with its target:
# (test, asgiserve build, what, target ratio to the baseline, True when lower is better).
HEADLINE: list[tuple[str, str, str, float, bool]] = [
    ("fastapi", "asgiserve-compiled", "FastAPI + pydantic GET, compiled build", 1.12, False),
    ("fastapi", "asgiserve", "FastAPI + pydantic GET, pure build", 1.05, False),
    ("hello", "asgiserve", "hello, pure build", 1.3, False),
    ("stream", "asgiserve", "64 KiB in 16 `more_body` sends, pure build", 2.0, False),
    ("hello256", "asgiserve", "p99 latency at 256 connections, pure build", 1.0, True),
    ("hello256", "asgiserve-compiled", "p99 latency at 256 connections, compiled", 1.0, True),
]


def render_headline(data: dict[str, Any]) -> str:
    """The headline figures of this run against ``--baseline``, with their targets."""
    summary = summarise(data)
    baseline = data["meta"]["baseline"]
    rows = []
    for test, server, what, target, lower_is_better in HEADLINE:
        cells = summary.get(test, {})
        ours, base = cells.get(server), cells.get(baseline)
        key = "p99_ms" if lower_is_better else "median"
        if not ours or not base or not ours.get(key) or not base.get(key):
            continue
        ratio = ours[key] / base[key]
        met = ratio <= target if lower_is_better else ratio >= target
        unit = "ms" if lower_is_better else ""
        fig = (
            f"{ours[key]:.2f} ms vs {base[key]:.2f} ms"
            if unit
            else (f"{ours[key]:,.0f} vs {base[key]:,.0f} {'req/s'}")
        )
        sign = "<=" if lower_is_better else ">="
        others = []
        for peer in ("granian", "gunicorn"):
            e = cells.get(peer)
            if e and e.get(key):
                others.append(f"{peer} {e[key] / base[key]:.2f}x")
        rows.append(
            f"| {what} | {fig} | **{ratio:.2f}x** | {sign} {target:g}x | "
            f"{'met' if met else '**missed**'} | {', '.join(others) or '-'} |"
        )
    if not rows:
        return ""
    head = [
        f"### Headline: asgiserve against `{baseline}` in this run (targets: issue 20)\n",
        "| figure | asgiserve vs baseline | ratio | target | | peers (ratio) |",
        "|---|---:|---:|---:|---|---|",
    ]
    return "\n".join(head + rows) + "\n"


def render_report(data: dict[str, Any], chart: Path | None) -> str:
    meta = data["meta"]
    lines = [
        "# asgiserve benchmark results",
        "",
        f"Generated by `{meta['command']}` on {meta['date']} "
        f"({'quick smoke run' if meta['quick'] else 'full run'}; raw data: `{meta['raw_json_rel']}`, "
        "git-ignored).  Read benchmarks/README.md before quoting a figure: the machine is shared and "
        "noisy, and only ratios within one run are meaningful.",
        "",
        f"Method: {meta['duration']} s per run after a {meta['warmup']} s warm-up run per server and test, "
        f"{meta['repeats']} repeats interleaved round-robin over the servers, median kept"
        f"{spread_rule(meta)}. wrk: 1 thread, "
        f"{meta['connections']} connections (hello256: 256); websockets: {meta['ws_connections']} connections, "
        f"{meta['ws_inflight']} messages in flight per connection. Server pinned to CPU {meta['server_cpu']}, "
        f"load generator to CPU {meta['load_cpu']}.",
        "",
    ]
    disturbed = sum(1 for r in data["runs"] if r.get("disturbed"))
    if disturbed:
        lines += [
            f"**Warning: {disturbed} of {len(data['runs'])} measured runs were disturbed by other "
            "jobs on the machine (marked `(~)`, see the sanity table); treat these figures as "
            "rough and run again on a quiet machine before quoting them.**",
            "",
        ]
    headline = render_headline(data)
    if headline:
        lines += [headline]
    if chart is not None:
        lines += [f"![req/s per server per test]({chart.name})", ""]
    lines.append(render_tables(data))
    lines += ["## Machine", ""]
    for k, v in meta["machine"].items():
        lines.append(f"- {k}: {v}")
    lines += ["", "## Versions", ""]
    for k, v in meta["versions"].items():
        if k != "python_full":
            lines.append(f"- {k}: {v}")
    lines += ["", "## Servers and commands", ""]
    lines.append(
        "`APP` is `benchmarks.apps:<test app>` (fastapi: `benchmarks.fastapi_app:app`), `PORT` "
        "a free port; every server command is "
        f"prefixed with `taskset -c {meta['server_cpu']}`."
    )
    lines.append("")
    for name, info in meta["server_info"].items():
        lines.append(f"- `{name}` ({info['note']}): `{info['command']}`")
    lines += ["", "Load generators (prefixed with `taskset -c " + str(meta["load_cpu"]) + "`):", ""]
    for t, cmd in meta["load_commands"].items():
        lines.append(f"- {t}: `{cmd}`")
    lines.append("")
    return "\n".join(lines)


def render_chart(data: dict[str, Any], path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed: no chart (pip install matplotlib)"
    summary = summarise(data)
    servers = _server_order(data)
    baseline = data["meta"]["baseline"]
    tests = [t for t in data["meta"]["tests"] if t in summary and t in THROUGHPUT_TESTS]
    if not tests:
        return "no throughput tests: no chart"
    colours = plt.get_cmap("tab10")
    colour = {s: colours(i % 10) for i, s in enumerate(servers)}
    ncols = min(4, len(tests))
    nrows = (len(tests) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.6 * nrows + 0.8), squeeze=False)
    for ax in axes.flat[len(tests) :]:
        ax.axis("off")
    for ax, t in zip(axes.flat, tests, strict=False):
        base = summary[t].get(baseline, {}).get("median")
        # The ceiling (no ASGI) is a dashed line, not a bar, so it cannot squash the real ones.
        ceiling = summary[t].get("ceiling", {}).get("median")
        present = [s for s in servers if s != "ceiling" and summary[t].get(s, {}).get("median")]
        vals = [summary[t][s]["median"] for s in present]
        top = max(vals, default=ceiling or 1.0)
        if ceiling:
            label = f"ceiling {ceiling:,.0f}" + (f" ({ceiling / base:.1f}x)" if base else "")
            if ceiling <= top * 1.5:
                ax.axhline(ceiling, color=colour["ceiling"], linestyle="--", linewidth=1)
                ax.annotate(label, (0.01, ceiling), xycoords=("axes fraction", "data"),
                            va="bottom", fontsize=7, color=colour["ceiling"])  # fmt: skip
                top = max(top, ceiling)
            else:
                ax.annotate(label + " - off scale", (0.99, 0.97), xycoords="axes fraction",
                            ha="right", va="top", fontsize=7, color=colour["ceiling"])  # fmt: skip
        bars = ax.bar(range(len(present)), vals, color=[colour[s] for s in present])
        ax.set_ylim(0, top * 1.18)
        for bar, s, v in zip(bars, present, vals, strict=True):
            label = f"{v / base:.2f}x" if base else f"{v:,.0f}"
            ax.annotate(
                label,
                (bar.get_x() + bar.get_width() / 2, v),
                ha="center",
                va="bottom",
                fontsize=7,
                fontweight="bold" if s.startswith("asgiserve") else "normal",
            )
        ax.set_title(f"{t} ({TESTS[t].unit})", fontsize=10)
        ax.set_xticks([])
        ax.tick_params(axis="y", labelsize=7)
        ax.yaxis.set_major_formatter(
            matplotlib.ticker.FuncFormatter(
                lambda x, _p: f"{x / 1000:g}k" if x >= 1000 else f"{x:.0f}"
            )
        )
    handles = [
        plt.Line2D([], [], color=colour[s], linestyle="--")
        if s == "ceiling"
        else plt.Rectangle((0, 0), 1, 1, color=colour[s])
        for s in servers
    ]
    fig.legend(
        handles, servers, loc="lower center", ncol=min(len(servers), 7), fontsize=8, frameon=False
    )
    meta = data["meta"]
    fig.suptitle(
        f"Throughput per server (median of {meta['repeats']} x {meta['duration']} s; "
        f"labels: ratio to {baseline}) - {meta['date'][:10]}, Python {meta['versions'].get('python', '?')}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark asgiserve against its peers (see benchmarks/README.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 1 s runs, no warm-up, 1 repeat")
    p.add_argument("--servers", default=",".join(SERVERS), help="comma-separated servers")
    p.add_argument("--tests", default=",".join(TESTS), help="comma-separated tests")
    p.add_argument(
        "--duration", type=int, default=None, help="seconds per measured run [10; quick 1]"
    )
    p.add_argument(
        "--warmup", type=int, default=None, help="seconds of warm-up per server/test [2; quick 0]"
    )
    p.add_argument("--repeats", type=int, default=None, help="interleaved repeats [3; quick 1]")
    p.add_argument(
        "--connections", type=int, default=64, help="wrk connections (hello256 uses 256)"
    )
    p.add_argument("--ws-connections", type=int, default=32)
    p.add_argument(
        "--ws-inflight", type=int, default=4, help="websocket messages in flight per connection"
    )
    p.add_argument("--idle-connections", type=int, default=1000)
    p.add_argument("--baseline", default="uvicorn-httptools")
    p.add_argument("--python", default=sys.executable, help="interpreter that runs the servers")
    p.add_argument("--wrk", default=shutil.which("wrk") or "wrk")
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--load-cpu", type=int, default=1)
    p.add_argument("--start-timeout", type=float, default=20.0)
    p.add_argument(
        "--max-foreign",
        type=float,
        default=10.0,
        help="redo a run when other processes used more than this %% of the server's or the "
        "load generator's CPU",
    )
    p.add_argument(
        "--retries", type=int, default=None, help="redos of a disturbed run [1; quick 0]"
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=None,
        help="before each run, wait up to this many seconds for other processes to leave the "
        "two cores below --max-foreign [15; quick 0]",
    )
    p.add_argument(
        "--disturbance-budget",
        type=float,
        default=None,
        help="seconds the whole session may spend waiting for a quiet machine and redoing "
        "disturbed runs; then it just runs and marks them [900; quick 0]",
    )
    p.add_argument("--retry-pause", type=float, default=3.0, help="seconds before a redo")
    p.add_argument(
        "--max-spread",
        type=float,
        default=10.0,
        help="run a test's rounds again when a server's (max - min) / median is over this %%",
    )
    p.add_argument(
        "--spread-redos",
        type=int,
        default=None,
        help="times a test's rounds may run again for --max-spread [1; quick 0]",
    )
    p.add_argument(
        "--report",
        type=Path,
        default=None,
        help="markdown report path [benchmarks/RESULTS.md; quick: under results/]",
    )
    p.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="re-render report and chart from a raw JSON file",
    )
    args = p.parse_args(argv)
    if args.duration is None:
        args.duration = 1 if args.quick else 10
    if args.warmup is None:
        args.warmup = 0 if args.quick else 2
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.retries is None:
        args.retries = 0 if args.quick else 1
    if args.spread_redos is None:
        args.spread_redos = 0 if args.quick else 1
    if args.quiet_wait is None:
        args.quiet_wait = 0.0 if args.quick else 15.0
    if args.disturbance_budget is None:
        args.disturbance_budget = 0.0 if args.quick else 900.0
    args.budget_left = args.disturbance_budget
    return args


# Sections of a report that other scripts write (benchmarks/static.py), each between a
# "<!-- NAME: begin -->" and a "<!-- NAME: end -->" line: whoever rewrites the report keeps them.
_SECTION = re.compile(
    r"<!-- (?P<name>[\w.-]+): begin -->\n.*?<!-- (?P=name): end -->\n?", re.DOTALL
)


def section_block(name: str, section: str) -> str:
    """``section`` (markdown ending in a newline) between the markers of ``name``."""
    return f"<!-- {name}: begin -->\n{section}<!-- {name}: end -->\n"


def write_report(report: Path, text: str) -> None:
    """Write ``text`` as the report, followed by the marked sections the old one had."""
    old = report.read_text() if report.exists() else ""
    kept = [m.group(0).rstrip("\n") + "\n" for m in _SECTION.finditer(old)]
    report.write_text(text.rstrip("\n") + "\n" + "".join("\n" + block for block in kept))


def write_section(report: Path, name: str, section: str) -> None:
    """Replace (or append) the section ``name`` of the report; the rest stays as it is."""
    block = section_block(name, section)
    text = report.read_text() if report.exists() else "# asgiserve benchmark results\n"
    for match in _SECTION.finditer(text):
        if match.group("name") == name:
            text = text[: match.start()] + block + text[match.end() :]
            break
    else:
        text = text.rstrip("\n") + "\n\n" + block
    report.write_text(text)


def write_outputs(data: dict[str, Any], report: Path) -> None:
    chart = (
        report.with_name("results.png")
        if report.name == "RESULTS.md"
        else report.with_suffix(".png")
    )
    problem = render_chart(data, chart)
    if problem:
        print(f"chart: {problem}")
        chart_path = None
    else:
        chart_path = chart
    write_report(report, render_report(data, chart_path))
    print(f"\nreport: {report.relative_to(ROOT) if report.is_relative_to(ROOT) else report}")
    if chart_path:
        print(
            f"chart:  {chart_path.relative_to(ROOT) if chart_path.is_relative_to(ROOT) else chart_path}"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        data = json.loads(args.from_json.read_text())
        report = args.report or args.from_json.with_suffix(".md")
        print(render_tables(data))
        write_outputs(data, report)
        return 0

    unknown = [s for s in args.servers.split(",") if s not in SERVERS] + [
        t for t in args.tests.split(",") if t not in TESTS
    ]
    if unknown:
        print(f"unknown servers/tests: {unknown}; servers: {list(SERVERS)}; tests: {list(TESTS)}")
        return 2
    for tool in ("taskset", args.wrk):
        if not shutil.which(tool):
            print(f"{tool} not found")
            return 2
    if os.cpu_count() is None or max(args.server_cpu, args.load_cpu) >= (os.cpu_count() or 1):
        print("need at least 2 CPUs (one for the server, one for the load generator)")
        return 2

    signal.signal(signal.SIGTERM, _on_sigterm)
    atexit.register(kill_all)
    with contextlib.suppress(OSError):  # keep this script off the server's CPU
        os.sched_setaffinity(0, {args.load_cpu})
    with contextlib.suppress(ValueError, OSError):
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = min(hard, max(soft, args.idle_connections * 2 + 1024))
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    logdir = RESULTS_DIR / f"{stamp}-logs"
    logdir.mkdir(parents=True, exist_ok=True)
    raw = RESULTS_DIR / f"{stamp}{'-quick' if args.quick else ''}.json"
    report = args.report or (
        RESULTS_DIR / f"{stamp}-quick.md" if args.quick else HERE / "RESULTS.md"
    )

    server_names = args.servers.split(",")
    test_names = args.tests.split(",")
    print(
        f"asgiserve benchmarks {stamp}: {args.duration}s x {args.repeats} repeats, warm-up {args.warmup}s"
    )
    print("checking servers ...")
    skipped: dict[str, str] = {}
    specs: list[ServerSpec] = []
    for name in server_names:
        reason = check_available(SERVERS[name], args.python)
        if reason:
            skipped[name] = reason
            print(f"  skip {name}: {reason}")
        else:
            specs.append(SERVERS[name])
            print(f"  ok   {name}")
    versions = collect_versions(args.python, args.wrk)

    session = Session(raw)
    session.data = {
        "meta": {
            "date": _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds"),
            "command": shlex.join(
                ["python", "benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])]
            ),
            "quick": args.quick,
            "duration": args.duration,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "max_spread": args.max_spread,
            "spread_redos": args.spread_redos,
            "connections": args.connections,
            "ws_connections": args.ws_connections,
            "ws_inflight": args.ws_inflight,
            "idle_connections": args.idle_connections,
            "baseline": args.baseline,
            "max_foreign": args.max_foreign,
            "retries": args.retries,
            "quiet_wait": args.quiet_wait,
            "disturbance_budget": args.disturbance_budget,
            "server_cpu": args.server_cpu,
            "load_cpu": args.load_cpu,
            "servers": server_names,
            "tests": test_names,
            "machine": machine_info(),
            "versions": versions,
            "logdir": str(logdir),
            "raw_json_rel": str(raw.relative_to(ROOT)),
            "server_info": {
                s.name: {
                    "note": s.note,
                    "command": shlex.join(s.command("python", "APP", 65535))
                    .replace("65535", "PORT")
                    .replace(str(ROOT) + "/", ""),
                    "tests": sorted(s.tests) if s.tests else "all",
                }
                for s in specs
            },
            "load_commands": {
                t.name: shlex.join(
                    (wrk_argv if t.kind == "wrk" else ws_argv)(args, t, 65535, args.duration)[3:]
                )
                .replace(str(ROOT) + "/", "")
                .replace(sys.executable, "python")
                .replace("65535", "PORT")
                for t in (TESTS[n] for n in test_names)
                if t.kind != "idle"
            },
        },
        "skipped": skipped,
        "servers_run": [s.name for s in specs],
        "runs": [],
        "discarded": [],
        "failures": [],
        "rss_after_load": {},
        "idle": {},
    }
    session.save()

    t_start = time.monotonic()
    try:
        for name in test_names:
            test = TESTS[name]
            runnable = [s for s in specs if s.tests is None or name in s.tests]
            print(f"\n== {name}: {test.description} ({len(runnable)} servers)")
            if test.kind == "idle":
                run_idle_test(test, runnable, args, session)
            else:
                run_throughput_test(test, runnable, args, session)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping servers; partial results kept")
        session.data["meta"]["interrupted"] = True
    finally:
        kill_all()
        session.data["meta"]["elapsed_s"] = round(time.monotonic() - t_start, 1)
        session.save()

    print(f"\nraw data: {raw.relative_to(ROOT)} ({session.data['meta']['elapsed_s']} s)\n")
    print(render_tables(session.data))
    write_outputs(session.data, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
