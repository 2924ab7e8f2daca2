"""The audit trail in the admin: every tenant's rows, read-only; and the mixin that makes the
admin's own edits part of it."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib import admin
from django.db import models
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest

from audit import actions
from audit.models import AuditEvent
from audit.services import audit_record
from core.actor import Actor


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin[AuditEvent]):
    list_display = [
        "created_at",
        "tenant",
        "action",
        "object_type",
        "object_id",
        "actor_kind",
        "actor_name",
        "outcome",
        "source_address",
        "request_id",
    ]
    list_filter = ["tenant", "action", "outcome", "actor_kind", "created_at"]
    search_fields = ["object_id", "app_public_id", "actor_id", "actor_name", "request_id", "tenant__slug"]
    list_select_related = ["tenant"]
    date_hierarchy = "created_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: AuditEvent | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: AuditEvent | None = None) -> bool:
        return False


def admin_actor(request: HttpRequest) -> Actor:
    return Actor.admin(request.user.get_username())


def _describe(obj: models.Model) -> tuple[str, uuid.UUID | None, int | None]:
    """(object type, public id, tenant pk) of a tenant-owned row, whatever its model."""
    public_id = getattr(obj, "public_id", None)
    tenant_id = getattr(obj, "tenant_id", None)
    if tenant_id is None and obj._meta.model_name == "tenant":
        tenant_id = obj.pk
    if tenant_id is None:  # an app's rows (deployments, config vars, add-ons): through the app
        app = getattr(obj, "app", None)
        tenant_id = getattr(app, "tenant_id", None)
    return str(obj._meta.model_name), public_id if isinstance(public_id, uuid.UUID) else None, tenant_id


class AuditedAdmin[M: models.Model](admin.ModelAdmin[M]):
    """Edits and deletions through the admin's forms write an audit row with the admin user, in the
    same transaction (Django runs the change and delete views in one)."""

    def save_model(self, request: HttpRequest, obj: M, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        kind, public_id, tenant_id = _describe(obj)
        audit_record(
            action=actions.ADMIN_CHANGE,
            tenant_id=tenant_id,
            object_type=kind,
            object_id=public_id,
            details={"fields": sorted(form.changed_data) if form is not None else [], "created": not change},
            actor=admin_actor(request),
        )

    def delete_model(self, request: HttpRequest, obj: M) -> None:
        kind, public_id, tenant_id = _describe(obj)
        audit_record(
            action=actions.ADMIN_DELETE,
            tenant_id=tenant_id,
            object_type=kind,
            object_id=public_id,
            actor=admin_actor(request),
        )
        super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[M]) -> None:
        with transaction.atomic():
            for obj in queryset:
                self.delete_model(request, obj)
