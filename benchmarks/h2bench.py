"""HTTP/2 throughput: h2load against asgiserve, granian and hypercorn on the hello app.

Each server serves cleartext HTTP/2 with prior knowledge (h2c), pinned to CPU 0; h2load runs
on CPU 1 with 64 connections and 16 streams in flight per connection (``-c 64 -m 16``), as in
the issue's target. Repeats are interleaved round-robin over the servers; medians are kept and
ratios are taken within the run.

    python benchmarks/h2bench.py                # 3 repeats of 10 s
    python benchmarks/h2bench.py --quick        # 1 repeat of 3 s
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def commands(port: int) -> dict[str, list[str]]:
    py = sys.executable
    return {
        "asgiserve": [
            py,
            "-m",
            "asgiserve",
            "benchmarks.apps:hello",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
            "--loop",
            "uvloop",
            "--http",
            "httptools",
        ],
        "granian": [
            py,
            "-m",
            "granian",
            "--interface",
            "asgi",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--runtime-threads",
            "1",
            "--loop",
            "uvloop",
            "--http",
            "2",
            "--no-access-log",
            "--log-level",
            "warning",
            "benchmarks.apps:hello",
        ],
        "hypercorn": [
            py,
            "-m",
            "hypercorn",
            "benchmarks.apps:hello",
            "--bind",
            f"127.0.0.1:{port}",
            "--worker-class",
            "uvloop",
            "--workers",
            "0",
            "--log-level",
            "warning",
        ],
    }


def wait_ready(port: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def h2load(port: int, duration: float, connections: int, streams: int) -> float:
    out = subprocess.run(
        [
            "taskset",
            "-c",
            "1",
            "h2load",
            "-c",
            str(connections),
            "-m",
            str(streams),
            "-D",
            str(duration),
            "--warm-up-time",
            "1",
            f"http://127.0.0.1:{port}/",
        ],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=False,
    ).stdout
    match = re.search(r"finished in .*?, ([\d.]+) req/s", out)
    failed = re.search(r"(\d+) failed, (\d+) errored", out)
    if not match or (failed and (int(failed.group(1)) or int(failed.group(2)))):
        raise RuntimeError(out[-800:])
    return float(match.group(1))


def run_one(name: str, duration: float, connections: int, streams: int) -> float | None:
    port = free_port()
    cmd = ["taskset", "-c", "0", *commands(port)[name]]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        if not wait_ready(port):
            print(
                f"  {name}: did not start: {proc.stderr.read() if proc.poll() is not None and proc.stderr else ''}"
            )
            return None
        return h2load(port, duration, connections, streams)
    except RuntimeError as exc:
        print(f"  {name}: h2load failed: {exc}")
        return None
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--servers", default="asgiserve,granian,hypercorn")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.repeats = 3.0, 1
    if not shutil.which("h2load"):
        print("h2load not found: apt-get install nghttp2-client")
        return 2
    names = [n for n in args.servers.split(",") if n]
    results: dict[str, list[float]] = {n: [] for n in names}
    for repeat in range(args.repeats):
        for name in names:
            value = run_one(name, args.duration, args.connections, args.streams)
            print(f"repeat {repeat + 1}: {name}: {value}")
            if value is not None:
                results[name].append(value)
    medians = {n: statistics.median(v) for n, v in results.items() if v}
    base = medians.get("asgiserve")
    lines = [
        f"### HTTP/2 (h2c), hello, `h2load -c {args.connections} -m {args.streams}`, {args.repeats} x {args.duration:g} s, medians",
        "",
        "| server | req/s | asgiserve / server |",
        "|---|---:|---:|",
    ]
    for name in names:
        if name in medians:
            ratio = f"{base / medians[name]:.2f}x" if base else "-"
            lines.append(f"| `{name}` | {medians[name]:,.0f} | {ratio} |")
        else:
            lines.append(f"| `{name}` | failed | - |")
    table = "\n".join(lines)
    print(table)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / f"h2-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(
        json.dumps(
            {
                "results": results,
                "medians": medians,
                "args": vars(args),
                "python": sys.version.split()[0],
            },
            indent=2,
        )
    )
    (HERE / "RESULTS-h2.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
