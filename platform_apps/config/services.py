"""Writes to config vars and secrets: validation, encrypted storage, and the release that applies them.

Every value is encrypted at rest. Secret values are write-only: they leave the platform only
as podman secrets mounted into the app's own containers (the workflow's `provisioning.runtime`
hands them over), and are redacted from deployment logs."""

from __future__ import annotations

import logging
import re

from django.db import transaction

from audit import actions
from audit.services import audit_record
from core import crypto
from core.errors import Conflict
from core.errors import Unprocessable
from core.locks import row_lock
from platform_apps.deployments.services import release_current
from platform_apps.models import Addon
from platform_apps.models import App
from platform_apps.models import ConfigVar
from platform_apps.models import Deployment
from platform_apps.models import RedisAddon
from tenants.models import Tenant

logger = logging.getLogger(__name__)

KEY_RE = re.compile(r"^[A-Z_][A-Z0-9_]*$")
KEY_MAX_LENGTH = 64
VALUE_MAX_BYTES = 32 * 1024
MAX_VARS_PER_APP = 100
# Set by the platform or the runtime; a tenant overriding them would break or escape the sandbox.
RESERVED_KEYS = frozenset(
    {"PORT", "PATH", "HOME", "HOSTNAME", "PWD", "SHLVL", "PYTHONHOME", "VIRTUAL_ENV", "LD_PRELOAD", "LD_LIBRARY_PATH"}
)
RESERVED_PREFIXES = ("COLTSFOOT_",)
ADDON_OWNED_KEYS = frozenset({"DATABASE_URL"})
REDIS_OWNED_KEYS = frozenset({"REDIS_URL"})


def _refuse(code: str, message: str, key: str) -> Unprocessable:
    return Unprocessable(code, message, details={"key": key})


def validate_key(key: str, *, addon_owned: frozenset[str]) -> None:
    if not isinstance(key, str) or not key or len(key) > KEY_MAX_LENGTH or not KEY_RE.fullmatch(key):
        raise _refuse(
            "config.invalid_key",
            f"Config var names are 1-{KEY_MAX_LENGTH} characters of A-Z, 0-9 and _, not starting with a digit.",
            str(key)[:KEY_MAX_LENGTH],
        )
    if key in RESERVED_KEYS or key.startswith(RESERVED_PREFIXES):
        raise _refuse("config.reserved_key", f"{key} is set by the platform and cannot be changed.", key)
    if key in addon_owned:
        raise _refuse("config.reserved_key", f"{key} is managed by one of the app's add-ons.", key)


def validate_value(key: str, value: str) -> None:
    if len(value.encode()) > VALUE_MAX_BYTES:
        raise _refuse("config.value_too_large", f"The value of {key} is over {VALUE_MAX_BYTES // 1024} KiB.", key)
    if "\x00" in value:
        raise _refuse("config.invalid_value", f"The value of {key} contains a NUL byte.", key)


def addon_owned_keys(app: App) -> frozenset[str]:
    has_addon = Addon.objects.filter(app=app).exclude(state=Addon.State.DEPROVISIONING).exists()
    has_redis = RedisAddon.objects.filter(app=app).exclude(state=RedisAddon.State.DEPROVISIONING).exists()
    return (ADDON_OWNED_KEYS if has_addon else frozenset()) | (REDIS_OWNED_KEYS if has_redis else frozenset())


@transaction.atomic
def config_patch(*, app: App, plain: dict[str, str | None], secrets: dict[str, str | None]) -> Deployment | None:
    """Apply the changes (None deletes) and, if the app has a live deployment, queue a release
    of the same image with the new environment. Returns that release, or None."""
    if app.state != App.State.ACTIVE:
        raise Conflict("app.deleting", "This app is being deleted.")
    row_lock(Tenant, app.tenant_id)  # the count of config vars, and the release it queues (core.locks)
    both = sorted(set(plain) & set(secrets))
    if both:
        raise _refuse("config.duplicate_key", f"{both[0]} is given both as a var and as a secret.", both[0])
    owned = addon_owned_keys(app)
    for key, value in [*plain.items(), *secrets.items()]:
        validate_key(key, addon_owned=owned)
        if value is not None:
            validate_value(key, value)
    changed = _apply(app, plain, secret=False) | _apply(app, secrets, secret=True)
    if ConfigVar.objects.filter(app=app).count() > MAX_VARS_PER_APP:
        raise Unprocessable("config.too_many", f"An app may have at most {MAX_VARS_PER_APP} config vars.")
    if changed:
        logger.info("config changed", extra={"keys": sorted(changed)})
    release = release_current(app) if changed else None
    # Names only: a value (and above all a secret's) never reaches the audit trail.
    audit_record(
        action=actions.CONFIG_UPDATE,
        tenant_id=app.tenant_id,
        object_type="app",
        object_id=app.public_id,
        app_id=app.public_id,
        details={
            "keys": sorted(changed),
            "secret_keys": sorted(changed & set(secrets)),
            "deployment_id": str(release.public_id) if release else None,
        },
    )
    return release


def _apply(app: App, changes: dict[str, str | None], *, secret: bool) -> set[str]:
    """Write one kind of change with a fixed number of reads, whatever the number of keys."""
    existing = {var.key: var for var in ConfigVar.objects.filter(app=app, key__in=list(changes))}
    changed = {key for key, value in changes.items() if value is None and key in existing}
    if changed:
        ConfigVar.objects.filter(app=app, key__in=changed).delete()
    to_create = []
    for key, value in changes.items():
        if value is None:
            continue
        var = existing.get(key)
        if var is None:
            to_create.append(ConfigVar(app=app, key=key, value_encrypted=crypto.encrypt(value), secret=secret))
        elif var.secret != secret or crypto.decrypt(var.value_encrypted) != value:
            var.value_encrypted = crypto.encrypt(value)
            var.secret = secret
            var.save(update_fields=["value_encrypted", "secret", "updated_at"])
        else:
            continue
        changed.add(key)
    ConfigVar.objects.bulk_create(to_create)
    return changed
