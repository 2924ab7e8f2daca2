"""`make up`'s choice of platform DB (devstack.local): SQLite by default, PostgreSQL with
COLTSFOOT_PLATFORM_DB=postgres, kept per state dir; what the platform processes then get."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack.local import LocalConfig
from devstack.local import LocalStack
from devstack.process import ServiceError


def local(state: Path, **env: str) -> LocalStack:
    environment = {"COLTSFOOT_STATE_DIR": str(state), "HOME": str(state / "home"), **env}
    stack = LocalStack(LocalConfig.from_env(environment), environment)
    stack.dirs_ensure()
    return stack


def platform_env(stack: LocalStack) -> dict[str, str]:
    values = stack.secrets_ensure()
    return stack.build(values, "instance", create=True).require_platform().env


def test_sqlite_is_the_default_and_no_database_url_reaches_the_platform(tmp_path: Path):
    stack = local(tmp_path / "state", DATABASE_URL="postgres://someone:else@db.example/theirs")

    env = platform_env(stack)

    assert "DATABASE_URL" not in env
    assert (tmp_path / "state" / "platform-db").read_text().strip() == "sqlite"


def test_postgres_gives_every_platform_process_a_url_through_pgbouncer_to_a_database_of_its_own(tmp_path: Path):
    stack = local(tmp_path / "state", COLTSFOOT_PLATFORM_DB="postgres", COLTSFOOT_PGBOUNCER_PORT="7433")

    env = platform_env(stack)
    platform = stack.build(stack.secrets_load(), "instance").require_platform()

    password = stack.secrets_load()["STACK_PLATFORM_DB_PASSWORD"]
    assert len(password) >= 32
    assert env["DATABASE_URL"] == f"postgresql://coltsfoot_platform:{password}@127.0.0.1:7433/coltsfoot_platform"
    for process in (platform.api, platform.worker, platform.beat, platform.collector):
        assert process.env()["DATABASE_URL"] == env["DATABASE_URL"]
    # The edge's DNS server is no Django process: it gets no credentials of the platform DB.
    assert "DATABASE_URL" not in platform.dns.env()
    stack.env_file_write(platform)
    assert f"DATABASE_URL={env['DATABASE_URL']}" in (tmp_path / "state" / "env").read_text().splitlines()


def test_a_later_up_keeps_the_state_dirs_choice_and_refuses_the_other_one(tmp_path: Path):
    platform_env(local(tmp_path / "state", COLTSFOOT_PLATFORM_DB="postgres"))

    assert "DATABASE_URL" in platform_env(local(tmp_path / "state"))
    with pytest.raises(ServiceError, match="platform DB is postgres"):
        platform_env(local(tmp_path / "state", COLTSFOOT_PLATFORM_DB="sqlite"))
    # `make down` and `make status` never refuse: they only stop and look.
    local(tmp_path / "state", COLTSFOOT_PLATFORM_DB="sqlite").build(None, "instance")


def test_an_unknown_platform_db_is_refused(tmp_path: Path):
    with pytest.raises(ServiceError, match="use sqlite"):
        platform_env(local(tmp_path / "state", COLTSFOOT_PLATFORM_DB="mysql"))


def test_a_secrets_file_from_before_the_postgres_platform_db_gets_its_password_added(tmp_path: Path):
    stack = local(tmp_path / "state")
    first = stack.secrets_ensure()
    lines = [line for line in stack.secrets_file.read_text().splitlines() if "PLATFORM_DB" not in line]
    stack.secrets_file.write_text("\n".join(lines) + "\n")

    again = stack.secrets_ensure()

    assert again["STACK_PLATFORM_DB_PASSWORD"]
    assert {k: v for k, v in again.items() if k != "STACK_PLATFORM_DB_PASSWORD"} == {
        k: v for k, v in first.items() if k != "STACK_PLATFORM_DB_PASSWORD"
    }
    assert stack.secrets_ensure() == again
