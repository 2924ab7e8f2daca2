"""Reading the audit trail: a tenant's own rows, narrowed to one app for an app-restricted token."""

from __future__ import annotations

import uuid

from django.db.models import QuerySet

from audit.models import AuditEvent


def audit_list(*, tenant_id: int, app_id: uuid.UUID | None = None, action: str | None = None) -> QuerySet[AuditEvent]:
    qs = AuditEvent.objects.filter(tenant_id=tenant_id)
    if app_id is not None:
        qs = qs.filter(app_public_id=app_id)
    if action:
        qs = qs.filter(action=action)
    return qs
