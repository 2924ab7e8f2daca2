"""The workflow's own bookkeeping: leases that keep periodic work from running twice at once."""

from __future__ import annotations

from typing import ClassVar

import auto_prefetch
from django.db import models
from django.utils import timezone


class Lease(auto_prefetch.Model):
    """A named, expiring lock held by one worker (e.g. the reconciler's pass). A holder that dies
    simply stops renewing it, and after `expires_at` anyone may take it over."""

    name = models.CharField(max_length=64, unique=True)
    owner = models.CharField(max_length=64, blank=True, default="")
    expires_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    objects: ClassVar[auto_prefetch.Manager[Lease]] = auto_prefetch.Manager()

    class Meta(auto_prefetch.Model.Meta):
        ordering = ["name"]
        indexes = [models.Index(fields=["expires_at"])]

    def __str__(self) -> str:
        return f"{self.name} ({self.owner or 'free'})"
