"""Reads of custom domains: a tenant's (through `access.app_for`), the hostnames an app's route
answers to, and the TLS `ask` decision."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable

from django.db.models import QuerySet

from core.errors import NotFound
from platform_apps.models import App
from platform_apps.models import Domain


def domain_list(*, app: App) -> QuerySet[Domain]:
    return Domain.objects.filter(app=app).select_related("app", "tenant").order_by("created_at", "pk")


def domain_get(*, app: App, domain_id: uuid.UUID) -> Domain:
    domain: Domain | None = domain_list(app=app).filter(public_id=domain_id).first()
    if domain is None:
        raise NotFound("domain")
    return domain


def verified_hostnames(app_pks: Iterable[int]) -> dict[int, list[str]]:
    """The verified custom hostnames of each app (by pk), in one query, each list sorted."""
    found: dict[int, list[str]] = defaultdict(list)
    rows = Domain.objects.filter(app_id__in=list(app_pks), status=Domain.Status.VERIFIED).values_list(
        "app_id", "hostname"
    )
    for app_pk, hostname in rows.order_by("hostname"):
        found[app_pk].append(hostname)
    return found


def route_hostnames(app: App) -> list[str]:
    """Every name the app's route answers to: its platform hostname first, then its verified domains."""
    return [app.hostname, *verified_hostnames([app.pk]).get(app.pk, [])]


def tls_name_allowed(name: str) -> bool:
    """The `ask` decision: may the edge get a certificate for `name`? Only for a platform hostname of an
    existing (not deleting) app, or a verified domain of one. Everything else, every malformed name
    included, is no."""
    hostname = name.strip().lower().rstrip(".")
    if not hostname or len(hostname) > 253 or not hostname.isascii():
        return False
    if App.objects.filter(hostname=hostname, state=App.State.ACTIVE).exists():
        return True
    return Domain.objects.filter(hostname=hostname, status=Domain.Status.VERIFIED, app__state=App.State.ACTIVE).exists()
