"""Process supervisors (multiple workers, reload), and :func:`run`, which picks the process model.

* no ``workers``, no ``reload``: the server runs in this process (:func:`~asgiserve.server.run_server`);
* ``workers=N``: :class:`~.multiprocess.MultiprocessSupervisor` binds the sockets and keeps N
  worker processes serving them;
* ``reload``: :class:`~.reload.ReloadSupervisor` binds the sockets and restarts one worker
  process when a watched file changes.

Either way the PID file (``--pid-file``) holds this process's PID while it runs.
"""

from __future__ import annotations

import contextlib
import logging
import os

from asgiserve.config import Config
from asgiserve.server import EXIT_STARTUP_FAILURE, run_server
from asgiserve.transport.binding import (
    BindError,
    bind_listeners,
    plan_listeners,
    release_listeners,
)

__all__ = ["run"]

logger = logging.getLogger("asgiserve.error")


def run(config: Config) -> int:
    """Serve as the config says until told to stop; return the process exit code."""
    pid = os.getpid()
    if config.pid_file is not None:
        try:
            _write_pid_file(config.pid_file, pid)
        except OSError as exc:
            logger.error("Cannot write the PID file %r: %s", config.pid_file, exc.strerror or exc)
            return EXIT_STARTUP_FAILURE
    try:
        if config.reload or config.workers is not None:
            return _supervise(config)
        return run_server(config)
    finally:
        if config.pid_file is not None:
            _remove_pid_file(config.pid_file, pid)


def _supervise(config: Config) -> int:
    listeners = plan_listeners(
        host=config.host, port=config.port, uds=config.uds, fd=config.fd, binds=config.bind
    )
    try:
        sockets = bind_listeners(listeners)
        # Listening now, before any worker exists, lets connections wait in the backlog while
        # the workers start (or restart) instead of being refused.
        for sock in sockets:
            sock.listen(config.backlog)
    except (BindError, OSError) as exc:
        logger.error("%s", exc)
        return EXIT_STARTUP_FAILURE
    try:
        if config.reload:
            from asgiserve.supervisors.reload import ReloadSupervisor

            return ReloadSupervisor(config, sockets).run()
        from asgiserve.supervisors.multiprocess import MultiprocessSupervisor

        assert config.workers is not None
        return MultiprocessSupervisor(config, sockets, workers=config.workers).run()
    finally:
        release_listeners(sockets, listeners)


def _write_pid_file(path: str, pid: int) -> None:
    # Written to a temporary name and renamed, so a reader never sees a half-written file.
    temporary = f"{path}.{pid}.tmp"
    try:
        with open(temporary, "w", encoding="ascii") as file:
            file.write(f"{pid}\n")
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _remove_pid_file(path: str, pid: int) -> None:
    # Only if it is still ours: a newer server may have written its own PID there since.
    with contextlib.suppress(OSError, ValueError):
        with open(path, encoding="ascii") as file:
            ours = int(file.read().strip()) == pid
        if ours:
            os.unlink(path)
