"""Schema pieces every router shares."""

from __future__ import annotations

import uuid
from typing import Any
from typing import cast

from ninja import Schema
from pydantic import ConfigDict


class StrictIn(Schema):
    """A request body: unknown fields are an error, not ignored."""

    model_config = ConfigDict(extra="forbid")


class AppOwnedOut(Schema):
    """An answer about something an app owns (a deployment, a backup, an add-on, a domain): its public id and its
    app's, read from the row's `public_id` and `app.public_id` (subclasses inherit the resolvers)."""

    id: uuid.UUID
    app_id: uuid.UUID

    @staticmethod
    def resolve_id(obj: Any) -> uuid.UUID:
        return cast(uuid.UUID, obj.public_id)

    @staticmethod
    def resolve_app_id(obj: Any) -> uuid.UUID:
        return cast(uuid.UUID, obj.app.public_id)
