"""The workflow of custom domains: the ownership check (a TXT lookup through `drivers.dns`), the
certificate probe (`drivers.tls`), and which of them are due. The decisions are the domain's
(`platform_apps.domains.services`); this module only fetches what they are decided on."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from drivers import dns
from drivers import tls
from platform_apps.domains import services as domain_services
from platform_apps.models import App
from platform_apps.models import Domain

logger = logging.getLogger(__name__)

# A verified domain's certificate is looked at again this often (its expiry moves when Caddy renews it).
CERTIFICATE_RECHECK = timedelta(hours=12)
# While a verified domain has no certificate yet, the next look is at least this far apart.
CERTIFICATE_PENDING_RECHECK = timedelta(seconds=30)
# At most this many checks are queued per beat tick; the rest wait for the next one.
BATCH = 100


def _context(domain: Domain) -> dict[str, str]:
    return {
        "tenant_id": str(domain.tenant.public_id),
        "app_id": str(domain.app.public_id),
        "domain_id": str(domain.public_id),
    }


def domain_check(domain_id: uuid.UUID) -> str:
    """Look the pending domain's TXT record up and record the result; the new status ("" if gone)."""
    domain: Domain | None = Domain.objects.select_related("app", "tenant").filter(public_id=domain_id).first()
    if domain is None or domain.status != Domain.Status.PENDING:
        return str(domain.status) if domain else ""
    found: list[str] = []
    error = ""
    try:
        found = dns.txt_lookup(
            domain.verification_name, resolver=str(settings.DNS_RESOLVER), timeout=float(settings.DNS_TIMEOUT_SECONDS)
        )
    except dns.DnsLookupError as exc:
        # Not a Celery retry: the domain's own backoff schedules the next look.
        error = str(exc)
        logger.warning("custom domain lookup failed", extra={**_context(domain), "error": error})
    if not error and domain.verification_token not in found:
        error = "The TXT record was not found with the expected value." if found else "No TXT record was found."
    status = domain_services.domain_check_record(domain_id=domain.public_id, found=found, error=error)
    logger.info("custom domain checked", extra={**_context(domain), "status": status, "found": len(found)})
    return status


def certificate_check(domain_id: uuid.UUID) -> bool:
    """Ask the edge for the verified domain's certificate (which makes Caddy get one on demand) and record
    it. True when one covering the name was presented; raises CertificateProbeError when none was."""
    domain: Domain | None = Domain.objects.select_related("app", "tenant").filter(public_id=domain_id).first()
    listen = str(settings.EDGE_TLS_LISTEN)
    if domain is None or domain.status != Domain.Status.VERIFIED or domain.app.state != App.State.ACTIVE or not listen:
        return False
    # Issuance from a public CA takes a few seconds; the internal CA is immediate.
    certificate = tls.certificate_probe(listen, domain.hostname, timeout=30.0)
    if not certificate.covers(domain.hostname):
        domain_services.domain_certificate_record(domain_id=domain.public_id, expires_at=None, issuer="")
        raise tls.CertificateProbeError(f"the edge presented no certificate for {domain.hostname} yet")
    domain_services.domain_certificate_record(
        domain_id=domain.public_id, expires_at=certificate.not_after, issuer=certificate.issuer
    )
    logger.info(
        "custom domain certificate seen",
        extra={**_context(domain), "expires_at": certificate.not_after.isoformat(), "issuer": certificate.issuer},
    )
    return True


def due(now: datetime | None = None) -> tuple[list[str], list[str]]:
    """The ids of pending domains whose next check is due, and of verified ones whose certificate is."""
    now = now or timezone.now()
    pending = Domain.objects.filter(status=Domain.Status.PENDING, next_check_at__lte=now, app__state=App.State.ACTIVE)
    certificates = Domain.objects.filter(status=Domain.Status.VERIFIED, app__state=App.State.ACTIVE).filter(
        Q(certificate_checked_at__isnull=True)
        | Q(
            certificate_status=Domain.CertificateStatus.PENDING,
            certificate_checked_at__lte=now - CERTIFICATE_PENDING_RECHECK,
        )
        | Q(certificate_checked_at__lte=now - CERTIFICATE_RECHECK)
    )
    return (
        [str(i) for i in pending.order_by("next_check_at").values_list("public_id", flat=True)[:BATCH]],
        [str(i) for i in certificates.order_by("certificate_checked_at").values_list("public_id", flat=True)[:BATCH]],
    )
