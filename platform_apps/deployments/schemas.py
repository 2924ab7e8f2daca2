"""Deployments: the deploy body (an image or a git ref; archives come as multipart), rollbacks, and
the deployment as the API shows it."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated
from typing import Any
from typing import cast

from ninja import Schema
from pydantic import Field
from pydantic import StrictStr
from pydantic import model_validator

from core.schemas import StrictIn


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
