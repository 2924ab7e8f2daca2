"""Custom domains as the API shows them, and what a tenant sends to add one."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any
from typing import Literal
from typing import cast

from ninja import Schema
from pydantic import Field
from pydantic import StrictStr

from core.schemas import StrictIn


class DomainCreateIn(StrictIn):
    # Generous: a Unicode name is longer than its punycode; the real bound is checked after normalising.
    hostname: StrictStr = Field(min_length=1, max_length=1000, examples=["www.example.com"])


class VerificationOut(Schema):
    type: Literal["TXT"] = "TXT"
    name: str = Field(description="Where to publish the TXT record.")
    value: str = Field(description="The TXT record's exact value.")


class CheckOut(Schema):
    checked_at: datetime | None
    found: list[str] = Field(description="The TXT values found at the verification name by the last check.")
    error: str | None = Field(description="Why the last check could not look or did not count, if so.")
    next_check_at: datetime | None = Field(description="When the platform looks again by itself (pending only).")


class CertificateOut(Schema):
    status: Literal["pending", "issued"]
    expires_at: datetime | None
    issuer: str | None


class DomainOut(Schema):
    id: uuid.UUID
    app_id: uuid.UUID
    hostname: str
    status: Literal["pending", "verified", "failed"] = Field(
        description="pending: waiting for the TXT record (checked again with backoff); verified: routed and "
        "certified; failed: not verified in time, or verified by another account first (ask verify again)."
    )
    verification: VerificationOut
    target: str = Field(description="The app's platform hostname: point a CNAME for the hostname at it.")
    certificate: CertificateOut | None
    last_check: CheckOut
    verified_at: datetime | None
    created_at: datetime

    @staticmethod
    def resolve_id(obj: Any) -> uuid.UUID:
        return cast(uuid.UUID, obj.public_id)

    @staticmethod
    def resolve_app_id(obj: Any) -> uuid.UUID:
        return cast(uuid.UUID, obj.app.public_id)

    @staticmethod
    def resolve_verification(obj: Any) -> dict[str, str]:
        return {"type": "TXT", "name": obj.verification_name, "value": obj.verification_token}

    @staticmethod
    def resolve_target(obj: Any) -> str:
        return str(obj.app.hostname)

    @staticmethod
    def resolve_certificate(obj: Any) -> dict[str, Any] | None:
        if not obj.certificate_status:
            return None
        return {
            "status": obj.certificate_status,
            "expires_at": obj.certificate_expires_at,
            "issuer": obj.certificate_issuer or None,
        }

    @staticmethod
    def resolve_last_check(obj: Any) -> dict[str, Any]:
        return {
            "checked_at": obj.checked_at,
            "found": list(obj.check_found or []),
            "error": obj.check_error or None,
            "next_check_at": obj.next_check_at if obj.status == "pending" else None,
        }
