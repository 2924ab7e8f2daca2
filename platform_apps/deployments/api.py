"""Deployments: deploy (archive, git or image), list, get, read the log, roll back."""

from __future__ import annotations

import uuid

from django.db.models import QuerySet
from django.http import HttpRequest
from django.http import HttpResponse
from django.http.response import HttpResponseBase
from ninja import Router
from ninja import Status
from pydantic import ValidationError as PydanticValidationError

from core.errors import ApiError
from core.errors import Unprocessable
from core.errors import error_responses
from core.errors import invalid_request
from core.errors import parse_json
from core.pagination import paginated
from platform_apps.access import app_for
from platform_apps.access import deployment_for
from platform_apps.deployments import selectors
from platform_apps.deployments import services
from platform_apps.deployments.schemas import DeploymentOut
from platform_apps.deployments.schemas import RollbackIn
from platform_apps.deployments.schemas import SourceDeployIn
from platform_apps.logs import streams
from platform_apps.logs.api import deployment_follow
from platform_apps.models import Deployment

router = Router(tags=["deployments"])

ERRORS = error_responses(400, 401, 403, 404, 409, 413, 415, 422)
# Reading deployments is part of deploying: a CI token with only `deploy` follows its own deploys.
READ = ("apps:read", "deploy")

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


@router.post(
    "/apps/{app_id}/deployments",
    response={202: DeploymentOut, **ERRORS},
    openapi_extra=DEPLOY_BODY,
    summary="Deploy: a .tar.gz source archive (multipart field `source`), or JSON naming an image or git ref",
    operation_id="platform_apps_deployments_api_deployment_create",
)
def deployment_create(request: HttpRequest, app_id: uuid.UUID) -> Status[Deployment]:
    app = app_for(request, app_id, scope="deploy")
    content_type = request.content_type or ""
    if content_type == "multipart/form-data":
        upload = request.FILES.get("source")
        if upload is None:
            raise Unprocessable("source.missing", "Send the archive as the multipart field `source`.")
        deployment = services.deployment_create_from_archive(app=app, upload=upload)
    elif content_type == "application/json":
        try:
            payload = SourceDeployIn.model_validate(parse_json(request.body))
        except PydanticValidationError as exc:
            raise invalid_request(exc) from exc
        deployment = services.deployment_create_from_payload(app=app, payload=payload)
    else:
        raise ApiError(
            "request.unsupported_media_type",
            "Send multipart/form-data with a `source` archive, or JSON naming an image or a git repository.",
            status=415,
        )
    return Status(202, selectors.deployment_detail(deployment=deployment))


@router.get(
    "/apps/{app_id}/deployments",
    response={200: list[DeploymentOut], **ERRORS},
    summary="List deployments",
    operation_id="platform_apps_deployments_api_deployment_list",
)
@paginated
def deployment_list(request: HttpRequest, app_id: uuid.UUID) -> QuerySet[Deployment]:
    return selectors.deployment_list(app=app_for(request, app_id, scope=READ))


@router.get(
    "/deployments/{deployment_id}",
    response={200: DeploymentOut, **ERRORS},
    summary="Get a deployment",
    operation_id="platform_apps_deployments_api_deployment_get",
)
def deployment_get(request: HttpRequest, deployment_id: uuid.UUID) -> Deployment:
    return deployment_for(request, deployment_id, scope=READ)


@router.get(
    "/deployments/{deployment_id}/log",
    # The log is text, not JSON: its 200 is documented by hand (Ninja would say application/json).
    response=ERRORS,
    openapi_extra={
        "responses": {
            200: {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}},
        }
    },
    summary="Build and release output (text; with Accept: text/event-stream, followed live until it finishes)",
    operation_id="platform_apps_deployments_api_deployment_log",
)
def deployment_log(request: HttpRequest, deployment_id: uuid.UUID) -> HttpResponseBase:
    if streams.wants_stream(request, follow=False):  # Accept: text/event-stream: watch the build live
        return deployment_follow(request, deployment_id)
    deployment = deployment_for(request, deployment_id, scope=READ)
    return HttpResponse(deployment.log, content_type="text/plain; charset=utf-8")


@router.post(
    "/apps/{app_id}/rollback",
    response={202: DeploymentOut, **ERRORS},
    summary="Roll back to an earlier image",
    operation_id="platform_apps_deployments_api_deployment_rollback",
)
def deployment_rollback(request: HttpRequest, app_id: uuid.UUID, payload: RollbackIn) -> Status[Deployment]:
    app = app_for(request, app_id, scope="deploy")
    target = deployment_for(request, payload.deployment_id, scope="deploy")
    deployment = services.deployment_create_rollback(app=app, target=target)
    return Status(202, selectors.deployment_detail(deployment=deployment))
