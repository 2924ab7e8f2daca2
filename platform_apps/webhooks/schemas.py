"""Webhooks: the freshly rotated secret."""

from __future__ import annotations

from ninja import Schema


class WebhookSecretOut(Schema):
    secret: str
    webhook_url: str
