"""Writes for CI webhooks: the app's secret, and the deliveries that deduplicate retried calls."""

from __future__ import annotations

import logging
import secrets

from django.db import IntegrityError
from django.db import transaction

from audit import actions
from audit.services import audit_record
from core import crypto
from platform_apps.models import App
from platform_apps.models import Deployment
from platform_apps.models import WebhookDelivery

logger = logging.getLogger(__name__)


@transaction.atomic
def webhook_secret_rotate(*, app: App) -> str:
    """A new secret for the app's webhook; the old one stops working at once. Returned only here."""
    secret = "whsec_" + secrets.token_urlsafe(32)
    App.objects.filter(pk=app.pk).update(webhook_secret_encrypted=crypto.encrypt(secret))
    logger.info("webhook secret rotated")
    audit_record(
        action=actions.WEBHOOK_SECRET_ROTATE,
        tenant_id=app.tenant_id,
        object_type="app",
        object_id=app.public_id,
        app_id=app.public_id,
    )
    return secret


def delivery_claim(*, app: App, delivery_id: str, signature_digest: str) -> WebhookDelivery | None:
    """Claim a delivery before doing anything, so a duplicate arriving at the same time finds it.
    None: this delivery id (or signature) was seen before."""
    try:
        with transaction.atomic():
            return WebhookDelivery.objects.create(app=app, delivery_id=delivery_id, signature_digest=signature_digest)
    except IntegrityError:
        return None


def delivery_release(*, claim: WebhookDelivery) -> None:
    """Nothing was created: forget the claim, so the sender may retry the same delivery."""
    claim.delete()


def delivery_attach(*, claim: WebhookDelivery, deployment: Deployment) -> None:
    WebhookDelivery.objects.filter(pk=claim.pk).update(deployment=deployment)


def delivery_previous(*, app: App, delivery_id: str, signature_digest: str) -> Deployment | None:
    """What an earlier delivery with this id or signature deployed, if anything."""
    seen: WebhookDelivery | None = (
        WebhookDelivery.objects.filter(app=app, delivery_id=delivery_id).first()
        or WebhookDelivery.objects.filter(app=app, signature_digest=signature_digest).first()
    )
    if seen is None or seen.deployment_id is None:
        return None
    deployment: Deployment = Deployment.objects.select_related("app", "source_deployment").get(pk=seen.deployment_id)
    return deployment
