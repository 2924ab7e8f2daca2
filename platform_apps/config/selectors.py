"""Reads of an app's config vars (the app itself comes from `access.app_for`)."""

from __future__ import annotations

from core import crypto
from platform_apps.models import App
from platform_apps.models import ConfigVar


def config_get(app: App) -> tuple[dict[str, str], list[str]]:
    """What the API shows: plain values, and secrets by name only."""
    plain: dict[str, str] = {}
    secrets: list[str] = []
    for var in ConfigVar.objects.filter(app=app):
        if var.secret:
            secrets.append(var.key)
        else:
            plain[var.key] = crypto.decrypt(var.value_encrypted)
    return plain, secrets


def config_decrypted(app: App) -> tuple[dict[str, str], dict[str, str]]:
    """Every value, decrypted, as (plain, secrets): for the workflow starting the app's containers,
    never for an API answer."""
    plain: dict[str, str] = {}
    secrets: dict[str, str] = {}
    for var in ConfigVar.objects.filter(app=app):
        (secrets if var.secret else plain)[var.key] = crypto.decrypt(var.value_encrypted)
    return plain, secrets
