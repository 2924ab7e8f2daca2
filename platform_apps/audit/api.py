"""GET /audit: the caller's tenant's audit trail (only its app's rows for an app-restricted token)."""

from __future__ import annotations

import uuid
from typing import Annotated

from django.db.models import QuerySet
from django.http import HttpRequest
from ninja import Query
from ninja import Router
from ninja import Schema
from pydantic import Field

from audit import selectors
from audit.models import AuditEvent
from audit.schemas import AuditEventOut
from core.errors import error_responses
from core.pagination import paginated
from tenants.auth import caller

router = Router(tags=["audit"])

ERRORS = error_responses(401, 403, 422)


class AuditFilters(Schema):
    action: Annotated[str, Field(max_length=64)] | None = None
    app_id: uuid.UUID | None = None


@router.get(
    "/audit",
    response={200: list[AuditEventOut], **ERRORS},
    summary="The audit trail: every change made to this tenant's apps and tokens, newest first",
    operation_id="audit_api_audit_list",
)
@paginated
def audit_list(request: HttpRequest, filters: Query[AuditFilters]) -> QuerySet[AuditEvent]:
    token = caller(request, scope="apps:read")
    app_id = filters.app_id
    if token.app_id is not None:
        own = token.app.public_id
        if app_id is not None and app_id != own:
            return AuditEvent.objects.none()
        app_id = own
    return selectors.audit_list(tenant_id=token.tenant_id, app_id=app_id, action=filters.action)
