"""Every entry point refuses to start without DJANGO_SECRET_KEY: one line, exit code 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

ENTRY_POINTS = [
    [sys.executable, "manage.py", "check"],
    [sys.executable, "-c", "import config.wsgi"],
    [sys.executable, "-c", "import config.asgi"],
    [sys.executable, "-m", "celery", "-A", "config", "inspect", "ping"],
]


@pytest.mark.parametrize("argv", ENTRY_POINTS, ids=lambda a: " ".join(a[1:]))
@pytest.mark.parametrize("value", [None, "", "   "])
def test_missing_secret_key_exits_1_with_one_line(argv: list[str], value: str | None, tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k not in {"DJANGO_SECRET_KEY", "DJANGO_SETTINGS_MODULE"}}
    env["COLTSFOOT_DATA_DIR"] = str(tmp_path)
    if value is not None:
        env["DJANGO_SECRET_KEY"] = value
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "coltsfoot: DJANGO_SECRET_KEY is not set; export it (see .env.example) and start again."
    ]
    assert "Traceback" not in result.stderr


def test_sqlite_lives_in_data_dir_not_project_root(tmp_path: Path):
    env = {**os.environ, "DJANGO_SECRET_KEY": "x", "COLTSFOOT_DATA_DIR": str(tmp_path / "data")}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.pop("DATABASE_URL", None)  # the default without one (the suite itself may run on PostgreSQL)
    code = (
        "from django.conf import settings; import django; django.setup(); print(settings.DATABASES['default']['NAME'])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "config.settings"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == str(tmp_path / "data" / "coltsfoot.sqlite3")


def test_a_postgres_database_url_is_safe_behind_pgbouncer_in_transaction_mode(tmp_path: Path):
    env = {
        **os.environ,
        "DJANGO_SECRET_KEY": "x",
        "COLTSFOOT_DATA_DIR": str(tmp_path / "data"),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": "postgres://cf%40platform:p%2Fw@127.0.0.1:6433/coltsfoot_platform",
    }
    code = (
        "import json; from django.conf import settings; import django; django.setup(); "
        "print(json.dumps(settings.DATABASES['default']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True
    )
    database = json.loads(result.stdout.strip().splitlines()[-1])
    assert database["ENGINE"] == "django.db.backends.postgresql"
    assert (database["USER"], database["PASSWORD"]) == ("cf@platform", "p/w")
    assert (database["HOST"], database["PORT"], database["NAME"]) == ("127.0.0.1", "6433", "coltsfoot_platform")
    assert database["DISABLE_SERVER_SIDE_CURSORS"] is True
    assert database["CONN_MAX_AGE"] == 0
    assert database["OPTIONS"]["prepare_threshold"] is None
