"""Backups of the platform DB (tenants, tokens, apps, encrypted config): take one online, restore one offline.

SQLite: the online backup API (`sqlite3.Connection.backup` with every page in one step), which copies the
database inside one read transaction of the source: a consistent snapshot, taken while the API and the
worker keep writing (in WAL mode readers never block writers). Copying the file instead would miss what is
still only in `-wal`, or tear a page being checkpointed. The copy is switched to `journal_mode=DELETE`, so
it is one self-contained file, checked with `PRAGMA integrity_check`, and renamed into place only then.

PostgreSQL: `pg_dump --format=custom` (consistent by itself: one repeatable-read snapshot), restored with
`pg_restore --clean --if-exists --single-transaction`.

A restore replaces the live database, so it refuses while anything of the stack is running: for SQLite, any
process that has the DB file open (the API, the worker, the log collector; read from /proc) or an API
answering on COLTSFOOT_API_BIND; for PostgreSQL, any other session on the platform database.

The backups hold the encrypted config as ciphertext: they are useless without COLTSFOOT_FERNET_KEYS, which
must be backed up separately (README: "Disaster recovery").
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import sqlite3
import subprocess
import uuid
from dataclasses import dataclass
from datetime import UTC
from datetime import datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connections
from django.db.migrations.loader import MigrationLoader

from core.faults import InfrastructureError

logger = logging.getLogger(__name__)

BACKUP_PREFIX = "coltsfoot-platform-"
SQLITE_SUFFIX = ".sqlite3"
PG_SUFFIX = ".pgdump"
SQLITE_HEADER = b"SQLite format 3\x00"
PG_CUSTOM_HEADER = b"PGDMP"
# A platform DB has at least these: anything else handed to restore_platform is refused.
REQUIRED_TABLES = ("django_migrations", "tenants_tenant", "tenants_apitoken", "platform_apps_app")
SQLITE_BUSY_TIMEOUT_SECONDS = 20.0
PG_TOOL_TIMEOUT_SECONDS = 1800
API_PROBE_TIMEOUT_SECONDS = 1.0


class PlatformBackupError(InfrastructureError):
    """A backup or restore could not be done; the message says why and what to do."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class BackupInfo:
    path: Path
    engine: str
    size: int

    def as_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "engine": self.engine, "size": self.size}


@dataclass(frozen=True)
class RestoreInfo:
    path: Path
    engine: str
    tenants: int
    apps: int
    previous: Path | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "engine": self.engine,
            "tenants": self.tenants,
            "apps": self.apps,
            "previous": str(self.previous) if self.previous else None,
        }


# --- where -------------------------------------------------------------------------------------


def _engine() -> str:
    engine = str(settings.DATABASES["default"]["ENGINE"])
    if engine.endswith("sqlite3"):
        return "sqlite"
    if engine.endswith("postgresql"):
        return "postgresql"
    raise PlatformBackupError(f"backups support SQLite and PostgreSQL platform DBs, not {engine}")


def backup_dir() -> Path:
    return Path(settings.PLATFORM_BACKUP_DIR)


def default_backup_path(now: datetime | None = None) -> Path:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%fZ")
    suffix = SQLITE_SUFFIX if _engine() == "sqlite" else PG_SUFFIX
    return backup_dir() / f"{BACKUP_PREFIX}{stamp}{suffix}"


def _sqlite_path() -> Path:
    return Path(str(settings.DATABASES["default"]["NAME"]))


# --- backup ------------------------------------------------------------------------------------


def platform_backup(path: Path | None = None) -> BackupInfo:
    """Take a consistent online backup of the platform DB into `path` (default: a new file under
    COLTSFOOT_PLATFORM_BACKUP_DIR). Written to a temporary name and renamed when complete."""
    engine = _engine()
    target = path or default_backup_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    if path is None:
        with contextlib.suppress(OSError):
            target.parent.chmod(0o700)  # our own directory: private
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
    try:
        if engine == "sqlite":
            sqlite_backup(_sqlite_path(), partial)
        else:
            _pg_dump(partial)
        _fsync(partial)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    info = BackupInfo(path=target, engine=engine, size=target.stat().st_size)
    logger.info("platform DB backed up", extra=info.as_dict())
    return info


def sqlite_backup(source: Path, dest: Path) -> None:
    """Copy the live SQLite DB `source` into the new file `dest` with the online backup API."""
    if not source.is_file():
        raise PlatformBackupError(f"the platform DB {source} does not exist")
    dest.touch(mode=0o600, exist_ok=False)  # an empty file is an empty database; created private
    try:
        with (
            contextlib.closing(sqlite3.connect(source, timeout=SQLITE_BUSY_TIMEOUT_SECONDS)) as src,
            contextlib.closing(sqlite3.connect(dest)) as dst,
        ):
            # pages=-1: every page in one step, so one read transaction, so one snapshot. (Stepping
            # page by page would restart whenever another connection writes, and never finish.)
            src.backup(dst, pages=-1)
            dst.execute("PRAGMA journal_mode=DELETE")
            result = dst.execute("PRAGMA integrity_check").fetchone()
    except sqlite3.Error as exc:
        raise PlatformBackupError(f"the SQLite backup failed: {exc}", transient=True) from exc
    if not result or result[0] != "ok":
        raise PlatformBackupError("the SQLite backup failed its integrity check", transient=True)


def _fsync(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def backups_prune(keep: int | None = None) -> list[Path]:
    """Delete all but the newest `keep` (COLTSFOOT_PLATFORM_BACKUP_KEEP) backups in the backup dir;
    the files' names sort by time. Files not named like ours are never touched."""
    keep = settings.PLATFORM_BACKUP_KEEP if keep is None else keep
    directory = backup_dir()
    if keep < 1 or not directory.is_dir():
        return []
    ours = sorted(
        (
            entry
            for entry in directory.iterdir()
            if entry.is_file()
            and entry.name.startswith(BACKUP_PREFIX)
            and entry.name.endswith((SQLITE_SUFFIX, PG_SUFFIX))
        ),
        key=lambda entry: entry.name,
        reverse=True,
    )
    removed = ours[keep:]
    for entry in removed:
        entry.unlink(missing_ok=True)
    if removed:
        logger.info("old platform DB backups removed", extra={"removed": len(removed), "kept": keep})
    return removed


# --- PostgreSQL --------------------------------------------------------------------------------


def _pg_settings() -> dict[str, str]:
    db = settings.DATABASES["default"]
    return {key: str(db.get(key) or "") for key in ("NAME", "USER", "PASSWORD", "HOST", "PORT")}


def _pg_connection_args(db: dict[str, str]) -> list[str]:
    args = []
    if db["HOST"]:
        args += ["--host", db["HOST"]]
    if db["PORT"]:
        args += ["--port", db["PORT"]]
    if db["USER"]:
        args += ["--username", db["USER"]]
    return [*args, "--no-password"]


def pg_dump_argv(db: dict[str, str], dest: Path) -> list[str]:
    """The pg_dump command (the password goes in PGPASSWORD, never on the command line)."""
    return [
        settings.PG_DUMP_BIN,
        "--format=custom",
        "--no-owner",
        "--no-privileges",
        "--file",
        str(dest),
        *_pg_connection_args(db),
        "--dbname",
        db["NAME"],
    ]


def pg_restore_argv(db: dict[str, str], source: Path) -> list[str]:
    return [
        settings.PG_RESTORE_BIN,
        "--clean",
        "--if-exists",
        "--single-transaction",
        "--no-owner",
        "--no-privileges",
        "--exit-on-error",
        *_pg_connection_args(db),
        "--dbname",
        db["NAME"],
        str(source),
    ]


def _pg_env(db: dict[str, str]) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    if db["PASSWORD"]:
        env["PGPASSWORD"] = db["PASSWORD"]
    return env


def _pg_run(argv: list[str], db: dict[str, str], step: str) -> None:
    try:
        subprocess.run(
            argv, check=True, capture_output=True, text=True, timeout=PG_TOOL_TIMEOUT_SECONDS, env=_pg_env(db)
        )
    except subprocess.CalledProcessError as exc:
        # stderr names objects, not data; still only its last lines, for the operator's log.
        logger.warning("%s failed", step, extra={"returncode": exc.returncode, "stderr": (exc.stderr or "")[-2000:]})
        raise PlatformBackupError(f"{step} failed (exit status {exc.returncode}); see the log", transient=True) from exc
    except subprocess.TimeoutExpired as exc:
        raise PlatformBackupError(f"{step} did not finish within {PG_TOOL_TIMEOUT_SECONDS}s", transient=True) from exc
    except FileNotFoundError as exc:
        raise PlatformBackupError(f"{argv[0]} is not installed (Debian package postgresql-client)") from exc


def _pg_dump(dest: Path) -> None:
    db = _pg_settings()
    dest.touch(mode=0o600, exist_ok=False)
    _pg_run(pg_dump_argv(db, dest), db, "pg_dump")


# --- validate and restore ----------------------------------------------------------------------


def _known_migrations() -> set[tuple[str, str]]:
    return set(MigrationLoader(None, ignore_no_migrations=True).disk_migrations)


def sqlite_validate(path: Path) -> tuple[int, int]:
    """Check that `path` is an intact platform DB this code can run on; (tenants, apps) in it."""
    with path.open("rb") as handle:
        if handle.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
            raise PlatformBackupError(f"{path} is not an SQLite database")
    try:
        with contextlib.closing(sqlite3.connect(path)) as db:
            check = db.execute("PRAGMA integrity_check").fetchone()
            if not check or check[0] != "ok":
                raise PlatformBackupError(f"{path} is damaged (PRAGMA integrity_check failed)")
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            missing = [table for table in REQUIRED_TABLES if table not in tables]
            if missing:
                raise PlatformBackupError(f"{path} is not a Coltsfoot platform DB (no table {', '.join(missing)})")
            applied = {(str(app), str(name)) for app, name in db.execute("SELECT app, name FROM django_migrations")}
            tenants = int(db.execute("SELECT count(*) FROM tenants_tenant").fetchone()[0])
            apps = int(db.execute("SELECT count(*) FROM platform_apps_app").fetchone()[0])
    except sqlite3.DatabaseError as exc:
        raise PlatformBackupError(f"{path} cannot be read as a platform DB: {exc}") from exc
    unknown = sorted(f"{app}.{name}" for app, name in applied - _known_migrations())
    if unknown:
        raise PlatformBackupError(
            f"{path} was made by a newer Coltsfoot (unknown migrations: {', '.join(unknown[:5])}); "
            "restore it with that version"
        )
    return tenants, apps


def processes_with_open(paths: list[Path]) -> list[int]:
    """Pids (other than ours) with any of `paths` open, from /proc; [] where there is no /proc."""
    wanted = set()
    for path in paths:
        with contextlib.suppress(OSError):
            wanted.add(os.path.realpath(path))
    proc = Path("/proc")
    if not wanted or not proc.is_dir():
        return []
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue  # gone, or not ours to read
        for fd in fds:
            try:
                if os.readlink(fd) in wanted:
                    found.append(int(entry.name))
                    break
            except OSError:
                continue
    return sorted(found)


def _api_answers() -> bool:
    host, _, port = str(settings.API_BIND).rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), API_PROBE_TIMEOUT_SECONDS):
            return True
    except (OSError, ValueError):
        return False


def stack_running_reason() -> str | None:
    """Why a restore must not run now (something of the stack uses the platform DB), or None."""
    if _engine() == "postgresql":
        with connections["default"].cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            row = cursor.fetchone()
        connections["default"].close()
        others = int(row[0]) if row else 0
        return f"{others} other session(s) are connected to the platform database" if others else None
    db = _sqlite_path()
    pids = processes_with_open([db, db.with_name(f"{db.name}-wal")])
    if pids:
        return f"process(es) {', '.join(map(str, pids))} have the platform DB open"
    if _api_answers():
        return f"something answers on the API address {settings.API_BIND}"
    return None


def platform_restore(source: Path) -> RestoreInfo:
    """Replace the platform DB with the backup `source`; only on a stopped stack. The database it
    replaces is kept next to it (`*.before-restore-<time>`) for SQLite."""
    if not source.is_file():
        raise PlatformBackupError(f"{source} does not exist")
    connections.close_all()
    reason = stack_running_reason()
    if reason:
        raise PlatformBackupError(
            f"the stack is running ({reason}): stop it first (`make down`, or stop the API, the worker, beat and "
            "the log collector), then run restore_platform again"
        )
    info = sqlite_restore(source, _sqlite_path()) if _engine() == "sqlite" else _pg_restore(source)
    logger.info("platform DB restored", extra=info.as_dict())
    return info


def sqlite_restore(source: Path, target: Path) -> RestoreInfo:
    """Put a validated copy of the backup `source` in place of the SQLite DB `target` (whose stack is
    stopped); the DB it replaces is kept as `<name>.before-restore-<time>`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    work = target.with_name(f".{target.name}.restore-{uuid.uuid4().hex}")
    previous: Path | None = None
    try:
        work.touch(mode=0o600, exist_ok=False)
        with source.open("rb") as src, work.open("wb") as dst:
            shutil.copyfileobj(src, dst)
        # Validated as the copy that will be used, never the original (which might change meanwhile).
        tenants, apps = sqlite_validate(work)
        _fsync(work)
        if target.exists():
            # Nothing has it open (checked), so its files can move as they are: renamed together, the
            # old DB and its -wal still open as one database under the new name.
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            previous = target.with_name(f"{target.name}.before-restore-{stamp}")
            target.replace(previous)
            for suffix in ("-wal", "-journal"):
                side = target.with_name(f"{target.name}{suffix}")
                if side.exists():
                    side.replace(previous.with_name(f"{previous.name}{suffix}"))
        # A -wal or -shm left next to the new file would be replayed into it: none may remain.
        for suffix in ("-wal", "-shm", "-journal"):
            target.with_name(f"{target.name}{suffix}").unlink(missing_ok=True)
        work.replace(target)
    finally:
        work.unlink(missing_ok=True)
    return RestoreInfo(path=source, engine="sqlite", tenants=tenants, apps=apps, previous=previous)


def _pg_restore(source: Path) -> RestoreInfo:
    with source.open("rb") as handle:
        if handle.read(len(PG_CUSTOM_HEADER)) != PG_CUSTOM_HEADER:
            raise PlatformBackupError(f"{source} is not a pg_dump custom-format file")
    db = _pg_settings()
    _pg_run(pg_restore_argv(db, source), db, "pg_restore")
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM tenants_tenant")
        tenants = int(cursor.fetchone()[0])
        cursor.execute("SELECT count(*) FROM platform_apps_app")
        apps = int(cursor.fetchone()[0])
    return RestoreInfo(path=source, engine="postgresql", tenants=tenants, apps=apps, previous=None)
