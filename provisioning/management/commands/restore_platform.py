"""`manage.py restore_platform PATH`: replace the platform DB with a backup, on a stopped stack.

Refuses while any part of the stack uses the platform DB, and refuses a file that is not an intact
platform DB of this or an older version; the database it replaces is kept next to it. Run
`manage.py migrate` afterwards when the backup is older than the code. Prints one JSON object.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand
from django.core.management.base import CommandError
from django.core.management.base import CommandParser

from provisioning import platform_backup


class Command(BaseCommand):
    help = "Restore the platform DB from a backup made by backup_platform (the stack must be stopped)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", type=Path, help="a file written by backup_platform")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            info = platform_backup.platform_restore(options["path"])
        except platform_backup.PlatformBackupError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(json.dumps(info.as_dict()))
