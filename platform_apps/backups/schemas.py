"""A tenant database backup as the API shows it (never its key or where it is stored)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any
from typing import cast

from ninja import Schema

from platform_apps.deployments.schemas import DeploymentError


class BackupRestoreOut(Schema):
    state: str
    requested_at: datetime | None
    finished_at: datetime | None
    error: DeploymentError | None


class BackupOut(Schema):
    id: uuid.UUID
    app_id: uuid.UUID
    kind: str
    state: str
    size: int
    error: DeploymentError | None
    created_at: datetime
    finished_at: datetime | None
    restore: BackupRestoreOut | None

    @staticmethod
    def resolve_id(obj: Any) -> uuid.UUID:
        return cast(uuid.UUID, obj.public_id)

    @staticmethod
    def resolve_app_id(obj: Any) -> uuid.UUID:
        return cast(uuid.UUID, obj.app.public_id)

    @staticmethod
    def resolve_error(obj: Any) -> dict[str, str] | None:
        return {"code": obj.error_code, "message": obj.error_message} if obj.error_code else None

    @staticmethod
    def resolve_restore(obj: Any) -> dict[str, Any] | None:
        if not obj.restore_state:
            return None
        error = (
            {"code": obj.restore_error_code, "message": obj.restore_error_message} if obj.restore_error_code else None
        )
        return {
            "state": obj.restore_state,
            "requested_at": obj.restore_requested_at,
            "finished_at": obj.restored_at,
            "error": error,
        }
