"""A worker that stopped consuming while the broker is up restarts itself.

Celery's Redis transport can leave a worker that lost its broker connection alive but deaf: Redis is back and
answers, the worker process runs, and no task is received any more until the process is restarted (celery#8030,
#9054, #10205 and #10302, still reported against 5.6; the chaos test that stops Redis for 20 s met it here).
Nothing the platform does would happen again: no reconcile pass, no deploy, no restart of a crashed replica.

So the worker's main process watches its own consumer. Every WORKER_PROBE_SECONDS it publishes a no-op task
(`coltsfoot.worker_probe`) to the queue it consumes; any message it receives counts as a sign of life. When
nothing has been received for WORKER_STALL_SECONDS although the broker answers PING and the worker had room for
another message (fewer requests reserved than its prefetch limit), the consumer is taken for wedged: the watchdog
logs an error, terminates the pool's processes and executes the worker again in place (same pid, same arguments,
the same log), which is what a supervisor restarting it would do. Work in flight is not lost: tasks are acked
late, and the reconciler re-queues deployments whose lease went stale.

The other half of the same failure: on a lost connection kombu 5.7 with redis-py 8 can raise inside its own
recovery, Celery logs "Unrecoverable error" and starts a shutdown that then hangs (met here too). The watchdog
sees that record on the `celery.worker` logger and restarts the worker at once. Nothing the watchdog does waits
on Celery: the probe is published from a short-lived thread of its own.

With several workers on one queue each receives some of the others' probes too, which only makes a false alarm
less likely. WORKER_STALL_SECONDS = 0 turns the watchdog off.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import billiard
import redis
from celery import shared_task
from celery.signals import task_received
from celery.signals import worker_ready
from celery.signals import worker_shutting_down
from celery.worker import state as worker_state
from django.conf import settings

logger = logging.getLogger(__name__)

PROBE_TASK = "coltsfoot.worker_probe"


@shared_task(name=PROBE_TASK, ignore_result=True)
def worker_probe() -> None:
    """Does nothing: receiving it is the point."""


@dataclass
class Liveness:
    """When the consumer last showed it receives, as the watchdog's decision sees it (monotonic seconds)."""

    stall_seconds: float
    last_seen: float = field(default_factory=time.monotonic)

    def received(self, now: float | None = None) -> None:
        self.last_seen = time.monotonic() if now is None else now

    def wedged(self, *, now: float, broker_up: bool, reserved: int, capacity: int) -> bool:
        """Whether to restart: nothing received for stall_seconds while it could have been. A broker that does not
        answer, or a worker whose prefetch limit is reached (busy with long tasks, so it takes no message), resets
        the clock: neither is the consumer's fault."""
        if not broker_up or reserved >= capacity:
            self.received(now)
            return False
        return now - self.last_seen >= self.stall_seconds


def _broker_up() -> bool:
    client = redis.Redis.from_url(str(settings.CELERY_BROKER_URL), socket_timeout=2, socket_connect_timeout=2)
    try:
        return bool(client.ping())
    except redis.exceptions.RedisError:
        return False
    finally:
        client.close()


def _restart_in_place() -> None:
    """Kill the pool's processes, then exec this worker again with its own command line. Nothing on the way
    may stop the exec: Celery's own threads reap the same children meanwhile (a joined child's sentinel can
    be closed under us), so the children are handled by pid, and any error is logged and passed over."""
    pids: list[int] = []
    try:
        pids = [child.pid for child in billiard.active_children() if child.pid is not None]
    except Exception:
        logger.warning("worker restart: could not list the pool's processes", exc_info=True)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if _child_alive(pid)]
        if pids:
            time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os.execv(sys.executable, sys.orig_argv)  # noqa: S606 - this process's own interpreter and arguments


def _child_alive(pid: int) -> bool:
    """Whether a child of this process still runs (reaping it if it has exited)."""
    try:
        reaped, _status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False  # already reaped (by Celery's own supervision): gone
    return reaped == 0


class _Fatal(logging.Handler):
    """Sets `event` on Celery's "Unrecoverable error" (the only CRITICAL the worker logs)."""

    def __init__(self, event: threading.Event) -> None:
        super().__init__(level=logging.CRITICAL)
        self.event = event

    def emit(self, record: logging.LogRecord) -> None:
        self.event.set()


class Watchdog:
    def __init__(self, app: Any, capacity: int) -> None:
        self.app = app
        self.capacity = max(1, capacity)
        self.liveness = Liveness(stall_seconds=float(settings.WORKER_STALL_SECONDS))
        self.stopped = threading.Event()
        self.fatal = threading.Event()
        self.thread = threading.Thread(target=self.run, name="coltsfoot-watchdog", daemon=True)
        self._probe: threading.Thread | None = None

    def _send_probe(self) -> None:
        with contextlib.suppress(Exception):  # a broken broker connection: the decision sees the broker
            self.app.send_task(PROBE_TASK)

    def probe(self) -> None:
        """Publish a probe without waiting for it: a publish can block while Celery's connection is broken."""
        if self._probe is not None and self._probe.is_alive():
            return
        self._probe = threading.Thread(target=self._send_probe, name="coltsfoot-watchdog-probe", daemon=True)
        self._probe.start()

    def run(self) -> None:
        period = float(settings.WORKER_PROBE_SECONDS)
        while not self.stopped.is_set():
            if self.fatal.wait(period):
                if self.stopped.is_set():
                    return
                logger.error("worker: Celery gave up after an unrecoverable error; restarting the worker")
                _restart_in_place()
                return
            if self.stopped.is_set():
                return
            self.probe()
            wedged = self.liveness.wedged(
                now=time.monotonic(),
                broker_up=_broker_up(),
                reserved=len(worker_state.reserved_requests),
                capacity=self.capacity,
            )
            if wedged:
                logger.error(
                    "worker: nothing received for %.0f s while the broker answers; restarting the worker",
                    time.monotonic() - self.liveness.last_seen,
                )
                _restart_in_place()
                return


_watchdog: list[Watchdog] = []


@task_received.connect
def _on_received(**_: Any) -> None:
    if _watchdog:
        _watchdog[0].liveness.received()


@worker_ready.connect
def _start(sender: Any = None, **_: Any) -> None:
    if float(settings.WORKER_STALL_SECONDS) <= 0 or _watchdog:
        return
    controller = getattr(sender, "controller", None)
    concurrency = int(getattr(controller, "concurrency", 1) or 1)
    capacity = concurrency * max(1, int(settings.CELERY_WORKER_PREFETCH_MULTIPLIER))
    watchdog = Watchdog(sender.app, capacity)
    _watchdog.append(watchdog)
    logging.getLogger("celery.worker").addHandler(_Fatal(watchdog.fatal))
    watchdog.thread.start()
    logger.info("worker watchdog started", extra={"stall_seconds": watchdog.liveness.stall_seconds})


@worker_shutting_down.connect
def _stop(**_: Any) -> None:
    for watchdog in _watchdog:
        watchdog.stopped.set()
