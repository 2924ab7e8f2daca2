"""An app's PostgreSQL add-on: ask for it, look at it, remove it."""

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
from platform_apps.models import Addon

# One tag for config and add-ons, as the API has always grouped them.
router = Router(tags=["config and add-ons"])

ERRORS = error_responses(401, 403, 404, 409, 413, 422)


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
