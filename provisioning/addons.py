"""Managed PostgreSQL add-ons: the steps the Celery tasks run (the app's DATABASE_URL is `runtime`'s)."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator

from core import crypto
from core.faults import PlatformError
from drivers import postgres
from platform_apps.models import Addon
from platform_apps.models import App
from provisioning import leases as named_lease
from provisioning.models import Lease

logger = logging.getLogger(__name__)

# Creating or dropping a role and its database takes seconds; a holder that dies loses it then.
LEASE_SECONDS = 120.0


def lease_name(addon_id: uuid.UUID) -> str:
    return f"postgres-{addon_id.hex}"


@contextlib.contextmanager
def exclusive(addon: Addon) -> Iterator[None]:
    """Hold the add-on's lease while its role and database are dropped or re-created, so a teardown and
    the reconciler's auth repair (which re-creates both) never overlap. Held elsewhere: a transient error,
    and the task tries again later."""
    owner = uuid.uuid4().hex
    name = lease_name(addon.public_id)
    if not named_lease.lease_acquire(name, owner, LEASE_SECONDS):
        raise PlatformError("addon.busy", "Another task is working on this database.", transient=True)
    try:
        yield
    finally:
        named_lease.lease_release(name, owner)


def log_context(addon: Addon) -> dict[str, str]:
    return {
        "tenant_id": str(addon.app.tenant.public_id),
        "app_id": str(addon.app.public_id),
        "addon_id": str(addon.public_id),
    }


def provision(addon: Addon) -> None:
    postgres.provision(addon.public_id, crypto.decrypt(addon.password_encrypted))
    logger.info("postgres add-on provisioned", extra=log_context(addon))


def deprovision(addon: Addon) -> None:
    postgres.deprovision(addon.public_id)
    logger.info("postgres add-on deprovisioned", extra=log_context(addon))


def deprovision_exclusive(addon: Addon) -> None:
    """`deprovision` under the add-on's lease (for removal; a failed provision cleans up without it)."""
    with exclusive(addon):
        deprovision(addon)
    Lease.objects.filter(name=lease_name(addon.public_id)).delete()


def addon_teardown_for_app(app: App) -> None:
    addon: Addon | None = Addon.objects.select_related("app", "app__tenant").filter(app=app).first()
    if addon is None:
        return
    deprovision_exclusive(addon)
    addon.delete()


def addons_repair_auth() -> int:
    """Ready add-ons whose role is missing from PgBouncer's auth_file (it was rewritten or lost)
    are provisioned again, which re-registers them; one read of the file per pass."""
    registered = postgres.pgbouncer_registered_roles()
    if registered is None:
        return 0
    repaired = 0
    ready = Addon.objects.filter(state=Addon.State.READY, app__state=App.State.ACTIVE)
    for addon in ready.select_related("app", "app__tenant"):
        if addon.role_name in registered:
            continue
        try:
            with exclusive(addon):
                # Right before acting: an add-on or app deletion since this pass read the rows owns it now
                # (its teardown unregisters the role first, which is what this pass saw missing).
                if not ready.filter(pk=addon.pk).exists():
                    continue
                provision(addon)
        except PlatformError:
            continue  # a teardown holds it
        except postgres.PostgresError as exc:
            logger.warning("postgres add-on auth entry could not be restored: %s", exc, extra=log_context(addon))
            continue
        logger.warning("postgres add-on auth entry restored", extra=log_context(addon))
        repaired += 1
    return repaired
