"""CI deploys: a webhook authenticated only by its HMAC signature, and the secret's rotation."""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
import uuid

from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import IntegrityError
from django.db import transaction
from django.http import HttpRequest
from django.http import HttpResponse
from ninja import Router
from ninja import Status
from pydantic import ValidationError as PydanticValidationError

from core import crypto
from core.errors import ApiError
from core.errors import Forbidden
from core.errors import error_response
from core.errors import invalid_request
from core.ratelimit import hit
from platform_apps import deployments
from platform_apps import selectors
from platform_apps import webhooks
from platform_apps.models import App
from platform_apps.models import Deployment
from platform_apps.models import WebhookDelivery
from platform_apps.schemas import DeploymentOut
from platform_apps.schemas import ErrorOut
from platform_apps.schemas import SourceDeployIn
from platform_apps.schemas import WebhookSecretOut
from tenants.auth import request_token
from tenants.auth import require_scope

logger = logging.getLogger(__name__)

router = Router(tags=["webhooks"])

ERRORS: dict[int, type[ErrorOut]] = dict.fromkeys((400, 401, 403, 404, 409, 413, 415, 422, 429), ErrorOut)


@router.post(
    "/apps/{app_id}/webhook-secret",
    response={200: WebhookSecretOut, **ERRORS},
    summary="Create or rotate the app's webhook secret (shown only in this response)",
)
def webhook_secret_rotate(request: HttpRequest, app_id: uuid.UUID) -> dict[str, str]:
    token = request_token(request)
    app = selectors.app_get(token=token, app_id=app_id)
    require_scope(token, "apps:write")
    secret = "whsec_" + secrets.token_urlsafe(32)
    App.objects.filter(pk=app.pk).update(webhook_secret_encrypted=crypto.encrypt(secret))
    logger.info("webhook secret rotated", extra={"tenant_id": str(app.tenant.public_id), "app_id": str(app.public_id)})
    return {"secret": secret, "webhook_url": app.webhook_url}


def _too_many(retry_after: int) -> HttpResponse:
    response = error_response(429, "rate_limited", "Too many webhook calls for this app; slow down.")
    response["Retry-After"] = str(retry_after)
    return response


def _unauthorized() -> ApiError:
    # One answer for every failure: no hint of which part of the signature check failed.
    return ApiError("webhook.bad_signature", "Missing or invalid webhook signature.", status=401)


def _read_body(request: HttpRequest) -> bytes:
    limit = int(settings.SOURCE_MAX_UPLOAD_BYTES)
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError as exc:
        raise ApiError("request.malformed", "Content-Length is not a number.", status=400) from exc
    if length > limit:
        raise ApiError("source.too_large", f"The body is over the limit of {limit // (1024 * 1024)} MiB.", status=413)
    return request.read(limit + 1)


def _create_from_body(app: App, request: HttpRequest, body: bytes) -> Deployment:
    content_type = request.content_type or ""
    if content_type in {"application/gzip", "application/x-gzip", "application/octet-stream"}:
        upload = SimpleUploadedFile("source.tar.gz", body, content_type="application/gzip")
        return deployments.deployment_create_from_archive(app=app, upload=upload)
    if content_type == "application/json":
        try:
            payload = SourceDeployIn.model_validate_json(body)
        except PydanticValidationError as exc:
            raise invalid_request(exc, 'Send {"image": "..."} or {"git": {"url": "...", "ref": "..."}}.') from exc
        return deployments.deployment_create_from_payload(app=app, payload=payload)
    raise ApiError("request.unsupported_media_type", "Send application/gzip or application/json.", status=415)


@router.post(
    "/hooks/apps/{app_id}/deploy",
    auth=None,
    response={200: DeploymentOut, 202: DeploymentOut, 204: None, **ERRORS},
    summary="Deploy from CI: signed with the app's webhook secret (generic or GitHub-compatible)",
)
def webhook_deploy(request: HttpRequest, app_id: uuid.UUID) -> Status[Deployment | None] | HttpResponse:
    app: App | None = App.objects.select_related("tenant").filter(public_id=app_id).first()
    if app is None or not app.webhook_secret_encrypted:
        raise _unauthorized()
    # Refused calls have a bucket of their own: anyone who knows the URL can send garbage, and
    # that must not use up the budget of the CI pipeline holding the real secret.
    retry_after = hit(
        f"webhook-refused:{app.public_id}", limit=10 * int(settings.WEBHOOK_RATE_LIMIT_PER_MINUTE), count=False
    )
    if retry_after is not None:
        return _too_many(retry_after)
    body = _read_body(request)
    secret = crypto.decrypt(app.webhook_secret_encrypted).encode()
    headers = request.headers
    github: webhooks.GithubDelivery | None = None
    try:
        if webhooks.GITHUB_SIGNATURE_HEADER in headers:
            github = webhooks.verify_github(secret, headers, body)
            delivery_id = github.delivery_id
            signature = headers[webhooks.GITHUB_SIGNATURE_HEADER]
        else:
            delivery_id = webhooks.verify_generic(
                secret, headers, body, now=time.time(), tolerance=int(settings.WEBHOOK_TOLERANCE_SECONDS)
            )
            signature = headers[webhooks.SIGNATURE_HEADER]
    except webhooks.WebhookRejected as exc:
        logger.info("webhook refused", extra={"app_id": str(app.public_id), "reason": exc.reason})
        hit(f"webhook-refused:{app.public_id}", limit=10 * int(settings.WEBHOOK_RATE_LIMIT_PER_MINUTE))
        raise _unauthorized() from exc
    retry_after = hit(f"webhook:{app.public_id}", limit=int(settings.WEBHOOK_RATE_LIMIT_PER_MINUTE))
    if retry_after is not None:
        return _too_many(retry_after)
    context = {"tenant_id": str(app.tenant.public_id), "app_id": str(app.public_id), "delivery_id": delivery_id}
    if not app.tenant.is_active:
        raise Forbidden("tenant.suspended", "This tenant is suspended.")
    digest = hashlib.sha256(signature.strip().lower().encode()).hexdigest()
    # Claim the delivery before doing anything, so a duplicate arriving at the same time finds it.
    try:
        with transaction.atomic():
            claim = WebhookDelivery.objects.create(app=app, delivery_id=delivery_id, signature_digest=digest)
    except IntegrityError:
        return _replay(app, delivery_id, digest, context)
    try:
        deployment = _deployment_for(app, request, body, github, context)
    except BaseException:
        claim.delete()  # nothing was created: the sender may retry the same delivery
        raise
    if deployment is None:
        return Status(204, None)
    WebhookDelivery.objects.filter(pk=claim.pk).update(deployment=deployment)
    logger.info("webhook deploy accepted", extra={**context, "deployment_id": str(deployment.public_id)})
    return Status(202, Deployment.objects.select_related("app", "source_deployment").get(pk=deployment.pk))


def _replay(app: App, delivery_id: str, digest: str, context: dict[str, str]) -> Status[Deployment | None]:
    """A delivery id or signature seen before: answer with what the first one did, create nothing."""
    seen: WebhookDelivery | None = (
        WebhookDelivery.objects.filter(app=app, delivery_id=delivery_id).first()
        or WebhookDelivery.objects.filter(app=app, signature_digest=digest).first()
    )
    logger.info("webhook delivery replayed", extra=context)
    if seen is None or seen.deployment_id is None:
        return Status(204, None)
    return Status(200, Deployment.objects.select_related("app", "source_deployment").get(pk=seen.deployment_id))


def _deployment_for(
    app: App,
    request: HttpRequest,
    body: bytes,
    github: webhooks.GithubDelivery | None,
    context: dict[str, str],
) -> Deployment | None:
    if github is None:
        return _create_from_body(app, request, body)
    try:
        source = webhooks.parse_github_push(body, app.deploy_branch, event=github.event)
    except webhooks.WebhookError as exc:
        raise ApiError(exc.code, exc.message, status=exc.status) from exc
    if source is None:
        logger.info("webhook ignored", extra={**context, "event": github.event})
        return None
    payload = SourceDeployIn.model_validate({"git": {"url": source.url, "ref": source.ref}})
    return deployments.deployment_create_from_payload(app=app, payload=payload)
