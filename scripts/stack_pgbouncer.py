"""`make up` helper: put PgBouncer's admin user into its auth_file without disturbing tenant lines.

Usage: STACK_PGBOUNCER_ADMIN_PASSWORD=... python scripts/stack_pgbouncer.py AUTH_FILE USER
(the password comes from the environment so it never shows up in `ps`).

The auth_file is shared with the Celery worker, which adds and removes one line per tenant role
(`drivers.postgres.userlist_upsert`); this takes the same lock and rewrites only the admin
user's line. The line holds a SCRAM-SHA-256 verifier, not the password, and is left alone when
the verifier already matches (a fresh salt would change the file for nothing). Prints
"changed" or "unchanged"; the caller sends PgBouncer a SIGHUP after "changed" if it is running.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from drivers.postgres import scram_verifier_matches  # noqa: E402
from drivers.postgres import userlist_lock  # noqa: E402
from drivers.postgres import userlist_upsert  # noqa: E402

PASSWORD_ENV = "STACK_PGBOUNCER_ADMIN_PASSWORD"  # noqa: S105 - the name of a variable, not a password
SCRAM_ITERATIONS = 4096
_LINE_RE = re.compile(r'^\s*"((?:[^"]|"")*)"\s+"((?:[^"]|"")*)"')


def scram_verifier(password: str, *, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """A SCRAM-SHA-256 verifier in PostgreSQL's format (RFC 5802/7677; ASCII passwords only)."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("ascii"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def current_secret(path: Path, user: str) -> str | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        match = _LINE_RE.match(line)
        if match and match.group(1).replace('""', '"') == user:
            return match.group(2).replace('""', '"')
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        sys.stderr.write(f"usage: {PASSWORD_ENV}=... {argv[0]} AUTH_FILE USER\n")
        return 2
    path, user = Path(argv[1]), argv[2]
    password = os.environ.get(PASSWORD_ENV, "")
    if not password or not password.isascii():
        sys.stderr.write(f"{PASSWORD_ENV} must be set to a non-empty ASCII password\n")
        return 2
    with userlist_lock(path):
        existing = current_secret(path, user)
        if existing is not None and scram_verifier_matches(existing, password):
            sys.stdout.write("unchanged\n")
            return 0
        userlist_upsert(path, user, scram_verifier(password))
    sys.stdout.write("changed\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
