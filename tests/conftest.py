"""Fixtures that start real servers: in a thread of this process, or as the real CLI."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from asgiserve.config import Config
from asgiserve.loading import new_event_loop
from asgiserve.server import Server

ROOT = Path(__file__).resolve().parent.parent

try:
    import httptools  # noqa: F401

    HAVE_HTTPTOOLS = True
except ImportError:  # pragma: no cover
    HAVE_HTTPTOOLS = False
try:
    import uvloop  # noqa: F401

    HAVE_UVLOOP = True
except ImportError:  # pragma: no cover
    HAVE_UVLOOP = False

BACKENDS = [
    pytest.param(
        ("httptools", "uvloop"),
        id="httptools-uvloop",
        marks=pytest.mark.skipif(not (HAVE_HTTPTOOLS and HAVE_UVLOOP), reason="needs [standard]"),
    ),
    pytest.param(
        ("h11", "asyncio"),
        id="h11-asyncio",
    ),
    pytest.param(
        ("httptools", "asyncio"),
        id="httptools-asyncio",
        marks=pytest.mark.skipif(not HAVE_HTTPTOOLS, reason="needs httptools"),
    ),
    pytest.param(
        ("h11", "uvloop"),
        id="h11-uvloop",
        marks=pytest.mark.skipif(not HAVE_UVLOOP, reason="needs uvloop"),
    ),
]


@dataclass
class ThreadedServer:
    """A real asgiserve Server listening on a loopback port, run in a background thread."""

    config: Config
    port: int = 0
    server: Server | None = None
    loop: asyncio.AbstractEventLoop | None = None
    thread: threading.Thread | None = None
    error: BaseException | None = None
    ready: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ThreadedServer:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not self.ready.wait(10):
            raise RuntimeError("server did not start")
        if self.error is not None:
            raise self.error
        return self

    def _run(self) -> None:
        loop = self.loop = new_event_loop(self.config.loop)
        asyncio.set_event_loop(loop)
        server = self.server = Server(self.config)

        async def main() -> None:
            task = asyncio.ensure_future(server.serve())
            while not server.started and not task.done():
                await asyncio.sleep(0.005)
            if server.started:
                self.port = server.sockets[0].getsockname()[1]
            self.ready.set()
            await task

        try:
            loop.run_until_complete(main())
        except BaseException as exc:
            self.error = exc
            self.ready.set()
        finally:
            loop.close()

    def stop(self, timeout: float = 10) -> None:
        if self.loop is not None and self.server is not None and not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self.server.exit)
        if self.thread is not None:
            self.thread.join(timeout)

    def call(self, fn: Callable[[], Any]) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(fn)


@pytest.fixture
def serve(request: pytest.FixtureRequest) -> Iterator[Callable[..., ThreadedServer]]:
    """``serve(app, **options)`` starts a server on 127.0.0.1 with a free port.

    The parser and loop come from the ``backend`` fixture when the test uses it.
    """
    started: list[ThreadedServer] = []
    backend = request.getfixturevalue("backend") if "backend" in request.fixturenames else None

    def start(app: Any, **options: Any) -> ThreadedServer:
        options.setdefault("port", 0)
        options.setdefault("log_level", "warning")
        options.setdefault("access_log", False)
        if backend is not None:
            options.setdefault("http", backend[0])
            options.setdefault("loop", backend[1])
        server = ThreadedServer(Config.from_options(app, **options)).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(http, loop): every test using it runs on each parser × loop combination."""
    return request.param  # type: ignore[no-any-return]


# -- the real CLI in a subprocess ---------------------------------------------------------------

_LISTENING = re.compile(r"running on (\S+)")


@dataclass
class CLIServer:
    process: subprocess.Popen[str]
    address: str
    lines: list[str]
    pump: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    @property
    def url(self) -> str:
        return self.address

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float = 15) -> int:
        code = self.process.wait(timeout)
        self._finish()
        return code

    def output(self) -> str:
        """Everything the server logged so far (stderr); complete once it has exited."""
        if self.process.poll() is not None:
            self._finish()
        return "".join(self.lines)

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM, wait (kill if it hangs), and release the pipe."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._finish()
        return code

    def _finish(self) -> None:
        if self.pump is not None:
            self.pump.join(5)
            self.pump = None
        if self.process.stderr is not None and not self.process.stderr.closed:
            self.process.stderr.close()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_cli(
    *args: str, cwd: Path | str = ROOT, timeout: float = 15, env: dict[str, str] | None = None
) -> CLIServer:
    """Start ``python -m asgiserve ARGS`` and wait for its "running on" line."""
    command = [sys.executable, "-m", "asgiserve", *args]
    if not any(a.startswith("--port") or a in ("--uds", "--fd") for a in args) and not (
        env and "ASGISERVE_PORT" in env
    ):
        command += ["--port", "0"]
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env={**_env(), **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert process.stderr is not None
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        lines.append(line)
        match = _LISTENING.search(line)
        if match:
            # Keep reading stderr so the pipe never fills up and blocks the server.
            pump = threading.Thread(target=_pump, args=(process, lines), daemon=True)
            pump.start()
            return CLIServer(process, match.group(1), lines, pump)
    process.kill()
    rest = process.stderr.read()
    process.stderr.close()
    process.wait()
    raise RuntimeError("server did not start:\n" + "".join(lines) + rest)


def _pump(process: subprocess.Popen[str], lines: list[str]) -> None:
    assert process.stderr is not None
    for line in process.stderr:
        lines.append(line)


@pytest.fixture
def cli() -> Iterator[Callable[..., CLIServer]]:
    """``cli(*args)`` runs the real ``asgiserve`` command; stopped with SIGTERM afterwards."""
    started: list[CLIServer] = []

    def start(*args: str, **kwargs: Any) -> CLIServer:
        server = start_cli(*args, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# -- raw sockets -----------------------------------------------------------------------------


class RawClient:
    """A blocking socket client for byte-exact requests and response reading."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 5) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_until_closed(self, limit: int = 64 * 1024 * 1024) -> bytes:
        chunks = [self.buffer]
        self.buffer = b""
        total = 0
        while total < limit:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buffer += chunk
        return True

    def read_response(self) -> Response:
        """Read one response (Content-Length, chunked, or until close)."""
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                raise ConnectionError(f"closed before a response head: {self.buffer!r}")
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        version, status, *_ = lines[0].split(b" ", 2)
        headers = [tuple(line.split(b": ", 1)) for line in lines[1:]]
        header_map = {k.lower(): v for k, v in headers}
        response = Response(int(status), version.decode(), [(k, v) for k, v in headers], b"")
        if response.status in (204, 304) or 100 <= response.status < 200 or self.head_request:
            return response
        if b"content-length" in header_map:
            size = int(header_map[b"content-length"])
            while len(self.buffer) < size:
                if not self._fill():
                    raise ConnectionError("closed inside the body")
            response.body, self.buffer = self.buffer[:size], self.buffer[size:]
        elif header_map.get(b"transfer-encoding") == b"chunked":
            body = b""
            while True:
                while b"\r\n" not in self.buffer:
                    if not self._fill():
                        raise ConnectionError("closed inside a chunk size")
                size_line, _, self.buffer = self.buffer.partition(b"\r\n")
                size = int(size_line, 16)
                while len(self.buffer) < size + 2:
                    if not self._fill():
                        raise ConnectionError("closed inside a chunk")
                body += self.buffer[:size]
                self.buffer = self.buffer[size + 2 :]
                if size == 0:
                    break
            response.body = body
        else:
            response.body = self.recv_until_closed()
        return response

    head_request = False

    def closed(self, timeout: float = 3) -> bool:
        """True if the server closes the connection (EOF or reset) within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buffer += chunk
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


@dataclass
class Response:
    status: int
    version: str
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def header_names(self) -> list[bytes]:
        return [key.lower() for key, _ in self.headers]


@pytest.fixture
def raw() -> Iterator[Callable[..., RawClient]]:
    clients: list[RawClient] = []

    def connect(port: int, **kwargs: Any) -> RawClient:
        client = RawClient(port, **kwargs)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        client.close()
