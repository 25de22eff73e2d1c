"""Deterministic CPU cost guard: instructions per request, counted by valgrind's callgrind.

Drives requests through asgiserve's HTTP/1.1 protocol object over an in-memory fake transport
(no sockets, no kernel, no load generator), under ``valgrind --tool=callgrind``, and reports
the instructions executed per request.  Unlike req/s on a shared machine, this number does not
drift with the neighbours: a change of a few percent is real.

Method: the same child runs twice, with N_small and N_large requests after the same set-up
and warm-up; instructions/request = (I_large - I_small) / (N_large - N_small), which cancels
interpreter start-up, imports and warm-up exactly.

    python benchmarks/callgrind.py                       # httptools, hello, 1 request per feed
    python benchmarks/callgrind.py --http h11 --pipeline 16
    python benchmarks/callgrind.py --max 150000          # exit 1 above this (CI guard)
    python benchmarks/callgrind.py --no-valgrind         # run the driver only (smoke test)
    python benchmarks/callgrind.py --test stream         # 64 KiB sent in 16 more_body parts
    python benchmarks/callgrind.py --test static         # --static's own answer, 50 KiB file
    python benchmarks/callgrind.py --test fastapi        # benchmarks/fastapi_app.py, GET /items/42
    python benchmarks/callgrind.py --test static --headers browser      # what a browser sends
    python benchmarks/callgrind.py --test static --headers browser-304  # its revalidation

``--test static`` drives the connection over a real loopback TCP socket (sendfile needs one),
with the server's own answer to a remembered file (``--static``); the kernel's share of the
sends is not counted, only the user-space instructions around them. ``--headers`` picks the
request: Host only (``none``, wrk's default), a browser's headers (``browser``, those of
``static.py``), or the browser's revalidation with the ETag and Last-Modified of a first
response (``browser-304``: a 304, which the server answers itself too).

This touches asgiserve internals (ServerState, HTTP11Connection, the parser factory); they are
not a stable API, so when they change, only ``make_connection`` below needs to follow.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: callgrind\r\nAccept: */*\r\n\r\n"
POST_BODY = b"a" * 1024
POST = (
    b"POST / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nContent-Type: application/octet-stream\r\n"
    b"Content-Length: 1024\r\n\r\n" + POST_BODY
)
#: ``--test fastapi``: what wrk sends for run.py's fastapi test (its path, wrk's default
#: headers: Host only).
FASTAPI_REQUEST = b"GET /items/42 HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n"
WARMUP = 200
#: Websocket echo tests: payload size of each text message.
WS_SIZES = {"ws64": 64, "ws16k": 16384}


class FakeTransport(asyncio.Transport):
    """Collects what the connection writes; counts complete responses by their body."""

    def __init__(self, marker: bytes) -> None:
        super().__init__()
        self.marker = marker
        #: Count a response when a write ends with ``marker`` rather than per occurrence.
        self.marker_at_end = False
        self.responses = 0
        self.bytes_out = 0
        self.closed = False
        self.paused = False
        self._extra = {
            "peername": ("127.0.0.1", 50000),
            "sockname": ("127.0.0.1", 8000),
            "socket": None,
            "sslcontext": None,
        }

        self.protocol: Any = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_protocol(self) -> Any:
        return self.protocol

    def write(self, data: bytes | bytearray | memoryview) -> None:
        data = bytes(data)
        self.bytes_out += len(data)
        if self.marker_at_end:
            # ``stream``: searching 64 KiB of body for the marker would cost the driver more
            # than the server spends; a response ends a write (one request at a time).
            self.responses += data.endswith(self.marker)
        else:
            self.responses += data.count(self.marker)

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def is_reading(self) -> bool:
        return not self.paused

    def get_write_buffer_size(self) -> int:
        return 0

    def can_write_eof(self) -> bool:
        return False


class SocketTransport(FakeTransport):
    """A transport over a real connected TCP socket, for the sendfile path (``static``)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(b"")
        self.sock = sock
        self._extra["socket"] = sock

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sock.sendall(data)


STATIC_FILE = "file50k.bin"
STATIC_SIZE = 50 * 1024
STATIC_HOST = "127.0.0.1:8000"
#: ``--headers`` of ``--test static``: what the measured requests carry besides Host.
STATIC_HEADERS = ("none", "browser", "browser-304")


def static_request(headers: str, validators: list[tuple[str, str]]) -> bytes:
    """The GET of ``--test static``: Host only (wrk's default request), a browser's request
    (``static.py``'s headers, the benchmark's headline), or the browser's revalidation (its
    headers plus the ``validators`` of a first response, as Chromium adds them)."""
    sys.path.insert(0, str(HERE))
    from static import browser_headers, request_bytes

    path = f"/{STATIC_FILE}"
    if headers == "none":
        return request_bytes(path, STATIC_HOST, [])
    browser = browser_headers(f"http://{STATIC_HOST}/")
    return request_bytes(
        path, STATIC_HOST, browser + validators if headers != "browser" else browser
    )


async def drive_static(requests: int, http: str, headers: str) -> dict[str, Any]:
    """``--static``: each request answered by the connection itself from a kept descriptor
    (a 304 for ``browser-304``, from the same remembered file)."""
    from asgiserve.apps.mounts import served_files
    from asgiserve.apps.static import StaticFiles

    loop = asyncio.get_running_loop()
    folder = tempfile.mkdtemp(prefix="asgiserve-callgrind-")
    with open(os.path.join(folder, STATIC_FILE), "wb") as f:
        f.write(os.urandom(STATIC_SIZE))
    app = StaticFiles(folder)
    conn = make_connection(app, http, loop)
    conn.state.files = served_files(app)  # what the server sets for --static
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server_sock, _ = listener.accept()
    server_sock.setblocking(False)
    client.setblocking(False)
    transport = SocketTransport(server_sock)
    conn.connection_made(transport)
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    response_size = 0

    async def one(request: bytes) -> int:
        # Each request in a turn of the loop of its own, as the server reads them: what the
        # connection leaves for the end of the turn (the answer batch) runs before the next.
        await asyncio.sleep(0)
        conn.data_received(request)
        got = 0
        while True:
            try:
                received = client.recv_into(view[got:])
            except BlockingIOError:
                if response_size and got >= response_size:
                    return got
                head_end = bytes(view[: min(got, 4096)]).find(b"\r\n\r\n")
                body = 0 if view[9:12] == b"304" else STATIC_SIZE
                if response_size == 0 and head_end >= 0 and got >= head_end + 4 + body:
                    return got
                await asyncio.sleep(0)
                continue
            if not received:
                raise RuntimeError("the server closed the connection")
            got += received

    # Through the app: the file is remembered, and its validators are known.
    first = static_request("browser" if headers == "browser-304" else headers, [])
    head = bytes(view[: await one(first)]).split(b"\r\n\r\n", 1)[0].decode("latin-1")
    fields = dict(line.split(": ", 1) for line in head.split("\r\n")[1:])
    validators = [
        (name, fields[key])
        for key, name in (("etag", "If-None-Match"), ("last-modified", "If-Modified-Since"))
        if key in fields
    ]
    request = static_request(headers, validators)
    response_size = await one(request)
    bytes_out = response_size
    expected = b"HTTP/1.1 304 " if headers == "browser-304" else b"HTTP/1.1 200 "
    if bytes(view[: len(expected)]) != expected:
        raise RuntimeError(f"unexpected answer: {bytes(view[:40])!r}")
    for _ in range(WARMUP):
        bytes_out += await one(request)
    responses = 0
    for _ in range(requests):
        bytes_out += await one(request)
        responses += 1
    conn.connection_lost(None)
    for sock in (client, server_sock):
        sock.close()
    app.close()
    shutil.rmtree(folder)
    return {"responses": responses, "bytes_out": bytes_out}


def make_connection(app: Any, http: str, loop: asyncio.AbstractEventLoop) -> Any:
    """Build asgiserve's HTTP/1.1 protocol object the way the server does."""
    from asgiserve.loading import parser_factory
    from asgiserve.transport.connection import HTTP11Connection
    from asgiserve.transport.state import ServerState

    state = ServerState(
        app=app,
        loop=loop,
        parser_factory=parser_factory(
            http, max_request_line=8192, max_head=65536, max_fields=100, max_chunk_line=4096
        ),
        keep_alive_timeout=5.0,
        head_timeout=10.0,
    )
    from asgiserve.transport.websocket import WebSocketSettings

    state.websocket = WebSocketSettings()  # the defaults, as --ws auto with websockets installed
    # What the server's once-a-second tick sets (server + date header block).
    state.default_headers = b"server: asgiserve\r\ndate: Thu, 01 Jan 2026 00:00:00 GMT\r\n"
    return HTTP11Connection(state)


def make_uvicorn_connection(app: Any, http: str, loop: asyncio.AbstractEventLoop) -> Any:
    """uvicorn's protocol object, driven the same way: the peer measured on equal terms."""
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    # websockets-sansio: uvicorn's fastest websocket implementation here (see run.py).
    config = Config(
        app,
        http=http,
        ws="websockets-sansio",
        access_log=False,
        log_level="warning",
        lifespan="off",
    )
    config.load()
    if http == "h11":
        from uvicorn.protocols.http.h11_impl import H11Protocol as protocol_class
    else:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as protocol_class
    return protocol_class(config, ServerState(), {}, _loop=loop)


class BareConnection(asyncio.Protocol):
    """The floor, not a server: each request of a feed runs the app in a task of its own with
    a fixed scope and the least ``receive``/``send`` there can be (no parsing, no checks, no
    framing). What a server costs on top of this is its share of a request (``--server
    bare``: what is left is the app's and the event loop's)."""

    def __init__(self, app: Any, loop: asyncio.AbstractEventLoop, path: bytes) -> None:
        self.app = app
        self.loop = loop
        self.transport: Any = None
        self.scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path.decode(),
            "raw_path": path,
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"127.0.0.1:8000")],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
            "state": {},
        }

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        for _ in range(data.count(b"\r\n\r\n")):
            self.loop.create_task(self.app(self.scope.copy(), self.receive, self.send))

    async def receive(self) -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            self.transport.write(message.get("body", b""))


def make_bare_connection(app: Any, http: str, loop: asyncio.AbstractEventLoop) -> Any:
    path = FASTAPI_REQUEST.split(b" ")[1] if app is _fastapi_app() else b"/"
    return BareConnection(app, loop, path)


def _fastapi_app() -> Any:
    from benchmarks.fastapi_app import app

    return app


SERVER = {
    "asgiserve": make_connection,
    "uvicorn": make_uvicorn_connection,
    "bare": make_bare_connection,
}


async def drive(
    requests: int,
    http: str,
    test: str,
    pipeline: int,
    server: str = "asgiserve",
    headers: str = "none",
) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from benchmarks import apps

    loop = asyncio.get_running_loop()
    if test == "static":
        return await drive_static(requests, http, headers)
    if test in WS_SIZES:
        # Websocket echo: upgrade once, then each "request" is one masked text frame whose
        # echo (unmasked) carries the payload verbatim.
        from benchmarks import wsload

        marker = wsload.make_payload(WS_SIZES[test], text=True)
        payload = wsload.build_frame(marker, text=True) * pipeline
        conn = SERVER[server](apps.ws_echo, http, loop)
        transport = FakeTransport(b"HTTP/1.1 101")
        transport.set_protocol(conn)
        conn.connection_made(transport)
        handshake, _ = wsload.handshake_request("127.0.0.1", 8000)
        conn.data_received(handshake)
        for _ in range(100):
            if transport.responses:
                break
            await asyncio.sleep(0)
        else:
            raise RuntimeError("websocket handshake not answered")
        conn = transport.protocol
        transport.marker = marker
        transport.responses = 0
    elif test == "fastapi":
        # The framework app of run.py's fastapi test: routing, validation and serialisation
        # run per request, so the server's share is what differs between two servers.
        app = _fastapi_app()
        marker = b'"tags"'
        payload = FASTAPI_REQUEST * pipeline
        conn = SERVER[server](app, http, loop)
        transport = FakeTransport(marker)
        conn.connection_made(transport)
    else:
        app = {"hello": apps.hello, "json": apps.json, "echo": apps.echo, "stream": apps.stream}[
            test
        ]
        marker = {
            "hello": apps.HELLO_BODY,
            "json": b'"tags"',
            "echo": POST_BODY,
            "stream": b"0\r\n\r\n",  # the last chunk (RFC 9112 section 7.1)
        }[test]
        payload = (POST if test == "echo" else REQUEST) * pipeline
        conn = SERVER[server](app, http, loop)
        transport = FakeTransport(marker)
        transport.marker_at_end = test == "stream"
        conn.connection_made(transport)

    async def serve(n: int) -> None:
        target = transport.responses
        for _ in range(n // pipeline):
            target += pipeline
            conn.data_received(payload)
            spins = 0
            while transport.responses < target:
                spins += 1
                if spins > 1000 or transport.closed:
                    raise RuntimeError(
                        f"no response (got {transport.responses}/{target}, closed={transport.closed})"
                    )
                await asyncio.sleep(0)

    await serve(WARMUP - WARMUP % pipeline)
    start = transport.responses
    await serve(requests)
    done = transport.responses - start
    conn.connection_lost(None)
    return {"responses": done, "bytes_out": transport.bytes_out}


def child(args: argparse.Namespace) -> int:
    if args.loop == "uvloop":
        import uvloop

        result = uvloop.run(
            drive(args.child, args.http, args.test, args.pipeline, args.server, args.headers)
        )
    else:
        result = asyncio.run(
            drive(args.child, args.http, args.test, args.pipeline, args.server, args.headers)
        )
    print(json.dumps(result))
    return 0


def _callgrind_total(out_file: Path) -> int:
    text = out_file.read_text(errors="replace")
    m = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.MULTILINE)
    if not m:
        raise RuntimeError(f"no totals in {out_file}")
    return int(m.group(1))


def _fingerprint() -> list[tuple[str, int, int]]:
    """The sources whose change would make the two measurements incomparable."""
    files = sorted((ROOT / "asgiserve").rglob("*.py")) + [HERE / "apps.py", HERE / "fastapi_app.py"]
    out = []
    for f in files:
        try:
            st = f.stat()
        except OSError:
            continue
        out.append((str(f), st.st_mtime_ns, st.st_size))
    return out


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONHASHSEED"] = "0"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _child_argv(args: argparse.Namespace, n: int) -> list[str]:
    return [
        args.python,
        str(Path(__file__).resolve()),
        "--child",
        str(n),
        "--http",
        args.http,
        "--test",
        args.test,
        "--pipeline",
        str(args.pipeline),
        "--loop",
        args.loop,
        "--server",
        args.server,
        "--headers",
        args.headers,
    ]


def precompile(args: argparse.Namespace) -> None:
    """One run outside valgrind so that both measured runs load the same cached bytecode."""
    proc = subprocess.run(
        _child_argv(args, args.pipeline),
        cwd=ROOT,
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=args.timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"driver failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")


def measure(args: argparse.Namespace, n: int, tmp: Path) -> tuple[int, dict[str, Any]]:
    out_file = tmp / f"callgrind.out.{n}"
    argv = [
        args.valgrind,
        "--tool=callgrind",
        f"--callgrind-out-file={out_file}",
        *_child_argv(args, n),
    ]
    proc = subprocess.run(
        argv,
        cwd=ROOT,
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=args.timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["responses"] != n - n % args.pipeline:
        raise RuntimeError(f"expected {n} responses, got {result}")
    return _callgrind_total(out_file), result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--http", default="httptools", choices=["httptools", "h11"])
    p.add_argument(
        "--test",
        default="hello",
        choices=["hello", "json", "fastapi", "echo", "stream", "static", *WS_SIZES],
    )
    p.add_argument(
        "--headers",
        default="none",
        choices=STATIC_HEADERS,
        help="--test static: the request's headers besides Host: none (wrk's default), browser "
        "(a browser's GET, static.py's headline), browser-304 (its revalidation: a 304)",
    )
    p.add_argument("--pipeline", type=int, default=1, help="requests per data_received call")
    p.add_argument("--loop", default="asyncio", choices=["asyncio", "uvloop"])
    p.add_argument(
        "--server",
        default="asgiserve",
        choices=sorted(SERVER),
        help="whose protocol object to drive (uvicorn: the same count for the peer; bare: "
        "the app alone, run as a task per request with the least receive/send, so that the "
        "difference is a server's share)",
    )
    p.add_argument("--requests", type=int, default=2000, help="N_large - N_small")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--valgrind", default=shutil.which("valgrind") or "valgrind")
    p.add_argument("--max", type=float, default=None, help="fail (exit 1) above this instr/request")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--no-valgrind", action="store_true", help="just run the driver once")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        return child(args)
    if args.headers != "none" and args.test != "static":
        p.error("--headers is for --test static")
    if args.test == "stream" and args.pipeline != 1:
        p.error("--test stream counts a response per write that ends one: --pipeline 1 only")

    try:
        import asgiserve.loading  # noqa: F401
        import asgiserve.transport.connection  # noqa: F401
    except ImportError as exc:
        print(f"asgiserve internals not importable: {exc}")
        return 2

    if args.no_valgrind:
        args.child = args.requests
        return child(args)
    if not shutil.which(args.valgrind):
        print("valgrind not found (apt-get install valgrind)")
        return 2

    # The interpreter must be the real binary: valgrind does not follow a shim's exec.
    args.python = subprocess.run(
        [args.python, "-c", "import sys; print(sys.executable)"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    small = max(args.pipeline, 100 - 100 % args.pipeline)
    large = small + args.requests - args.requests % args.pipeline
    for attempt in range(3):
        before = _fingerprint()
        try:
            precompile(args)
            with tempfile.TemporaryDirectory(prefix="asgiserve-callgrind-") as tmp:
                i_small, _ = measure(args, small, Path(tmp))
                i_large, info = measure(args, large, Path(tmp))
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"error: {exc}")
            return 2
        if _fingerprint() == before:
            break
        print(f"asgiserve sources changed during the measurement; again ({attempt + 1}/3)")
    else:
        print("error: the sources keep changing; try again later")
        return 2
    per_request = (i_large - i_small) / (large - small)
    result = {
        "http": args.http,
        "test": args.test,
        "headers": args.headers,
        "pipeline": args.pipeline,
        "loop": args.loop,
        "python": subprocess.run(
            [args.python, "-c", "import sys; print(sys.version.split()[0])"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip(),
        "requests": large - small,
        "instructions_small": i_small,
        "instructions_large": i_large,
        "instructions_per_request": round(per_request),
        "bytes_out_per_request": round(info["bytes_out"] / (large + WARMUP)),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['instructions_per_request']:,} instructions/request "
            f"({args.test}{'' if args.headers == 'none' else ', ' + args.headers + ' headers'}, "
            f"{args.http}, pipeline {args.pipeline}, {args.loop}, "
            f"Python {result['python']}; {large - small} requests)"
        )
    if args.max is not None and per_request > args.max:
        print(f"FAIL: {per_request:,.0f} > --max {args.max:,.0f}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
