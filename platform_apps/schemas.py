from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated
from typing import Any
from typing import cast

from ninja import Schema
from pydantic import ConfigDict
from pydantic import Field
from pydantic import StrictInt
from pydantic import StrictStr
from pydantic import model_validator

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
        return cast(uuid.UUID, obj.public_id)

    @staticmethod
    def resolve_cpus(obj: Any) -> float:
        return float(Decimal(obj.cpus))

    @staticmethod
    def resolve_live_deployment_id(obj: Any) -> uuid.UUID | None:
        return obj.live_deployment.public_id if obj.live_deployment_id else None

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


class DeploymentError(Schema):
    code: str
    message: str


class DeploymentOut(Schema):
    id: uuid.UUID
    app_id: uuid.UUID
    number: int
    state: str
    source: dict[str, Any]
    image: str | None
    error: DeploymentError | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @staticmethod
    def resolve_id(obj: Any) -> uuid.UUID:
        return cast(uuid.UUID, obj.public_id)

    @staticmethod
    def resolve_app_id(obj: Any) -> uuid.UUID:
        return cast(uuid.UUID, obj.app.public_id)

    @staticmethod
    def resolve_image(obj: Any) -> str | None:
        return obj.image_ref or None

    @staticmethod
    def resolve_source(obj: Any) -> dict[str, Any]:
        source: dict[str, Any] = {"kind": obj.source_kind}
        if obj.source_url:
            source["url"] = obj.source_url
        if obj.source_ref:
            source["ref"] = obj.source_ref
        if obj.source_commit:
            source["commit"] = obj.source_commit
        if obj.source_deployment_id:
            source["deployment_id"] = str(obj.source_deployment.public_id)
        return source


class DeploymentListOut(Schema):
    items: list[DeploymentOut]
    count: int


class RollbackIn(StrictIn):
    deployment_id: uuid.UUID


# name[:tag][@sha256:digest], optionally behind registry host[:port]; no options, no whitespace.
IMAGE_REF_PATTERN = (
    r"^(?:[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?(?::[0-9]{1,5})?/)?"
    r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$"
)


class GitSourceIn(StrictIn):
    url: Annotated[StrictStr, Field(min_length=1, max_length=2048)]
    ref: Annotated[StrictStr, Field(min_length=1, max_length=255)] = "main"


class SourceDeployIn(StrictIn):
    """Exactly one of `image` or `git`."""

    image: Annotated[StrictStr, Field(min_length=1, max_length=512, pattern=IMAGE_REF_PATTERN)] | None = None
    git: GitSourceIn | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SourceDeployIn:
        if (self.image is None) == (self.git is None):
            raise ValueError("give exactly one of `image` or `git`")
        return self


class WebhookSecretOut(Schema):
    secret: str
    webhook_url: str


ConfigValue = Annotated[StrictStr, Field(max_length=32 * 1024)] | None


class ConfigPatchIn(StrictIn):
    vars: Annotated[dict[StrictStr, ConfigValue], Field(max_length=100)] = Field(default_factory=dict)
    secrets: Annotated[dict[StrictStr, ConfigValue], Field(max_length=100)] = Field(default_factory=dict)


class ConfigOut(Schema):
    vars: dict[str, str]
    secrets: list[str]


class ConfigPatchOut(ConfigOut):
    deployment_id: uuid.UUID | None


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
