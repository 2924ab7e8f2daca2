"""The PostgreSQL add-on as the API shows it (never its password)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any
from typing import cast

from ninja import Schema

from platform_apps.deployments.schemas import DeploymentError


class AddonOut(Schema):
    id: uuid.UUID
    app_id: uuid.UUID
    kind: str = "postgres"
    state: str
    database: str
    user: str
    error: DeploymentError | None
    created_at: datetime
    updated_at: datetime

    @staticmethod
    def resolve_id(obj: Any) -> uuid.UUID:
        return cast(uuid.UUID, obj.public_id)

    @staticmethod
    def resolve_app_id(obj: Any) -> uuid.UUID:
        return cast(uuid.UUID, obj.app.public_id)

    @staticmethod
    def resolve_database(obj: Any) -> str:
        return str(obj.database_name)

    @staticmethod
    def resolve_user(obj: Any) -> str:
        return str(obj.role_name)

    @staticmethod
    def resolve_error(obj: Any) -> dict[str, str] | None:
        return {"code": obj.error_code, "message": obj.error_message} if obj.error_code else None
