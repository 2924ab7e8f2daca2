from __future__ import annotations

import hashlib
import secrets
import uuid
from decimal import Decimal
from typing import ClassVar

import auto_prefetch
from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone

from tenants.validators import DNS_LABEL_MAX
from tenants.validators import dns_label_validator


class Tenant(auto_prefetch.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        SUSPENDED = "suspended", "Suspended"

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    slug = models.CharField(max_length=DNS_LABEL_MAX, unique=True, validators=[dns_label_validator])
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    max_apps = models.PositiveIntegerField(default=10)
    max_replicas = models.PositiveIntegerField(default=4, help_text="Replicas per app.")
    max_memory_mb = models.PositiveIntegerField(default=512, help_text="Memory per replica, MiB.")
    max_cpus = models.DecimalField(
        max_digits=6,
        decimal_places=2,
        default=Decimal(4),
        validators=[MinValueValidator(Decimal(0))],
        help_text="CPUs over all of the tenant's apps: the sum of replicas x cpus.",
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    objects: ClassVar[auto_prefetch.Manager[Tenant]] = auto_prefetch.Manager()

    class Meta(auto_prefetch.Model.Meta):
        ordering = ["slug"]
        indexes = [models.Index(fields=["status"])]

    def __str__(self) -> str:
        return self.slug

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE

    @property
    def linux_uid(self) -> int:
        """The non-root UID/GID this tenant's containers run as. Internal: never serialised."""
        return int(settings.TENANT_UID_BASE) + int(self.pk)


class Scope(models.TextChoices):
    APPS_READ = "apps:read", "Read apps, deployments and config"
    APPS_WRITE = "apps:write", "Create, change and delete apps, config, add-ons and tokens"
    DEPLOY = "deploy", "Create deployments and roll back"


ALL_SCOPES: tuple[str, ...] = tuple(Scope.values)
TOKEN_PREFIX_LEN = 12


def _hash_secret(secret: str) -> str:
    # Tokens carry 256 bits of randomness, so a fast hash is right here (as for session keys):
    # a slow password hash would only make every API request slow.
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiToken(auto_prefetch.Model):
    tenant = auto_prefetch.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="tokens")
    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=TOKEN_PREFIX_LEN, unique=True, editable=False)
    token_hash = models.CharField(max_length=64, editable=False)
    scopes = models.JSONField(default=list)
    app = auto_prefetch.ForeignKey(
        "platform_apps.App",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="tokens",
        help_text="If set, the token only sees this app.",
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects: ClassVar[auto_prefetch.Manager[ApiToken]] = auto_prefetch.Manager()

    # Set only on a freshly minted token, for the one response that shows it; never stored.
    plaintext: str = ""

    class Meta(auto_prefetch.Model.Meta):
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["tenant", "revoked_at"])]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @staticmethod
    def generate() -> tuple[str, str, str]:
        """Return (plaintext token, prefix, hash). Only the prefix and hash are stored."""
        prefix = "cf_" + secrets.token_hex((TOKEN_PREFIX_LEN - 3) // 2 + 1)[: TOKEN_PREFIX_LEN - 3]
        secret = secrets.token_urlsafe(32)
        plaintext = f"{prefix}.{secret}"
        return plaintext, prefix, _hash_secret(plaintext)

    def matches(self, plaintext: str) -> bool:
        return secrets.compare_digest(self.token_hash, _hash_secret(plaintext))

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes
