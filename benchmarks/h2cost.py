"""Deterministic HTTP/2 cost: instructions per request (callgrind) and a cProfile view.

Feeds a prepared h2c client byte stream (preface, SETTINGS, a large connection WINDOW_UPDATE,
then HEADERS frames of GET requests, ``--streams`` per read as ``h2load -m 16`` sends them)
through asgiserve's real connection objects over the in-memory transport of ``callgrind.py``:
the HTTP/1.1 protocol object sees the preface and hands over to the HTTP/2 one, which answers
with the hello app. No sockets, no kernel, no load generator.

As in ``callgrind.py``, the same child runs twice, with N_small and N_large requests, and
instructions/request = (I_large - I_small) / (N_large - N_small): start-up, imports and
warm-up cancel out. The request frames are built before the measured part from one HPACK
header block per kind (first request: literals that fill the dynamic table; the rest: the
indexed form every later request of h2load takes), so building them costs a struct.pack
per request, far below 0.1 % of what is measured.

    python benchmarks/h2cost.py                  # callgrind, 16 streams per read
    python benchmarks/h2cost.py --streams 1
    python benchmarks/h2cost.py --profile        # cProfile of the same driver, top functions
    python benchmarks/h2cost.py --loop bare      # h2 alone answering the same requests
    python benchmarks/h2cost.py --no-valgrind    # run the driver once (smoke test)
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from benchmarks.callgrind import (  # noqa: E402
    FakeTransport,
    _callgrind_total,
    _child_env,
    _fingerprint,
)

WARMUP = 320
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# What h2load 1.52 sends for `h2load http://127.0.0.1:8000/`.
REQUEST_HEADERS = [
    (b":method", b"GET"),
    (b":path", b"/"),
    (b":scheme", b"http"),
    (b":authority", b"127.0.0.1:8000"),
    (b"user-agent", b"h2load nghttp2/1.52.0"),
]


class SwitchingTransport(FakeTransport):
    """FakeTransport that follows ``set_protocol`` (the h2c hand-over)."""

    protocol: Any = None

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_protocol(self) -> Any:
        return self.protocol


def _frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    """One HTTP/2 frame (RFC 9113 section 4.1)."""
    return (
        struct.pack("!I", len(payload))[1:] + struct.pack("!BBI", kind, flags, stream_id) + payload
    )


def client_stream(requests: int, per_read: int) -> tuple[bytes, list[tuple[bytes, int]]]:
    """The connection opening, and the request bytes in reads of ``per_read`` requests."""
    from hpack import Encoder

    encoder = Encoder()
    first_block = encoder.encode(REQUEST_HEADERS)
    later_block = encoder.encode(REQUEST_HEADERS)  # all indexed now
    opening = (
        PREFACE
        + _frame(0x4, 0, 0, b"")  # SETTINGS (defaults)
        + _frame(0x8, 0, 0, struct.pack("!I", 2**31 - 1 - 65535))  # connection window
    )
    end_headers_stream = 0x4 | 0x1
    reads: list[tuple[bytes, int]] = []
    stream_id = 1
    for start in range(0, requests, per_read):
        chunk = []
        for _ in range(min(per_read, requests - start)):
            block = first_block if stream_id == 1 else later_block
            chunk.append(_frame(0x1, end_headers_stream, stream_id, block))
            stream_id += 2
        reads.append((b"".join(chunk), len(chunk)))
    return opening, reads


def make_connection(app: Any, loop: asyncio.AbstractEventLoop) -> Any:
    """asgiserve's HTTP/1.1 protocol object with HTTP/2 on, as the server builds it."""
    from asgiserve.loading import parser_factory
    from asgiserve.transport.connection import HTTP11Connection
    from asgiserve.transport.http2 import H2Settings
    from asgiserve.transport.state import ServerState

    state = ServerState(
        app=app,
        loop=loop,
        parser_factory=parser_factory(
            "httptools", max_request_line=8192, max_head=65536, max_fields=100, max_chunk_line=4096
        ),
        keep_alive_timeout=5.0,
        head_timeout=10.0,
        http2=H2Settings(),
    )
    state.default_headers = b"server: asgiserve\r\ndate: Thu, 01 Jan 2026 00:00:00 GMT\r\n"
    return HTTP11Connection(state)


async def drive(requests: int, per_read: int) -> dict[str, Any]:
    from benchmarks import apps

    loop = asyncio.get_running_loop()
    opening, reads = client_stream(WARMUP + requests, per_read)
    transport = SwitchingTransport(apps.HELLO_BODY)
    first = make_connection(apps.hello, loop)
    transport.protocol = first
    first.connection_made(transport)
    transport.protocol.data_received(opening)
    if transport.protocol is first:
        raise RuntimeError("the connection did not switch to HTTP/2")

    async def serve(batch: list[tuple[bytes, int]]) -> None:
        target = transport.responses
        for data, count in batch:
            target += count
            transport.protocol.data_received(data)
            spins = 0
            while transport.responses < target:
                spins += 1
                if spins > 1000 or transport.closed:
                    raise RuntimeError(
                        f"no response (got {transport.responses}/{target}, "
                        f"closed={transport.closed})"
                    )
                await asyncio.sleep(0)

    warm_reads = WARMUP // per_read
    await serve(reads[:warm_reads])
    start = transport.responses
    await serve(reads[warm_reads:])
    done = transport.responses - start
    transport.protocol.connection_lost(None)
    return {"responses": done, "bytes_out": transport.bytes_out}


# What asgiserve answers the hello app with (date and server from the once-a-second tick).
BARE_RESPONSE = [
    (b":status", b"200"),
    (b"server", b"asgiserve"),
    (b"date", b"Thu, 01 Jan 2026 00:00:00 GMT"),
    (b"content-type", b"text/plain"),
    (b"content-length", b"13"),
]


def drive_bare(requests: int, per_read: int) -> dict[str, Any]:
    """The floor ``h2`` itself sets: the same bytes into an ``h2`` connection configured as
    asgiserve configures it, each request answered with one send_headers and one send_data,
    one data_to_send per read. No asyncio, no ASGI, no asgiserve."""
    from h2.events import RequestReceived

    from asgiserve.protocols.http2 import new_connection

    conn = new_connection(
        max_concurrent_streams=100, max_header_list_size=65536, initial_window_size=262144
    )
    conn.initiate_connection()
    opening, reads = client_stream(WARMUP + requests, per_read)
    conn.receive_data(opening)
    conn.data_to_send()
    responses = bytes_out = 0
    for index, (data, _count) in enumerate(reads):
        if index == WARMUP // per_read:
            responses = 0
        for event in conn.receive_data(data):
            if type(event) is RequestReceived:
                conn.send_headers(event.stream_id, BARE_RESPONSE)
                conn.send_data(event.stream_id, b"Hello, world!", end_stream=True)
                responses += 1
        bytes_out += len(conn.data_to_send())
    return {"responses": responses, "bytes_out": bytes_out}


def child(requests: int, per_read: int, loop: str) -> dict[str, Any]:
    if loop == "bare":
        return drive_bare(requests, per_read)
    if loop == "uvloop":
        import uvloop

        result: dict[str, Any] = uvloop.run(drive(requests, per_read))
    else:
        result = asyncio.run(drive(requests, per_read))
    return result


def _argv(args: argparse.Namespace, n: int) -> list[str]:
    return [
        args.python,
        str(Path(__file__).resolve()),
        "--child",
        str(n),
        "--streams",
        str(args.streams),
        "--loop",
        args.loop,
    ]


def measure(args: argparse.Namespace, n: int, tmp: Path) -> int:
    out_file = tmp / f"callgrind.out.{n}"
    argv = [args.valgrind, "--tool=callgrind", f"--callgrind-out-file={out_file}", *_argv(args, n)]
    proc = subprocess.run(
        argv, cwd=ROOT, env=_child_env(), capture_output=True, text=True, timeout=900, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["responses"] != n:
        raise RuntimeError(f"expected {n} responses, got {result}")
    return _callgrind_total(out_file)


def profile(args: argparse.Namespace) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    result = child(args.requests, args.streams, args.loop)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats(args.sort).print_stats(args.top)
    print(f"{result['responses']} responses")
    print(out.getvalue())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=16, help="requests per data_received call")
    p.add_argument("--requests", type=int, default=960, help="N_large - N_small")
    p.add_argument(
        "--loop",
        default="asyncio",
        choices=["asyncio", "uvloop", "bare"],
        help="bare: h2 alone (no asyncio, no ASGI): the floor h2 sets",
    )
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--valgrind", default=shutil.which("valgrind") or "valgrind")
    p.add_argument("--profile", action="store_true", help="cProfile instead of callgrind")
    p.add_argument("--sort", default="tottime", help="cProfile sort key")
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--no-valgrind", action="store_true", help="just run the driver once")
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.requests % args.streams or WARMUP % args.streams:
        p.error(f"--requests and {WARMUP} must be multiples of --streams")
    if args.child is not None:
        print(json.dumps(child(args.child, args.streams, args.loop)))
        return 0
    if args.profile:
        profile(args)
        return 0
    if args.no_valgrind:
        print(json.dumps(child(args.requests, args.streams, args.loop)))
        return 0
    args.python = subprocess.run(
        [args.python, "-c", "import sys; print(sys.executable)"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    small = 8 * args.streams
    large = small + args.requests
    before = _fingerprint()
    # Once outside valgrind, so that both measured runs load the same cached bytecode.
    subprocess.run(
        _argv(args, small), cwd=ROOT, env=_child_env(), capture_output=True, check=True, timeout=300
    )
    with tempfile.TemporaryDirectory(prefix="asgiserve-h2cost-") as tmp:
        i_small = measure(args, small, Path(tmp))
        i_large = measure(args, large, Path(tmp))
    if _fingerprint() != before:
        print("error: asgiserve sources changed during the measurement; run again")
        return 2
    per_request = (i_large - i_small) / (large - small)
    if args.json:
        print(json.dumps({"instructions_per_request": round(per_request), **vars(args)}))
    else:
        print(
            f"{per_request:,.0f} instructions/request (HTTP/2 hello, {args.streams} streams "
            f"per read, {args.loop}, Python {sys.version.split()[0]}; {large - small} requests)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
