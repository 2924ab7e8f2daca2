"""CI deploys: a webhook authenticated only by its HMAC signature, and the secret's rotation."""

from __future__ import annotations

import hashlib
import logging
import time
import uuid

from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.http import HttpRequest
from django.http import HttpResponse
from ninja import Router
from ninja import Status
from pydantic import ValidationError as PydanticValidationError

from audit import actions
from core import crypto
from core.actor import Actor
from core.actor import set_actor
from core.errors import ApiError
from core.errors import Forbidden
from core.errors import error_response
from core.errors import error_responses
from core.errors import invalid_request
from core.errors import parse_json
from core.ratelimit import hit
from platform_apps.access import app_for
from platform_apps.access import bind_app
from platform_apps.deployments import services as deployments
from platform_apps.deployments.schemas import DeploymentOut
from platform_apps.deployments.schemas import SourceDeployIn
from platform_apps.models import App
from platform_apps.models import Deployment
from platform_apps.webhooks import services
from platform_apps.webhooks import signatures
from platform_apps.webhooks.schemas import WebhookSecretOut
from tenants.auth import request_token
from tenants.auth import require_scope

logger = logging.getLogger(__name__)

router = Router(tags=["webhooks"])

ERRORS = error_responses(400, 401, 403, 404, 409, 413, 415, 422, 429)


@router.post(
    "/apps/{app_id}/webhook-secret",
    response={200: WebhookSecretOut, **ERRORS},
    summary="Create or rotate the app's webhook secret (shown only in this response); needs apps:write and deploy",
    operation_id="platform_apps_webhooks_api_webhook_secret_rotate",
)
def webhook_secret_rotate(request: HttpRequest, app_id: uuid.UUID) -> dict[str, str]:
    app = app_for(request, app_id, scope="apps:write")
    # Whoever holds the secret can deploy any code through the webhook: rotating it is a deploy
    # power too, so an `apps:write` token without `deploy` cannot borrow it this way.
    require_scope(request_token(request), "deploy")
    return {"secret": services.webhook_secret_rotate(app=app), "webhook_url": app.webhook_url}


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


def _create_from_body(app: App, request: HttpRequest, body: bytes, audit: deployments.Audit) -> Deployment:
    content_type = request.content_type or ""
    if content_type in {"application/gzip", "application/x-gzip", "application/octet-stream"}:
        upload = SimpleUploadedFile("source.tar.gz", body, content_type="application/gzip")
        return deployments.deployment_create_from_archive(app=app, upload=upload, audit=audit)
    if content_type == "application/json":
        try:
            payload = SourceDeployIn.model_validate(parse_json(body))
        except PydanticValidationError as exc:
            raise invalid_request(exc, 'Send {"image": "..."} or {"git": {"url": "...", "ref": "..."}}.') from exc
        return deployments.deployment_create_from_payload(app=app, payload=payload, audit=audit)
    raise ApiError("request.unsupported_media_type", "Send application/gzip or application/json.", status=415)


@router.post(
    "/hooks/apps/{app_id}/deploy",
    auth=None,
    response={200: DeploymentOut, 202: DeploymentOut, 204: None, **ERRORS},
    summary="Deploy from CI: signed with the app's webhook secret (generic or GitHub-compatible)",
    operation_id="platform_apps_webhooks_api_webhook_deploy",
)
def webhook_deploy(request: HttpRequest, app_id: uuid.UUID) -> Status[Deployment | None] | HttpResponse:
    app: App | None = App.objects.select_related("tenant").filter(public_id=app_id).first()
    if app is None or not app.webhook_secret_encrypted:
        raise _unauthorized()
    # No token here: the app (found by its id, authenticated below by the signature) binds the context.
    bind_app(app)
    body = _read_body(request)
    secret = crypto.decrypt(app.webhook_secret_encrypted).encode()
    headers = request.headers
    refused_bucket = f"webhook-refused:{app.public_id}"
    refused_limit = 10 * int(settings.WEBHOOK_RATE_LIMIT_PER_MINUTE)
    github: signatures.GithubDelivery | None = None
    # The signature is checked before any limit on refused calls: anyone who knows the URL can
    # send garbage, and that must never lock out the CI pipeline that holds the real secret. Only
    # calls that fail the check count in (and are throttled by) the refused bucket.
    try:
        if signatures.GITHUB_SIGNATURE_HEADER in headers:
            github = signatures.verify_github(secret, headers, body)
            delivery_id = github.delivery_id
            signature = headers[signatures.GITHUB_SIGNATURE_HEADER]
        else:
            delivery_id = signatures.verify_generic(
                secret, headers, body, now=time.time(), tolerance=int(settings.WEBHOOK_TOLERANCE_SECONDS)
            )
            signature = headers[signatures.SIGNATURE_HEADER]
    except signatures.WebhookRejected as exc:
        logger.info("webhook refused", extra={"reason": exc.reason})
        retry_after = hit(refused_bucket, limit=refused_limit)
        if retry_after is not None:
            return _too_many(retry_after)
        raise _unauthorized() from exc
    retry_after = hit(f"webhook:{app.public_id}", limit=int(settings.WEBHOOK_RATE_LIMIT_PER_MINUTE))
    if retry_after is not None:
        return _too_many(retry_after)
    context = {"delivery_id": delivery_id}
    # From here on the caller is the webhook: what it changes is audited as the app's webhook.
    set_actor(Actor.webhook(app.public_id))
    if not app.tenant.is_active:
        raise Forbidden("tenant.suspended", "This tenant is suspended.")
    digest = hashlib.sha256(signature.strip().lower().encode()).hexdigest()
    claim = services.delivery_claim(app=app, delivery_id=delivery_id, signature_digest=digest)
    if claim is None:
        # Seen before: answer with what the first one did, create nothing.
        logger.info("webhook delivery replayed", extra=context)
        previous = services.delivery_previous(app=app, delivery_id=delivery_id, signature_digest=digest)
        return Status(204, None) if previous is None else Status(200, previous)
    try:
        deployment = _deployment_for(app, request, body, github, context)
    except BaseException:
        services.delivery_release(claim=claim)
        raise
    if deployment is None:
        return Status(204, None)
    services.delivery_attach(claim=claim, deployment=deployment)
    logger.info("webhook deploy accepted", extra={**context, "deployment_id": str(deployment.public_id)})
    return Status(202, Deployment.objects.select_related("app", "source_deployment").get(pk=deployment.pk))


def _deployment_for(
    app: App,
    request: HttpRequest,
    body: bytes,
    github: signatures.GithubDelivery | None,
    context: dict[str, str],
) -> Deployment | None:
    audit = deployments.Audit(actions.WEBHOOK_DEPLOY, {"delivery_id": context["delivery_id"][:200]})
    if github is None:
        return _create_from_body(app, request, body, audit)
    try:
        source = signatures.parse_github_push(body, app.deploy_branch, event=github.event)
    except signatures.WebhookError as exc:
        raise ApiError(exc.code, exc.message, status=exc.status) from exc
    if source is None:
        logger.info("webhook ignored", extra={**context, "event": github.event})
        return None
    payload = SourceDeployIn.model_validate({"git": {"url": source.url, "ref": source.ref}})
    return deployments.deployment_create_from_payload(app=app, payload=payload, audit=audit)
