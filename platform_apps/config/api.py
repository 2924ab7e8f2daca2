"""An app's config vars and secrets."""

from __future__ import annotations

import uuid

from django.http import HttpRequest
from ninja import Router

from core.errors import error_responses
from platform_apps.access import app_for
from platform_apps.config import selectors
from platform_apps.config import services
from platform_apps.config.schemas import ConfigOut
from platform_apps.config.schemas import ConfigPatchIn
from platform_apps.config.schemas import ConfigPatchOut

# One tag for config and add-ons, as the API has always grouped them.
router = Router(tags=["config and add-ons"])

ERRORS = error_responses(400, 401, 403, 404, 409, 413, 422)


@router.get(
    "/apps/{app_id}/config",
    response={200: ConfigOut, **ERRORS},
    summary="Config vars (secrets by name only)",
    operation_id="platform_apps_config_api_config_get",
)
def config_get(request: HttpRequest, app_id: uuid.UUID) -> dict[str, object]:
    app = app_for(request, app_id, scope="apps:read")
    plain, secrets = selectors.config_get(app)
    return {"vars": plain, "secrets": secrets}


@router.patch(
    "/apps/{app_id}/config",
    response={200: ConfigPatchOut, **ERRORS},
    summary="Set (string) or delete (null) config vars and secrets; re-releases the app",
    operation_id="platform_apps_config_api_config_patch",
)
def config_patch(request: HttpRequest, app_id: uuid.UUID, payload: ConfigPatchIn) -> dict[str, object]:
    app = app_for(request, app_id, scope="apps:write")
    deployment = services.config_patch(app=app, plain=payload.vars, secrets=payload.secrets)
    plain, secrets = selectors.config_get(app)
    return {"vars": plain, "secrets": secrets, "deployment_id": deployment.public_id if deployment else None}
