"""Apps: what a tenant sends to create or change one, and what it gets back."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated
from typing import Any
from typing import Literal
from typing import cast

from ninja import Schema
from pydantic import Field
from pydantic import StrictBool
from pydantic import StrictInt
from pydantic import StrictStr

from core.schemas import StrictIn
from tenants.validators import DNS_LABEL_PATTERN

AppName = Annotated[StrictStr, Field(min_length=1, max_length=30, pattern=DNS_LABEL_PATTERN)]
Replicas = Annotated[StrictInt, Field(ge=1, le=32)]
MemoryMb = Annotated[StrictInt, Field(ge=64, le=65536)]
Cpus = Annotated[float, Field(ge=0.1, le=16, allow_inf_nan=False)]
# Git branch names: a conservative subset of what git allows (checked again where it is used).
Branch = Annotated[StrictStr, Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")]


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
    force_https: StrictBool | None = Field(None, description="Redirect plain-HTTP requests to HTTPS (308).")


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
    force_https: bool
    live_deployment_id: uuid.UUID | None
    status: Literal["running", "degraded", "crashed", "stopped", "deploying"] = Field(
        description="deploying: a deployment is in flight; stopped: nothing is live; running: every replica "
        "serves; degraded: some do; crashed: none does (the platform is restarting them)."
    )
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
        listed = getattr(obj, "live_public_id", None)  # lists annotate it (`selectors.list_rows`)
        if listed is not None:
            return cast(uuid.UUID, listed)
        return obj.live_deployment.public_id if obj.live_deployment_id else None

    @staticmethod
    def resolve_has_webhook_secret(obj: Any) -> bool:
        return bool(obj.webhook_secret_encrypted)


class ReplicaOut(Schema):
    """One replica of the app's live deployment."""

    index: int = Field(description="1 for web.1, 2 for web.2, ...")
    name: str = Field(description="The process name in the app's logs, e.g. web.1.")
    deployment_id: uuid.UUID
    state: Literal["starting", "running", "crashed", "restarting"]
    restarts: int = Field(description="How often the platform replaced it since the deployment started it.")
    last_exit_code: int | None
    last_exit_reason: str | None = Field(
        description="Why it last stopped: exited, killed, oom_killed, unhealthy, vanished, detached, start_failed."
    )
    started_at: datetime | None
    next_restart_at: datetime | None = Field(description="While crashed: when the platform restarts it.")

    @staticmethod
    def resolve_index(obj: Any) -> int:
        return int(obj.index) + 1

    @staticmethod
    def resolve_name(obj: Any) -> str:
        return f"web.{int(obj.index) + 1}"

    @staticmethod
    def resolve_deployment_id(obj: Any) -> uuid.UUID:
        return cast(uuid.UUID, obj.deployment.public_id)

    @staticmethod
    def resolve_last_exit_reason(obj: Any) -> str | None:
        return str(obj.last_exit_reason) or None
