"""Writing the audit trail. Domain services call `audit_record` inside their own transaction, so
the row commits with the change or not at all."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping

from django.db import transaction

from audit.actions import ACTIONS
from audit.models import AuditEvent
from core.actor import Actor
from core.actor import client_address_var
from core.actor import current_actor
from core.logging import request_id_var

logger = logging.getLogger(__name__)

# What `details` may hold: names, ids, counts, flags and lists of them. Never a value a tenant set
# (config values, secrets, tokens): callers pass keys and ids only.
Detail = str | int | bool | None | list[str]

SUCCEEDED = AuditEvent.Outcome.SUCCEEDED
ACCEPTED = AuditEvent.Outcome.ACCEPTED


def audit_record(
    *,
    action: str,
    tenant_id: int | None,
    object_type: str,
    object_id: uuid.UUID | None,
    outcome: str = SUCCEEDED,
    app_id: uuid.UUID | None = None,
    details: Mapping[str, Detail] | None = None,
    actor: Actor | None = None,
) -> AuditEvent:
    """Append one row: `actor` (default: the request's, else system) did `action` to the object.
    Must run inside the transaction of the change it records."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("audit_record must run inside the transaction of the change it records")
    who = actor or current_actor()
    return AuditEvent.objects.create(
        tenant_id=tenant_id,
        actor_kind=who.kind,
        actor_id=who.id,
        actor_name=who.name[:150],
        action=action,
        object_type=object_type,
        object_id=object_id,
        app_public_id=app_id,
        source_address=client_address_var.get(),
        request_id=request_id_var.get() or "",
        outcome=outcome,
        details=dict(details or {}),
    )
