from __future__ import annotations

import uuid

from django.db.models import QuerySet
from django.http import HttpRequest
from ninja import Query
from ninja import Router
from ninja import Schema
from ninja import Status
from pydantic import Field

from core.errors import NotFound
from platform_apps.schemas import ErrorOut
from platform_apps.selectors import app_get
from tenants import services
from tenants.auth import request_token
from tenants.auth import require_scope
from tenants.models import ApiToken
from tenants.schemas import TokenCreatedOut
from tenants.schemas import TokenCreateIn
from tenants.schemas import TokenListOut

router = Router(tags=["tokens"])

ERRORS: dict[int, type[ErrorOut]] = dict.fromkeys((401, 403, 404, 409, 422), ErrorOut)


class Page(Schema):
    limit: int = Field(20, ge=1, le=100)
    offset: int = Field(0, ge=0, le=1_000_000)


def _visible_tokens(token: ApiToken) -> QuerySet[ApiToken]:
    qs = ApiToken.objects.filter(tenant_id=token.tenant_id).select_related("app")
    if token.app_id is not None:
        qs = qs.filter(app_id=token.app_id)
    return qs


@router.post("/tokens", response={201: TokenCreatedOut, **ERRORS}, summary="Mint an API token")
def token_create(request: HttpRequest, payload: TokenCreateIn) -> Status[ApiToken]:
    caller = request_token(request)
    require_scope(caller, "apps:write")
    app_pk = app_get(token=caller, app_id=payload.app_id).pk if payload.app_id else None
    token, plaintext = services.token_create(
        creator=caller, name=payload.name, scopes=list(payload.scopes), app_pk=app_pk
    )
    token = _visible_tokens(caller).get(pk=token.pk)
    token.plaintext = plaintext
    return Status(201, token)


@router.get("/tokens", response={200: TokenListOut, **ERRORS}, summary="List API tokens (never their secrets)")
def token_list(request: HttpRequest, page: Query[Page]) -> dict[str, object]:
    caller = request_token(request)
    require_scope(caller, "apps:write")
    qs = _visible_tokens(caller)
    return {"items": list(qs[page.offset : page.offset + page.limit]), "count": qs.count()}


@router.delete("/tokens/{token_id}", response={204: None, **ERRORS}, summary="Revoke an API token")
def token_delete(request: HttpRequest, token_id: uuid.UUID) -> Status[None]:
    caller = request_token(request)
    require_scope(caller, "apps:write")
    token = _visible_tokens(caller).filter(public_id=token_id).first()
    if token is None:
        raise NotFound("token")
    services.token_revoke(token=token)
    return Status(204, None)
