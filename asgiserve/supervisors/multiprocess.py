"""The multiprocess supervisor: N worker processes sharing the same listening sockets.

Theory of operation. The sockets are bound once, by the supervisor, before any worker exists,
and stay open for the supervisor's whole life. Every worker inherits the same sockets and
accepts from the same kernel queues, so no connection depends on one worker: while a worker
drains (closes its copy of the listeners, finishes its requests), the others, or its
replacement, accept what arrives, and whatever arrives while no worker accepts waits in the
backlog. That is what makes rolling restarts and recycling lossless. The supervisor never
imports the app and knows nothing about HTTP: it takes a Config and sockets, and runs a small
asyncio loop of signals, one channel per worker (:mod:`.worker`), SIGCHLD and a tick.

A worker goes STARTING -> SERVING -> STOPPING (:class:`~.worker.Phase`). A worker that should be
replaced (SIGHUP, ``--limit-max-requests``, ``--limit-worker-memory``) is *retiring*: it keeps
serving, :meth:`balance` starts a replacement, and a retiring worker is told to stop (SIGTERM,
a graceful drain) only once enough other workers serve without it.

How exits are read:

* before READY, with a non-zero status: a startup failure (the app does not import, lifespan
  startup failed, ...). Every new worker would fail the same way, so the server stops, exit 3;
* any other unexpected exit: a crash. The worker is replaced, after a growing delay when
  crashes repeat;
* no answer to a health ping within ``--timeout-worker-healthcheck``: the worker's event loop is
  blocked. It is killed (SIGKILL) and replaced.

Signals: SIGINT/SIGTERM stop every worker gracefully, then the supervisor exits 0 (a second
SIGINT is passed on, which makes the workers stop without waiting). SIGHUP replaces the workers
one at a time. SIGTTIN/SIGTTOU add/remove a worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Sequence

from asgiserve.config import Config
from asgiserve.server import EXIT_STARTUP_FAILURE
from asgiserve.supervisors.worker import (
    PONG,
    READY,
    RECYCLE,
    Phase,
    WorkerProcess,
    rss_bytes,
    spawn,
)
from asgiserve.transport.binding import describe

__all__ = ["MultiprocessSupervisor"]

logger = logging.getLogger("asgiserve.error")

#: Seconds between the supervisor's checks (exits, health, memory, deadlines).
TICK = 0.1
#: Seconds between health pings to a worker (or the health timeout, if shorter).
PING_INTERVAL = 1.0
#: Seconds between resident-memory samples of a worker.
MEMORY_INTERVAL = 1.0
#: Seconds a stopping worker gets beyond ``--timeout-graceful-shutdown`` (lifespan shutdown)
#: before it is killed.
STOP_MARGIN = 5.0
#: Crash backoff: the delay doubles with each crash within the window, up to the maximum.
CRASH_WINDOW = 60.0
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 10.0
MIB = 1024 * 1024


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


class MultiprocessSupervisor:
    #: Whether hung workers are detected; the reloader turns it off (a breakpoint blocks the
    #: event loop on purpose).
    health_checks = True

    def __init__(self, config: Config, sockets: Sequence[socket.socket], *, workers: int) -> None:
        self.config = config
        self.sockets = list(sockets)
        self.target = workers
        self.workers: list[WorkerProcess] = []
        self.generation = 0
        self.exit_code = 0
        self.stopping = False
        self._announced = False
        self._crashes: list[float] = []
        self._spawn_not_before = 0.0
        self._spawn_timer: asyncio.TimerHandle | None = None
        self._tick_handle: asyncio.TimerHandle | None = None
        self._signals: list[int] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done: asyncio.Future[None] | None = None

    # -- running -----------------------------------------------------------------------------

    def run(self) -> int:
        """Supervise until told to stop; return the exit code."""
        loop = asyncio.new_event_loop()
        try:
            return loop.run_until_complete(self._main())
        finally:
            loop.close()

    async def _main(self) -> int:
        loop = self._loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        self._install_signal_handlers()
        try:
            logger.info("Supervisor %d started: starting %d worker(s).", os.getpid(), self.target)
            self.on_start()
            self.balance()
            self._tick()
            await self._done
        finally:
            self.on_stop()
            for handle in (self._tick_handle, self._spawn_timer):
                if handle is not None:
                    handle.cancel()
            self._remove_signal_handlers()
            self._kill_all()
        return self.exit_code

    def on_start(self) -> None:
        """Called on the supervisor's loop before the first worker starts."""

    def on_stop(self) -> None:
        """Called when the supervisor is done, before its loop closes."""

    def shutdown(self, exit_code: int = 0) -> None:
        """Stop every worker gracefully; the supervisor returns ``exit_code`` once all exited."""
        if self.stopping:
            return
        self.stopping = True
        self.exit_code = exit_code
        if self._spawn_timer is not None:
            self._spawn_timer.cancel()
        for worker in self.workers:
            self._stop(worker)
        self._check_done()

    def _check_done(self) -> None:
        if self.stopping and not self.workers and self._done is not None and not self._done.done():
            self._done.set_result(None)

    def _kill_all(self) -> None:
        """Last resort, if the supervisor itself fails: no worker outlives it."""
        for worker in self.workers:
            worker.signal(signal.SIGKILL)
            with contextlib.suppress(Exception):
                worker.process.wait(5)
            worker.close()
        self.workers.clear()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    # -- the pool ----------------------------------------------------------------------------

    def balance(self) -> None:
        """Start or stop workers until ``target`` of them are neither retiring nor stopping."""
        if self.stopping:
            return
        active = [w for w in self.workers if w.phase is not Phase.STOPPING and not w.retiring]
        missing = self.target - len(active)
        if missing > 0:
            for _ in range(missing):
                delay = self._spawn_not_before - self.loop.time()
                if delay > 0:
                    if self._spawn_timer is None:
                        self._spawn_timer = self.loop.call_later(delay, self._spawn_later)
                    break
                if not self._spawn():
                    return
        elif missing < 0:
            # Workers still starting serve nobody yet: they go first, then the oldest.
            by_use = sorted(active, key=lambda w: (w.phase is Phase.SERVING, w.started_at))
            for worker in by_use[:-missing]:
                self._stop(worker)
        self._release_retirees()

    def _spawn_later(self) -> None:
        self._spawn_timer = None
        self.balance()

    def _spawn(self) -> bool:
        try:
            worker = spawn(self.config, self.sockets, self.generation)
        except OSError as exc:
            logger.error("Could not start a worker process: %s", exc)
            if not self._announced:
                self.shutdown(EXIT_STARTUP_FAILURE)
            else:
                # Out of processes or memory, probably: try again later, not in a loop.
                self._note_crash()
                self._spawn_not_before = max(
                    self._spawn_not_before, self.loop.time() + FIRST_BACKOFF
                )
                self.balance()  # schedules the next attempt
            return False
        worker.started_at = self.loop.time()
        self.workers.append(worker)
        self.loop.add_reader(worker.channel.fileno(), self._on_message, worker)
        logger.debug("Started worker %d.", worker.pid)
        return True

    def _stop(self, worker: WorkerProcess) -> None:
        """Tell a worker to finish its requests and exit (SIGTERM: the server's graceful path)."""
        if worker.phase is Phase.STOPPING:
            return
        worker.phase = Phase.STOPPING
        worker.retiring = False
        worker.stop_deadline = (
            self.loop.time() + self.config.timeouts.graceful_shutdown + STOP_MARGIN
        )
        worker.signal(signal.SIGTERM)

    def _kill(self, worker: WorkerProcess) -> None:
        worker.phase = Phase.STOPPING
        worker.retiring = False
        worker.killed = True
        worker.signal(signal.SIGKILL)

    def retire(self, worker: WorkerProcess, reason: str) -> None:
        """Replace ``worker`` gracefully: it serves until its replacement does."""
        if self.stopping or worker.phase is not Phase.SERVING or worker.retiring:
            return
        logger.info("Worker %d %s: starting its replacement.", worker.pid, reason)
        worker.retiring = True
        self.balance()

    def _release_retirees(self) -> None:
        """Stop retiring workers once ``target`` others serve without them."""
        serving = sum(1 for w in self.workers if w.phase is Phase.SERVING and not w.retiring)
        for worker in [w for w in self.workers if w.retiring]:
            if serving < self.target:
                break
            logger.info("Worker %d is replaced: stopping it gracefully.", worker.pid)
            self._stop(worker)

    def _advance_rollout(self) -> None:
        """SIGHUP's rolling restart: one worker of an older generation at a time."""
        if self.stopping or any(w.retiring for w in self.workers):
            return
        old = [
            w for w in self.workers if w.phase is Phase.SERVING and w.generation < self.generation
        ]
        if old:
            self.retire(min(old, key=lambda w: w.started_at), "is being restarted (SIGHUP)")

    # -- what workers say and do ---------------------------------------------------------------

    def _on_message(self, worker: WorkerProcess) -> None:
        data = worker.receive()
        if data is None:
            # The worker is exiting (or gone): stop listening; SIGCHLD or the tick reaps it.
            self.loop.remove_reader(worker.channel.fileno())
            self._reap()
            return
        if READY in data:
            self._on_ready(worker)
        if PONG in data:
            worker.ping_sent_at = None
            worker.last_pong = self.loop.time()
        if RECYCLE in data:
            self.retire(worker, "reached its request limit")

    def _on_ready(self, worker: WorkerProcess) -> None:
        if worker.phase is not Phase.STARTING:
            return
        worker.phase = Phase.SERVING
        worker.last_pong = self.loop.time()
        self._release_retirees()
        if not self._announced and all(w.phase is not Phase.STARTING for w in self.workers):
            self._announced = True
            self.announce()
        self._advance_rollout()

    def announce(self) -> None:
        """Every first worker serves: print the listeners (the line people and tests wait for)."""
        for sock in self.sockets:
            logger.info(
                "asgiserve running on %s (workers: %d, supervisor pid: %d) - press CTRL+C to quit",
                describe(sock, "https" if self.config.tls.enabled else "http"),
                self.target,
                os.getpid(),
            )

    def _reap(self) -> None:
        for worker in list(self.workers):
            code = worker.poll()
            if code is None:
                continue
            self.workers.remove(worker)
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_reader(worker.channel.fileno())
            worker.close()
            self._on_exit(worker, code)
        self._check_done()
        if not self.stopping:
            self.balance()
            self._advance_rollout()

    def _on_exit(self, worker: WorkerProcess, code: int) -> None:
        how = describe_exit(code)
        if worker.phase is Phase.STOPPING:
            if not worker.killed:
                logger.info("Worker %d stopped (%s).", worker.pid, how)
            return
        if worker.phase is Phase.STARTING and code > 0:
            self.worker_failed_to_start(worker, how)
        else:
            self.worker_died(worker, how)

    def worker_failed_to_start(self, worker: WorkerProcess, how: str) -> None:
        logger.error(
            "Worker %d failed to start (%s): stopping the server, since every new worker "
            "would fail the same way. The reason is logged above.",
            worker.pid,
            how,
        )
        self.shutdown(EXIT_STARTUP_FAILURE)

    def worker_died(self, worker: WorkerProcess, how: str) -> None:
        delay = self._note_crash()
        logger.error(
            "Worker %d died (%s): starting a replacement%s.",
            worker.pid,
            how,
            f" in {delay:g}s" if delay else "",
        )

    def _note_crash(self) -> float:
        """Record a crash; return how long to wait before the next start."""
        now = self.loop.time()
        self._crashes = [t for t in self._crashes if now - t < CRASH_WINDOW] + [now]
        repeats = len(self._crashes) - 1
        delay = 0.0 if not repeats else min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (repeats - 1))
        self._spawn_not_before = max(self._spawn_not_before, now + delay)
        return delay

    # -- the tick: exits, health, memory, deadlines --------------------------------------------

    def _tick(self) -> None:
        # SIGCHLD does the reaping; polling here too covers coalesced or early signals.
        self._reap()
        now = self.loop.time()
        memory_limit = self.config.limits.worker_memory
        for worker in list(self.workers):
            if worker.phase is Phase.STOPPING:
                if worker.stop_deadline is not None and now > worker.stop_deadline:
                    logger.warning("Worker %d did not stop in time: killing it.", worker.pid)
                    worker.stop_deadline = None
                    worker.signal(signal.SIGKILL)
                continue
            if worker.phase is not Phase.SERVING:
                continue
            if self.health_checks:
                self._check_health(worker, now)
            if memory_limit is not None and now >= worker.next_memory_sample:
                worker.next_memory_sample = now + MEMORY_INTERVAL
                self._check_memory(worker, memory_limit)
        self._tick_handle = self.loop.call_later(TICK, self._tick)

    def _check_health(self, worker: WorkerProcess, now: float) -> None:
        timeout = self.config.timeouts.worker_healthcheck
        if worker.ping_sent_at is None:
            if now - worker.last_pong >= min(PING_INTERVAL, timeout):
                worker.ping_sent_at = now
                worker.ping()
        elif now - worker.ping_sent_at > timeout:
            logger.error(
                "Worker %d did not answer the health check within %gs (its event loop is "
                "blocked): killing it and starting a replacement.",
                worker.pid,
                timeout,
            )
            self._kill(worker)
            self.balance()

    def _check_memory(self, worker: WorkerProcess, limit_mib: int) -> None:
        if worker.retiring:
            return
        rss = rss_bytes(worker.pid)
        if rss is not None and rss > limit_mib * MIB:
            self.retire(
                worker, f"uses {rss / MIB:.0f} MiB, above --limit-worker-memory {limit_mib}"
            )

    # -- signals -------------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        for sig in (
            signal.SIGINT,
            signal.SIGTERM,
            signal.SIGHUP,
            signal.SIGTTIN,
            signal.SIGTTOU,
            signal.SIGCHLD,
        ):
            self.loop.add_signal_handler(sig, self._on_signal, sig)
            self._signals.append(sig)

    def _remove_signal_handlers(self) -> None:
        for sig in self._signals:
            self.loop.remove_signal_handler(sig)
        self._signals.clear()

    def _on_signal(self, sig: int) -> None:
        if sig == signal.SIGCHLD:
            self._reap()
            return
        name = signal.Signals(sig).name
        if sig in (signal.SIGINT, signal.SIGTERM):
            if not self.stopping:
                logger.info(
                    "Received %s: stopping %d worker(s) gracefully.", name, len(self.workers)
                )
                self.shutdown(0)
            elif sig == signal.SIGINT:
                logger.warning("Second interrupt: telling the workers to exit without waiting.")
                # After a SIGTERM, a worker's server takes SIGINT as "do not wait".
                for worker in self.workers:
                    worker.signal(signal.SIGINT)
            return
        if self.stopping:
            return
        if sig == signal.SIGHUP:
            self.on_hangup()
        elif sig == signal.SIGTTIN:
            self.change_workers(+1)
        elif sig == signal.SIGTTOU:
            self.change_workers(-1)

    def change_workers(self, delta: int) -> None:
        """SIGTTIN (+1) and SIGTTOU (-1)."""
        name = "SIGTTIN" if delta > 0 else "SIGTTOU"
        if self.target + delta < 1:
            logger.warning("Received %s: keeping the last worker.", name)
            return
        self.target += delta
        logger.info("Received %s: %d worker(s).", name, self.target)
        self.balance()

    def on_hangup(self) -> None:
        self.generation += 1
        logger.info("Received SIGHUP: replacing the workers one at a time.")
        self._advance_rollout()
