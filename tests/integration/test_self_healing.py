"""Chaos tests: break one thing at a time on a stack of this module's own and check what a visitor of a
tenant app and a tenant calling the API notice. The reconciler runs every 3 s here
(COLTSFOOT_RECONCILE_SECONDS in the fixture's environment); nothing in these tests ever asks the
platform to repair anything."""

from __future__ import annotations

import itertools
import logging
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from celery import Celery

from devstack.services import RedisServer
from devstack.stack import Stack
from tests.integration.helpers import deploy_archive
from tests.integration.helpers import hello_archive
from tests.integration.helpers import wait_for_deployment
from tests.integration.helpers import wait_until

pytestmark = pytest.mark.integration
logger = logging.getLogger(__name__)

RECOVERY_SECONDS = 30.0


def _podman(*args: str, check: bool = True) -> str:
    result = subprocess.run(
        ["podman", "--runtime", "/usr/bin/runsc", "--runtime-flag", "network=host", *args],
        check=check,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result.stdout


def _running(app_id: str) -> list[str]:
    out = _podman("ps", "--filter", f"label=coltsfoot.app={app_id}", "--filter", "label=coltsfoot.role=web",
                  "--format", "{{.Names}}")  # fmt: skip
    return sorted(line for line in out.splitlines() if line.strip())


@pytest.fixture(scope="module")
def stack(isolated_stack: Stack) -> Stack:
    return isolated_stack


@pytest.fixture(scope="module")
def tenant(stack: Stack) -> dict[str, Any]:
    platform = stack.require_platform()
    created = platform.create_tenant(f"c{uuid.uuid4().hex[:8]}")
    return {**created, "token": created["token"]}


def _client(stack: Stack, tenant: dict[str, Any]) -> httpx.Client:
    return stack.require_platform().client(tenant["token"])


def _deploy(stack: Stack, tenant: dict[str, Any], name: str, replicas: int, archive: bytes) -> dict[str, Any]:
    with _client(stack, tenant) as client:
        app = client.post("/apps", json={"name": name, "replicas": replicas})
        assert app.status_code == 201, app.text
        created = deploy_archive(client, app.json()["id"], archive)
        done = wait_for_deployment(client, created["id"], {"live", "failed"})
        assert done["state"] == "live", client.get(f"/deployments/{created['id']}/log").text
        return {**client.get(f"/apps/{app.json()['id']}").json(), "deployment_id": done["id"]}


@pytest.fixture(scope="module")
def pair(stack: Stack, tenant: dict[str, Any]) -> dict[str, Any]:
    """An app with two replicas."""
    return _deploy(stack, tenant, "pair", 2, hello_archive())


@pytest.fixture(scope="module")
def single(stack: Stack, tenant: dict[str, Any]) -> dict[str, Any]:
    """An app with one replica."""
    return _deploy(stack, tenant, "single", 1, hello_archive())


def _answers(stack: Stack, app: dict[str, Any]) -> bool:
    try:
        return stack.require_platform().edge_get(app["url"], timeout=5.0).status_code == 200
    except httpx.HTTPError:
        return False


class Prober:
    """Requests the app continuously from a thread and counts what a visitor would have seen."""

    def __init__(self, stack: Stack, app: dict[str, Any]) -> None:
        self._stack, self._app = stack, app
        self.statuses: list[int] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        platform = self._stack.require_platform()
        deadline = time.monotonic() + 120  # bounded, whatever happens to the test
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                self.statuses.append(platform.edge_get(self._app["url"], timeout=15.0).status_code)
            except httpx.HTTPError as exc:
                self.errors.append(type(exc).__name__)
            time.sleep(0.05)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def _replicas(stack: Stack, tenant: dict[str, Any], app: dict[str, Any]) -> list[dict[str, Any]]:
    with _client(stack, tenant) as client:
        response = client.get(f"/apps/{app['id']}/replicas")
        assert response.status_code == 200, response.text
        return response.json()["items"]  # type: ignore[no-any-return]


def _status(stack: Stack, tenant: dict[str, Any], app: dict[str, Any]) -> str:
    with _client(stack, tenant) as client:
        return str(client.get(f"/apps/{app['id']}").json()["status"])


def _all_running(stack: Stack, tenant: dict[str, Any], app: dict[str, Any], count: int) -> bool:
    replicas = _replicas(stack, tenant, app)
    return len(replicas) == count and all(r["state"] == "running" for r in replicas)


def test_killing_one_of_two_replicas_fails_no_request_and_both_run_again(
    stack: Stack, tenant: dict[str, Any], pair: dict[str, Any]
):
    victim = _running(pair["id"])[0]
    with Prober(stack, pair) as prober:
        time.sleep(1)
        _podman("kill", victim)
        killed_at = time.monotonic()
        wait_until(lambda: _all_running(stack, tenant, pair, 2) and len(_running(pair["id"])) == 2,
                   timeout=RECOVERY_SECONDS, message="two replicas running again")  # fmt: skip
        logger.info("recovery: one of two replicas killed -> both running in %.1f s", time.monotonic() - killed_at)
        time.sleep(1)
    assert prober.errors == []
    assert set(prober.statuses) == {200}
    assert len(prober.statuses) >= 5  # it kept requesting throughout (fewer on a loaded machine)
    killed = next(r for r in _replicas(stack, tenant, pair) if r["restarts"] >= 1)
    assert killed["last_exit_code"] == 137
    assert killed["last_exit_reason"] == "killed"
    assert _status(stack, tenant, pair) == "running"


def test_killing_the_only_replica_answers_200_again_within_30_s(
    stack: Stack, tenant: dict[str, Any], single: dict[str, Any]
):
    (victim,) = _running(single["id"])
    _podman("kill", victim)
    killed_at = time.monotonic()
    wait_until(lambda: _answers(stack, single), timeout=RECOVERY_SECONDS, interval=0.25, message="200 again")
    assert time.monotonic() - killed_at < RECOVERY_SECONDS
    logger.info("recovery: the only replica killed -> 200 in %.1f s", time.monotonic() - killed_at)
    with _client(stack, tenant) as client:
        log = client.get(f"/deployments/{single['deployment_id']}/log").text
    assert "web.1 was killed with exit code 137" in log


def _latency_median(stack: Stack, app: dict[str, Any], count: int = 21) -> float:
    """The median of `count` requests: robust to the odd slow one on a busy 2-core machine."""
    platform = stack.require_platform()
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        assert platform.edge_get(app["url"], timeout=10.0).status_code == 200
        samples.append(time.perf_counter() - started)
        time.sleep(0.05)
    return statistics.median(samples)


def test_a_crash_looping_app_backs_off_says_why_and_leaves_its_neighbour_alone(
    stack: Stack, tenant: dict[str, Any], pair: dict[str, Any]
):
    before = _latency_median(stack, pair)
    crashy = _deploy(
        stack,
        tenant,
        "crashy",
        1,
        hello_archive(
            Procfile='web: python3 -m http.server $PORT & sleep 2; echo "crashy: giving up after 2 s"; exit 3\n'
        ),
    )
    restarts_seen: list[tuple[float, int]] = []
    statuses: set[str] = set()
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        (replica,) = _replicas(stack, tenant, crashy)
        if not restarts_seen or replica["restarts"] != restarts_seen[-1][1]:
            restarts_seen.append((time.monotonic(), replica["restarts"]))
        statuses.add(_status(stack, tenant, crashy))
        if replica["restarts"] >= 4 and "crashed" in statuses:
            break
        time.sleep(0.25)
    during = _latency_median(stack, pair)

    assert restarts_seen[-1][1] >= 4, restarts_seen
    gaps = [later[0] - earlier[0] for earlier, later in itertools.pairwise(restarts_seen[1:])]
    assert gaps[-1] > gaps[0], f"restart gaps do not grow: {gaps}"
    assert "crashed" in statuses
    (replica,) = _replicas(stack, tenant, crashy)
    assert replica["last_exit_code"] == 3
    with _client(stack, tenant) as client:
        log = client.get(f"/deployments/{crashy['deployment_id']}/log").text
    assert "crashy: giving up after 2 s" in log
    assert "exited with exit code 3" in log
    assert during < max(0.5, 3 * before), f"neighbour median went from {before:.3f}s to {during:.3f}s"
    with _client(stack, tenant) as client:
        assert client.delete(f"/apps/{crashy['id']}").status_code == 202


def test_caddy_killed_and_restarted_empty_gets_every_route_back(
    stack: Stack, tenant: dict[str, Any], pair: dict[str, Any], single: dict[str, Any]
):
    stack.kill_service("caddy")
    stack.start_service("caddy")
    restarted = time.monotonic()
    for app in (pair, single):
        wait_until(lambda app=app: _answers(stack, app), timeout=RECOVERY_SECONDS, interval=0.25,
                   message=f"{app['name']} served again")  # fmt: skip
    assert time.monotonic() - restarted < RECOVERY_SECONDS
    logger.info("recovery: Caddy killed and restarted empty -> every app 200 in %.1f s", time.monotonic() - restarted)


def test_a_removed_network_and_an_orphan_container_are_repaired(
    stack: Stack, tenant: dict[str, Any], pair: dict[str, Any], single: dict[str, Any]
):
    platform = stack.require_platform()
    instance = platform.instance_id
    network = next(
        name
        for name in _podman(
            "network", "ls", "--filter", f"label=coltsfoot.instance={instance}", "--format", "{{.Name}}"
        ).split()
        if name.startswith("cf-t-")
    )
    _podman("network", "rm", "--force", network)  # takes the tenant's containers with it
    removed_at = time.monotonic()
    for app in (pair, single):
        wait_until(
            lambda app=app: _answers(stack, app),
            timeout=RECOVERY_SECONDS,
            interval=0.25,
            message=f"{app['name']} served again",
        )
    assert _podman("network", "exists", network, check=False) == ""
    logger.info("recovery: tenant network removed -> its apps 200 in %.1f s", time.monotonic() - removed_at)

    # A container of this installation that no deployment wants (a crashed worker's leftover, say).
    orphan = f"tsl-{uuid.uuid4()}-0"
    _podman("run", "--detach", "--name", orphan, "--network", network, "--label", f"coltsfoot.instance={instance}",
            "--label", f"coltsfoot.deployment={uuid.uuid4()}", "--label", "coltsfoot.role=web",
            "--pull=never", "localhost/coltsfoot-base:bookworm", "sleep", "600")  # fmt: skip
    wait_until(
        lambda: orphan not in _podman("ps", "--all", "--format", "{{.Names}}").split(),
        timeout=RECOVERY_SECONDS,
        message="the orphan removed",
    )


def test_a_worker_that_stops_receiving_restarts_itself_and_the_platform_goes_on(
    stack: Stack, tenant: dict[str, Any], single: dict[str, Any]
):
    """Celery's known Redis failure (the worker runs, Redis answers, nothing is received), made on purpose: the
    worker is told to stop consuming its queue. Its watchdog (a 30 s stall here) re-executes it, and a replica
    killed meanwhile is back without anyone restarting anything."""
    worker = stack.service("worker")
    pid = worker.pid
    since = worker.process.log_path.stat().st_size
    broker = stack.service("redis")
    assert isinstance(broker, RedisServer)
    control = Celery(broker=broker.url)
    try:
        replies = control.control.cancel_consumer("celery", reply=True, timeout=10)
    finally:
        control.close()
    assert replies, "the worker did not answer the control command"
    (victim,) = _running(single["id"])
    _podman("kill", victim)
    deaf_at = time.monotonic()
    time.sleep(10)  # deaf: no reconcile pass runs, so the replica stays dead
    assert not _answers(stack, single)
    wait_until(lambda: _answers(stack, single), timeout=120, interval=0.5, message="200 again after the restart")
    logger.info("recovery: a deaf worker -> the app 200 again in %.1f s", time.monotonic() - deaf_at)
    assert worker.pid == pid  # the same process, executed again
    assert worker.process.running
    assert "restarting the worker" in worker.read_log(since)


@pytest.fixture
def redis_outage(stack: Stack) -> Iterator[None]:
    stack.stop_service("redis")
    try:
        yield
    finally:
        if not stack.service("redis").running:
            stack.start_service("redis")


def test_a_broker_outage_loses_no_intent_and_returns_no_error(
    stack: Stack, tenant: dict[str, Any], pair: dict[str, Any], redis_outage: None
):
    with _client(stack, tenant) as client:
        doomed = client.post("/apps", json={"name": "doomed"})
        assert doomed.status_code == 201, doomed.text
        started = time.monotonic()
        deploy = client.post(
            f"/apps/{pair['id']}/deployments",
            files={"source": ("source.tar.gz", hello_archive(), "application/gzip")},
        )
        assert deploy.status_code == 202, deploy.text
        deleted = client.delete(f"/apps/{doomed.json()['id']}")
        assert deleted.status_code == 202, deleted.text
        assert client.get("/ready").status_code == 503
        time.sleep(max(0.0, 20 - (time.monotonic() - started)))
        stack.start_service("redis")
        back_at = time.monotonic()

        done = wait_for_deployment(client, deploy.json()["id"], {"live", "failed"}, timeout=180)
        assert done["state"] == "live", client.get(f"/deployments/{done['id']}/log").text
        wait_until(lambda: client.get(f"/apps/{doomed.json()['id']}").status_code == 404, timeout=60,
                   message="the deleted app gone")  # fmt: skip
        logger.info("recovery: Redis back after 20 s -> deploy live and app deleted in %.1f s",
                    time.monotonic() - back_at)  # fmt: skip
    pair["deployment_id"] = done["id"]
    assert pair["deployment_id"] in stack.require_platform().edge_get(pair["url"]).text


def test_the_whole_stack_stopped_and_started_again_brings_every_app_back_without_a_deploy(
    stack: Stack, tenant: dict[str, Any], pair: dict[str, Any], single: dict[str, Any]
):
    with _client(stack, tenant) as client:
        before = {app["id"]: client.get(f"/apps/{app['id']}/deployments").json()["count"] for app in (pair, single)}
    stack.down(containers="remove")
    assert _running(pair["id"]) == []
    started = time.monotonic()
    stack.up()
    up_at = time.monotonic()
    for app in (pair, single):
        wait_until(lambda app=app: _answers(stack, app), timeout=RECOVERY_SECONDS * 2, interval=0.5,
                   message=f"{app['name']} served again")  # fmt: skip
    logger.info("recovery: whole stack restarted -> every app 200 %.1f s after up() (up() took %.1f s)",
                time.monotonic() - up_at, up_at - started)  # fmt: skip
    with _client(stack, tenant) as client:
        after = {app["id"]: client.get(f"/apps/{app['id']}/deployments").json()["count"] for app in (pair, single)}
    assert after == before
    assert pair["deployment_id"] in stack.require_platform().edge_get(pair["url"]).text
    assert len(_running(pair["id"])) == 2
