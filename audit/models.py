"""The audit trail: one append-only row per change anyone made, written in the change's transaction.

The domain below the API records rows (`audit.services.audit_record`); nothing updates or deletes
them (the queryset refuses to, and the admin is read-only). Rows name things by public UUID, not
by foreign key, so they outlive the apps, deployments and tokens they are about; only the tenant
is a key (tenant-scoped reads need it), and a deleted tenant's rows stay with it unset.
"""

from __future__ import annotations

import uuid
from typing import Any
from typing import ClassVar

import auto_prefetch
from django.db import models
from django.utils import timezone


class AppendOnlyError(RuntimeError):
    pass


class AuditEventQuerySet(auto_prefetch.QuerySet):  # auto_prefetch is untyped: no type argument
    def update(self, **kwargs: Any) -> int:
        raise AppendOnlyError("audit events are append-only")

    def delete(self) -> tuple[int, dict[str, int]]:
        raise AppendOnlyError("audit events are append-only")


AuditEventManager = auto_prefetch.Manager.from_queryset(AuditEventQuerySet)


class AuditEvent(auto_prefetch.Model):
    class Outcome(models.TextChoices):
        # The change itself is done (an app created, a secret rotated, a token revoked).
        SUCCEEDED = "succeeded", "Succeeded"
        # An intent was recorded and its work queued (a deployment, a deletion, an add-on).
        ACCEPTED = "accepted", "Accepted"

    class ActorKind(models.TextChoices):
        TOKEN = "token", "API token"
        ADMIN = "admin", "Platform admin"
        WEBHOOK = "webhook", "Signed webhook"
        SYSTEM = "system", "System (command or task)"

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    tenant = auto_prefetch.ForeignKey(
        "tenants.Tenant", on_delete=models.SET_NULL, null=True, blank=True, related_name="audit_events"
    )
    actor_kind = models.CharField(max_length=16, choices=ActorKind.choices)
    actor_id = models.UUIDField(null=True, blank=True, help_text="The token's public id (a webhook: the app's).")
    actor_name = models.CharField(max_length=150, blank=True, help_text="The token's prefix, or the admin user.")
    action = models.CharField(max_length=64)
    object_type = models.CharField(max_length=32)
    object_id = models.UUIDField(null=True, blank=True)
    app_public_id = models.UUIDField(null=True, blank=True, help_text="The app the change concerns, if any.")
    source_address = models.GenericIPAddressField(null=True, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    details = models.JSONField(default=dict, blank=True)

    objects: ClassVar[auto_prefetch.Manager[AuditEvent]] = AuditEventManager()

    class Meta(auto_prefetch.Model.Meta):
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["tenant", "created_at"]),
            models.Index(fields=["tenant", "action"]),
            models.Index(fields=["app_public_id", "created_at"]),
            models.Index(fields=["action"]),
            models.Index(fields=["outcome"]),
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.object_type} {self.object_id or ''}".strip()

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise AppendOnlyError("audit events are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise AppendOnlyError("audit events are append-only")
