from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated
from typing import Any
from typing import Literal
from typing import cast

from ninja import Schema
from pydantic import ConfigDict
from pydantic import Field
from pydantic import StrictStr
from pydantic import field_validator

ScopeName = Literal["apps:read", "apps:write", "deploy"]


class TokenCreateIn(Schema):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[StrictStr, Field(min_length=1, max_length=100, pattern=r"^[\x20-\x7e]+$")]
    scopes: Annotated[list[ScopeName], Field(min_length=1, max_length=3)]
    app_id: uuid.UUID | None = None

    @field_validator("scopes")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("scopes must not repeat")
        return value


class TokenOut(Schema):
    id: uuid.UUID
    name: str
    prefix: str
    scopes: list[str]
    app_id: uuid.UUID | None
    created_at: datetime
    last_used_at: datetime | None
    revoked: bool

    @staticmethod
    def resolve_id(obj: Any) -> uuid.UUID:
        return cast(uuid.UUID, obj.public_id)

    @staticmethod
    def resolve_app_id(obj: Any) -> uuid.UUID | None:
        return obj.app.public_id if obj.app_id else None

    @staticmethod
    def resolve_revoked(obj: Any) -> bool:
        return obj.revoked_at is not None


class TokenCreatedOut(TokenOut):
    token: str = Field(description="The secret token. Shown only in this response.")

    @staticmethod
    def resolve_token(obj: Any) -> str:
        return str(obj.plaintext)
