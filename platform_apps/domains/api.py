"""An app's custom domains: add one, have its ownership checked, look at it, remove it."""

from __future__ import annotations

import uuid

from django.db.models import QuerySet
from django.http import HttpRequest
from ninja import Router
from ninja import Status

from core.errors import error_responses
from core.pagination import paginated
from platform_apps.access import app_for
from platform_apps.domains import selectors
from platform_apps.domains import services
from platform_apps.domains.schemas import DomainCreateIn
from platform_apps.domains.schemas import DomainOut
from platform_apps.models import Domain

router = Router(tags=["domains"])

ERRORS = error_responses(401, 403, 404, 409, 422)
# The one endpoint that reads a JSON body also answers 400 (not JSON) and 413 (too large).
BODY_ERRORS = error_responses(400, 401, 403, 404, 409, 413, 422)


@router.post(
    "/apps/{app_id}/domains",
    response={201: DomainOut, **BODY_ERRORS},
    summary="Add a custom domain (pending until its TXT record is found)",
    operation_id="platform_apps_domains_api_domain_create",
)
def domain_create(request: HttpRequest, app_id: uuid.UUID, payload: DomainCreateIn) -> Status[Domain]:
    app = app_for(request, app_id, scope="apps:write")
    return Status(201, services.domain_create(app=app, hostname=payload.hostname))


@router.get(
    "/apps/{app_id}/domains",
    response={200: list[DomainOut], **ERRORS},
    summary="List the app's custom domains",
    operation_id="platform_apps_domains_api_domain_list",
)
@paginated
def domain_list(request: HttpRequest, app_id: uuid.UUID) -> QuerySet[Domain]:
    return selectors.domain_list(app=app_for(request, app_id, scope="apps:read"))


@router.get(
    "/apps/{app_id}/domains/{domain_id}",
    response={200: DomainOut, **ERRORS},
    summary="Get a custom domain",
    operation_id="platform_apps_domains_api_domain_get",
)
def domain_get(request: HttpRequest, app_id: uuid.UUID, domain_id: uuid.UUID) -> Domain:
    app = app_for(request, app_id, scope="apps:read")
    return selectors.domain_get(app=app, domain_id=domain_id)


@router.post(
    "/apps/{app_id}/domains/{domain_id}/verify",
    response={200: DomainOut, 202: DomainOut, **ERRORS},
    summary="Check the domain's TXT record now (202: queued; 200: already verified)",
    operation_id="platform_apps_domains_api_domain_verify",
)
def domain_verify(request: HttpRequest, app_id: uuid.UUID, domain_id: uuid.UUID) -> Status[Domain]:
    app = app_for(request, app_id, scope="apps:write")
    domain = selectors.domain_get(app=app, domain_id=domain_id)
    queued = services.domain_verify_request(domain=domain)
    return Status(202 if queued else 200, domain)


@router.delete(
    "/apps/{app_id}/domains/{domain_id}",
    response={204: None, **ERRORS},
    summary="Remove a custom domain (it stops being routed at once)",
    operation_id="platform_apps_domains_api_domain_delete",
)
def domain_delete(request: HttpRequest, app_id: uuid.UUID, domain_id: uuid.UUID) -> Status[None]:
    app = app_for(request, app_id, scope="apps:write")
    services.domain_delete(domain=selectors.domain_get(app=app, domain_id=domain_id))
    return Status(204, None)
