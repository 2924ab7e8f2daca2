"""An app's add-ons (PostgreSQL, Redis): ask for one, look at it, change it, remove it."""

from __future__ import annotations

import uuid

from django.http import HttpRequest
from ninja import Router
from ninja import Status

from core.errors import error_responses
from platform_apps.access import app_for
from platform_apps.addons import selectors
from platform_apps.addons import services
from platform_apps.addons.schemas import AddonOut
from platform_apps.addons.schemas import RedisAddonOut
from platform_apps.addons.schemas import RedisCreateIn
from platform_apps.addons.schemas import RedisPatchIn
from platform_apps.models import Addon
from platform_apps.models import RedisAddon

# One tag for config and add-ons, as the API has always grouped them.
router = Router(tags=["config and add-ons"])

ERRORS = error_responses(401, 403, 404, 409, 413, 422)
# Endpoints that read a JSON body also answer 400 for one that is not JSON.
BODY_ERRORS = error_responses(400, 401, 403, 404, 409, 413, 422)


@router.post(
    "/apps/{app_id}/addons/postgres",
    response={202: AddonOut, **ERRORS},
    summary="Add a PostgreSQL database",
    operation_id="platform_apps_config_api_addon_create",
)
def addon_create(request: HttpRequest, app_id: uuid.UUID) -> Status[Addon]:
    app = app_for(request, app_id, scope="apps:write")
    return Status(202, services.addon_create(app=app))


@router.get(
    "/apps/{app_id}/addons/postgres",
    response={200: AddonOut, **ERRORS},
    summary="The database's state",
    operation_id="platform_apps_config_api_addon_get",
)
def addon_get(request: HttpRequest, app_id: uuid.UUID) -> Addon:
    app = app_for(request, app_id, scope="apps:read")
    return selectors.addon_get(app=app)


@router.delete(
    "/apps/{app_id}/addons/postgres",
    response={202: AddonOut, **ERRORS},
    summary="Remove the database and its data",
    operation_id="platform_apps_config_api_addon_delete",
)
def addon_delete(request: HttpRequest, app_id: uuid.UUID) -> Status[Addon]:
    app = app_for(request, app_id, scope="apps:write")
    return Status(202, services.addon_delete(app=app))


@router.post(
    "/apps/{app_id}/addons/redis",
    response={202: RedisAddonOut, **BODY_ERRORS},
    summary="Add a Redis",
    operation_id="platform_apps_addons_api_redis_create",
)
def redis_create(request: HttpRequest, app_id: uuid.UUID, payload: RedisCreateIn | None = None) -> Status[RedisAddon]:
    app = app_for(request, app_id, scope="apps:write")
    plan = payload or RedisCreateIn()
    return Status(
        202,
        services.redis_addon_create(
            app=app, maxmemory_mb=plan.maxmemory_mb, policy=plan.policy, persistence=plan.persistence
        ),
    )


@router.get(
    "/apps/{app_id}/addons/redis",
    response={200: RedisAddonOut, **ERRORS},
    summary="The Redis's state and plan",
    operation_id="platform_apps_addons_api_redis_get",
)
def redis_get(request: HttpRequest, app_id: uuid.UUID) -> RedisAddon:
    app = app_for(request, app_id, scope="apps:read")
    return selectors.redis_addon_get(app=app)


@router.patch(
    "/apps/{app_id}/addons/redis",
    response={200: RedisAddonOut, **BODY_ERRORS},
    summary="Change the Redis's maxmemory or eviction policy",
    operation_id="platform_apps_addons_api_redis_update",
)
def redis_update(request: HttpRequest, app_id: uuid.UUID, payload: RedisPatchIn) -> RedisAddon:
    app = app_for(request, app_id, scope="apps:write")
    return services.redis_addon_update(app=app, maxmemory_mb=payload.maxmemory_mb, policy=payload.policy)


@router.delete(
    "/apps/{app_id}/addons/redis",
    response={202: RedisAddonOut, **ERRORS},
    summary="Remove the Redis and its data",
    operation_id="platform_apps_addons_api_redis_delete",
)
def redis_delete(request: HttpRequest, app_id: uuid.UUID) -> Status[RedisAddon]:
    app = app_for(request, app_id, scope="apps:write")
    return Status(202, services.redis_addon_delete(app=app))
