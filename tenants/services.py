from __future__ import annotations

import logging

from django.db import IntegrityError
from django.db import transaction
from django.utils import timezone

from core.errors import Conflict
from core.errors import Forbidden
from tenants.models import ALL_SCOPES
from tenants.models import ApiToken
from tenants.models import Tenant
from tenants.validators import tenant_slug_validator

logger = logging.getLogger(__name__)


@transaction.atomic
def tenant_create(*, slug: str) -> Tenant:
    tenant_slug_validator(slug)
    # An older tenant whose slug ends in `-<slug>` already has hostnames that end the way this
    # tenant's would (`<app>-x-<slug>`): refuse, so nobody gets URLs that read as someone else's.
    if Tenant.objects.filter(slug__endswith=f"-{slug}").exists():
        raise Conflict("tenant.slug_ambiguous", f"The slug {slug!r} would make hostnames another tenant already has.")
    tenant = Tenant(slug=slug)
    tenant.full_clean()
    tenant.save()
    logger.info("tenant created", extra={"tenant_id": str(tenant.public_id)})
    return tenant


def _token_insert(*, tenant: Tenant, name: str, scopes: list[str], app_pk: int | None) -> tuple[ApiToken, str]:
    for _attempt in range(5):
        plaintext, prefix, token_hash = ApiToken.generate()
        try:
            with transaction.atomic():
                token = ApiToken.objects.create(
                    tenant=tenant, name=name, prefix=prefix, token_hash=token_hash, scopes=scopes, app_id=app_pk
                )
        except IntegrityError:  # prefix collision: draw again
            continue
        logger.info(
            "api token created",
            extra={"token_id": str(token.public_id), "scopes": scopes},
        )
        return token, plaintext
    raise Conflict("token.prefix_exhausted", "Could not allocate a token; try again.")


def token_create_initial(*, tenant: Tenant, name: str) -> tuple[ApiToken, str]:
    """The bootstrap token for a new tenant (management command): every scope, no app restriction."""
    return _token_insert(tenant=tenant, name=name, scopes=list(ALL_SCOPES), app_pk=None)


def token_create(*, creator: ApiToken, name: str, scopes: list[str], app_pk: int | None) -> tuple[ApiToken, str]:
    """Mint a token that can never do more than `creator`: scopes are a subset, and a token
    restricted to one app can only mint tokens restricted to that same app."""
    missing = sorted(set(scopes) - set(creator.scopes))
    if missing:
        raise Forbidden(
            "token.scope_escalation",
            "A token cannot grant scopes it does not have.",
            details={"missing": missing},
        )
    if creator.app_id is not None and app_pk != creator.app_id:
        raise Forbidden("token.scope_escalation", "A token restricted to one app can only mint tokens for that app.")
    ordered = [scope for scope in ALL_SCOPES if scope in scopes]
    return _token_insert(tenant=creator.tenant, name=name, scopes=ordered, app_pk=app_pk)


def token_revoke(*, token: ApiToken) -> None:
    if ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now()):
        logger.info(
            "api token revoked",
            extra={"token_id": str(token.public_id)},
        )
