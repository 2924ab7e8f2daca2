"""PgBouncer's files: the one place that writes ``pgbouncer.ini`` and reads or writes its ``auth_file``.

Used by the tenant PostgreSQL driver (``drivers.postgres`` adds and removes one line per add-on role)
and by the process supervisor (``devstack``, which writes the ini and the admin user's line for
``make up``, the integration tests and the benchmarks). It imports nothing from Django, so the
supervisor can use it before any settings exist.

The ``auth_file`` holds one ``"user" "secret"`` line per user, where the secret is a SCRAM-SHA-256
verifier: for tenant roles the verifier exactly as PostgreSQL stores it (PgBouncer's SCRAM
pass-through needs it byte-identical), for PgBouncer's own admin user one computed here from the
password (that user exists only in PgBouncer). Every change is a read-modify-write under a lock in
a sibling file and an atomic rename, so PgBouncer never reads a half-written file and two writers
never lose each other's lines.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import hmac
import os
import re
import secrets
import stat
import tempfile
from collections.abc import Iterator
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SCRAM_ITERATIONS = 4096

# --- pgbouncer.ini --------------------------------------------------------------------------------

# How far PgBouncer's ceilings sit above the per-role defaults Postgres applies to tenant roles, so a
# well-behaved query meets Postgres's clean "statement timeout" error and only a tenant who lifted its
# own timeout meets PgBouncer's.
CEILING_MARGIN_SECONDS = 30


@dataclass(frozen=True)
class PgBouncerConfig:
    """What differs between one PgBouncer and the next; everything else is fixed in ``config_text``."""

    listen_addr: str
    listen_port: int
    server_host: str
    server_port: int
    auth_file: Path
    admin_user: str = "pgbouncer"
    # The tenant roles' own defaults (COLTSFOOT_TENANT_PG_STATEMENT_TIMEOUT_MS / _IDLE_TX_TIMEOUT_MS).
    statement_timeout_ms: int = 30_000
    idle_tx_timeout_ms: int = 60_000

    @property
    def query_timeout(self) -> int:
        return self.statement_timeout_ms // 1000 + CEILING_MARGIN_SECONDS

    @property
    def idle_transaction_timeout(self) -> int:
        return self.idle_tx_timeout_ms // 1000 + CEILING_MARGIN_SECONDS


def config_text(config: PgBouncerConfig) -> str:
    """The whole ``pgbouncer.ini``. A production PgBouncer needs the same ``[pgbouncer]`` settings."""
    return "\n".join(
        [
            "; Written by the Coltsfoot supervisor (devstack, drivers/pgbouncer.py) at every start.",
            "[databases]",
            "; Any database a client names goes to the tenant cluster under the same name; the auth_file",
            "; decides who may log in (one line per add-on role, kept by the platform).",
            f"* = host={config.server_host} port={config.server_port}",
            "",
            "[pgbouncer]",
            "; 0.0.0.0: tenant containers reach PgBouncer through their isolated network's gateway, an",
            "; address that only exists while a container is attached. Firewall this port from the outside.",
            f"listen_addr = {config.listen_addr}",
            f"listen_port = {config.listen_port}",
            "unix_socket_dir =",
            "auth_type = scram-sha-256",
            f"auth_file = {config.auth_file}",
            f"admin_users = {config.admin_user}",
            f"stats_users = {config.admin_user}",
            "pool_mode = transaction",
            "; Above the tenant roles' statement and idle-in-transaction timeouts: the ceiling a tenant",
            "; cannot lift.",
            f"query_timeout = {config.query_timeout}",
            f"idle_transaction_timeout = {config.idle_transaction_timeout}",
            "query_wait_timeout = 30",
            "max_client_conn = 500",
            "default_pool_size = 10",
            "; The default 15 s locks a pool out for that long after one failed server login (a role",
            "; dropped and provisioned again, say); retry quickly instead.",
            "server_login_retry = 1",
            "server_tls_sslmode = disable",
            "ignore_startup_parameters = extra_float_digits",
            "log_connections = 1",
            "log_disconnections = 1",
            "",
        ]
    )


def config_write(path: Path, config: PgBouncerConfig) -> bool:
    """Write the ini atomically (mode 600, owner of the directory); False if it was already this."""
    text = config_text(config)
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except FileNotFoundError:
        pass
    _write_atomic(path, text.splitlines())
    return True


# --- auth_file ------------------------------------------------------------------------------------


@contextlib.contextmanager
def userlist_lock(path: Path) -> Iterator[None]:
    """Exclusive lock for a read-modify-write of the auth file (two Celery workers may race).

    The lock lives in a sibling file: the auth file itself is replaced, so a lock on its inode
    would not exclude anyone.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(str(path) + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def userlist_read(path: Path) -> dict[str, str]:
    """user -> secret for every well-formed line (comments and garbage are skipped); {} if no file."""
    entries: dict[str, str] = {}
    for line in _read_userlist(path):
        parsed = _parse_line(line)
        if parsed is not None:
            entries[parsed[0]] = parsed[1]
    return entries


def userlist_upsert(path: Path, role: str, secret: str) -> bool:
    """Set the role's line; returns False (and leaves the file untouched) if it was already right.

    Call under userlist_lock(). Lines for other users (the admin user, comments) are kept as is.
    """
    line = f"{_quote_userlist(role)} {_quote_userlist(secret)}"
    lines = _read_userlist(path)
    new_lines: list[str] = []
    placed = False
    for existing in lines:
        if _userlist_user(existing) != role:
            new_lines.append(existing)
        elif not placed:  # replace in place; any duplicate lines for the role are dropped
            new_lines.append(line)
            placed = True
    if not placed:
        new_lines.append(line)
    if new_lines == lines:
        return False
    _write_atomic(path, new_lines)
    return True


def userlist_remove(path: Path, role: str) -> bool:
    """Delete the role's line(s); returns False if there was none. Call under userlist_lock()."""
    lines = _read_userlist(path)
    kept = [existing for existing in lines if _userlist_user(existing) != role]
    if kept == lines:
        return False
    _write_atomic(path, kept)
    return True


def admin_user_ensure(path: Path, user: str, password: str) -> bool:
    """Give PgBouncer's own admin user a line with a SCRAM verifier of ``password``, leaving every other
    line alone. Returns whether the file changed: an existing verifier that matches the password is
    kept (a fresh salt would change the file, and make PgBouncer reload, for nothing)."""
    with userlist_lock(path):
        existing = userlist_read(path).get(user)
        if existing is not None and scram_verifier_matches(existing, password):
            return False
        return userlist_upsert(path, user, scram_verifier(password))


def _quote_userlist(value: str) -> str:
    if any(char in value for char in "\r\n\0"):
        raise ValueError("auth_file values cannot contain line breaks")
    return '"' + value.replace('"', '""') + '"'


def _parse_quoted(text: str) -> tuple[str, str] | None:
    """(the value of the quoted string ``text`` starts with, what follows it), or None."""
    if not text.startswith('"'):
        return None
    chars: list[str] = []
    index = 1
    while index < len(text):
        char = text[index]
        if char == '"':
            if text[index + 1 : index + 2] == '"':
                chars.append('"')
                index += 2
                continue
            return "".join(chars), text[index + 1 :]
        chars.append(char)
        index += 1
    return None


def _userlist_user(line: str) -> str | None:
    """The user name a line is about, or None for comments, blanks and anything unparsable."""
    parsed = _parse_quoted(line.lstrip())
    return None if parsed is None else parsed[0]


def _parse_line(line: str) -> tuple[str, str] | None:
    user = _parse_quoted(line.lstrip())
    if user is None:
        return None
    secret = _parse_quoted(user[1].lstrip())
    return None if secret is None else (user[0], secret[0])


def _read_userlist(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return text.splitlines()


def _write_atomic(path: Path, lines: Sequence[str]) -> None:
    """Replace the file in one rename, keeping the old file's mode and owner.

    PgBouncer runs as its own unprivileged user and must still be able to read the file after
    a worker running as root rewrote it; a new file takes the parent directory's owner.
    """
    try:
        current = path.stat()
        mode = stat.S_IMODE(current.st_mode)
        owner = (current.st_uid, current.st_gid)
    except FileNotFoundError:
        parent = path.parent.stat()
        mode = 0o600
        owner = (parent.st_uid, parent.st_gid)
    content = "".join(f"{line}\n" for line in lines).encode("utf-8")
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        if os.geteuid() == 0 and owner != (os.geteuid(), os.getegid()):
            os.fchown(fd, *owner)
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# --- SCRAM-SHA-256 verifiers (RFC 5802/7677, PostgreSQL's format) -----------------------------------

_SCRAM_VERIFIER_RE = re.compile(
    r"SCRAM-SHA-256\$(?P<iterations>[0-9]+):(?P<salt>[A-Za-z0-9+/=]+)"
    r"\$(?P<stored_key>[A-Za-z0-9+/=]+):(?P<server_key>[A-Za-z0-9+/=]+)"
)


def _scram_keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    """(StoredKey, ServerKey) for an ASCII password (SASLprep is the identity for ASCII)."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("ascii"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    return hashlib.sha256(client_key).digest(), server_key


def scram_verifier(password: str, *, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """A SCRAM-SHA-256 verifier of an ASCII password, in the format of pg_authid."""
    if not password.isascii():
        raise ValueError("only ASCII passwords are supported here")
    salt = salt if salt is not None else secrets.token_bytes(16)
    stored_key, server_key = _scram_keys(password, salt, iterations)

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def scram_verifier_matches(verifier: str, password: str) -> bool:
    """Whether ``verifier`` (as in pg_authid) was made from ``password`` (RFC 5802/7677 keys).

    Only ASCII passwords are checked (SASLprep is the identity for them); anything else is
    reported as "no match", which merely costs a password reset.
    """
    match = _SCRAM_VERIFIER_RE.fullmatch(verifier)
    if match is None or not password.isascii():
        return False
    try:
        salt = base64.b64decode(match["salt"], validate=True)
        stored_key = base64.b64decode(match["stored_key"], validate=True)
        server_key = base64.b64decode(match["server_key"], validate=True)
    except binascii.Error:
        return False
    iterations = int(match["iterations"])
    if not 1 <= iterations <= 1_000_000:
        return False
    expected_stored_key, expected_server_key = _scram_keys(password, salt, iterations)
    return hmac.compare_digest(expected_stored_key, stored_key) and hmac.compare_digest(expected_server_key, server_key)
