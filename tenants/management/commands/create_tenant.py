from __future__ import annotations

import json
from argparse import ArgumentParser
from argparse import ArgumentTypeError
from decimal import Decimal
from decimal import InvalidOperation
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand
from django.core.management.base import CommandError
from django.db import transaction

from core.errors import ApiError
from core.logging import bind
from tenants.models import Tenant
from tenants.services import tenant_create
from tenants.services import token_create_initial


def _cpus(value: str) -> Decimal:
    try:
        cpus = Decimal(value)
    except InvalidOperation:
        raise ArgumentTypeError(f"{value!r} is not a number") from None
    if not cpus.is_finite() or cpus <= 0:
        raise ArgumentTypeError("must be a positive number")
    return cpus


class Command(BaseCommand):
    help = 'Create a tenant and print {"tenant_id": ..., "token": ...}; the token has every scope and is shown once.'

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "slug", help="Lower-case letters and digits, starting with a letter, 1-30 characters (no hyphens)."
        )
        parser.add_argument(
            "--max-cpus",
            type=_cpus,
            default=None,
            help="The tenant's CPU quota (replicas x cpus over its apps); the model's default if omitted.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        slug: str = options["slug"]
        if Tenant.objects.filter(slug=slug).exists():
            raise CommandError(f"A tenant with slug {slug!r} already exists.")
        try:
            with transaction.atomic():
                tenant = tenant_create(slug=slug, max_cpus=options["max_cpus"])
                bind(tenant_id=tenant.public_id)  # what the API's auth does for a request
                _token, plaintext = token_create_initial(tenant=tenant, name="initial")
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        except ApiError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(json.dumps({"tenant_id": str(tenant.public_id), "token": plaintext}))
