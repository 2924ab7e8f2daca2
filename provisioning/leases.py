"""Named leases in the platform DB: at most one holder at a time, and a holder that dies loses
its lease when it expires. Claimed with one conditional UPDATE, correct on both platform DBs and
behind PgBouncer's transaction pooling (a row, not a session or advisory lock): SQLite runs one
writer at a time, and on PostgreSQL a second UPDATE of the row waits for the first to commit and
then evaluates its WHERE again on the committed row, so it matches nothing while the winner's
lease is fresh (tests/unit/test_pg_concurrency.py races them)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from datetime import timedelta

from django.db import IntegrityError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from provisioning.models import Lease


def lease_acquire(name: str, owner: str, seconds: float) -> bool:
    """Take (or renew) the lease for `seconds`; False while someone else holds it."""
    now = timezone.now()
    if not Lease.objects.filter(name=name).exists():
        try:
            with transaction.atomic():
                Lease.objects.create(name=name, owner="", expires_at=now)
        except IntegrityError:
            pass  # created by a concurrent first claimer: fall through to the race below
    return bool(
        Lease.objects.filter(name=name)
        .filter(Q(owner="") | Q(owner=owner) | Q(expires_at__lt=now))
        .update(owner=owner, expires_at=now + timedelta(seconds=seconds))
    )


def lease_release(name: str, owner: str) -> None:
    Lease.objects.filter(name=name, owner=owner).update(owner="", expires_at=timezone.now())


@contextlib.contextmanager
def held(name: str, seconds: float) -> Iterator[bool]:
    """Hold the lease for the block if it is free: yields False (and holds nothing) while another holder has it."""
    owner = str(uuid.uuid4())
    if not lease_acquire(name, owner, seconds):
        yield False
        return
    try:
        yield True
    finally:
        lease_release(name, owner)


def route_lease(app_id: uuid.UUID | str) -> str:
    """The lease held by whoever rewrites an app's route from the DB outside a deploy (a refresh after a domain
    or force_https change, or a reconciler repair), so an older read is never written after a newer one."""
    return f"route-refresh-{app_id}"
