"""What an app's containers get from the platform besides their image: the tenant's network and the
environment (config vars from the domain, plus the add-ons' DATABASE_URL pointing at PgBouncer and
REDIS_URL pointing at the app's Redis on the tenant network).

Workflow code: it reads domain rows and asks drivers for facts (the network's gateway), which is
why none of this lives in `platform_apps`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from dataclasses import field

from django.conf import settings

from core import crypto
from drivers import podman
from drivers import postgres
from drivers import redis
from platform_apps.config.selectors import config_decrypted
from platform_apps.models import Addon
from platform_apps.models import App
from platform_apps.models import RedisAddon


def tenant_network(tenant_id: uuid.UUID) -> str:
    """The tenant's own podman network (deterministic, so every step finds the same one)."""
    return f"cf-t-{tenant_id.hex[:20]}"


def pgbouncer_host(app: App) -> str:
    """Where the app's containers reach PgBouncer: a configured address, else the gateway of the
    tenant's podman network (the host side of its bridge)."""
    if settings.PGBOUNCER_HOST:
        return str(settings.PGBOUNCER_HOST)
    return podman.network_gateway(tenant_network(app.tenant.public_id))


def addon_credentials(addon: Addon) -> postgres.PgCredentials:
    return postgres.PgCredentials(
        role=addon.role_name,
        database=addon.database_name,
        password=crypto.decrypt(addon.password_encrypted),
        host=pgbouncer_host(addon.app),
        port=int(settings.PGBOUNCER_PORT),
    )


@dataclass(frozen=True)
class RuntimeConfig:
    plain: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)


def resolve_for_runtime(app: App) -> RuntimeConfig:
    """Decrypted config for a container start, including the ready add-on's DATABASE_URL as a secret."""
    plain, secrets = config_decrypted(app)
    addon = Addon.objects.filter(app=app, state=Addon.State.READY).select_related("app", "app__tenant").first()
    if addon is not None:
        secrets["DATABASE_URL"] = addon_credentials(addon).database_url()
    # A Redis that ran at an address keeps its URL while a PATCH re-provisions it (same address and password).
    redis_addon: RedisAddon | None = (
        RedisAddon.objects.filter(app=app, state__in=[RedisAddon.State.READY, RedisAddon.State.PROVISIONING])
        .exclude(address="")
        .first()
    )
    if redis_addon is not None:
        secrets["REDIS_URL"] = redis.redis_url(
            password=crypto.decrypt(redis_addon.password_encrypted), host=redis_addon.address
        )
    return RuntimeConfig(plain=plain, secrets=secrets)
