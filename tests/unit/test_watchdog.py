"""The worker watchdog's decision (provisioning/watchdog.py): restart only a worker that could have received and
did not, while the broker answers."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any
from unittest import mock

import billiard
import pytest

from provisioning import watchdog
from provisioning.watchdog import Liveness


@pytest.mark.parametrize(
    ("silent_for", "broker_up", "reserved", "expected"),
    [
        pytest.param(10, True, 0, False, id="received recently"),
        pytest.param(130, True, 0, True, id="deaf for longer than the stall time, broker up: wedged"),
        pytest.param(130, False, 0, False, id="the broker is down: not the consumer's fault"),
        pytest.param(130, True, 2, False, id="busy with as many tasks as it may take: it takes no message"),
        pytest.param(130, True, 1, True, id="room for one more and still deaf: wedged"),
    ],
)
def test_wedged_decisions(silent_for: float, broker_up: bool, reserved: int, expected: bool):
    liveness = Liveness(stall_seconds=120, last_seen=1000.0)
    now = 1000.0 + silent_for
    assert liveness.wedged(now=now, broker_up=broker_up, reserved=reserved, capacity=2) is expected


def test_an_outage_or_a_busy_spell_restarts_the_clock():
    liveness = Liveness(stall_seconds=120, last_seen=0.0)
    assert not liveness.wedged(now=500.0, broker_up=False, reserved=0, capacity=2)
    assert not liveness.wedged(now=600.0, broker_up=True, reserved=0, capacity=2)  # 100 s since the outage ended
    assert liveness.wedged(now=621.0, broker_up=True, reserved=0, capacity=2)


class FakeApp:
    def __init__(self, dog: list[watchdog.Watchdog], *, deliver: bool) -> None:
        self.sent: list[str] = []
        self.dog = dog
        self.deliver = deliver

    def send_task(self, name: str) -> None:
        self.sent.append(name)
        if self.deliver:
            self.dog[0].liveness.received()


@pytest.mark.parametrize("deliver", [True, False])
def test_the_watchdog_probes_and_restarts_only_a_deaf_worker(settings: Any, deliver: bool):
    settings.WORKER_STALL_SECONDS = 0.3
    settings.WORKER_PROBE_SECONDS = 0.05
    holder: list[watchdog.Watchdog] = []
    app = FakeApp(holder, deliver=deliver)
    dog = watchdog.Watchdog(app, capacity=2)
    holder.append(dog)
    restarted = threading.Event()
    with (
        mock.patch.object(watchdog, "_broker_up", autospec=True, return_value=True),
        mock.patch.object(watchdog, "_restart_in_place", autospec=True, side_effect=restarted.set),
    ):
        dog.thread.start()
        restarted.wait(timeout=2.0 if not deliver else 1.0)
        dog.stopped.set()
        dog.thread.join(timeout=2)
    assert app.sent
    assert set(app.sent) == {watchdog.PROBE_TASK}
    assert restarted.is_set() is (not deliver)


def test_celerys_unrecoverable_error_restarts_the_worker_at_once(settings: Any):
    settings.WORKER_STALL_SECONDS = 3600  # the stall clock plays no part
    settings.WORKER_PROBE_SECONDS = 0.05
    holder: list[watchdog.Watchdog] = []
    dog = watchdog.Watchdog(FakeApp(holder, deliver=True), capacity=2)
    holder.append(dog)
    handler = watchdog._Fatal(dog.fatal)
    celery_worker_logger = logging.getLogger("celery.worker")
    celery_worker_logger.addHandler(handler)
    restarted = threading.Event()
    try:
        with mock.patch.object(watchdog, "_restart_in_place", autospec=True, side_effect=restarted.set):
            dog.thread.start()
            celery_worker_logger.warning("consumer: Connection to broker lost")  # not fatal
            assert not restarted.wait(0.3)
            celery_worker_logger.critical("Unrecoverable error: %r", AttributeError("hostname"))
            assert restarted.wait(2.0)
            dog.thread.join(timeout=2)
    finally:
        celery_worker_logger.removeHandler(handler)
        dog.stopped.set()
    assert not dog.thread.is_alive()


class _Exec(Exception):
    """Stands in for os.execv: the restart got as far as replacing the process."""


def _sleeper() -> None:
    time.sleep(60)


def test_the_restart_kills_the_pool_and_execs_even_when_its_children_were_reaped_under_it():
    live = billiard.Process(target=_sleeper, daemon=True)
    gone = billiard.Process(target=_sleeper, daemon=True)
    live.start()
    gone.start()
    gone.terminate()
    gone.join(5)  # reaped by someone else first, as Celery's supervision does, which also closed its sentinel:
    closed = mock.Mock(pid=gone.pid, join=mock.Mock(side_effect=ValueError("invalid file descriptor 17")))
    with (
        mock.patch.object(billiard, "active_children", return_value=[live, closed]),
        mock.patch.object(os, "execv", autospec=True, side_effect=_Exec) as execv,
        pytest.raises(_Exec),
    ):
        watchdog._restart_in_place()
    assert execv.call_args.args[1] == sys.orig_argv
    assert live.pid is not None
    with pytest.raises(ProcessLookupError):  # killed, and reaped by the restart itself
        os.kill(live.pid, 0)


def test_the_restart_execs_even_when_the_pool_cannot_be_listed(caplog: pytest.LogCaptureFixture):
    with (
        mock.patch.object(billiard, "active_children", side_effect=ValueError("invalid file descriptor 17")),
        mock.patch.object(os, "execv", autospec=True, side_effect=_Exec),
        pytest.raises(_Exec),
    ):
        watchdog._restart_in_place()
    assert "could not list the pool's processes" in caplog.text
