"""Session fixtures that start real services for the integration tests, each on free ports in its own temp
dir. They start lazily (only when a test asks for them), and under `pytest -n N` each xdist worker process
has its own session and therefore its own set of services.

A missing binary or a service that does not come up fails the test loudly with the log tail; it never skips.
These tests are black-box (HTTP, psycopg, redis): they never use pytest-django's test database, whose
blocker stays in place.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Generator
from pathlib import Path

import pytest

from tests.integration.services import CaddyServer
from tests.integration.services import PgBouncerServer
from tests.integration.services import Platform
from tests.integration.services import PostgresServer
from tests.integration.services import RedisServer
from tests.integration.services import RegistryServer
from tests.integration.services import Service
from tests.integration.services import ServiceError
from tests.integration.services import log_sections


def _run[ServiceT: Service](service: ServiceT) -> Generator[ServiceT]:
    failure = None
    try:
        service.start()
    except ServiceError as exc:
        failure = f"{service.name} did not start: {exc}"
        service.stop()
    if failure is not None:  # outside the except block, so the report shows the log tail once
        pytest.fail(failure, pytrace=False)
    try:
        yield service
    finally:
        service.stop()


def _session_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    return tmp_path_factory.mktemp(name)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Generator[RedisServer]:
    yield from _run(RedisServer(_session_dir(tmp_path_factory, "redis")))


@pytest.fixture(scope="session")
def caddy_server(tmp_path_factory: pytest.TempPathFactory) -> Generator[CaddyServer]:
    yield from _run(CaddyServer(_session_dir(tmp_path_factory, "caddy")))


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Generator[PostgresServer]:
    yield from _run(PostgresServer(_session_dir(tmp_path_factory, "postgres")))


@pytest.fixture(scope="session")
def pgbouncer_server(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer
) -> Generator[PgBouncerServer]:
    yield from _run(PgBouncerServer(_session_dir(tmp_path_factory, "pgbouncer"), postgres_server))


@pytest.fixture(scope="session")
def registry_server(tmp_path_factory: pytest.TempPathFactory) -> Generator[RegistryServer]:
    """A plain-HTTP registry on 127.0.0.1 that the platform may pull from (image deploys)."""
    yield from _run(RegistryServer(_session_dir(tmp_path_factory, "registry")))


@pytest.fixture(scope="session")
def instance_id() -> str:
    """This session's COLTSFOOT_INSTANCE_ID: the value of the `coltsfoot.instance` label on every podman object
    the platform creates, so teardown removes exactly this session's leftovers."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return f"it-{worker}-{secrets.token_hex(4)}"


@pytest.fixture(scope="session")
def platform(
    tmp_path_factory: pytest.TempPathFactory,
    instance_id: str,
    redis_server: RedisServer,
    caddy_server: CaddyServer,
    postgres_server: PostgresServer,
    pgbouncer_server: PgBouncerServer,
    registry_server: RegistryServer,
) -> Generator[Platform]:
    """The Coltsfoot stack, migrated, with a Celery worker, beat and the API running.

    Leases and the reconcile period are short here, so a killed worker's deployment is picked up
    again within seconds; local git repositories and a plain-HTTP local registry are allowed."""
    platform = Platform(
        _session_dir(tmp_path_factory, "platform"),
        redis_server,
        caddy_server,
        postgres_server,
        pgbouncer_server,
        instance_id=instance_id,
        extra_env={
            "COLTSFOOT_LEASE_SECONDS": "10",
            "COLTSFOOT_RECONCILE_SECONDS": "3",
            "COLTSFOOT_GIT_ALLOW_LOCAL": "1",
            "COLTSFOOT_IMAGE_PULL_TLS_VERIFY": "0",
            "COLTSFOOT_IMAGE_ALLOWED_REGISTRIES": f"docker.io,ghcr.io,quay.io,{registry_server.host}",
        },
    )
    for started in _run(platform):
        started.start_beat()
        yield started


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On failure, attach the log tails of the services the test used to its report."""
    report: pytest.TestReport = yield
    if report.failed:
        services: list[Service] = []
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, Platform):
                services += [value, value.caddy, value.pgbouncer, value.postgres, value.redis]
            elif isinstance(value, Service):
                services.append(value)
        report.sections.extend(log_sections(dict.fromkeys(services)))
    return report
