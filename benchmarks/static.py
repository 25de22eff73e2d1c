#!/usr/bin/env python
"""Static files: ``asgiserve --static`` against ``python -m http.server`` and Starlette's
``StaticFiles`` on uvicorn (uvloop + httptools), in the same run.

    python benchmarks/static.py           # full run (~6 min): the "Static files" section of RESULTS.md
    python benchmarks/static.py --quick   # smoke run (~20 s), report under benchmarks/results/

Same conventions as ``run.py`` (whose process, CPU and wrk helpers it uses): each server on
127.0.0.1 pinned to CPU 0 (``taskset -c 0``), wrk and this script on CPU 1; for each test all
servers are started and checked (the exact file bytes must come back), each gets a warm-up run,
then ``--repeats`` rounds go round-robin over the servers (the start rotating) and the median is
kept. The files are random bytes (incompressible) in a temporary folder: ``file50k.bin``
(51,200 bytes) and ``file20m.bin`` (20 MiB). MiB/s is the file bytes served (req/s x size).

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import run as harness  # noqa: E402

HOST = harness.HOST
SECTION = "## Static files (`benchmarks/static.py`)"
#: The name of our section of the report (see run.py's write_section).
SECTION_NAME = "static.py"


@dataclass(frozen=True)
class StaticTest:
    name: str
    file: str
    size: int
    connections: int
    description: str


TESTS = {
    t.name: t
    for t in (
        StaticTest("static50k", "file50k.bin", 50 * 1024, 64, "GET a 50 KiB file, 64 connections"),
        StaticTest(
            "static20m", "file20m.bin", 20 * 1024 * 1024, 8, "GET a 20 MiB file, 8 connections"
        ),
    )
}


@dataclass(frozen=True)
class StaticServer:
    name: str
    command: Callable[[str, str, int], list[str]]  # (python, folder, port) -> argv
    check: list[str]  # modules that must import
    note: str
    #: Run from the mypyc-compiled copy of asgiserve (run.py's compiled_tree).
    compiled: bool = False


def _asgiserve(py: str, folder: str, port: int) -> list[str]:
    return [
        py, "-m", "asgiserve", "--static", folder, "--host", HOST, "--port", str(port),
        "--no-access-log", "--log-level", "warning", "--loop", "uvloop", "--http", "httptools",
    ]  # fmt: skip


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


SERVERS = {
    s.name: s
    for s in (
        StaticServer(
            "asgiserve",
            _asgiserve,
            ["asgiserve", "uvloop", "httptools"],
            "`asgiserve --static DIR`, uvloop + httptools (zerocopysend: sendfile(2))",
        ),
        StaticServer(
            "asgiserve-compiled",
            _asgiserve,
            ["asgiserve", "uvloop", "httptools"],
            "`asgiserve --static DIR` as above, hot modules compiled with mypyc "
            "(ASGISERVE_COMPILE=1)",
            compiled=True,
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
            "uvicorn+asgiserve-app",
            _uvicorn("asgiserve_app"),
            ["uvicorn", "asgiserve", "uvloop", "httptools"],
            "asgiserve's `StaticFiles` app on uvicorn (no file extension offered: reads in a "
            "thread)",
        ),
    )
}
BASELINES = ("http.server", "uvicorn+starlette")


class Running:
    """One server process for one test."""

    def __init__(self, spec: StaticServer, test: StaticTest, args: argparse.Namespace) -> None:
        self.spec = spec
        self.test = test
        self.port = harness.free_port()
        self.python = args.python
        self.argv = spec.command(args.python, args.folder, self.port)
        self.log_path = Path(args.logdir) / f"{test.name}-{spec.name}.log"
        self.proc: subprocess.Popen[Any] | None = None
        self.pids: list[int] = []
        self.error: str | None = None
        self.cpu = args.server_cpu

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
            problem = check(self.port, self.test, digest)
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


def check(port: int, test: StaticTest, digest: str, timeout: float = 10.0) -> str | None:
    """None when the server returns the file's exact bytes with 200."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(f"GET /{test.file} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
            status, _, body, _ = harness.read_response(sock)
    except (OSError, harness.HTTPCheckError, ValueError) as exc:
        return repr(exc)
    if status != 200:
        return f"status {status}"
    if len(body) != test.size or hashlib.sha256(body).hexdigest() != digest:
        return f"wrong body ({len(body)} bytes)"
    return None


def wrk_argv(args: argparse.Namespace, test: StaticTest, port: int, duration: int) -> list[str]:
    return [
        "taskset", "-c", str(args.load_cpu), args.wrk, "-t1", f"-c{test.connections}",
        f"-d{duration}s", "--timeout", "10s", f"http://{HOST}:{port}/{test.file}",
    ]  # fmt: skip


def run_load(
    args: argparse.Namespace, server: Running, duration: int, everyone: list[Running]
) -> dict[str, Any]:
    argv = wrk_argv(args, server.test, server.port, duration)
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
        res["mib_per_sec"] = res["rate"] * server.test.size / (1024 * 1024)
    return res


def run_test(
    test: StaticTest, specs: list[StaticServer], args: argparse.Namespace, data: dict[str, Any]
) -> None:
    digest = hashlib.sha256((Path(args.folder) / test.file).read_bytes()).hexdigest()
    servers = [Running(spec, test, args) for spec in specs]
    for server in servers:
        server.start(args.folder)
    ready = []
    try:
        for server in servers:
            if server.wait_ready(args.start_timeout, digest):
                ready.append(server)
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
        entry["mib"] = None if not rates else entry["rate"] * TESTS[test].size / (1024 * 1024)
        entry["spread"] = (max(rates) - min(rates)) / entry["rate"] if len(rates) > 1 else 0.0
        entry["server_cpu"] = statistics.median(r["server_cpu_pct"] for r in entry["runs"])
        entry["load_cpu"] = statistics.median(r["loadgen_cpu_pct"] for r in entry["runs"])
        entry["errors"] = [r["errors"] for r in entry["runs"] if r.get("errors")]
        entry["disturbed"] = any(r.get("disturbed") for r in entry["runs"])
        entry["foreign"] = max(
            max(r["foreign_server_cpu_pct"], r["foreign_load_cpu_pct"]) for r in entry["runs"]
        )
    return out


def render(data: dict[str, Any]) -> str:
    meta = data["meta"]
    summary = summarise(data)
    servers = [s for s in meta["servers"] if any((s, t) in summary for t in meta["tests"])]
    tests = meta["tests"]
    lines = [
        SECTION,
        "",
        f"Generated by `{meta['command']}` on {meta['date']} "
        f"({'quick run' if meta['quick'] else 'full run'}; raw data: `{meta['raw_json_rel']}`, "
        "git-ignored). Same method as above: server on CPU 0, wrk on CPU 1, "
        f"{meta['duration']} s runs after a {meta['warmup']} s warm-up, {meta['repeats']} "
        "repeats interleaved, median kept. Random (incompressible) files; MiB/s is file bytes "
        "served. Only the ratios within this run mean anything.",
        "",
        "| server | " + " | ".join(f"{t} req/s | {t} MiB/s" for t in tests) + " |",
        "|---|" + "---:|---:|" * len(tests),
    ]
    for server in servers:
        cells = []
        for test in tests:
            entry = summary.get((server, test))
            if entry is None or entry["rate"] is None:
                cells += ["-", "-"]
            else:
                mark = (" (!)" if entry["errors"] else "") + (" (~)" if entry["disturbed"] else "")
                cells += [f"{entry['rate']:,.0f}{mark}", f"{entry['mib']:,.0f}"]
        lines.append(f"| `{server}` | " + " | ".join(cells) + " |")
    ours = "asgiserve"
    lines += ["", "Ratios of `asgiserve --static` (same run):", ""]
    lines.append("| build | test | " + " | ".join(f"vs `{b}`" for b in BASELINES) + " |")
    lines.append("|---|---|" + "---:|" * len(BASELINES))
    for build in (ours, "asgiserve-compiled"):
        for test in tests:
            cells = []
            mine = summary.get((build, test), {}).get("rate")
            if mine is None:
                continue
            for base in BASELINES:
                theirs = summary.get((base, test), {}).get("rate")
                cells.append(f"**{mine / theirs:.1f}x**" if mine and theirs else "-")
            lines.append(f"| `{build}` | {test} | " + " | ".join(cells) + " |")
    ours_large = summary.get((ours, "static20m"))
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
        "disturbed).",
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
    lines += ["", "Servers:", ""]
    for server in servers:
        info = meta["server_info"][server]
        lines.append(f"* `{server}`: {info['note']}; `{info['command']}`")
    versions = meta.get("versions", {})
    wanted = ("python", "asgiserve", "uvicorn", "starlette", "uvloop", "httptools", "wrk")
    lines += ["", "Versions: " + ", ".join(f"{k} {versions[k]}" for k in wanted if k in versions)]
    if data["failures"] or data["skipped"]:
        lines += ["", "Skipped or failed:", ""]
        lines += [f"* `{name}`: {why}" for name, why in data["skipped"].items()]
        lines += [f"* `{f['server']}` ({f['test']}): {f['error']}" for f in data["failures"]]
    return "\n".join(lines) + "\n"


def make_files(folder: Path) -> None:
    for test in TESTS.values():
        path = folder / test.file
        with open(path, "wb") as file:
            remaining = test.size
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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

    specs, skipped = [], {}
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
        specs.append(spec)
    versions = harness.collect_versions(args.python, args.wrk)
    with contextlib.suppress(Exception):
        import importlib.metadata as metadata

        versions["starlette"] = metadata.version("starlette")
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
