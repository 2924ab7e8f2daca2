"""`manage.py build_base_image [--force] [--mirror URL]`: make settings.BASE_IMAGE available.

Safe to run again: when the image is present it only says so.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand
from django.core.management.base import CommandError
from django.core.management.base import CommandParser

from drivers import podman
from drivers.base_image import BaseImageError
from drivers.base_image import base_image_ensure


class Command(BaseCommand):
    help = "Build (or pull) the platform base image unless it is already present."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--force", action="store_true", help="rebuild even if the image exists")
        parser.add_argument("--mirror", default=None, help="Debian mirror for debootstrap (default: apt's)")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            image_id = base_image_ensure(force=options["force"], mirror=options["mirror"])
        except (BaseImageError, podman.PodmanError) as exc:
            raise CommandError(f"cannot provide base image {settings.BASE_IMAGE}: {exc}") from exc
        self.stdout.write(f"{settings.BASE_IMAGE} {image_id}")
