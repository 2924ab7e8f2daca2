"""Row locks that serialise check-then-write transactions on every platform DB.

A quota check ("fewer than max_apps apps?") followed by the write it guards is only correct if no other
transaction can run the same check in between. On SQLite every write transaction is IMMEDIATE (it takes the
database's write lock at BEGIN), so that holds by itself. On PostgreSQL under READ COMMITTED two such
transactions see the same count and both write; `row_lock` makes the second wait, at its first statement,
for the first to commit, and then count again. On SQLite `select_for_update` is a plain SELECT (Django leaves
FOR UPDATE out), so the same code runs on both.

A lock lives only as long as its transaction, which is what PgBouncer's transaction pooling keeps: no
session state, no advisory locks.
"""

from __future__ import annotations

from django.db import transaction
from django.db.models import Model


def row_lock(model: type[Model], pk: int) -> None:
    """Hold the row lock of `model` row `pk` until the current transaction ends (waiting for whoever holds it).

    Every service that checks a tenant's quotas or an app's invariants before writing locks the *tenant* row
    and only that one: one lock per transaction, always the same kind, so two such transactions never wait for
    each other in opposite orders (no deadlock)."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("row_lock outside a transaction would be released at once")
    list(model._default_manager.select_for_update().filter(pk=pk).values_list("pk", flat=True))
