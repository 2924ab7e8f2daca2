"""Claims, leases and check-then-write services under real concurrency on PostgreSQL: every worker is a thread
with a connection of its own, as two Celery workers (or two API processes) have.

They run only when the unit suite runs on PostgreSQL (`make test-unit-pg`): SQLite serialises every write
transaction at BEGIN (IMMEDIATE), so there is no interleaving there to test. Each race is forced, not hoped
for: either a barrier releases both workers at once, or the first worker holds its transaction open until
PostgreSQL reports the second one waiting for its lock, and only then commits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
from django.conf import settings
from django.db import connection
from django.db import connections
from django.db import transaction
from django.utils import timezone

from core.errors import Conflict
from platform_apps.apps.services import app_create
from platform_apps.models import App
from platform_apps.models import Deployment
from provisioning.leases import lease_acquire
from provisioning.models import Lease
from provisioning.tasks import build_slot_claim
from provisioning.tasks import lease_claim
from provisioning.tasks import lease_release
from provisioning.tasks import requeue_work
from tenants.models import Tenant
from tenants.services import tenant_create

ON_POSTGRES = settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(not ON_POSTGRES, reason="concurrency on PostgreSQL: runs in `make test-unit-pg`"),
    pytest.mark.django_db(transaction=True),
]

WAIT_SECONDS = 20.0


def in_worker[T](pool: ThreadPoolExecutor, work: Callable[[], T]) -> Future[T]:
    """Run `work` in a pool thread on that thread's own connection, closed afterwards (an open one would block
    the test database's flush)."""

    def run() -> T:
        try:
            return work()
        finally:
            connections.close_all()

    return pool.submit(run)


def wait_until_a_backend_waits_for_a_lock() -> None:
    """Return once some other session of this test database is blocked on a lock (pg_stat_activity)."""
    deadline = time.monotonic() + WAIT_SECONDS
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            row = cursor.fetchone()
            if row is not None and row[0]:
                return
            threading.Event().wait(0.01)
    raise AssertionError(f"no session waited for a lock within {WAIT_SECONDS:.0f}s")


def hold_then_run(first: Callable[[], Any], second: Callable[[], Any]) -> tuple[Any, Any]:
    """`first` inside a transaction that stays open until `second` (another connection) waits for one of its
    locks; then `first` commits and `second` goes on. Returns both results."""
    first_done = threading.Event()
    release = threading.Event()

    def hold() -> Any:
        with transaction.atomic():
            result = first()
            first_done.set()
            assert release.wait(WAIT_SECONDS)
        return result

    def follow() -> Any:
        assert first_done.wait(WAIT_SECONDS)
        return second()

    with ThreadPoolExecutor(max_workers=2) as pool:
        held = in_worker(pool, hold)
        followed = in_worker(pool, follow)
        try:
            wait_until_a_backend_waits_for_a_lock()
        finally:
            release.set()
        return held.result(WAIT_SECONDS), followed.result(WAIT_SECONDS)


def at_once(*works: Callable[[], Any]) -> list[Any]:
    """Every `work` in its own thread, all released by one barrier."""
    barrier = threading.Barrier(len(works))

    def gated(work: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            barrier.wait(WAIT_SECONDS)
            return work()

        return run

    with ThreadPoolExecutor(max_workers=len(works)) as pool:
        futures = [in_worker(pool, gated(work)) for work in works]
        return [future.result(WAIT_SECONDS) for future in futures]


@pytest.fixture
def queued() -> Deployment:
    tenant = tenant_create(slug="racer")
    app = App.objects.create(tenant=tenant, name="shop", hostname=App.hostname_for("shop", tenant.slug))
    return Deployment.objects.create(app=app, number=1, source_kind=Deployment.SourceKind.GIT)


def lease_of(deployment: Deployment) -> str:
    return str(Deployment.objects.values_list("lease_owner", flat=True).get(pk=deployment.pk))


def test_two_workers_racing_to_claim_one_deployment_exactly_one_wins(queued: Deployment):
    results = at_once(lambda: lease_claim(queued.pk, "worker-a"), lambda: lease_claim(queued.pk, "worker-b"))

    assert sorted(results) == [False, True]
    assert lease_of(queued) == ("worker-a" if results[0] else "worker-b")


def test_a_claim_that_waited_for_an_uncommitted_claim_sees_it_and_loses(queued: Deployment):
    first, second = hold_then_run(
        lambda: lease_claim(queued.pk, "worker-a"), lambda: lease_claim(queued.pk, "worker-b")
    )

    assert (first, second) == (True, False)
    assert lease_of(queued) == "worker-a"


def test_a_lease_whose_holder_stopped_heartbeating_is_taken_over_by_exactly_one_worker(queued: Deployment):
    assert lease_claim(queued.pk, "dead-worker")
    assert not lease_claim(queued.pk, "worker-a")  # fresh: nobody takes it
    expired = timezone.now() - timedelta(seconds=settings.LEASE_SECONDS + 1)
    Deployment.objects.filter(pk=queued.pk).update(heartbeat_at=expired)

    results = at_once(lambda: lease_claim(queued.pk, "worker-a"), lambda: lease_claim(queued.pk, "worker-b"))

    assert sorted(results) == [False, True]
    winner = "worker-a" if results[0] else "worker-b"
    assert lease_of(queued) == winner
    # The old holder, should it wake up, can neither release nor re-take what is no longer its lease.
    lease_release(queued.pk, "dead-worker")
    assert lease_of(queued) == winner
    assert not lease_claim(queued.pk, "dead-worker")


def test_a_named_lease_is_taken_over_after_expiry_by_exactly_one_worker():
    assert lease_acquire("reconcile", "dead-beat", 60)
    assert not lease_acquire("reconcile", "beat-a", 60)
    Lease.objects.filter(name="reconcile").update(expires_at=timezone.now() - timedelta(seconds=1))

    results = at_once(
        lambda: lease_acquire("reconcile", "beat-a", 60), lambda: lease_acquire("reconcile", "beat-b", 60)
    )

    assert sorted(results) == [False, True]
    assert Lease.objects.get(name="reconcile").owner == ("beat-a" if results[0] else "beat-b")
    assert not lease_acquire("reconcile", "dead-beat", 60)


def test_the_first_claim_of_a_new_named_lease_is_won_by_exactly_one_worker():
    results = at_once(lambda: lease_acquire("backup", "a", 60), lambda: lease_acquire("backup", "b", 60))

    assert sorted(results) == [False, True]
    assert Lease.objects.filter(name="backup").count() == 1


def test_two_builds_of_one_tenant_never_both_take_its_last_build_slot(settings: Any):
    settings.MAX_CONCURRENT_BUILDS = 1
    tenant = tenant_create(slug="builder")
    one, two = (
        Deployment.objects.select_related("app", "app__tenant").get(
            pk=Deployment.objects.create(
                app=App.objects.create(tenant=tenant, name=name, hostname=App.hostname_for(name, tenant.slug)),
                number=1,
                source_kind=Deployment.SourceKind.GIT,
            ).pk
        )
        for name in ("one", "two")
    )

    first, second = hold_then_run(lambda: build_slot_claim(one), lambda: build_slot_claim(two))

    assert (first, second) == (True, False)
    states = dict(Deployment.objects.values_list("app__name", "state"))
    assert states == {"one": Deployment.State.BUILDING, "two": Deployment.State.QUEUED}


def test_two_creates_never_both_take_a_tenants_last_app():
    tenant = tenant_create(slug="quota")
    Tenant.objects.filter(pk=tenant.pk).update(max_apps=1)
    tenant.refresh_from_db()

    def create(name: str) -> Callable[[], str]:
        def run() -> str:
            try:
                app_create(tenant=tenant, name=name, replicas=1, memory_mb=256, cpus=0.5, deploy_branch="main")
            except Conflict as exc:
                return exc.code
            return "created"

        return run

    first, second = hold_then_run(create("one"), create("two"))

    assert (first, second) == ("created", "quota.apps_exceeded")
    assert list(App.objects.filter(tenant=tenant).values_list("name", flat=True)) == ["one"]


def test_the_stalled_work_sweep_leaves_a_deployment_a_worker_is_claiming_to_that_worker(queued: Deployment):
    stale = timezone.now() - timedelta(seconds=settings.LEASE_SECONDS + 1)
    Deployment.objects.filter(pk=queued.pk).update(heartbeat_at=stale, lease_owner="dead-worker")
    sent: list[str] = []

    def sweep() -> dict[str, int]:
        with mock.patch("provisioning.tasks.deployment_run.delay", side_effect=sent.append):
            return requeue_work()

    # The worker's claim holds the row (uncommitted) while the sweep runs: the sweep skips it, not waits.
    with ThreadPoolExecutor(max_workers=1) as pool:
        claimed = threading.Event()
        release = threading.Event()

        def claim() -> bool:
            with transaction.atomic():
                won = lease_claim(queued.pk, "worker-a")
                claimed.set()
                assert release.wait(WAIT_SECONDS)
            return won

        claiming = in_worker(pool, claim)
        assert claimed.wait(WAIT_SECONDS)
        try:
            swept = sweep()
        finally:
            release.set()
        assert claiming.result(WAIT_SECONDS)

    assert swept["deployments"] == 0
    assert sent == []
    assert lease_of(queued) == "worker-a"
