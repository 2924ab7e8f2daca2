"""Key rotation that finishes: every encrypted column re-encrypted under the primary Fernet key.

`COLTSFOOT_FERNET_KEYS` is newest first; new writes already use the first key, but rows written
before a rotation keep their old ciphertext until something rewrites them. `fields_rotate` walks
every encrypted column in primary-key order, in batches, and rewrites each token the primary key
cannot decrypt on its own with `crypto.rotate` (decrypt with whichever key made it, encrypt with
the first).

Why this is safe to interrupt and run again:
- a token the primary key already decrypts is skipped, so a rerun never touches the rows an
  earlier run finished and never layers a second encryption on top (`rotate` decrypts once and
  encrypts the *plaintext*; it is never given its own output as plaintext);
- each batch is written in its own transaction, after the (slow) crypto work, and each row with a
  compare-and-set on the old token: a value the API rewrote meanwhile (under the primary key, by
  `crypto.encrypt`) is left as it is instead of being overwritten with stale data.

`.update()` bypasses `auto_now`, so rotation does not change any row's `updated_at`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from collections.abc import Iterable
from dataclasses import asdict
from dataclasses import dataclass
from typing import Any

from django.db import models
from django.db import transaction

from core import crypto
from platform_apps.models import Addon
from platform_apps.models import AddonBackup
from platform_apps.models import App
from platform_apps.models import ConfigVar
from platform_apps.models import IdempotencyRecord
from platform_apps.models import RedisAddon

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 500


@dataclass(frozen=True)
class EncryptedColumn:
    """One column that holds a `core.crypto` token ("" means no value)."""

    model: type[models.Model]
    field: str

    @property
    def table(self) -> str:
        return str(self.model._meta.db_table)

    @property
    def name(self) -> str:
        return f"{self.table}.{self.field}"


# Every encrypted column of the platform DB. A model that adds one registers it here
# (`register`), and the unit tests check that no TextField ending in `_encrypted` is missing.
_COLUMNS: list[EncryptedColumn] = [
    EncryptedColumn(ConfigVar, "value_encrypted"),
    EncryptedColumn(App, "webhook_secret_encrypted"),
    EncryptedColumn(Addon, "password_encrypted"),
    EncryptedColumn(RedisAddon, "password_encrypted"),
    EncryptedColumn(IdempotencyRecord, "body_encrypted"),
    # Each backup's data key; the sealed file itself is under that key and never needs rewriting.
    EncryptedColumn(AddonBackup, "key_encrypted"),
]


def register(column: EncryptedColumn) -> None:
    if column not in _COLUMNS:
        _COLUMNS.append(column)


def encrypted_columns() -> tuple[EncryptedColumn, ...]:
    return tuple(_COLUMNS)


@dataclass
class ColumnReport:
    """What one pass over a column found. `rotated`: rows rewritten under the primary key;
    `old_key`: rows only an older key decrypts (counted by a `check_only` pass; a rotating pass
    rewrites them instead); `undecryptable`: rows no configured key decrypts (their key was
    dropped already, or the data is corrupt), which no rerun can fix. An old key can be dropped
    once a check pass finds 0 of both in every column."""

    column: str
    rows: int = 0
    rotated: int = 0
    old_key: int = 0
    undecryptable: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def column_rotate(
    column: EncryptedColumn,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    check_only: bool = False,
    on_batch: Callable[[ColumnReport], None] | None = None,
) -> ColumnReport:
    """Re-encrypt one column under the primary key (or, `check_only`, just count), in batches."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    report = ColumnReport(column=column.name)
    manager = column.model._default_manager
    last_pk: Any = None
    while True:
        rows = manager.exclude(**{column.field: ""}).order_by("pk")
        if last_pk is not None:
            rows = rows.filter(pk__gt=last_pk)
        batch: list[tuple[Any, str]] = list(rows.values_list("pk", column.field)[:batch_size])
        if not batch:
            break
        last_pk = batch[-1][0]
        report.rows += len(batch)
        rewrites = _rewrites(batch, report, check_only=check_only)
        if rewrites:
            with transaction.atomic():
                for pk, old, new in rewrites:
                    if manager.filter(pk=pk, **{column.field: old}).update(**{column.field: new}):
                        report.rotated += 1
                    # else: rewritten meanwhile, by crypto.encrypt, so under the primary key already
        if on_batch is not None:
            on_batch(report)
    logger.info(
        "key rotation pass over column",
        extra={**report.as_dict(), "check_only": check_only, "primary_key": crypto.primary_key_fingerprint()},
    )
    return report


def _rewrites(
    batch: Iterable[tuple[Any, str]], report: ColumnReport, *, check_only: bool
) -> list[tuple[Any, str, str]]:
    rewrites: list[tuple[Any, str, str]] = []
    for pk, token in batch:
        if crypto.uses_primary_key(token):
            continue
        if check_only:
            # Decryptable at all (by an older key), or not?
            try:
                crypto.decrypt(token)
            except crypto.SecretDecryptError:
                report.undecryptable += 1
            else:
                report.old_key += 1
            continue
        try:
            rewrites.append((pk, token, crypto.rotate(token)))
        except crypto.SecretDecryptError:
            report.undecryptable += 1
    return rewrites


def columns_rotate(
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    check_only: bool = False,
    on_batch: Callable[[ColumnReport], None] | None = None,
) -> list[ColumnReport]:
    """`column_rotate` over every encrypted column, one after the other."""
    return [
        column_rotate(column, batch_size=batch_size, check_only=check_only, on_batch=on_batch)
        for column in encrypted_columns()
    ]
