"""The reload supervisor (``--reload``, for development): restart the server when code changes.

Theory of operation. It is the multiprocess supervisor with one worker and other policies: the
sockets are bound once, so the port never closes across restarts (a request made during one
waits in the backlog); a watcher thread reports changed files to the supervisor's loop, which
stops the worker (gracefully) and starts a new one once the old one has exited, so old and new
code never run side by side (an app's lifespan may hold a resource exclusively). A worker that
fails to start (a syntax error, an import error) or dies is reported, and the supervisor waits
for the next change instead of exiting or restarting in a loop. Health checks are off: a
breakpoint blocks the event loop on purpose.

Watching uses ``watchfiles`` (inotify/FSEvents via Rust) when installed, and otherwise polls
``stat()`` of the watched files a few times a second. Both go through :class:`PathFilter`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterable, Iterator, Sequence
from fnmatch import fnmatchcase
from pathlib import PurePath

from asgiserve.config import Config
from asgiserve.supervisors.multiprocess import MultiprocessSupervisor
from asgiserve.supervisors.worker import WorkerProcess
from asgiserve.transport.binding import describe

__all__ = [
    "DEFAULT_EXCLUDES",
    "DEFAULT_INCLUDES",
    "PathFilter",
    "ReloadSupervisor",
    "poll_changes",
    "watch_changes",
]

logger = logging.getLogger("asgiserve.error")

DEFAULT_INCLUDES = ("*.py",)
#: Matched against each file and directory name under a watched directory.
DEFAULT_EXCLUDES = (
    ".*",  # .git, .venv, .mypy_cache, editors' hidden swap and lock files
    "__pycache__",
    "*.py[cod]",
    "*~",
    "*.swp",
    "*.egg-info",
    "node_modules",
    "venv",
)
#: Seconds between two scans of the stat() poller.
POLL_INTERVAL = 0.25


class PathFilter:
    """Which files under the watched directories count as changes.

    A file counts if its name (or its path relative to the watched directory) matches an
    include pattern and no exclude pattern, and no directory on the way is excluded. The user's
    includes win over the default excludes (``--reload-include .env`` works); the user's
    excludes win over everything.
    """

    def __init__(
        self, roots: Iterable[str], includes: Sequence[str] = (), excludes: Sequence[str] = ()
    ) -> None:
        self.roots = sorted({os.path.abspath(root) for root in roots}, key=len, reverse=True)
        self.includes = tuple(includes)
        self.excludes = tuple(excludes)

    def skip_dir(self, name: str) -> bool:
        return _matches(name, self.excludes) or (
            _matches(name, DEFAULT_EXCLUDES) and not _matches(name, self.includes)
        )

    def __call__(self, path: str) -> bool:
        parts = self._relative_parts(path)
        if not parts or any(self.skip_dir(part) for part in parts[:-1]):
            return False
        name, relative = parts[-1], "/".join(parts)
        if _matches(name, self.excludes) or _matches(relative, self.excludes):
            return False
        if _matches(name, self.includes) or _matches(relative, self.includes):
            return True
        if _matches(name, DEFAULT_EXCLUDES):
            return False
        return _matches(name, DEFAULT_INCLUDES)

    def _relative_parts(self, path: str) -> tuple[str, ...]:
        absolute = os.path.abspath(path)
        for root in self.roots:
            if absolute.startswith(root + os.sep):
                return PurePath(absolute[len(root) + 1 :]).parts
        return ()


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(name, pattern) for pattern in patterns)


def poll_changes(
    roots: Sequence[str], path_filter: PathFilter, stop: threading.Event
) -> Iterator[set[str]]:
    """Yield the files whose modification time or size changed (or that appeared or
    disappeared), checked every :data:`POLL_INTERVAL` seconds, until ``stop`` is set."""
    previous = _snapshot(roots, path_filter)
    while not stop.wait(POLL_INTERVAL):
        current = _snapshot(roots, path_filter)
        changed = {
            path
            for path in previous.keys() | current.keys()
            if previous.get(path) != current.get(path)
        }
        previous = current
        if changed:
            yield changed


def _snapshot(roots: Sequence[str], path_filter: PathFilter) -> dict[str, tuple[int, int]]:
    files: dict[str, tuple[int, int]] = {}
    for root in roots:
        for directory, dirnames, filenames in os.walk(root):
            dirnames[:] = [name for name in dirnames if not path_filter.skip_dir(name)]
            for name in filenames:
                path = os.path.join(directory, name)
                if not path_filter(path):
                    continue
                try:
                    info = os.stat(path)
                except OSError:
                    continue  # deleted between the listing and the stat
                files[path] = (info.st_mtime_ns, info.st_size)
    return files


def watch_changes(
    roots: Sequence[str], path_filter: PathFilter, stop: threading.Event
) -> Iterator[set[str]]:
    """Yield sets of changed files until ``stop`` is set: watchfiles if installed, else polling."""
    try:
        import watchfiles
    except ImportError:
        logger.info("Watching %s for changes (stat polling).", ", ".join(roots))
        yield from poll_changes(roots, path_filter, stop)
        return
    logger.info("Watching %s for changes (watchfiles).", ", ".join(roots))
    for changes in watchfiles.watch(
        *roots,
        watch_filter=lambda _change, path: path_filter(path),
        stop_event=stop,
        # Yield 50 ms after the last of a burst of events (an editor's save, a git checkout).
        step=50,
        rust_timeout=500,
        yield_on_timeout=False,
        raise_interrupt=False,
    ):
        yield {path for _change, path in changes}


class ReloadSupervisor(MultiprocessSupervisor):
    health_checks = False

    def __init__(self, config: Config, sockets: Sequence[socket.socket]) -> None:
        super().__init__(config, sockets, workers=1)
        options = config.reloader
        self.roots = [os.path.abspath(d) for d in (options.dirs or (config.app_dir,))]
        self.path_filter = PathFilter(self.roots, options.includes, options.excludes)
        self.waiting_for_change = False
        self._stop_watching = threading.Event()
        self._watcher: threading.Thread | None = None

    def on_start(self) -> None:
        for root in self.roots:
            if not os.path.isdir(root):
                logger.warning("Reload directory %s does not exist: not watched.", root)
        self.roots = [root for root in self.roots if os.path.isdir(root)]
        if not self.roots:
            logger.warning("No directory to watch: automatic reloading is off.")
            return
        self._watcher = threading.Thread(target=self._watch, name="asgiserve-reload", daemon=True)
        self._watcher.start()

    def on_stop(self) -> None:
        self._stop_watching.set()
        if self._watcher is not None:
            self._watcher.join(5)

    def _watch(self) -> None:
        """In the watcher thread: hand every batch of changes to the supervisor's loop."""
        try:
            for changed in watch_changes(self.roots, self.path_filter, self._stop_watching):
                if self._stop_watching.is_set():
                    return
                self.loop.call_soon_threadsafe(self._on_change, changed)
        except Exception:
            logger.exception("The file watcher failed: automatic reloading is off.")

    def _on_change(self, changed: set[str]) -> None:
        if self.stopping:
            return
        shown = sorted(os.path.relpath(path) for path in changed)
        more = f" and {len(shown) - 3} more" if len(shown) > 3 else ""
        logger.warning("Changes detected in %s%s: reloading.", ", ".join(shown[:3]), more)
        self.restart()

    def restart(self) -> None:
        self.waiting_for_change = False
        for worker in self.workers:
            self._stop(worker)
        self.balance()

    def balance(self) -> None:
        # One worker, started only once the previous one has exited, and none while the code
        # is known to be broken.
        if not self.workers and not self.waiting_for_change:
            super().balance()

    def retire(self, worker: WorkerProcess, reason: str) -> None:
        logger.info("Worker %d %s: restarting it.", worker.pid, reason)
        self.restart()

    def on_hangup(self) -> None:
        logger.info("Received SIGHUP: reloading.")
        self.restart()

    def change_workers(self, delta: int) -> None:
        logger.warning(
            "Received %s: ignored, --reload runs one worker.", "SIGTTIN" if delta > 0 else "SIGTTOU"
        )

    def worker_failed_to_start(self, worker: WorkerProcess, how: str) -> None:
        logger.error(
            "The app failed to start (%s; the reason is logged above): waiting for a file "
            "change to try again.",
            how,
        )
        self.waiting_for_change = True

    def worker_died(self, worker: WorkerProcess, how: str) -> None:
        logger.error(
            "Worker %d died (%s): waiting for a file change to start again.", worker.pid, how
        )
        self.waiting_for_change = True

    def announce(self) -> None:
        for sock in self.sockets:
            logger.info(
                "asgiserve running on %s (reload, supervisor pid: %d) - press CTRL+C to quit",
                describe(sock, "https" if self.config.tls.enabled else "http"),
                os.getpid(),
            )
