"""The Ninja API object: routers from each app, one auth, one error shape."""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import connection
from django.http import HttpRequest
from ninja import NinjaAPI
from ninja import Schema
from ninja import Status

from core.errors import error_response
from core.errors import install_error_handlers
from platform_apps.addons.api import router as addons_router
from platform_apps.apps.api import router as apps_router
from platform_apps.audit.api import router as audit_router
from platform_apps.backups.api import router as backups_router
from platform_apps.config.api import router as config_router
from platform_apps.deployments.api import router as deployments_router
from platform_apps.domains.api import router as domains_router
from platform_apps.logs.api import router as logs_router
from platform_apps.webhooks.api import router as webhooks_router
from provisioning.firewall import firewall_check
from tenants.api import router as tokens_router
from tenants.auth import TokenAuth

logger = logging.getLogger(__name__)

api = NinjaAPI(
    title="Coltsfoot",
    version="1",
    description="Deploy Python web apps into gVisor sandboxes. Authenticate with `Authorization: Bearer <token>`.",
    auth=TokenAuth(),
    urls_namespace="api-v1",
)
install_error_handlers(api)


class HealthOut(Schema):
    status: str


class ReadyOut(Schema):
    status: str
    checks: dict[str, bool]


@api.get(
    "/health",
    auth=None,
    response=HealthOut,
    tags=["health"],
    summary="The API process is up",
    operation_id="config_api_health",
)
def health(request: HttpRequest) -> dict[str, str]:
    return {"status": "ok"}


def _check_database() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except Exception:
        logger.warning("readiness: database check failed", exc_info=True)
        return False


def _check_broker() -> bool:
    from config.celery import app as celery_app

    try:
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return True
    except Exception:
        logger.warning("readiness: broker check failed", exc_info=True)
        return False


def _check_caddy() -> bool:
    from caddy.client import CaddyClient

    with CaddyClient.from_settings() as client:
        return client.ping()


def _check_firewall() -> bool:
    problem = firewall_check()
    if problem is not None:
        logger.warning("readiness: firewall check failed: %s", problem)
    return problem is None


@api.get(
    "/ready",
    auth=None,
    response={200: ReadyOut, 503: ReadyOut},
    tags=["health"],
    summary="Dependencies reachable",
    operation_id="config_api_ready",
)
def ready(request: HttpRequest) -> Status[dict[str, object]]:
    checks = {"database": _check_database(), "broker": _check_broker(), "caddy": _check_caddy()}
    if settings.FIREWALL:
        # Present, made for this configuration, every rule in place (see drivers/firewall.py).
        checks["firewall"] = _check_firewall()
    if all(checks.values()):
        return Status(200, {"status": "ready", "checks": checks})
    return Status(503, {"status": "unavailable", "checks": checks})


api.add_router("/", tokens_router)
api.add_router("/", apps_router)
api.add_router("/", deployments_router)
api.add_router("/", config_router)
api.add_router("/", addons_router)
api.add_router("/", domains_router)
api.add_router("/", backups_router)
api.add_router("/", webhooks_router)
api.add_router("/", audit_router)
api.add_router("/", logs_router)

__all__ = ["api", "error_response"]
