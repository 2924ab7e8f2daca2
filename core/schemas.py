"""Schema pieces every router shares."""

from __future__ import annotations

from ninja import Schema
from pydantic import ConfigDict


class StrictIn(Schema):
    """A request body: unknown fields are an error, not ignored."""

    model_config = ConfigDict(extra="forbid")
