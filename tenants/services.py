from __future__ import annotations

import logging
from decimal import Decimal

from django.db import IntegrityError
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from audit import actions
from audit.services import audit_record
from core.actor import Actor
from core.errors import Conflict
from core.errors import Forbidden
from core.queue import enqueue_on_commit
from tenants.models import ALL_SCOPES
from tenants.models import ApiToken
from tenants.models import Tenant
from tenants.validators import tenant_slug_validator

logger = logging.getLogger(__name__)


@transaction.atomic
def tenant_create(*, slug: str, max_cpus: Decimal | None = None) -> Tenant:
    tenant_slug_validator(slug)
    # An older tenant whose slug ends in `-<slug>` already has hostnames that end the way this
    # tenant's would (`<app>-x-<slug>`): refuse, so nobody gets URLs that read as someone else's.
    if Tenant.objects.filter(slug__endswith=f"-{slug}").exists():
        raise Conflict("tenant.slug_ambiguous", f"The slug {slug!r} would make hostnames another tenant already has.")
    tenant = Tenant(slug=slug)
    if max_cpus is not None:
        tenant.max_cpus = max_cpus
    tenant.full_clean()
    tenant.save()
    logger.info("tenant created", extra={"tenant_id": str(tenant.public_id)})
    audit_record(action=actions.TENANT_CREATE, tenant_id=tenant.pk, object_type="tenant", object_id=tenant.public_id)
    return tenant


@transaction.atomic
def tenants_set_status(*, tenants: QuerySet[Tenant], status: str, actor: Actor) -> int:
    """Suspend or reactivate tenants (the admin's actions); one audit row per tenant that changed."""
    changing = list(tenants.exclude(status=status).values_list("pk", "public_id"))
    count = Tenant.objects.filter(pk__in=[pk for pk, _ in changing]).update(status=status)
    action = actions.TENANT_SUSPEND if status == Tenant.Status.SUSPENDED else actions.TENANT_REACTIVATE
    for pk, public_id in changing:
        audit_record(action=action, tenant_id=pk, object_type="tenant", object_id=public_id, actor=actor)
    if changing:
        enqueue_on_commit("coltsfoot.reconcile")  # the edge follows at once (see `_tenant_status_set`)
    logger.info("tenant status changed", extra={"status": status, "count": count})
    return count


def _tenant_status_set(tenant: Tenant, status: str, actor: Actor | None) -> bool:
    changed = bool(
        Tenant.objects.filter(pk=tenant.pk).exclude(status=status).update(status=status, updated_at=timezone.now())
    )
    tenant.status = status
    if changed:
        action = actions.TENANT_SUSPEND if status == Tenant.Status.SUSPENDED else actions.TENANT_REACTIVATE
        audit_record(action=action, tenant_id=tenant.pk, object_type="tenant", object_id=tenant.public_id, actor=actor)
    # The edge follows at once, not at the next periodic pass: the reconciler routes a suspended tenant's apps
    # to the "suspended" page and a reactivated one's back to their replicas. Queued even when nothing
    # changed, so repeating the action repairs an edge that missed the first one.
    enqueue_on_commit("coltsfoot.reconcile")
    return changed


@transaction.atomic
def tenant_suspend(*, tenant: Tenant, actor: Actor | None = None) -> bool:
    """Suspend the tenant: its tokens and webhooks get 403 `tenant.suspended` (no deploys), and its apps answer
    the "suspended" page at the edge. Its replicas keep running, so reactivating is instant. True if it was
    active."""
    changed = _tenant_status_set(tenant, Tenant.Status.SUSPENDED, actor)
    if changed:
        logger.info("tenant suspended", extra={"tenant_id": str(tenant.public_id)})
    return changed


@transaction.atomic
def tenant_reactivate(*, tenant: Tenant, actor: Actor | None = None) -> bool:
    """Undo `tenant_suspend`: tokens work again and the apps are routed to their replicas. True if it was
    suspended."""
    changed = _tenant_status_set(tenant, Tenant.Status.ACTIVE, actor)
    if changed:
        logger.info("tenant reactivated", extra={"tenant_id": str(tenant.public_id)})
    return changed


def _token_insert(*, tenant: Tenant, name: str, scopes: list[str], app_pk: int | None) -> tuple[ApiToken, str]:
    for _attempt in range(5):
        plaintext, prefix, token_hash = ApiToken.generate()
        try:
            with transaction.atomic():
                token = ApiToken.objects.create(
                    tenant=tenant, name=name, prefix=prefix, token_hash=token_hash, scopes=scopes, app_id=app_pk
                )
                audit_record(
                    action=actions.TOKEN_CREATE,
                    tenant_id=tenant.pk,
                    object_type="token",
                    object_id=token.public_id,
                    app_id=token.app.public_id if token.app is not None else None,
                    details={"name": name, "prefix": prefix, "scopes": scopes},
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


@transaction.atomic
def token_revoke(*, token: ApiToken, actor: Actor | None = None) -> None:
    revoked = ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    if revoked:
        logger.info(
            "api token revoked",
            extra={"token_id": str(token.public_id)},
        )
    audit_record(
        action=actions.TOKEN_REVOKE,
        tenant_id=token.tenant_id,
        object_type="token",
        object_id=token.public_id,
        app_id=token.app.public_id if token.app is not None else None,
        details={"prefix": token.prefix, "already_revoked": not revoked},
        actor=actor,
    )


@transaction.atomic
def tokens_revoke(*, tokens: QuerySet[ApiToken], actor: Actor) -> int:
    """Revoke several tokens at once (the admin's action); one audit row per token revoked."""
    live = list(tokens.filter(revoked_at__isnull=True).select_related("app"))
    for token in live:
        token_revoke(token=token, actor=actor)
    return len(live)
