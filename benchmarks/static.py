#!/usr/bin/env python
"""Static files: ``asgiserve --static`` against ``python -m http.server``, Starlette's
``StaticFiles`` on uvicorn (uvloop + httptools) and granian's static route, in the same run.

    python benchmarks/static.py           # full run (~15 min): the "Static files" section of RESULTS.md
    python benchmarks/static.py --quick   # smoke run (~1 min), report under benchmarks/results/

Same conventions as ``run.py`` (whose process, CPU and wrk helpers it uses): each server on
127.0.0.1 pinned to CPU 0 (``taskset -c 0``), wrk and this script on CPU 1; for each test all
servers are started and checked, each gets a warm-up run, then ``--repeats`` rounds go
round-robin over the servers (the start rotating) and the median is kept. The files are random
bytes (incompressible) in a temporary folder: ``file50k.bin`` (51,200 bytes) and
``file20m.bin`` (20 MiB). MiB/s is the file bytes served (req/s x size).

The tests of the 50 KiB file differ by the request headers (see ``TESTS``):

* ``static50k-browser``, the headline: what Chromium sends when one follows a link to the file
  (``BROWSER_HEADERS``: Accept, ``Accept-Encoding: gzip, deflate, br, zstd``, Accept-Language,
  User-Agent, Cookie, Sec-Fetch-*, Sec-CH-UA-*, Referer), sent by wrk through
  ``lua/headers.lua``;
* ``static50k``: none but Host (wrk's default request);
* ``static50k-304``: the browser's revalidation: the same headers plus ``If-None-Match`` with the
  ETag (and ``If-Modified-Since`` with the Last-Modified) of a first response of each server,
  as Chromium sends them; the answer must be 304. A server that gives neither validator cannot
  be revalidated and is listed as such;
* ``hello``: asgiserve running the hello app of ``apps.py``, the rate the 304 is compared with.

Before it is measured, every server must answer its test right: the exact file bytes with 200
(for the browser headers in the identity coding: the file is random bytes, so no
``Content-Encoding`` but ``identity``), or 304 with no body.

Only ratios within one run mean anything: the machine is shared.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime as _dt
import hashlib
import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import apps as bench_apps  # noqa: E402
import run as harness  # noqa: E402

HOST = harness.HOST
SECTION = "## Static files (`benchmarks/static.py`)"
#: The name of our section of the report (see run.py's write_section).
SECTION_NAME = "static.py"
#: The wrk script that adds request headers, one "Name: value" argument each.
HEADERS_LUA = HERE / "lua" / "headers.lua"

Header = tuple[str, str]

#: What Chromium (131, Linux) sends when one follows a link to a file from a page of the same
#: site, e.g. a folder listing: a navigation. The Cookie is what a site with analytics and a
#: session sets. The Referer (the page the link was on) is added per server by
#: ``browser_headers``, after Sec-Fetch-Dest as Chromium orders it.
BROWSER_HEADERS: tuple[Header, ...] = (
    ("Connection", "keep-alive"),
    ("sec-ch-ua", '"Chromium";v="131", "Not_A Brand";v="24"'),
    ("sec-ch-ua-mobile", "?0"),
    ("sec-ch-ua-platform", '"Linux"'),
    ("Upgrade-Insecure-Requests", "1"),
    (
        "User-Agent",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Safari/537.36",
    ),
    (
        "Accept",
        "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
        "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7",
    ),
    ("Sec-Fetch-Site", "same-origin"),
    ("Sec-Fetch-Mode", "navigate"),
    ("Sec-Fetch-User", "?1"),
    ("Sec-Fetch-Dest", "document"),
    ("Accept-Encoding", "gzip, deflate, br, zstd"),
    ("Accept-Language", "en-US,en;q=0.9"),
    (
        "Cookie",
        "_ga=GA1.1.1234567890.1733300000; _ga_Q4Z7X2R1B9=GS1.1.1733300000.1.1.1733300100.0.0.0; "
        "session=4f1d2c3b5a69788796a5b4c3d2e1f0a1; theme=dark",
    ),
)


def browser_headers(referer: str) -> list[Header]:
    """``BROWSER_HEADERS`` with ``Referer`` in Chromium's place (after Sec-Fetch-Dest)."""
    out = list(BROWSER_HEADERS)
    at = next(i for i, (name, _) in enumerate(out) if name == "Sec-Fetch-Dest") + 1
    out.insert(at, ("Referer", referer))
    return out


def request_bytes(path: str, host: str, headers: Sequence[Header]) -> bytes:
    """A GET of ``path`` with ``Host`` first and ``headers`` in their order."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", *(f"{n}: {v}" for n, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@dataclass(frozen=True)
class StaticTest:
    name: str
    file: str  # under the server's prefix ("" for the hello app)
    size: int  # of the file (of the body for hello)
    connections: int
    description: str
    #: The request headers: "none" (Host only, wrk's default) or "browser" (BROWSER_HEADERS).
    headers: str = "none"
    #: Conditional GET with the validators of a first response: 304 expected.
    revalidate: bool = False
    #: asgiserve's hello app instead of the folder (the rate the 304 is compared with).
    hello: bool = False
    #: Row label in the report.
    label: str = ""


FILE50K, SIZE50K = "file50k.bin", 50 * 1024
TESTS = {
    t.name: t
    for t in (
        StaticTest(
            "static50k-browser", FILE50K, SIZE50K, 64,
            "GET a 50 KiB file with a browser's request headers, 64 connections",
            headers="browser", label="what a browser sends",
        ),
        StaticTest(
            "static50k", FILE50K, SIZE50K, 64,
            "GET a 50 KiB file, no headers but Host (wrk's default), 64 connections",
            label="none (wrk's default)",
        ),
        StaticTest(
            "static50k-304", FILE50K, SIZE50K, 64,
            "revalidate the 50 KiB file: browser headers + If-None-Match/If-Modified-Since, 304",
            headers="browser", revalidate=True,
            label="304: browser headers + `If-None-Match` (revalidation)",
        ),
        StaticTest(
            "hello", "", len(bench_apps.HELLO_BODY), 64,
            "asgiserve with benchmarks/apps.py's hello app (no headers but Host), 64 connections",
            hello=True, label="hello world (`apps.py` hello app, same build)",
        ),
        StaticTest(
            "static20m", "file20m.bin", 20 * 1024 * 1024, 8, "GET a 20 MiB file, 8 connections"
        ),
    )
}  # fmt: skip
#: The tests of the 50 KiB file, in the order of the report's rows.
TABLE_TESTS = ("static50k-browser", "static50k", "static50k-304", "hello")


@dataclass(frozen=True)
class StaticServer:
    name: str
    command: Callable[[str, str, int], list[str]]  # (python, folder, port) -> argv
    check: list[str]  # modules that must import
    note: str
    #: Run from the mypyc-compiled copy of asgiserve (run.py's compiled_tree).
    compiled: bool = False
    #: Where the folder appears in the URL space.
    prefix: str = "/"
    #: (python, port) -> argv of the same server running apps.py's hello app; None: not asgiserve.
    hello_command: Callable[[str, int], list[str]] | None = None


_ASGISERVE_OPTIONS = [
    "--no-access-log", "--log-level", "warning", "--loop", "uvloop", "--http", "httptools",
]  # fmt: skip


def _asgiserve(py: str, folder: str, port: int) -> list[str]:
    return [py, "-m", "asgiserve", "--static", folder, *_address(port), *_ASGISERVE_OPTIONS]


def _asgiserve_hello(py: str, port: int) -> list[str]:
    # As run.py runs asgiserve for its hello test.
    return [py, "-m", "asgiserve", "benchmarks.apps:hello", *_address(port), *_ASGISERVE_OPTIONS]


def _address(port: int) -> list[str]:
    return ["--host", HOST, "--port", str(port)]


def _http_server(py: str, folder: str, port: int) -> list[str]:
    return [py, "-m", "http.server", str(port), "--bind", HOST, "--directory", folder]


def _uvicorn(app: str) -> Callable[[str, str, int], list[str]]:
    def build(py: str, folder: str, port: int) -> list[str]:
        return [
            py, "-m", "uvicorn", f"benchmarks.static_apps:{app}", "--host", HOST,
            "--port", str(port), "--loop", "uvloop", "--http", "httptools",
            "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip

    return build


def _granian(py: str, folder: str, port: int) -> list[str]:
    # As run.py runs granian (1 worker, 1 runtime thread, HTTP/1), with the folder on its
    # static route: Rust serves /static/* without calling the (hello) app.
    return [
        py, "-m", "granian", "--interface", "asgi", "--host", HOST, "--port", str(port),
        "--workers", "1", "--runtime-threads", "1", "--loop", "uvloop", "--http", "1",
        "--no-access-log", "--log-level", "warning",
        "--static-path-route", "/static", "--static-path-mount", folder,
        "benchmarks.apps:hello",
    ]  # fmt: skip


SERVERS = {
    s.name: s
    for s in (
        StaticServer(
            "asgiserve",
            _asgiserve,
            ["asgiserve", "uvloop", "httptools"],
            "`asgiserve --static DIR`, uvloop + httptools (zerocopysend: sendfile(2))",
            hello_command=_asgiserve_hello,
        ),
        StaticServer(
            "asgiserve-compiled",
            _asgiserve,
            ["asgiserve", "uvloop", "httptools"],
            "`asgiserve --static DIR` as above, hot modules compiled with mypyc "
            "(ASGISERVE_COMPILE=1, built as run.py builds it)",
            compiled=True,
            hello_command=_asgiserve_hello,
        ),
        StaticServer(
            "http.server",
            _http_server,
            [],
            "`python -m http.server` (threads; it logs every request to stderr)",
        ),
        StaticServer(
            "uvicorn+starlette",
            _uvicorn("starlette"),
            ["uvicorn", "starlette", "uvloop", "httptools"],
            "Starlette's `StaticFiles` on uvicorn, uvloop + httptools",
        ),
        StaticServer(
            "granian",
            _granian,
            ["granian"],
            "granian's static route (`--static-path-route /static --static-path-mount DIR`: "
            "served in Rust, the app is not called), 1 worker, 1 runtime thread, HTTP/1",
            prefix="/static/",
        ),
        StaticServer(
            "uvicorn+asgiserve-app",
            _uvicorn("asgiserve_app"),
            ["uvicorn", "asgiserve", "uvloop", "httptools"],
            "asgiserve's `StaticFiles` app on uvicorn (no file extension offered: reads in a "
            "thread)",
        ),
    )
}
BASELINES = ("http.server", "granian")


class Unfit(Exception):
    """The server answered, and its answer rules it out of the test (no use waiting)."""


class Running:
    """One server process for one test."""

    def __init__(self, spec: StaticServer, test: StaticTest, args: argparse.Namespace) -> None:
        self.spec = spec
        self.test = test
        self.port = harness.free_port()
        self.python = args.python
        if test.hello:
            assert spec.hello_command is not None
            self.argv = spec.hello_command(args.python, self.port)
        else:
            self.argv = spec.command(args.python, args.folder, self.port)
        self.log_path = Path(args.logdir) / f"{test.name}-{spec.name}.log"
        self.proc: subprocess.Popen[Any] | None = None
        self.pids: list[int] = []
        self.error: str | None = None
        self.cpu = args.server_cpu
        #: The validators a revalidation sends (request header names), found by the check.
        self.validators: list[str] = []
        #: The request headers of the test, after Host (the validators added by the check).
        self.headers: list[Header] = []
        if test.headers == "browser":
            self.headers = browser_headers(f"http://{HOST}:{self.port}{spec.prefix}")

    @property
    def path(self) -> str:
        return "/" if self.test.hello else self.spec.prefix + self.test.file

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}{self.path}"

    def start(self, folder: str) -> None:
        env = dict(os.environ)
        paths, cwd = [str(ROOT), env.get("PYTHONPATH")], ROOT
        if self.spec.compiled:
            cwd = harness.compiled_tree(self.python)
            paths.insert(0, str(cwd))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
        env["PYTHONUNBUFFERED"] = "1"
        env["STATIC_BENCH_DIR"] = folder
        with open(self.log_path, "wb") as log:
            self.proc = harness.spawn(
                ["taskset", "-c", str(self.cpu), *self.argv],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float, digest: str) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.error = f"exited with {self.proc.returncode}"
                return False
            try:
                problem = check(self, digest)
            except Unfit as exc:
                self.error = str(exc)
                return False
            if problem is None:
                time.sleep(0.2)
                self.pids = harness.proc_tree(self.proc.pid)
                return True
            last = problem
            time.sleep(0.2)
        self.error = f"not ready in {timeout:.0f}s: {last}"
        return False

    def stop(self) -> None:
        if self.proc is not None:
            harness._kill_group(self.proc)


def fetch(
    port: int, path: str, headers: Sequence[Header], timeout: float = 10.0
) -> tuple[int, dict[bytes, bytes], bytes]:
    """One GET on a fresh connection: (status, headers with lower-case names, body)."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(request_bytes(path, f"{HOST}:{port}", headers))
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise harness.HTTPCheckError("connection closed by server")
            buf += chunk
        if buf.split(None, 2)[1:2] == [b"304"]:
            # No body, whatever Content-Length says (RFC 9110 section 15.4.5), which
            # run.py's reader (for 200s) would wait for.
            head = buf.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
            parts = (line.partition(b":") for line in head)
            return 304, {n.strip().lower(): v.strip() for n, _, v in parts}, b""
        status, fields, body, _ = harness.read_response(sock, buf)
        return status, fields, body


def check(server: Running, digest: str) -> str | None:
    """None when the server answers its test right: the file's exact bytes with 200 in the
    identity coding (or the hello body), or, for a revalidation, 304 with no body to a
    conditional request made with the validators of a first response (which it then keeps in
    ``server.headers`` for wrk). Unfit when it answered, but can never pass."""
    test = server.test
    try:
        status, fields, body = fetch(server.port, server.path, server.headers)
        if test.hello:
            return None if (status, body) == (200, bench_apps.HELLO_BODY) else f"status {status}"
        if status != 200:
            return f"status {status}"
        coding = fields.get(b"content-encoding", b"identity").strip().lower()
        if coding != b"identity":
            raise Unfit(f"Content-Encoding {coding.decode(errors='replace')}, not the file")
        size = len(body)
        if size != test.size or hashlib.sha256(body).hexdigest() != digest:
            return f"wrong body ({size} bytes)"
        if not test.revalidate:
            return None
        # Chromium sends both validators it was given; If-None-Match takes precedence
        # (RFC 9110 section 13.2.2).
        validators = [
            (name, fields[key].decode("latin-1"))
            for key, name in ((b"etag", "If-None-Match"), (b"last-modified", "If-Modified-Since"))
            if key in fields
        ]
        if not validators:
            raise Unfit("no ETag and no Last-Modified: nothing to revalidate with")
        conditional = [*server.headers, *validators]
        status, _, body = fetch(server.port, server.path, conditional)
    except (OSError, harness.HTTPCheckError, ValueError) as exc:
        return repr(exc)
    if status != 304 or body:
        raise Unfit(f"revalidation with {', '.join(n for n, _ in validators)} gave {status}")
    server.headers = conditional
    server.validators = [name for name, _ in validators]
    return None


def wrk_argv(args: argparse.Namespace, server: Running, duration: int) -> list[str]:
    argv = [
        "taskset", "-c", str(args.load_cpu), args.wrk, "-t1", f"-c{server.test.connections}",
        f"-d{duration}s", "--timeout", "10s",
    ]  # fmt: skip
    if server.headers:
        return [*argv, "-s", str(HEADERS_LUA), server.url, "--", *map(": ".join, server.headers)]
    return [*argv, server.url]


def run_load(
    args: argparse.Namespace, server: Running, duration: int, everyone: list[Running]
) -> dict[str, Any]:
    argv = wrk_argv(args, server, duration)
    harness.wait_quiet(everyone)  # type: ignore[arg-type]  # needs only .pids
    quiet = harness.wait_quiet_machine(args, everyone) if args.quiet_wait > 0 else 0.0  # type: ignore[arg-type]
    pids = harness.proc_tree(server.proc.pid) if server.proc else server.pids
    other_pids = [p for o in everyone if o is not server for p in o.pids]
    busy0, cpu0, t0 = harness.cpu_busy(), harness.cpu_seconds(pids), time.monotonic()
    other0 = harness.cpu_seconds(other_pids)
    proc = harness.spawn(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    try:
        rc, load_cpu = harness.wait_with_rusage(proc, duration + 30.0)
        out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    finally:
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
    wall = time.monotonic() - t0
    busy1, cpu1 = harness.cpu_busy(), harness.cpu_seconds(pids)
    other1 = harness.cpu_seconds(other_pids)
    server_core, load_core = f"cpu{args.server_cpu}", f"cpu{args.load_cpu}"
    res = harness.parse_wrk(out)
    res.update(
        argv=argv,
        returncode=rc,
        wall=wall,
        quiet_wait_s=quiet,
        server_cpu_pct=100.0 * (cpu1 - cpu0) / wall,
        loadgen_cpu_pct=100.0 * load_cpu / wall,
        # CPU time on our two cores used by processes that are not ours (as in run.py).
        foreign_server_cpu_pct=max(
            0.0,
            100.0
            * (busy1[server_core] - busy0[server_core] - (cpu1 - cpu0) - (other1 - other0))
            / wall,
        ),
        foreign_load_cpu_pct=max(
            0.0, 100.0 * (busy1[load_core] - busy0[load_core] - load_cpu) / wall
        ),
        output=out,
    )
    if res.get("rate") is not None:
        res["mib_per_sec"] = res["rate"] * body_bytes(server.test) / (1024 * 1024)
    return res


def run_test(
    test: StaticTest, specs: list[StaticServer], args: argparse.Namespace, data: dict[str, Any]
) -> None:
    file = Path(args.folder) / test.file
    digest = "" if test.hello else hashlib.sha256(file.read_bytes()).hexdigest()
    if test.hello:  # only asgiserve's builds: the 304 of each is compared with its hello
        specs = [spec for spec in specs if spec.hello_command is not None]
    servers = [Running(spec, test, args) for spec in specs]
    for server in servers:
        server.start(args.folder)
    ready = []
    try:
        for server in servers:
            if server.wait_ready(args.start_timeout, digest):
                ready.append(server)
                if server.validators:
                    data["validators"][server.spec.name] = server.validators
            else:
                print(f"  ! {server.spec.name}: {server.error}")
                data["failures"].append(
                    {"server": server.spec.name, "test": test.name, "error": server.error}
                )
                server.stop()
        for server in ready if args.warmup > 0 else []:
            res = run_load(args, server, args.warmup, ready)
            print(f"  warm-up {server.spec.name:22} {harness._fmt_rate(res.get('rate')):>9} req/s")
        for rep in range(args.repeats):
            k = rep % len(ready) if ready else 0
            for server in ready[k:] + ready[:k]:
                for attempt in range(args.retries + 1):
                    res = run_load(args, server, args.duration, ready)
                    res.update(server=server.spec.name, test=test.name, repeat=rep)
                    foreign = max(res["foreign_server_cpu_pct"], res["foreign_load_cpu_pct"])
                    if foreign <= args.max_foreign:
                        break
                    if attempt == args.retries:
                        res["disturbed"] = True  # kept, marked in the report
                        break
                    res["discarded"] = f"foreign load {foreign:.0f}% of a CPU"
                    data["discarded"].append(res)
                    print(f"  {server.spec.name:22} disturbed (foreign load {foreign:.0f}%): again")
                    time.sleep(3)
                data["runs"].append(res)
                errors = f"  ERRORS {res['errors']}" if res.get("errors") else ""
                if res.get("disturbed"):
                    errors += "  DISTURBED"
                print(
                    f"  [{rep + 1}/{args.repeats}] {server.spec.name:22} "
                    f"{harness._fmt_rate(res.get('rate')):>9} req/s "
                    f"{res.get('mib_per_sec') or 0:8.0f} MiB/s  srv {res['server_cpu_pct']:3.0f}% "
                    f"cpu, wrk {res['loadgen_cpu_pct']:3.0f}% cpu{errors}"
                )
    finally:
        for server in servers:
            server.stop()


def body_bytes(test: StaticTest) -> int:
    """File bytes in each response (none in a 304, and hello is not a file)."""
    return 0 if test.revalidate or test.hello else test.size


def summarise(data: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for run in data["runs"]:
        entry = out.setdefault((run["server"], run["test"]), {"rates": [], "runs": []})
        entry["runs"].append(run)
        if run.get("rate"):
            entry["rates"].append(run["rate"])
    for (_server, test), entry in out.items():
        rates = entry["rates"]
        entry["rate"] = statistics.median(rates) if rates else None
        entry["mib"] = None if not rates else entry["rate"] * body_bytes(TESTS[test]) / 1048576
        entry["spread"] = (max(rates) - min(rates)) / entry["rate"] if len(rates) > 1 else 0.0
        entry["server_cpu"] = statistics.median(r["server_cpu_pct"] for r in entry["runs"])
        entry["load_cpu"] = statistics.median(r["loadgen_cpu_pct"] for r in entry["runs"])
        entry["errors"] = [r["errors"] for r in entry["runs"] if r.get("errors")]
        entry["disturbed"] = any(r.get("disturbed") for r in entry["runs"])
        entry["foreign"] = max(
            max(r["foreign_server_cpu_pct"], r["foreign_load_cpu_pct"]) for r in entry["runs"]
        )
    return out


def _ratio(mine: float | None, theirs: float | None, bold: bool = True) -> str:
    if not mine or not theirs:
        return "-"
    return f"**{mine / theirs:.2f}x**" if bold else f"{mine / theirs:.2f}x"


def _goal(what: str, mine: float | None, theirs: float | None, goal: float) -> str | None:
    if not mine or not theirs:
        return None
    ratio = mine / theirs
    verdict = "met" if ratio >= goal else f"missed by {100 * (1 - ratio / goal):.0f}%"
    return f"* {what}: **{ratio:.2f}x** (goal {goal:g}x: {verdict})"


def render(data: dict[str, Any]) -> str:
    meta = data["meta"]
    summary = summarise(data)
    servers = meta["servers"]
    tests = meta["tests"]
    failed = {(f["server"], f["test"]) for f in data["failures"]}

    def rate(server: str, test: str) -> float | None:
        entry = summary.get((server, test))
        return None if entry is None else entry["rate"]

    def cell(server: str, test: str) -> str:
        entry = summary.get((server, test))
        if entry is None or entry["rate"] is None:
            return "n/a (below)" if (server, test) in failed else "-"
        text = f"{entry['rate']:,.0f}"
        text += (" (!)" if entry["errors"] else "") + (" (~)" if entry["disturbed"] else "")
        if SERVERS[server].hello_command is None:
            return text
        if TESTS[test].revalidate:
            return f"{text} ({_ratio(entry['rate'], rate(server, 'hello'))} hello)"
        if TESTS[test].hello:
            return text
        return (
            text + " (" + " / ".join(_ratio(entry["rate"], rate(b, test)) for b in BASELINES) + ")"
        )

    lines = [
        SECTION,
        "",
        f"Generated by `{meta['command']}` on {meta['date']} "
        f"({'quick run' if meta['quick'] else 'full run'}; raw data: `{meta['raw_json_rel']}`, "
        "git-ignored). Same method as above: server on CPU 0, wrk on CPU 1, "
        f"{meta['duration']} s runs after a {meta['warmup']} s warm-up, {meta['repeats']} "
        "repeats interleaved, median kept. Random (incompressible) files. Only the ratios "
        "within this run mean anything.",
    ]
    rows = [t for t in TABLE_TESTS if t in tests]
    if rows:
        lines += [
            "",
            "Requests per second, 50 KiB file, 64 connections. In asgiserve's cells: "
            f"(x `{BASELINES[0]}` / x `{BASELINES[1]}`) in the same run, and for the 304 the "
            "ratio to the hello-world rate of the same build.",
            "",
            "| request headers | " + " | ".join(f"`{s}`" for s in servers) + " |",
            "|---|" + "---:|" * len(servers),
        ]
        for test in rows:
            lines.append(
                f"| {TESTS[test].label} | " + " | ".join(cell(s, test) for s in servers) + " |"
            )
    goals = [
        _goal(
            f"browser headers, pure build vs `{base}`",
            rate("asgiserve", "static50k-browser"),
            rate(base, "static50k-browser"),
            goal,
        )
        for base, goal in (("http.server", 10.0), ("granian", 1.0))
    ]
    goals.append(
        _goal(
            "304 revalidation, pure build vs its hello-world rate",
            rate("asgiserve", "static50k-304"),
            rate("asgiserve", "hello"),
            1.0,
        )
    )
    if any(goals):
        lines += ["", "Goals of issue 17 (same run):", ""]
        lines += [g for g in goals if g]
    if "static20m" in tests:
        lines += [
            "",
            "20 MiB file, 8 connections, no headers but Host:",
            "",
            "| server | req/s | MiB/s | vs `http.server` | vs `granian` |",
            "|---|---:|---:|---:|---:|",
        ]
        for server in servers:
            entry = summary.get((server, "static20m"))
            if entry is not None and entry["rate"] is not None:
                ours = SERVERS[server].hello_command is not None
                ratios = [_ratio(entry["rate"], rate(b, "static20m"), ours) for b in BASELINES]
                lines.append(
                    f"| `{server}` | {entry['rate']:,.0f} | {entry['mib']:,.0f} | "
                    + " | ".join(ratios)
                    + " |"
                )
        ours_large = summary.get(("asgiserve", "static20m"))
        if ours_large is not None and ours_large["load_cpu"] > 90:
            lines += [
                "",
                "On the 20 MiB file wrk itself is the limit (its core is busy): compare the "
                "servers' CPU below, at about the same throughput.",
            ]
    lines += [
        "",
        "Sanity (medians): CPU of the server (its core) and of wrk; spread = (max - min) / "
        "median over the repeats; foreign = the most CPU other processes took on either core "
        f"during a kept run (runs above {meta['max_foreign']:.0f}% were redone; `(~)`: still "
        "disturbed; `(!)`: socket errors or error statuses).",
        "",
        "| server | test | server CPU | wrk CPU | spread | foreign |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for server in servers:
        for test in tests:
            entry = summary.get((server, test))
            if entry is not None:
                lines.append(
                    f"| `{server}` | {test} | {entry['server_cpu']:.0f}% | "
                    f"{entry['load_cpu']:.0f}% | {100 * entry['spread']:.0f}% | "
                    f"{entry['foreign']:.0f}% |"
                )
    if any(TESTS[t].headers == "browser" for t in tests):
        example = request_bytes(
            f"/{FILE50K}", f"{HOST}:PORT", browser_headers(f"http://{HOST}:PORT/")
        )
        lines += [
            "",
            "What a browser sends (Chromium 131 following a link from a page of the same "
            "site; wrk's Lua scripts send the headers in an order of their own):",
            "",
            "```http",
            *example.decode("latin-1").rstrip("\r\n").split("\r\n"),
            "```",
        ]
    if data["validators"]:
        lines += [
            "",
            "The 304 test adds the validators of each server's first response, as Chromium "
            "does: "
            + "; ".join(f"`{s}`: {', '.join(v)}" for s, v in data["validators"].items())
            + ".",
        ]
    lines += ["", "Servers:", ""]
    for server in servers:
        info = meta["server_info"][server]
        lines.append(f"* `{server}`: {info['note']}; `{info['command']}`")
    versions = meta.get("versions", {})
    wanted = (
        "python", "asgiserve", "asgiserve build", "asgiserve-compiled build", "uvicorn", "starlette", "granian", "uvloop",
        "httptools", "wrk",
    )  # fmt: skip
    lines += ["", "Versions: " + ", ".join(f"{k} {versions[k]}" for k in wanted if k in versions)]
    if data["failures"] or data["skipped"]:
        lines += ["", "Skipped or failed:", ""]
        lines += [f"* `{name}`: {why}" for name, why in data["skipped"].items()]
        lines += [f"* `{f['server']}` ({f['test']}): {f['error']}" for f in data["failures"]]
    return "\n".join(lines) + "\n"


def compiled_build(python: str) -> tuple[str | None, str]:
    """(None, its build description) when run.py's compiled copy of asgiserve builds and
    really runs compiled, else (the problem, "")."""
    try:
        tree = harness.compiled_tree(python)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        return f"compiled build: {exc}", ""
    paths = [str(tree), str(ROOT), os.environ.get("PYTHONPATH")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, paths)))
    proc = subprocess.run(
        [python, "-c", harness._REQUIRE_COMPILED],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return "not compiled: " + (proc.stdout + proc.stderr).strip()[-200:], ""
    return None, proc.stdout.strip()


def make_files(folder: Path) -> None:
    files = {test.file: test.size for test in TESTS.values() if not test.hello}
    for name, size in files.items():
        with open(folder / name, "wb") as file:
            remaining = size
            while remaining:
                chunk = os.urandom(min(remaining, 1 << 20))
                file.write(chunk)
                remaining -= len(chunk)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Static-file benchmark (see the module docstring).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 1 s runs, no warm-up, 1 repeat")
    p.add_argument("--servers", default=",".join(SERVERS))
    p.add_argument("--tests", default=",".join(TESTS))
    p.add_argument("--duration", type=int, default=None, help="seconds per run [10; quick 1]")
    p.add_argument("--warmup", type=int, default=None, help="warm-up seconds [2; quick 0]")
    p.add_argument("--repeats", type=int, default=None, help="interleaved repeats [3; quick 1]")
    p.add_argument("--python", default=sys.executable, help="interpreter that runs the servers")
    p.add_argument("--wrk", default=shutil.which("wrk") or "wrk")
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--load-cpu", type=int, default=1)
    p.add_argument("--start-timeout", type=float, default=20.0)
    p.add_argument(
        "--max-foreign",
        type=float,
        default=10.0,
        help="redo a run when other processes used more than this %% of either core",
    )
    p.add_argument(
        "--retries", type=int, default=None, help="redos of a disturbed run [2; quick 0]"
    )
    p.add_argument(
        "--disturbance-budget",
        type=float,
        default=None,
        help="seconds the session may spend waiting for quiet cores [900; quick 0]",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=None,
        help="before each run, wait up to this long for the cores to be quiet [15; quick 0]",
    )
    p.add_argument(
        "--report",
        type=Path,
        default=None,
        help="markdown report [benchmarks/RESULTS.md, our section only; quick: under results/]",
    )
    p.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="re-render the report from a run's raw JSON (results/static-*.json), run nothing",
    )
    args = p.parse_args(argv)
    args.duration = args.duration or (1 if args.quick else 10)
    args.warmup = (0 if args.quick else 2) if args.warmup is None else args.warmup
    args.repeats = args.repeats or (1 if args.quick else 3)
    if args.retries is None:
        args.retries = 0 if args.quick else 2
    if args.quiet_wait is None:
        args.quiet_wait = 0.0 if args.quick else 15.0
    if args.disturbance_budget is None:
        args.disturbance_budget = 0.0 if args.quick else 900.0
    args.budget_left = args.disturbance_budget  # spent by run.py's wait_quiet_machine
    return args


def rerender(source: Path, report: Path | None) -> int:
    data = json.loads(source.read_text())
    data.setdefault("validators", {})
    if report is None:
        report = source.with_suffix(".md") if data["meta"]["quick"] else HERE / "RESULTS.md"
    section = render(data)
    print(section)
    harness.write_section(report, SECTION_NAME, section)
    print(f"report: {report}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json is not None:
        return rerender(args.from_json, args.report)
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
    if max(args.server_cpu, args.load_cpu) >= (os.cpu_count() or 1):
        print("need at least 2 CPUs (one for the server, one for the load generator)")
        return 2
    signal.signal(signal.SIGTERM, harness._on_sigterm)
    atexit.register(harness.kill_all)
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {args.load_cpu})

    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    harness.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    logdir = harness.RESULTS_DIR / f"static-{stamp}-logs"
    logdir.mkdir(parents=True, exist_ok=True)
    args.logdir = str(logdir)
    raw = harness.RESULTS_DIR / f"static-{stamp}{'-quick' if args.quick else ''}.json"
    report = args.report or (
        harness.RESULTS_DIR / f"static-{stamp}-quick.md" if args.quick else HERE / "RESULTS.md"
    )
    folder = Path(tempfile.mkdtemp(prefix="asgiserve-static-bench-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    args.folder = str(folder)
    make_files(folder)

    specs, skipped, compiled = [], {}, ""
    for name in args.servers.split(","):
        spec = SERVERS[name]
        if spec.check:
            proc = subprocess.run(
                [args.python, "-c", "import " + ", ".join(spec.check)],
                cwd=ROOT,
                capture_output=True,
                check=False,
            )
            if proc.returncode != 0:
                skipped[name] = f"cannot import {', '.join(spec.check)}"
                print(f"  skip {name}: {skipped[name]}")
                continue
        if spec.compiled:
            problem, compiled = compiled_build(args.python)
            if problem is not None:
                skipped[name] = problem
                print(f"  skip {name}: {problem}")
                continue
        specs.append(spec)
    versions = harness.collect_versions(args.python, args.wrk)
    if compiled:
        versions["asgiserve-compiled build"] = compiled
    with contextlib.suppress(Exception):
        import importlib.metadata as metadata

        for package in ("starlette", "granian"):
            with contextlib.suppress(metadata.PackageNotFoundError):
                versions[package] = metadata.version(package)
    data: dict[str, Any] = {
        "meta": {
            "date": _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds"),
            "command": shlex.join(
                ["python", "benchmarks/static.py", *(argv if argv is not None else sys.argv[1:])]
            ),
            "quick": args.quick,
            "duration": args.duration,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "max_foreign": args.max_foreign,
            "servers": [s.name for s in specs],
            "tests": args.tests.split(","),
            "machine": harness.machine_info(),
            "versions": versions,
            "raw_json_rel": str(raw.relative_to(ROOT)),
            "server_info": {
                s.name: {
                    "note": s.note,
                    "command": shlex.join(s.command("python", "DIR", 65535)).replace(
                        "65535", "PORT"
                    ),
                }
                for s in specs
            },
        },
        "skipped": skipped,
        "failures": [],
        "validators": {},
        "runs": [],
        "discarded": [],
    }
    print(f"static benchmark {stamp}: {args.duration}s x {args.repeats}, warm-up {args.warmup}s")
    try:
        for name in data["meta"]["tests"]:
            test = TESTS[name]
            print(f"\n== {name}: {test.description}")
            run_test(test, specs, args, data)
            raw.write_text(json.dumps(data, indent=1, default=str))
    except KeyboardInterrupt:
        print("interrupted")
        return 130
    finally:
        harness.kill_all()
    section = render(data)
    print("\n" + section)
    harness.write_section(report, SECTION_NAME, section)
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
