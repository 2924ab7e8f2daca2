"""The add-ons as the API shows them (never a password), and what a tenant sends to change a Redis."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated
from typing import Any
from typing import Literal
from typing import cast

from ninja import Schema
from pydantic import Field
from pydantic import StrictBool
from pydantic import StrictInt

from core.schemas import StrictIn
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


Policy = Literal[
    "noeviction",
    "allkeys-lru",
    "allkeys-lfu",
    "allkeys-random",
    "volatile-lru",
    "volatile-lfu",
    "volatile-random",
    "volatile-ttl",
]
# The upper bound that matters is the tenant's memory quota, checked by the service (422 quota.memory_exceeded).
MaxMemoryMb = Annotated[StrictInt, Field(ge=8, le=65536)]


class RedisCreateIn(StrictIn):
    maxmemory_mb: MaxMemoryMb = 64
    policy: Policy = "noeviction"
    persistence: StrictBool = True


class RedisPatchIn(StrictIn):
    maxmemory_mb: MaxMemoryMb | None = None
    policy: Policy | None = None


class RedisAddonOut(Schema):
    id: uuid.UUID
    app_id: uuid.UUID
    kind: str = "redis"
    state: str
    maxmemory_mb: int = Field(description="Redis's maxmemory; the container may use 32 MiB more.")
    policy: str = Field(description="maxmemory-policy: what Redis does when it is full.")
    persistence: bool = Field(description="Append-only file on the add-on's own volume (survives restarts).")
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
    def resolve_error(obj: Any) -> dict[str, str] | None:
        return {"code": obj.error_code, "message": obj.error_message} if obj.error_code else None
