"""Worker processes: how a supervisor starts one, talks to it, and what runs inside it.

Spawning. A worker is a fresh interpreter started with :mod:`subprocess` (``python -c``), not
with :mod:`multiprocessing`. Both give a clean process (no fork of a running event loop, of
uvloop or of threads), but multiprocessing's spawn re-imports the parent's ``__main__`` in
every child: ``asgiserve.run("app:app", workers=4)`` from a script without an
``if __name__ == "__main__"`` guard would then start servers recursively. With subprocess
what crosses is explicit and nothing else: the listening sockets and one end of a socketpair
by ``pass_fds``, then ``sys.path`` and the (frozen, picklable) Config over that socketpair. No
helper process or thread is involved (multiprocessing's resource tracker and resource sharer).

Workers get a session of their own (``start_new_session``): a Ctrl+C in the terminal reaches
the supervisor only, which decides what each worker is told, instead of every process at once.

The channel. The socketpair stays open for the worker's life, one byte per message:

* supervisor -> worker: ``PING``;
* worker -> supervisor: ``READY`` (listening, lifespan startup done), ``PONG``, ``RECYCLE``
  (``--limit-max-requests`` reached: replace me, I keep serving until told to stop).

The worker answers ``PING`` from its event loop, so a loop blocked by the app is noticed. An
end of file on the worker's side means the supervisor is gone: the worker shuts down
gracefully rather than live on as an orphan.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from asgiserve.config import Config

__all__ = ["PING", "PONG", "READY", "RECYCLE", "Phase", "WorkerProcess", "rss_bytes", "spawn"]

logger = logging.getLogger("asgiserve.error")

PING = b"?"
PONG = b"!"
READY = b"R"
RECYCLE = b"M"

_LENGTH = struct.Struct("!I")

# The directory holding the asgiserve package, so the worker imports the same asgiserve as its
# supervisor even when that one was found through a sys.path the child would not have.
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_BOOTSTRAP = (
    "import sys; sys.path.insert(0, {root!r}); "
    "from asgiserve.supervisors.worker import worker_main; "
    "sys.exit(worker_main(int(sys.argv[1])))"
)


class Phase(enum.Enum):
    """A worker's life as its supervisor sees it; ``STOPPING`` is final until it is reaped."""

    STARTING = "starting"  #: spawned, importing the app / running lifespan startup
    SERVING = "serving"  #: sent READY: accepts connections, answers health pings
    STOPPING = "stopping"  #: told to stop (SIGTERM) or killed; never serves again


@dataclass(frozen=True, slots=True)
class _Spec:
    """What a worker needs to start, sent over the channel."""

    config: Config
    fds: tuple[int, ...]
    sys_path: tuple[str, ...]


class WorkerProcess:
    """The supervisor's handle on one worker process, with the bookkeeping it keeps."""

    def __init__(
        self, process: subprocess.Popen[bytes], channel: socket.socket, generation: int
    ) -> None:
        self.process = process
        self.channel = channel
        #: Incremented by SIGHUP: a rolling restart replaces every older generation.
        self.generation = generation
        self.phase = Phase.STARTING
        #: Waiting for a replacement to serve before being told to stop.
        self.retiring = False
        self.killed = False
        self.started_at = 0.0
        self.ping_sent_at: float | None = None
        self.last_pong = 0.0
        self.next_memory_sample = 0.0
        self.stop_deadline: float | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def receive(self) -> bytes | None:
        """The bytes the worker sent (possibly none yet); None once it closed its end."""
        try:
            data = self.channel.recv(4096)
        except BlockingIOError:
            return b""
        except OSError:
            return None
        return data or None

    def ping(self) -> None:
        try:
            self.channel.send(PING)
        except OSError:
            pass  # exiting: the reaper will notice

    def signal(self, sig: int) -> None:
        if self.process.returncode is None:
            try:
                self.process.send_signal(sig)
            except ProcessLookupError:
                pass

    def poll(self) -> int | None:
        return self.process.poll()

    def close(self) -> None:
        self.channel.close()


def spawn(config: Config, sockets: Sequence[socket.socket], generation: int) -> WorkerProcess:
    """Start a worker serving ``sockets``; it reports READY on its channel when it serves."""
    parent_end, child_end = socket.socketpair()
    fds = tuple(sock.fileno() for sock in sockets)
    try:
        process = subprocess.Popen(
            [sys.executable, "-c", _BOOTSTRAP.format(root=_ROOT), str(child_end.fileno())],
            pass_fds=(child_end.fileno(), *fds),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    except BaseException:
        parent_end.close()
        raise
    finally:
        child_end.close()
    spec = _Spec(config=config, fds=fds, sys_path=tuple(sys.path))
    payload = pickle.dumps(spec)
    try:
        # A few kilobytes: they fit in the socket buffer, so this does not block on the child.
        parent_end.sendall(_LENGTH.pack(len(payload)) + payload)
    except OSError:
        pass  # the child died at once; it will be reaped as a startup failure
    parent_end.setblocking(False)
    return WorkerProcess(process, parent_end, generation)


def rss_bytes(pid: int) -> int | None:
    """A process's resident set size, or None if it cannot be read (e.g. it just exited)."""
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as file:
            return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except FileNotFoundError:
        if os.path.isdir("/proc/self"):
            return None  # Linux, and the process is gone
    except (OSError, ValueError, IndexError):
        return None
    # No /proc (macOS, BSD): ask ps, which reports KiB.
    try:
        output = subprocess.run(
            ["ps", "-o", "rss=", "-p", str(pid)],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout
        return int(output.strip()) * 1024
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


# -- inside the worker ---------------------------------------------------------------------------


class _SupervisorLink:
    """The worker's end of the channel; its callbacks are the Server's hooks."""

    def __init__(self, channel: socket.socket) -> None:
        self.channel = channel
        self.recycle_requested = False

    def started(self) -> None:
        """On the server's event loop, once it serves: answer pings from now on, say READY."""
        asyncio.get_running_loop().add_reader(self.channel.fileno(), self._on_readable)
        self._send(READY)

    def recycle(self) -> None:
        """``--limit-max-requests`` reached (called on every request from then on)."""
        if not self.recycle_requested:
            self.recycle_requested = True
            logger.info(
                "Worker %d reached its request limit: asking for a replacement.", os.getpid()
            )
            self._send(RECYCLE)

    def _on_readable(self) -> None:
        try:
            data = self.channel.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self.channel.fileno())
            logger.warning("Worker %d lost its supervisor: shutting down.", os.getpid())
            # The server's own SIGTERM handler gives the graceful shutdown.
            os.kill(os.getpid(), signal.SIGTERM)
            return
        if PING in data:
            self._send(PONG)

    def _send(self, message: bytes) -> None:
        try:
            self.channel.send(message)
        except OSError:
            pass  # the supervisor is gone: the end of file on the channel handles it


def _receive_spec(channel: socket.socket) -> _Spec:
    def read(size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = channel.recv(size - len(data))
            if not chunk:
                raise EOFError("the supervisor closed the channel before sending the config")
            data += chunk
        return data

    (length,) = _LENGTH.unpack(read(_LENGTH.size))
    # The payload comes from our own parent over a private socketpair: trusted.
    spec = pickle.loads(read(length))  # noqa: S301
    assert isinstance(spec, _Spec)
    return spec


def worker_main(channel_fd: int) -> int:
    """The worker process: receive the config, serve the inherited sockets, return the exit code."""
    from asgiserve.logging import configure_logging_for
    from asgiserve.server import run_server

    channel = socket.socket(fileno=channel_fd)
    try:
        spec = _receive_spec(channel)
    except (OSError, EOFError):
        return 1  # the supervisor died while starting us: nothing to report to
    # The app is imported as it would be in the supervisor (same cwd, same sys.path).
    sys.path[:] = [*spec.sys_path, *([] if _ROOT in spec.sys_path else [_ROOT])]
    config = spec.config
    configure_logging_for(config)
    sockets = [socket.socket(fileno=fd) for fd in spec.fds]
    # pass_fds made these inheritable: the app's own subprocesses must not hold the listeners
    # (they would keep the port open) or the channel (the supervisor would not see us exit).
    for sock in (channel, *sockets):
        os.set_inheritable(sock.fileno(), False)
    channel.setblocking(False)
    link = _SupervisorLink(channel)
    return run_server(
        config, sockets=sockets, on_started=link.started, on_max_requests=link.recycle
    )
