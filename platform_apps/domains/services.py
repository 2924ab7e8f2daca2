"""Writes to custom domains: add one, ask for its ownership check, remove it, and record what the
workflow's checks found (the DNS lookup and the certificate probe run in `provisioning.domains`).

A domain becomes `verified` only when the TXT record `_coltsfoot-challenge.<hostname>` holds its token.
The token is derived from the tenant and the hostname, so a name released by one tenant and added by
another needs the new owner's record; routing follows verification (a route refresh is queued on commit).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import uuid
from datetime import datetime
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError
from django.db import transaction
from django.utils import timezone

from audit import actions
from audit.services import ACCEPTED
from audit.services import SUCCEEDED
from audit.services import audit_record
from core.errors import Conflict
from core.errors import Unprocessable
from core.locks import row_lock
from core.queue import enqueue_on_commit
from platform_apps.domains.hostnames import HostnameRejected
from platform_apps.domains.hostnames import hostname_normalise
from platform_apps.models import App
from platform_apps.models import Domain
from tenants.models import Tenant

logger = logging.getLogger(__name__)

# Re-checks of a pending domain: after 30 s, then doubling, at most an hour apart.
CHECK_BACKOFF_FIRST_SECONDS = 30
CHECK_BACKOFF_CAP_SECONDS = 3600


def verification_token(*, tenant_id: uuid.UUID, hostname: str) -> str:
    """The TXT value that proves `tenant_id` controls `hostname`: stable for that pair, different for any
    other tenant, unguessable without the platform's secret key."""
    key = hashlib.sha256(f"coltsfoot.domain-verification:{settings.SECRET_KEY}".encode()).digest()
    digest = hmac.new(key, f"{tenant_id}:{hostname}".encode(), hashlib.sha256).hexdigest()
    return f"coltsfoot-verification={digest[:40]}"


def _route_refresh(app: App) -> None:
    enqueue_on_commit("coltsfoot.app_route_refresh", str(app.public_id))


def _audit(action: str, domain: Domain, **details: str | None) -> None:
    audit_record(
        action=action,
        tenant_id=domain.tenant_id,
        object_type="domain",
        object_id=domain.public_id,
        outcome=ACCEPTED if action == actions.DOMAIN_VERIFY else SUCCEEDED,
        app_id=domain.app.public_id,
        details={"hostname": domain.hostname, **details},
    )


@transaction.atomic
def domain_create(*, app: App, hostname: str) -> Domain:
    if app.state != App.State.ACTIVE:
        raise Conflict("app.deleting", "This app is being deleted.")
    try:
        name = hostname_normalise(hostname)
    except HostnameRejected as exc:
        raise Unprocessable(exc.code, exc.message, details={"hostname": hostname[:300]}) from None
    limit = int(settings.MAX_DOMAINS_PER_APP)
    row_lock(Tenant, app.tenant_id)  # count-then-insert (core.locks)
    if Domain.objects.filter(app=app).count() >= limit:
        raise Conflict("quota.domains_exceeded", f"An app has at most {limit} custom domains; remove one first.")
    if Domain.objects.filter(tenant_id=app.tenant_id, hostname=name).exists():
        raise Conflict("domain.exists", f"{name} is already one of your domains.")
    if (
        App.objects.filter(hostname=name).exists()
        or Domain.objects.filter(hostname=name, status=Domain.Status.VERIFIED).exists()
    ):
        raise Conflict("domain.hostname_taken", f"{name} is already in use on this platform.")
    now = timezone.now()
    try:
        with transaction.atomic():
            domain = Domain.objects.create(
                tenant_id=app.tenant_id,
                app=app,
                hostname=name,
                verification_token=verification_token(tenant_id=app.tenant.public_id, hostname=name),
                check_until=now + timedelta(seconds=settings.DOMAIN_VERIFY_WINDOW_SECONDS),
                next_check_at=now + timedelta(seconds=CHECK_BACKOFF_FIRST_SECONDS),
            )
    except IntegrityError:
        raise Conflict("domain.exists", f"{name} is already one of your domains.") from None
    logger.info("custom domain added", extra={"domain_id": str(domain.public_id), "hostname": name})
    _audit(actions.DOMAIN_CREATE, domain)
    return domain


@transaction.atomic
def domain_verify_request(*, domain: Domain) -> bool:
    """Queue an ownership check now. False when there is nothing to check (already verified)."""
    if domain.status == Domain.Status.VERIFIED:
        return False
    if domain.app.state != App.State.ACTIVE:
        raise Conflict("app.deleting", "This app is being deleted.")
    now = timezone.now()
    fields: dict[str, object] = {"next_check_at": now}
    if domain.status == Domain.Status.FAILED or domain.check_until is None or domain.check_until < now:
        # A fresh window of background re-checks from now on.
        fields |= {"status": Domain.Status.PENDING, "check_count": 0}
        fields["check_until"] = now + timedelta(seconds=settings.DOMAIN_VERIFY_WINDOW_SECONDS)
    Domain.objects.filter(pk=domain.pk).update(**fields, updated_at=now)
    for key, value in fields.items():
        setattr(domain, key, value)
    enqueue_on_commit("coltsfoot.domain_verify", str(domain.public_id))
    logger.info("custom domain check requested", extra={"domain_id": str(domain.public_id)})
    _audit(actions.DOMAIN_VERIFY, domain)
    return True


@transaction.atomic
def domain_delete(*, domain: Domain) -> None:
    """Remove the domain; a verified one leaves the app's route at once (a route refresh on commit)."""
    was_verified = domain.status == Domain.Status.VERIFIED
    _audit(actions.DOMAIN_DELETE, domain, status=str(domain.status))
    Domain.objects.filter(pk=domain.pk).delete()
    if was_verified:
        _route_refresh(domain.app)
    logger.info("custom domain removed", extra={"domain_id": str(domain.public_id), "was_verified": was_verified})


def check_backoff_seconds(check_count: int) -> int:
    """Seconds until the next background check after `check_count` checks found no token."""
    return int(min(CHECK_BACKOFF_CAP_SECONDS, CHECK_BACKOFF_FIRST_SECONDS * 2 ** min(max(check_count, 0), 20)))


@transaction.atomic
def domain_check_record(*, domain_id: uuid.UUID, found: list[str], error: str, now: datetime | None = None) -> str:
    """Record one ownership check of a pending domain (the TXT values `found`, or why the lookup failed)
    and move it: `verified` when its token is among them, else still `pending` with the next check
    scheduled, or `failed` past its window. Returns the new status ("" if the domain is gone)."""
    now = now or timezone.now()
    domain: Domain | None = Domain.objects.select_related("app", "tenant").filter(public_id=domain_id).first()
    if domain is None:
        return ""
    if domain.status != Domain.Status.PENDING:
        return str(domain.status)
    base = {"checked_at": now, "check_found": found[:20], "check_error": error[:300], "updated_at": now}
    if not error and domain.verification_token in found:
        try:
            with transaction.atomic():
                claimed = Domain.objects.filter(pk=domain.pk, status=Domain.Status.PENDING).update(
                    **base,
                    status=Domain.Status.VERIFIED,
                    verified_at=now,
                    next_check_at=None,
                    certificate_status=Domain.CertificateStatus.PENDING,
                )
        except IntegrityError:
            # Someone else verified this name first: it stays theirs.
            Domain.objects.filter(pk=domain.pk).update(
                **{**base, "check_error": "Another account has verified this hostname."},
                status=Domain.Status.FAILED,
                next_check_at=None,
            )
            logger.warning("custom domain already verified elsewhere", extra={"domain_id": str(domain_id)})
            return str(Domain.Status.FAILED)
        if claimed:
            logger.info(
                "custom domain verified",
                extra={"domain_id": str(domain_id), "tenant_id": str(domain.tenant.public_id),
                       "app_id": str(domain.app.public_id)},
            )  # fmt: skip
            _route_refresh(domain.app)
            enqueue_on_commit("coltsfoot.domain_certificate_check", str(domain_id))
            return str(Domain.Status.VERIFIED)
        return str(Domain.objects.values_list("status", flat=True).get(pk=domain.pk))
    count = domain.check_count + 1
    if domain.check_until is not None and now >= domain.check_until:
        Domain.objects.filter(pk=domain.pk, status=Domain.Status.PENDING).update(
            **base, check_count=count, status=Domain.Status.FAILED, next_check_at=None
        )
        return str(Domain.Status.FAILED)
    Domain.objects.filter(pk=domain.pk, status=Domain.Status.PENDING).update(
        **base, check_count=count, next_check_at=now + timedelta(seconds=check_backoff_seconds(count))
    )
    return str(Domain.Status.PENDING)


def domain_certificate_record(
    *, domain_id: uuid.UUID, expires_at: datetime | None, issuer: str, now: datetime | None = None
) -> None:
    """Record what the edge presented for a verified domain (`expires_at` None: nothing yet)."""
    now = now or timezone.now()
    fields: dict[str, object] = {"certificate_checked_at": now, "updated_at": now}
    if expires_at is not None:
        fields |= {
            "certificate_status": Domain.CertificateStatus.ISSUED,
            "certificate_expires_at": expires_at,
            "certificate_issuer": issuer[:300],
        }
    Domain.objects.filter(public_id=domain_id, status=Domain.Status.VERIFIED).update(**fields)
