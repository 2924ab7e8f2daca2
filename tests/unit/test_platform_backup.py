"""Platform DB backups: the online SQLite copy under concurrent writers, validation, retention, the
restore's refusal on a running stack, and the pg_dump/pg_restore commands."""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError
from django.core.management import call_command

from config.celery import app as celery_app
from provisioning import platform_backup
from provisioning import tasks

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def platform_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real, migrated platform DB file (made by `manage.py migrate` in a data dir of its own)."""
    data_dir = tmp_path_factory.mktemp("platform-data")
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DJANGO_SECRET_KEY": "unit-tests-only-not-a-secret",
        "COLTSFOOT_DATA_DIR": str(data_dir),
        "COLTSFOOT_FIREWALL": "0",
    }
    env.pop("DATABASE_URL", None)
    env.pop("COLTSFOOT_DB_PATH", None)
    subprocess.run(
        [sys.executable, str(REPO / "manage.py"), "migrate", "--noinput", "-v", "0"],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=REPO,
    )
    return data_dir / "coltsfoot.sqlite3"


def _wal_db(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE pairs (writer INTEGER, n INTEGER, half TEXT)")


def test_backup_under_eight_writers_is_a_consistent_snapshot(tmp_path: Path) -> None:
    source = tmp_path / "live.sqlite3"
    _wal_db(source)
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(index: int) -> None:
        # Each transaction inserts two rows: a consistent copy never has one without the other.
        try:
            with sqlite3.connect(source, timeout=20, isolation_level=None) as db:
                n = 0
                while not stop.is_set():
                    db.execute("BEGIN IMMEDIATE")
                    db.execute("INSERT INTO pairs VALUES (?, ?, 'a')", (index, n))
                    db.execute("INSERT INTO pairs VALUES (?, ?, 'b')", (index, n))
                    db.execute("COMMIT")
                    n += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.3)
        copies = []
        for number in range(3):
            dest = tmp_path / f"copy{number}.sqlite3"
            platform_backup.sqlite_backup(source, dest)
            copies.append(dest)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert not errors
    with sqlite3.connect(source) as db:
        total = db.execute("SELECT count(*) FROM pairs").fetchone()[0]
    for dest in copies:
        assert dest.stat().st_mode & 0o777 == 0o600
        assert not dest.with_name(f"{dest.name}-wal").exists()  # one self-contained file
        with sqlite3.connect(dest) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
            rows = db.execute("SELECT count(*) FROM pairs").fetchone()[0]
            halves = db.execute("SELECT count(*) FROM pairs GROUP BY writer, n HAVING count(*) <> 2").fetchall()
        assert 0 < rows <= total
        assert rows % 2 == 0
        assert halves == []


def test_a_missing_source_is_an_error_not_a_new_empty_database(tmp_path: Path) -> None:
    with pytest.raises(platform_backup.PlatformBackupError, match="does not exist"):
        platform_backup.sqlite_backup(tmp_path / "nope.sqlite3", tmp_path / "copy.sqlite3")
    assert not (tmp_path / "nope.sqlite3").exists()


def test_validate_accepts_a_platform_db_and_refuses_anything_else(platform_db: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.sqlite3"
    platform_backup.sqlite_backup(platform_db, copy)
    assert platform_backup.sqlite_validate(copy) == (0, 0)

    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(platform_backup.PlatformBackupError, match="not an SQLite database"):
        platform_backup.sqlite_validate(text)

    other = tmp_path / "other.sqlite3"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE things (x)")
    with pytest.raises(platform_backup.PlatformBackupError, match="not a Coltsfoot platform DB"):
        platform_backup.sqlite_validate(other)

    newer = tmp_path / "newer.sqlite3"
    shutil.copyfile(copy, newer)
    with sqlite3.connect(newer) as db:
        db.execute(
            "INSERT INTO django_migrations (app, name, applied) VALUES ('platform_apps', '9999_future', '2030-01-01')"
        )
    with pytest.raises(platform_backup.PlatformBackupError, match="newer Coltsfoot"):
        platform_backup.sqlite_validate(newer)

    damaged = tmp_path / "damaged.sqlite3"
    data = bytearray(copy.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4096] = b"\xff" * 4096
    damaged.write_bytes(bytes(data))
    with pytest.raises(platform_backup.PlatformBackupError):
        platform_backup.sqlite_validate(damaged)


def test_restore_replaces_the_db_keeps_the_previous_one_and_drops_a_stale_wal(
    platform_db: Path, tmp_path: Path
) -> None:
    backup = tmp_path / "backup.sqlite3"
    platform_backup.sqlite_backup(platform_db, backup)
    target = tmp_path / "data" / "coltsfoot.sqlite3"
    target.parent.mkdir()
    _wal_db(target)
    (target.parent / "coltsfoot.sqlite3-wal").write_bytes(b"stale")
    info = platform_backup.sqlite_restore(backup, target)
    assert info.previous is not None
    assert info.previous.is_file()
    assert not (target.parent / "coltsfoot.sqlite3-wal").exists()
    assert platform_backup.sqlite_validate(target) == (0, 0)
    # into a fresh directory: nothing to keep
    fresh = tmp_path / "fresh" / "coltsfoot.sqlite3"
    assert platform_backup.sqlite_restore(backup, fresh).previous is None
    assert fresh.stat().st_mode & 0o777 == 0o600


def test_a_process_with_the_db_open_blocks_a_restore(tmp_path: Path) -> None:
    db = tmp_path / "live.sqlite3"
    _wal_db(db)
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import sqlite3, time; c = sqlite3.connect({str(db)!r}); c.execute('SELECT 1'); "
         "print('open', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "open"
        assert platform_backup.processes_with_open([db]) == [holder.pid]
    finally:
        holder.kill()
        holder.wait(timeout=10)
    assert platform_backup.processes_with_open([db]) == []


def test_restore_command_refuses_while_the_stack_runs_and_names_why(
    settings: Any, platform_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backup = tmp_path / "backup.sqlite3"
    platform_backup.sqlite_backup(platform_db, backup)
    monkeypatch.setattr(platform_backup, "stack_running_reason", lambda: "process(es) 4242 have the platform DB open")
    with pytest.raises(CommandError, match=r"the stack is running \(process\(es\) 4242.*make down"):
        call_command("restore_platform", str(backup))


def test_restore_command_refuses_a_file_that_is_no_backup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform_backup, "stack_running_reason", lambda: None)
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"not a database at all")
    target = tmp_path / "data" / "coltsfoot.sqlite3"
    monkeypatch.setattr(platform_backup, "_sqlite_path", lambda: target)
    monkeypatch.setattr(platform_backup, "_engine", lambda: "sqlite")  # the SQLite restore, whatever the suite runs on
    with pytest.raises(CommandError, match="not an SQLite database"):
        call_command("restore_platform", str(junk))
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # no work file left behind


def test_backup_command_into_the_backup_dir_with_retention(
    settings: Any, platform_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.PLATFORM_BACKUP_DIR = str(tmp_path / "backups")
    settings.PLATFORM_BACKUP_KEEP = 2
    monkeypatch.setattr(platform_backup, "_sqlite_path", lambda: platform_db)
    monkeypatch.setattr(platform_backup, "_engine", lambda: "sqlite")  # the SQLite backup, whatever the suite runs on
    (tmp_path / "backups").mkdir()
    unrelated = tmp_path / "backups" / "notes.txt"
    unrelated.write_text("mine")
    paths = []
    for _ in range(3):
        out = io.StringIO()
        call_command("backup_platform", stdout=out)
        paths.append(Path(json.loads(out.getvalue())["path"]))
    left = sorted(entry.name for entry in (tmp_path / "backups").iterdir())
    assert left == sorted([paths[1].name, paths[2].name, "notes.txt"])
    assert all(name.startswith(platform_backup.BACKUP_PREFIX) for name in left if name != "notes.txt")
    explicit = tmp_path / "elsewhere.sqlite3"
    call_command("backup_platform", str(explicit), stdout=io.StringIO())
    assert platform_backup.sqlite_validate(explicit) == (0, 0)
    with pytest.raises(CommandError, match="exists already"):
        call_command("backup_platform", str(explicit), stdout=io.StringIO())


def test_pg_commands_are_argument_lists_without_the_password() -> None:
    db = {"NAME": "coltsfoot", "USER": "cf", "PASSWORD": "s3cr3t", "HOST": "10.0.0.5", "PORT": "5432"}
    dump = platform_backup.pg_dump_argv(db, Path("/b/x.pgdump"))
    assert dump[0].endswith("pg_dump")
    assert "--format=custom" in dump
    assert dump[-2:] == ["--dbname", "coltsfoot"]
    restore = platform_backup.pg_restore_argv(db, Path("/b/x.pgdump"))
    assert {"--clean", "--if-exists", "--single-transaction", "--exit-on-error"} <= set(restore)
    assert restore[-1] == "/b/x.pgdump"
    for argv in (dump, restore):
        assert "s3cr3t" not in " ".join(argv)
        assert "--no-password" in argv
    assert platform_backup._pg_env(db)["PGPASSWORD"] == "s3cr3t"


def test_beat_backs_the_platform_db_up_daily() -> None:
    entry = celery_app.conf.beat_schedule["platform-backup"]
    assert entry["task"] == "coltsfoot.platform_backup"
    assert entry["schedule"] == 24 * 3600.0


def test_the_beat_task_backs_up_into_the_backup_dir_and_keeps_the_newest(
    db: None, settings: Any, platform_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.PLATFORM_BACKUP_DIR = str(tmp_path / "platform-backups")
    settings.PLATFORM_BACKUP_KEEP = 2
    monkeypatch.setattr(platform_backup, "_sqlite_path", lambda: platform_db)
    results = [tasks.platform_backup_run.run() for _ in range(3)]
    assert [result["pruned"] for result in results] == [0, 0, 1]
    left = sorted(path.name for path in (tmp_path / "platform-backups").iterdir())
    assert left == sorted(Path(str(result["path"])).name for result in results[1:])
    assert (tmp_path / "platform-backups").stat().st_mode & 0o777 == 0o700
