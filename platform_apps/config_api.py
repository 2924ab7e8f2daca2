from __future__ import annotations

import uuid

from django.http import HttpRequest
from ninja import Router
from ninja import Status

from platform_apps import addon_services
from platform_apps import config_vars
from platform_apps import selectors
from platform_apps.models import Addon
from platform_apps.schemas import AddonOut
from platform_apps.schemas import ConfigOut
from platform_apps.schemas import ConfigPatchIn
from platform_apps.schemas import ConfigPatchOut
from platform_apps.schemas import ErrorOut
from tenants.auth import request_token
from tenants.auth import require_scope

router = Router(tags=["config and add-ons"])

ERRORS: dict[int, type[ErrorOut]] = dict.fromkeys((401, 403, 404, 409, 413, 422), ErrorOut)


@router.get("/apps/{app_id}/config", response={200: ConfigOut, **ERRORS}, summary="Config vars (secrets by name only)")
def config_get(request: HttpRequest, app_id: uuid.UUID) -> dict[str, object]:
    token = request_token(request)
    app = selectors.app_get(token=token, app_id=app_id)
    require_scope(token, "apps:read")
    plain, secrets = config_vars.config_get(app)
    return {"vars": plain, "secrets": secrets}


@router.patch(
    "/apps/{app_id}/config",
    response={200: ConfigPatchOut, **ERRORS},
    summary="Set (string) or delete (null) config vars and secrets; re-releases the app",
)
def config_patch(request: HttpRequest, app_id: uuid.UUID, payload: ConfigPatchIn) -> dict[str, object]:
    token = request_token(request)
    app = selectors.app_get(token=token, app_id=app_id)
    require_scope(token, "apps:write")
    deployment = config_vars.config_patch(app=app, plain=payload.vars, secrets=payload.secrets)
    plain, secrets = config_vars.config_get(app)
    return {"vars": plain, "secrets": secrets, "deployment_id": deployment.public_id if deployment else None}


@router.post("/apps/{app_id}/addons/postgres", response={202: AddonOut, **ERRORS}, summary="Add a PostgreSQL database")
def addon_create(request: HttpRequest, app_id: uuid.UUID) -> Status[Addon]:
    token = request_token(request)
    app = selectors.app_get(token=token, app_id=app_id)
    require_scope(token, "apps:write")
    return Status(202, addon_services.addon_create(app=app))


@router.get("/apps/{app_id}/addons/postgres", response={200: AddonOut, **ERRORS}, summary="The database's state")
def addon_get(request: HttpRequest, app_id: uuid.UUID) -> Addon:
    token = request_token(request)
    app = selectors.app_get(token=token, app_id=app_id)
    require_scope(token, "apps:read")
    return addon_services.addon_get(app=app)


@router.delete(
    "/apps/{app_id}/addons/postgres", response={202: AddonOut, **ERRORS}, summary="Remove the database and its data"
)
def addon_delete(request: HttpRequest, app_id: uuid.UUID) -> Status[Addon]:
    token = request_token(request)
    app = selectors.app_get(token=token, app_id=app_id)
    require_scope(token, "apps:write")
    return Status(202, addon_services.addon_delete(app=app))
