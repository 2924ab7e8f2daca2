"""`manage.py rotate_keys [--check] [--batch-size N]`: re-encrypt every secret under the first key.

Run it after putting a new key first in COLTSFOOT_FERNET_KEYS (`NEW,OLD`) and restarting the API
and worker. Batched and resumable: interrupt it at any time and run it again; rows already under
the new key are skipped. It ends with a check pass and prints one JSON object per column; an old
key can be dropped once every `old_key` and `undecryptable` is 0. `--check` only counts (exit 1
while anything still needs an old key, so scripts can wait on it).
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand
from django.core.management.base import CommandError
from django.core.management.base import CommandParser

from core import crypto
from platform_apps import keyrotation


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError("must be at least 1")
    return number


class Command(BaseCommand):
    help = "Re-encrypt every encrypted value under the first COLTSFOOT_FERNET_KEYS key; --check only reports."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--check", action="store_true", help="only count rows that still use an old key")
        parser.add_argument(
            "--batch-size",
            type=_positive,
            default=keyrotation.DEFAULT_BATCH_SIZE,
            help=f"rows read and written per transaction (default {keyrotation.DEFAULT_BATCH_SIZE})",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        batch_size: int = options["batch_size"]
        check_only: bool = options["check"]
        rotated: dict[str, int] = {}
        if not check_only:
            for report in keyrotation.columns_rotate(batch_size=batch_size):
                rotated[report.column] = report.rotated
        remaining = keyrotation.columns_rotate(batch_size=batch_size, check_only=True)
        for report in remaining:
            line = {
                "column": report.column,
                "rows": report.rows,
                "rotated": rotated.get(report.column, 0),
                "old_key": report.old_key,
                "undecryptable": report.undecryptable,
            }
            self.stdout.write(json.dumps(line))
        old = sum(report.old_key for report in remaining)
        lost = sum(report.undecryptable for report in remaining)
        summary = {"primary_key": crypto.primary_key_fingerprint(), "old_key": old, "undecryptable": lost}
        self.stdout.write(json.dumps(summary))
        if lost:
            raise CommandError(
                f"{lost} value(s) decrypt with none of the configured keys: put the key they were made with "
                "back into COLTSFOOT_FERNET_KEYS (after the new one) and run rotate_keys again"
            )
        if check_only and old:
            raise CommandError(f"{old} value(s) still use an old key: run `manage.py rotate_keys`")
