"""API tokens: mint, list, revoke. Tenant-wide operations, so the rule is `caller(..., scope=...)`."""

from __future__ import annotations

import uuid

from django.db.models import QuerySet
from django.http import HttpRequest
from ninja import Router
from ninja import Status

from core.errors import NotFound
from core.errors import error_responses
from core.pagination import paginated
from tenants import services
from tenants.auth import caller
from tenants.models import ApiToken
from tenants.schemas import TokenCreatedOut
from tenants.schemas import TokenCreateIn
from tenants.schemas import TokenOut

router = Router(tags=["tokens"])

ERRORS = error_responses(400, 401, 403, 404, 409, 422)


def _visible_tokens(token: ApiToken) -> QuerySet[ApiToken]:
    qs = ApiToken.objects.filter(tenant_id=token.tenant_id).select_related("app")
    if token.app_id is not None:
        qs = qs.filter(app_id=token.app_id)
    return qs


def _visible_app_pk(token: ApiToken, app_id: uuid.UUID) -> int:
    """The pk of an app the caller can see, through the token's own relation to apps (tenants sit
    below platform_apps and do not import its models). Another tenant's app is the same 404."""
    apps = token.tenant.apps.filter(public_id=app_id)
    if token.app_id is not None:
        apps = apps.filter(pk=token.app_id)
    pk: int | None = apps.values_list("pk", flat=True).first()
    if pk is None:
        raise NotFound("app")
    return pk


@router.post(
    "/tokens",
    response={201: TokenCreatedOut, **ERRORS},
    summary="Mint an API token",
    operation_id="tenants_api_token_create",
)
def token_create(request: HttpRequest, payload: TokenCreateIn) -> Status[ApiToken]:
    token = caller(request, scope="apps:write")
    app_pk = _visible_app_pk(token, payload.app_id) if payload.app_id else None
    minted, plaintext = services.token_create(
        creator=token, name=payload.name, scopes=list(payload.scopes), app_pk=app_pk
    )
    minted = _visible_tokens(token).get(pk=minted.pk)
    minted.plaintext = plaintext
    return Status(201, minted)


@router.get(
    "/tokens",
    response={200: list[TokenOut], **ERRORS},
    summary="List API tokens (never their secrets)",
    operation_id="tenants_api_token_list",
)
@paginated
def token_list(request: HttpRequest) -> QuerySet[ApiToken]:
    return _visible_tokens(caller(request, scope="apps:write"))


@router.delete(
    "/tokens/{token_id}",
    response={204: None, **ERRORS},
    summary="Revoke an API token",
    operation_id="tenants_api_token_delete",
)
def token_delete(request: HttpRequest, token_id: uuid.UUID) -> Status[None]:
    token = _visible_tokens(caller(request, scope="apps:write")).filter(public_id=token_id).first()
    if token is None:
        raise NotFound("token")
    services.token_revoke(token=token)
    return Status(204, None)
