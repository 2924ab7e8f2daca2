"""Writes to add-ons (PostgreSQL, Redis): record the intent, queue the task on commit."""

from __future__ import annotations

import logging
import secrets
import uuid

from django.db import transaction

from audit import actions
from audit.services import ACCEPTED
from audit.services import audit_record
from core import crypto
from core.errors import Conflict
from core.errors import Unprocessable
from core.locks import row_lock
from core.queue import enqueue_on_commit
from drivers import postgres
from drivers import redis
from platform_apps.addons.selectors import addon_get
from platform_apps.addons.selectors import redis_addon_get
from platform_apps.models import Addon
from platform_apps.models import AddonBackup
from platform_apps.models import App
from platform_apps.models import ConfigVar
from platform_apps.models import RedisAddon
from tenants.models import Tenant

logger = logging.getLogger(__name__)


@transaction.atomic
def addon_create(*, app: App) -> Addon:
    row_lock(Tenant, app.tenant_id)  # check-then-write (core.locks)
    if app.state != App.State.ACTIVE:
        raise Conflict("app.deleting", "This app is being deleted.")
    addon: Addon | None = Addon.objects.filter(app=app).first()
    if addon is not None and addon.state in (Addon.State.PROVISIONING, Addon.State.READY):
        raise Conflict("addon.exists", "This app already has a PostgreSQL database.")
    if addon is not None and addon.state == Addon.State.DEPROVISIONING:
        raise Conflict("addon.deprovisioning", "The app's database is being removed; try again when it is gone.")
    if ConfigVar.objects.filter(app=app, key="DATABASE_URL").exists():
        raise Conflict("config.reserved_key", "Remove the app's own DATABASE_URL config var first.")
    if addon is None:
        public_id = uuid.uuid4()
        # The driver owns the naming scheme (a pure function of the add-on's id); the names are
        # stored so the API can show them before the workflow has created anything.
        addon = Addon.objects.create(
            app=app,
            public_id=public_id,
            role_name=postgres.role_name(public_id),
            database_name=postgres.database_name(public_id),
            password_encrypted=crypto.encrypt(secrets.token_urlsafe(32)),
        )
    else:  # failed before: try again with the same names, so whatever was half-made converges
        addon.state = Addon.State.PROVISIONING
        addon.error_code = addon.error_message = ""
        addon.save(update_fields=["state", "error_code", "error_message", "updated_at"])
    enqueue_on_commit("coltsfoot.addon_provision", str(addon.public_id))
    logger.info("postgres add-on requested", extra={"addon_id": str(addon.public_id)})
    _audit(actions.ADDON_CREATE, app, addon)
    return addon


@transaction.atomic
def addon_delete(*, app: App) -> Addon:
    row_lock(Tenant, app.tenant_id)  # check-then-write (core.locks)
    addon = addon_get(app=app)
    if addon.state == Addon.State.PROVISIONING:
        raise Conflict("addon.provisioning", "The database is still being created; delete it once it is ready.")
    if AddonBackup.objects.filter(app=app, restore_state__in=AddonBackup.ACTIVE_RESTORE_STATES).exists():
        raise Conflict("backup.restore_in_progress", "A backup is being restored into the database; delete it after.")
    Addon.objects.filter(pk=addon.pk).update(state=Addon.State.DEPROVISIONING)
    addon.state = Addon.State.DEPROVISIONING
    enqueue_on_commit("coltsfoot.addon_deprovision", str(addon.public_id))
    logger.info("postgres add-on removal requested", extra={"addon_id": str(addon.public_id)})
    _audit(actions.ADDON_DELETE, app, addon)
    return addon


def _audit(
    action: str, app: App, addon: Addon | RedisAddon, details: dict[str, str | int | bool] | None = None
) -> None:
    audit_record(
        action=action,
        tenant_id=app.tenant_id,
        object_type="addon",
        object_id=addon.public_id,
        outcome=ACCEPTED,
        app_id=app.public_id,
        details=details,
    )


# --- Redis ----------------------------------------------------------------------------------------


def _check_redis_memory(tenant: Tenant, maxmemory_mb: int) -> None:
    """The container's limit (maxmemory plus Redis's own overhead) is a container like any replica: within
    the tenant's memory quota per container."""
    needed = redis.container_memory_mb(maxmemory_mb)
    if needed > tenant.max_memory_mb:
        raise Unprocessable(
            "quota.memory_exceeded",
            f"A Redis of {maxmemory_mb} MiB needs a {needed} MiB container ({redis.MEMORY_OVERHEAD_MB} MiB for "
            f"Redis itself); this tenant's containers may have at most {tenant.max_memory_mb} MiB.",
            details={
                "max_memory_mb": tenant.max_memory_mb,
                "maxmemory_mb": maxmemory_mb,
                "overhead_mb": redis.MEMORY_OVERHEAD_MB,
            },
        )


def _redis_plan(addon: RedisAddon) -> dict[str, str | int | bool]:
    return {
        "kind": "redis",
        "maxmemory_mb": addon.maxmemory_mb,
        "policy": addon.policy,
        "persistence": addon.persistence,
    }


@transaction.atomic
def redis_addon_create(*, app: App, maxmemory_mb: int, policy: str, persistence: bool) -> RedisAddon:
    row_lock(Tenant, app.tenant_id)  # check-then-write (core.locks)
    if app.state != App.State.ACTIVE:
        raise Conflict("app.deleting", "This app is being deleted.")
    addon: RedisAddon | None = RedisAddon.objects.filter(app=app).first()
    if addon is not None and addon.state in (RedisAddon.State.PROVISIONING, RedisAddon.State.READY):
        raise Conflict("addon.exists", "This app already has a Redis.")
    if addon is not None and addon.state == RedisAddon.State.DEPROVISIONING:
        raise Conflict("addon.deprovisioning", "The app's Redis is being removed; try again when it is gone.")
    if ConfigVar.objects.filter(app=app, key="REDIS_URL").exists():
        raise Conflict("config.reserved_key", "Remove the app's own REDIS_URL config var first.")
    _check_redis_memory(app.tenant, maxmemory_mb)
    if addon is None:
        addon = RedisAddon.objects.create(
            app=app,
            maxmemory_mb=maxmemory_mb,
            policy=policy,
            persistence=persistence,
            password_encrypted=crypto.encrypt(secrets.token_urlsafe(32)),
        )
    else:  # failed before: try again under the same names (and password), so whatever was half-made converges
        addon.state = RedisAddon.State.PROVISIONING
        addon.maxmemory_mb, addon.policy, addon.persistence = maxmemory_mb, policy, persistence
        addon.error_code = addon.error_message = ""
        addon.save(
            update_fields=[
                "state",
                "maxmemory_mb",
                "policy",
                "persistence",
                "error_code",
                "error_message",
                "updated_at",
            ]
        )
    enqueue_on_commit("coltsfoot.redis_provision", str(addon.public_id))
    logger.info(
        "redis add-on requested",
        extra={"tenant_id": str(app.tenant.public_id), "app_id": str(app.public_id), "addon_id": str(addon.public_id)},
    )
    _audit(actions.ADDON_CREATE, app, addon, _redis_plan(addon))
    return addon


@transaction.atomic
def redis_addon_update(*, app: App, maxmemory_mb: int | None, policy: str | None) -> RedisAddon:
    """Change the plan. A ready Redis is provisioned again with the new config (the same container name,
    address, password and data); the app keeps its REDIS_URL."""
    row_lock(Tenant, app.tenant_id)  # the tenant's Redis memory quota (core.locks)
    addon = redis_addon_get(app=app)
    if addon.state == RedisAddon.State.PROVISIONING:
        raise Conflict("addon.provisioning", "The Redis is being provisioned; change it once it is ready.")
    if addon.state == RedisAddon.State.DEPROVISIONING:
        raise Conflict("addon.deprovisioning", "The app's Redis is being removed.")
    if maxmemory_mb is not None:
        _check_redis_memory(app.tenant, maxmemory_mb)
        addon.maxmemory_mb = maxmemory_mb
    if policy is not None:
        addon.policy = policy
    fields = ["maxmemory_mb", "policy", "updated_at"]
    if addon.state == RedisAddon.State.READY:
        addon.state = RedisAddon.State.PROVISIONING
        fields.append("state")
        enqueue_on_commit("coltsfoot.redis_provision", str(addon.public_id))
    addon.save(update_fields=fields)
    _audit(actions.ADDON_UPDATE, app, addon, _redis_plan(addon))
    return addon


@transaction.atomic
def redis_addon_delete(*, app: App) -> RedisAddon:
    addon = redis_addon_get(app=app)
    if addon.state == RedisAddon.State.PROVISIONING:
        raise Conflict("addon.provisioning", "The Redis is still being provisioned; delete it once it is ready.")
    RedisAddon.objects.filter(pk=addon.pk).update(state=RedisAddon.State.DEPROVISIONING)
    addon.state = RedisAddon.State.DEPROVISIONING
    enqueue_on_commit("coltsfoot.redis_deprovision", str(addon.public_id))
    logger.info(
        "redis add-on removal requested",
        extra={"tenant_id": str(app.tenant.public_id), "app_id": str(app.public_id), "addon_id": str(addon.public_id)},
    )
    _audit(actions.ADDON_DELETE, app, addon, {"kind": "redis"})
    return addon
