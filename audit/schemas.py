from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any
from typing import cast

from ninja import Schema


class AuditActorOut(Schema):
    kind: str
    id: uuid.UUID | None
    name: str


class AuditObjectOut(Schema):
    type: str
    id: uuid.UUID | None


class AuditEventOut(Schema):
    id: uuid.UUID
    created_at: datetime
    actor: AuditActorOut
    action: str
    object: AuditObjectOut
    app_id: uuid.UUID | None
    source_address: str | None
    request_id: str
    outcome: str
    details: dict[str, Any]

    @staticmethod
    def resolve_id(obj: Any) -> uuid.UUID:
        return cast(uuid.UUID, obj.public_id)

    @staticmethod
    def resolve_actor(obj: Any) -> dict[str, Any]:
        return {"kind": obj.actor_kind, "id": obj.actor_id, "name": obj.actor_name}

    @staticmethod
    def resolve_object(obj: Any) -> dict[str, Any]:
        return {"type": obj.object_type, "id": obj.object_id}

    @staticmethod
    def resolve_app_id(obj: Any) -> uuid.UUID | None:
        return cast(uuid.UUID | None, obj.app_public_id)
