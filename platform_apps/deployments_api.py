from __future__ import annotations

import json
import uuid

from django.http import HttpRequest
from django.http import HttpResponse
from ninja import Query
from ninja import Router
from ninja import Status
from pydantic import ValidationError as PydanticValidationError

from core.errors import ApiError
from core.errors import Unprocessable
from core.errors import invalid_request
from platform_apps import deployments
from platform_apps import selectors
from platform_apps.models import Deployment
from platform_apps.schemas import DeploymentListOut
from platform_apps.schemas import DeploymentOut
from platform_apps.schemas import ErrorOut
from platform_apps.schemas import RollbackIn
from platform_apps.schemas import SourceDeployIn
from tenants.api import Page
from tenants.auth import request_token
from tenants.auth import require_scope

router = Router(tags=["deployments"])

ERRORS: dict[int, type[ErrorOut]] = dict.fromkeys((400, 401, 403, 404, 409, 413, 415, 422), ErrorOut)

DEPLOY_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"source": {"type": "string", "format": "binary", "description": "a .tar.gz"}},
                    "required": ["source"],
                }
            },
            "application/json": {"schema": SourceDeployIn.model_json_schema()},
        },
    }
}


def _json_body(request: HttpRequest) -> object:
    try:
        return json.loads(request.body or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError("request.malformed", "The request body is not valid JSON.", status=400) from exc


@router.post(
    "/apps/{app_id}/deployments",
    response={202: DeploymentOut, **ERRORS},
    openapi_extra=DEPLOY_BODY,
    summary="Deploy: a .tar.gz source archive (multipart field `source`), or JSON naming an image or git ref",
)
def deployment_create(request: HttpRequest, app_id: uuid.UUID) -> Status[Deployment]:
    token = request_token(request)
    app = selectors.app_get(token=token, app_id=app_id)
    require_scope(token, "deploy")
    content_type = request.content_type or ""
    if content_type == "multipart/form-data":
        upload = request.FILES.get("source")
        if upload is None:
            raise Unprocessable("source.missing", "Send the archive as the multipart field `source`.")
        deployment = deployments.deployment_create_from_archive(app=app, upload=upload)
    elif content_type == "application/json":
        try:
            payload = SourceDeployIn.model_validate(_json_body(request))
        except PydanticValidationError as exc:
            raise invalid_request(exc) from exc
        deployment = deployments.deployment_create_from_payload(app=app, payload=payload)
    else:
        raise ApiError(
            "request.unsupported_media_type",
            "Send multipart/form-data with a `source` archive, or JSON naming an image or a git repository.",
            status=415,
        )
    return Status(202, selectors.deployment_get(token=token, deployment_id=deployment.public_id))


@router.get("/apps/{app_id}/deployments", response={200: DeploymentListOut, **ERRORS}, summary="List deployments")
def deployment_list(request: HttpRequest, app_id: uuid.UUID, page: Query[Page]) -> dict[str, object]:
    token = request_token(request)
    app = selectors.app_get(token=token, app_id=app_id)
    require_scope(token, "apps:read", "deploy")
    items, count = selectors.deployment_list(token=token, app=app, limit=page.limit, offset=page.offset)
    return {"items": items, "count": count}


@router.get("/deployments/{deployment_id}", response={200: DeploymentOut, **ERRORS}, summary="Get a deployment")
def deployment_get(request: HttpRequest, deployment_id: uuid.UUID) -> Deployment:
    token = request_token(request)
    deployment = selectors.deployment_get(token=token, deployment_id=deployment_id)
    require_scope(token, "apps:read", "deploy")
    return deployment


@router.get(
    "/deployments/{deployment_id}/log",
    response={200: str, **ERRORS},
    summary="Build and release output (text)",
)
def deployment_log(request: HttpRequest, deployment_id: uuid.UUID) -> HttpResponse:
    token = request_token(request)
    deployment = selectors.deployment_get(token=token, deployment_id=deployment_id)
    require_scope(token, "apps:read", "deploy")
    return HttpResponse(deployment.log, content_type="text/plain; charset=utf-8")


@router.post(
    "/apps/{app_id}/rollback", response={202: DeploymentOut, **ERRORS}, summary="Roll back to an earlier image"
)
def deployment_rollback(request: HttpRequest, app_id: uuid.UUID, payload: RollbackIn) -> Status[Deployment]:
    token = request_token(request)
    app = selectors.app_get(token=token, app_id=app_id)
    require_scope(token, "deploy")
    target = selectors.deployment_get(token=token, deployment_id=payload.deployment_id)
    deployment = deployments.deployment_create_rollback(app=app, target=target)
    return Status(202, selectors.deployment_get(token=token, deployment_id=deployment.public_id))
