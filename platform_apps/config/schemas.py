"""Config vars and secrets: the PATCH body (a string sets, null deletes) and the answers (secrets by
name only)."""

from __future__ import annotations

import uuid
from typing import Annotated

from ninja import Schema
from pydantic import Field
from pydantic import StrictStr

from core.schemas import StrictIn

ConfigValue = Annotated[StrictStr, Field(max_length=32 * 1024)] | None


class ConfigPatchIn(StrictIn):
    vars: Annotated[dict[StrictStr, ConfigValue], Field(max_length=100)] = Field(default_factory=dict)
    secrets: Annotated[dict[StrictStr, ConfigValue], Field(max_length=100)] = Field(default_factory=dict)


class ConfigOut(Schema):
    vars: dict[str, str]
    secrets: list[str]


class ConfigPatchOut(ConfigOut):
    deployment_id: uuid.UUID | None
