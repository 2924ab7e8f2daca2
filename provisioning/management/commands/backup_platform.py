"""`manage.py backup_platform [PATH]`: a consistent online backup of the platform DB.

SQLite through its online backup API (never a file copy of the live WAL database), PostgreSQL with
pg_dump; safe while the stack runs. Without PATH the file goes to COLTSFOOT_PLATFORM_BACKUP_DIR under a
timestamped name, and older ones beyond COLTSFOOT_PLATFORM_BACKUP_KEEP are removed (`--no-prune` keeps
them). Prints one JSON object: path, engine, size.
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
    help = "Back the platform DB up (online, consistent) into PATH or the backup directory."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", nargs="?", type=Path, help="where to write it (default: the backup directory)")
        parser.add_argument("--no-prune", action="store_true", help="keep every older backup in the backup dir")

    def handle(self, *args: Any, **options: Any) -> None:
        path: Path | None = options["path"]
        if path is not None and path.exists():
            raise CommandError(f"{path} exists already: name a new file")
        try:
            info = platform_backup.platform_backup(path)
        except platform_backup.PlatformBackupError as exc:
            raise CommandError(str(exc)) from exc
        removed = [] if path is not None or options["no_prune"] else platform_backup.backups_prune()
        self.stdout.write(json.dumps({**info.as_dict(), "pruned": len(removed)}))
