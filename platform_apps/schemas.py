from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated
from typing import Any

from ninja import Schema
from pydantic import ConfigDict
from pydantic import Field
from pydantic import StrictInt
from pydantic import StrictStr

from tenants.validators import DNS_LABEL_PATTERN

AppName = Annotated[StrictStr, Field(min_length=1, max_length=30, pattern=DNS_LABEL_PATTERN)]
Replicas = Annotated[StrictInt, Field(ge=1, le=32)]
MemoryMb = Annotated[StrictInt, Field(ge=64, le=65536)]
Cpus = Annotated[float, Field(ge=0.1, le=16, allow_inf_nan=False)]
# Git branch names: a conservative subset of what git allows (checked again where it is used).
Branch = Annotated[StrictStr, Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")]


class StrictIn(Schema):
    model_config = ConfigDict(extra="forbid")


class AppCreateIn(StrictIn):
    name: AppName
    replicas: Replicas = 1
    memory_mb: MemoryMb = 256
    cpus: Cpus = 1.0
    deploy_branch: Branch = "main"


class AppPatchIn(StrictIn):
    replicas: Replicas | None = None
    memory_mb: MemoryMb | None = None
    cpus: Cpus | None = None
    deploy_branch: Branch | None = None


class AppOut(Schema):
    id: uuid.UUID
    name: str
    hostname: str
    url: str
    state: str
    replicas: int
    memory_mb: int
    cpus: float
    deploy_branch: str
    live_deployment_id: uuid.UUID | None
    webhook_url: str
    has_webhook_secret: bool
    created_at: datetime
    updated_at: datetime

    @staticmethod
    def resolve_id(obj: Any) -> uuid.UUID:
        return obj.public_id  # type: ignore[no-any-return]

    @staticmethod
    def resolve_cpus(obj: Any) -> float:
        return float(Decimal(obj.cpus))

    @staticmethod
    def resolve_live_deployment_id(obj: Any) -> uuid.UUID | None:
        return obj.live_deployment.public_id if obj.live_deployment_id else None

    @staticmethod
    def resolve_webhook_url(obj: Any) -> str:
        return f"/api/v1/hooks/apps/{obj.public_id}/deploy"

    @staticmethod
    def resolve_has_webhook_secret(obj: Any) -> bool:
        return bool(obj.webhook_secret_encrypted)


class AppListOut(Schema):
    items: list[AppOut]
    count: int


class ErrorDetail(Schema):
    code: str
    message: str
    details: Any = None


class ErrorOut(Schema):
    error: ErrorDetail
