"""HTTP/2 throughput: h2load against asgiserve, granian and hypercorn on the hello app.

Each server serves cleartext HTTP/2 with prior knowledge (h2c) on 127.0.0.1, pinned to CPU 0;
h2load runs on CPU 1 with 64 connections and 16 streams in flight per connection
(``-c 64 -m 16``), as in issue 9. All servers are started first and answer one request each
(checked: status 200 and the hello body, over h2c); each gets a warm-up run; then the repeats
run round-robin over the servers (the first server rotates each round), so that drift on a
shared machine hits every server alike. The median of the repeats is kept and the ratios are
taken within the run. Before each run the harness waits (bounded) until processes that are
not part of the run leave both CPUs nearly alone; a run during which they still used more than
10 % of either CPU is redone once, and marked ``(~)`` if it stays disturbed.

    python benchmarks/h2bench.py                 # 3 repeats of 5 s, writes RESULTS-h2.md
    python benchmarks/h2bench.py --quick         # 1 repeat of 2 s, report under results/
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata
import json
import os
import re
import resource
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from run import (  # noqa: E402
    _kill_group,
    cpu_busy,
    cpu_seconds,
    free_port,
    kill_all,
    proc_tree,
    spawn,
)

HOST = "127.0.0.1"
SERVER_CPU, LOAD_CPU = "0", "1"
FOREIGN_LIMIT = 10.0  # percent of a CPU


def server_argv(name: str, port: int, python: str) -> list[str]:
    if name == "asgiserve":
        return [
            python, "-m", "asgiserve", "benchmarks.apps:hello",
            "--host", HOST, "--port", str(port),
            "--loop", "uvloop", "--http", "httptools",
            "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
    if name == "granian":
        return [
            python, "-m", "granian", "--interface", "asgi",
            "--host", HOST, "--port", str(port),
            "--workers", "1", "--runtime-threads", "1", "--loop", "uvloop", "--http", "2",
            "--no-access-log", "--log-level", "warning",
            "benchmarks.apps:hello",
        ]  # fmt: skip
    if name == "hypercorn":
        return [
            python, "-m", "hypercorn", "benchmarks.apps:hello",
            "--bind", f"{HOST}:{port}", "--worker-class", "uvloop", "--workers", "0",
            "--log-level", "warning",
        ]  # fmt: skip
    raise ValueError(f"unknown server {name!r}")


def h2load_argv(port: int, args: argparse.Namespace, duration: int, warmup: int) -> list[str]:
    argv = ["taskset", "-c", LOAD_CPU, "h2load", "-c", str(args.connections)]
    argv += ["-m", str(args.streams), "-D", str(duration)]  # h2load takes whole seconds only
    if warmup:
        argv += ["--warm-up-time", str(warmup)]
    return [*argv, f"http://{HOST}:{port}/"]


class Server:
    def __init__(self, name: str, python: str) -> None:
        self.name = name
        self.port = free_port()
        self.argv = ["taskset", "-c", SERVER_CPU, *server_argv(name, self.port, python)]
        self.log = open(RESULTS / f"h2-{STAMP}-{name}.log", "w")  # noqa: SIM115
        self.proc = spawn(self.argv, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)

    def pids(self) -> list[int]:
        return proc_tree(self.proc.pid)

    def ready(self, timeout: float = 20.0) -> str | None:
        """None once the server answers one h2c GET with the hello body; else why not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return f"exited with {self.proc.returncode} (log: {self.log.name})"
            try:
                status, body = h2_get(self.port)
            except OSError:
                time.sleep(0.1)
                continue
            if status == 200 and body == b"Hello, world!":
                return None
            return f"answered {status} {body[:60]!r}"
        return "did not start listening"

    def stop(self) -> None:
        _kill_group(self.proc)
        self.log.close()


def h2_get(port: int) -> tuple[int, bytes]:
    """One GET over h2c with prior knowledge, with the ``h2`` package as the client."""
    import h2.config
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(
        1, [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", HOST)],
        end_stream=True,
    )  # fmt: skip
    status, body = 0, b""
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.sendall(conn.data_to_send())
        while True:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("closed before the response ended")
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                elif isinstance(event, h2.events.StreamEnded):
                    return status, body
            sock.sendall(conn.data_to_send())


_FINISHED = re.compile(r"finished in [\d.]+\w*, ([\d.]+) req/s")
_REQUESTS = re.compile(r"requests: \d+ total, \d+ started, (\d+) done, \d+ succeeded, (\d+) fail")
_STATUS = re.compile(r"status codes: \d+ 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")


def parse_h2load(out: str) -> float:
    """req/s from h2load's report; an error unless every request got a 2xx answer."""
    finished, counts, status = _FINISHED.search(out), _REQUESTS.search(out), _STATUS.search(out)
    if not (finished and counts and status):
        raise ValueError("no h2load summary")
    done, failed = (int(g) for g in counts.groups())
    not_2xx = sum(int(g) for g in status.groups())
    if not done or failed or not_2xx:
        raise ValueError(f"{done} done, {failed} failed, {not_2xx} answers not 2xx")
    return float(finished.group(1))


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(server: Server, args: argparse.Namespace, duration: int, warmup: int) -> dict[str, Any]:
    argv = h2load_argv(server.port, args, duration, warmup)
    pids = [pid for s in SERVERS for pid in s.pids()]
    busy0, cpu0, load0, t0 = cpu_busy(), cpu_seconds(pids), _children_cpu(), time.monotonic()
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=duration + warmup + 60, check=False
    )
    busy1, cpu1, load1, t1 = cpu_busy(), cpu_seconds(pids), _children_cpu(), time.monotonic()
    run: dict[str, Any] = {"server": server.name, "command": shlex.join(argv)}
    try:
        if proc.returncode != 0:
            raise ValueError(f"exit status {proc.returncode}")
        run["rps"] = parse_h2load(proc.stdout)
    except ValueError as exc:
        tail = (proc.stdout[-600:] + proc.stderr[-600:]).strip()
        run["error"] = f"h2load: {exc}: {tail}"
        return run
    wall = t1 - t0
    server_busy = busy1[f"cpu{SERVER_CPU}"] - busy0[f"cpu{SERVER_CPU}"]
    load_busy = busy1[f"cpu{LOAD_CPU}"] - busy0[f"cpu{LOAD_CPU}"]
    run["server_cpu_pct"] = round(100 * (cpu1 - cpu0) / wall, 1)
    run["h2load_cpu_pct"] = round(100 * (load1 - load0) / wall, 1)
    # What processes that are not part of the run took from each of the two CPUs.
    run["foreign_pct"] = round(
        100 * max(server_busy - (cpu1 - cpu0), load_busy - (load1 - load0), 0.0) / wall, 1
    )
    return run


def foreign_load(sample: float = 0.5) -> float:
    """Percent of the busier of our two CPUs used by processes that are not ours."""
    pids = [pid for s in SERVERS for pid in s.pids()]
    busy0, cpu0 = cpu_busy(), cpu_seconds(pids)
    time.sleep(sample)
    busy1, cpu1 = cpu_busy(), cpu_seconds(pids)
    server = busy1[f"cpu{SERVER_CPU}"] - busy0[f"cpu{SERVER_CPU}"] - (cpu1 - cpu0)
    load = busy1[f"cpu{LOAD_CPU}"] - busy0[f"cpu{LOAD_CPU}"]
    return 100 * max(server, load) / sample


def wait_quiet(args: argparse.Namespace) -> None:
    """Wait (at most --quiet-wait s per run, --budget s in all) until other processes leave
    both CPUs nearly alone."""
    start = time.monotonic()
    while args.budget > 0 and time.monotonic() - start < args.quiet_wait:
        if foreign_load() <= FOREIGN_LIMIT:
            break
    args.budget -= time.monotonic() - start


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for dist in ("asgiserve", "granian", "hypercorn", "h2", "hpack", "hyperframe", "uvloop"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    h2load = subprocess.run(["h2load", "--version"], capture_output=True, text=True, check=False)
    out["h2load"] = h2load.stdout.split("\n")[0].strip()
    return out


def report(args: argparse.Namespace, runs: list[dict[str, Any]], info: dict[str, Any]) -> str:
    names = args.names
    kept = [r for r in runs if not r.get("discarded")]
    medians: dict[str, float] = {}
    for name in names:
        values = [r["rps"] for r in kept if r["server"] == name and "rps" in r]
        if len(values) == args.repeats:
            medians[name] = statistics.median(values)
    # On a machine shared with other jobs a server gets only part of its CPU: requests per
    # CPU-second the server used is the steadier figure of the two.
    per_cpu = {
        name: statistics.median(
            100 * r["rps"] / r["server_cpu_pct"]
            for r in kept
            if r["server"] == name and "rps" in r and r["server_cpu_pct"] > 0
        )
        for name in medians
    }
    base, cpu_base = medians.get("asgiserve"), per_cpu.get("asgiserve")
    redone = len(runs) - len(kept)
    lines = [
        f"### HTTP/2 (h2c), hello app, `h2load -c {args.connections} -m {args.streams}`",
        "",
        f"Generated by `{info['command']}` on {info['started']} "
        f"({args.repeats} x {args.duration} s after a {args.warmup} s warm-up run per server, "
        "interleaved; medians). Server on CPU 0, h2load on CPU 1. "
        "Only the ratios within one run mean anything on this shared machine: "
        f"`(~)` marks a run during which other processes used more than {FOREIGN_LIMIT:g} % "
        f"of either CPU ({redone} disturbed runs were redone; all runs are in the raw JSON).",
        "",
        "| server | req/s (median) | runs (req/s, foreign CPU %) | asgiserve / server "
        "| req per server CPU-second (median) | asgiserve / server |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for name in names:
        cells = []
        for r in (r for r in kept if r["server"] == name):
            if "rps" not in r:
                cells.append("failed")
                continue
            mark = " (~)" if r["foreign_pct"] > FOREIGN_LIMIT else ""
            cells.append(f"{r['rps']:,.0f} ({r['foreign_pct']:.0f}){mark}")
        if name in medians:
            ratio = f"{base / medians[name]:.2f}x" if base else "-"
            cpu_ratio = f"{cpu_base / per_cpu[name]:.2f}x" if cpu_base else "-"
            lines.append(
                f"| `{name}` | {medians[name]:,.0f} | {'; '.join(cells)} | {ratio} "
                f"| {per_cpu[name]:,.0f} | {cpu_ratio} |"
            )
        else:
            lines.append(f"| `{name}` | failed | {'; '.join(cells)} | - | - | - |")
    lines += ["", "Targets (issue 9): asgiserve / granian >= 0.50x, asgiserve / hypercorn >= 10x."]
    errors = [f"- {r['server']}: {r['error'][:300]}" for r in runs if "error" in r]
    errors += [f"- {name}: {why}" for name, why in info["not_ready"].items()]
    if errors:
        lines += ["", "Failures:", "", *errors]
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()), ""]
    lines += ["Commands (the port varies per run):", "", "```"]
    lines += [" ".join(shlex.quote(a) for a in cmd) for cmd in info["servers"].values()]
    example = next((r["command"] for r in runs if "command" in r), "")
    lines += [example, "```", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat of 2 s, no warm-up")
    parser.add_argument("--duration", type=int, default=5, help="seconds per measured run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per server")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--servers", default="asgiserve,granian,hypercorn")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the servers")
    parser.add_argument("--quiet-wait", type=float, default=15.0, help="s to wait for quiet")
    parser.add_argument("--budget", type=float, default=300.0, help="s of waiting in all")
    parser.add_argument("--retries", type=int, default=1, help="redos of a disturbed run")
    parser.add_argument("--output", type=Path, default=HERE / "RESULTS-h2.md")
    parser.add_argument("--from-json", type=Path, help="re-render a raw JSON file, run nothing")
    args = parser.parse_args()
    if args.from_json:
        raw = json.loads(args.from_json.read_text())
        saved = argparse.Namespace(**{**raw["args"], "output": Path(raw["args"]["output"])})
        text = report(saved, raw["runs"], raw["info"])
        print(text)
        saved.output.write_text(text + kept_notes(saved.output))
        return 0
    if args.quick:
        args.duration, args.warmup, args.repeats, args.retries, args.budget = 2, 0, 1, 0, 0
        if args.output == HERE / "RESULTS-h2.md":
            args.output = RESULTS / f"h2-{STAMP}.md"
    if not shutil.which("h2load") or not shutil.which("taskset"):
        print("needs h2load (apt-get install nghttp2-client) and taskset")
        return 2
    args.names = [n for n in args.servers.split(",") if n]
    info: dict[str, Any] = {
        "command": shlex.join(["python", "benchmarks/h2bench.py", *sys.argv[1:]]),
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "not_ready": {},
        "servers": {},
    }
    runs: list[dict[str, Any]] = []
    servers: list[Server] = []
    try:
        for name in args.names:
            server = Server(name, args.python)
            info["servers"][name] = server.argv
            servers.append(server)
            SERVERS.append(server)
        live = []
        for server in servers:
            why = server.ready()
            if why is None:
                live.append(server)
            else:
                info["not_ready"][server.name] = why
                print(f"{server.name}: {why}")
        if args.warmup:
            for server in live:
                measure(server, args, args.warmup, 0)
        for repeat in range(args.repeats):
            shift = repeat % len(live) if live else 0
            for server in live[shift:] + live[:shift]:
                for attempt in range(args.retries + 1):
                    wait_quiet(args)
                    run = measure(server, args, args.duration, 0)
                    run["repeat"] = repeat + 1
                    runs.append(run)
                    print(
                        f"repeat {repeat + 1} {server.name}: {run.get('rps', run.get('error'))}"
                        f" (server CPU {run.get('server_cpu_pct', '-')} %, foreign "
                        f"{run.get('foreign_pct', '-')} %)",
                        flush=True,
                    )
                    if run.get("foreign_pct", 0) <= FOREIGN_LIMIT or args.budget <= 0:
                        break
                    if attempt < args.retries:
                        run["discarded"] = True  # disturbed: measured again
    except KeyboardInterrupt:
        print("interrupted")
        return 130
    finally:
        for server in servers:
            server.stop()
        kill_all()
    text = report(args, runs, info)
    (RESULTS / f"h2-{STAMP}.json").write_text(
        json.dumps({"info": info, "args": {**vars(args), "output": str(args.output)}, "runs": runs},
                   indent=2)
    )  # fmt: skip
    args.output.write_text(text + kept_notes(args.output))
    print(text)
    return 0


NOTES_MARKER = "<!-- notes: kept by h2bench.py -->"


def kept_notes(path: Path) -> str:
    """What follows NOTES_MARKER in the existing report (the per-request cost analysis,
    written by hand from h2cost.py): a new run replaces the table, not the analysis."""
    try:
        old = path.read_text()
    except OSError:
        return ""
    _, marker, notes = old.partition(NOTES_MARKER)
    return "\n" + marker + notes if marker else ""


SERVERS: list[Server] = []
RESULTS = HERE / "results"
STAMP = time.strftime("%Y%m%d-%H%M%S")

if __name__ == "__main__":
    os.chdir(ROOT)
    RESULTS.mkdir(exist_ok=True)
    sys.exit(main())
