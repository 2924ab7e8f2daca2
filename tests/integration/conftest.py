"""Session fixtures that start real services for the integration tests, each on free ports in its own temp
dir, with the project's supervisor (`devstack`, the same code `make up` runs). They start lazily (only when a
test asks for them), and under `pytest -n N` each xdist worker process has its own session and therefore its
own set of services.

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

from devstack.process import ServiceError
from devstack.services import CaddyServer
from devstack.services import PgBouncerServer
from devstack.services import Platform
from devstack.services import PlatformDatabase
from devstack.services import PostgresServer
from devstack.services import RedisServer
from devstack.services import RegistryServer
from devstack.services import Service
from devstack.services import log_sections
from devstack.stack import Stack
from devstack.stack import isolated_stack as make_isolated_stack
from tests.integration.dns_server import LocalDnsServer

# COLTSFOOT_TEST_PLATFORM_DB=postgres puts the `platform` fixture's platform DB on the session's PostgreSQL,
# through its PgBouncer (transaction pooling), as `COLTSFOOT_PLATFORM_DB=postgres make up` does; `make test`
# runs tests/integration/test_deploy.py that way once (`make integration-pg`). Default: SQLite.
PLATFORM_DB_ENV = "COLTSFOOT_TEST_PLATFORM_DB"


def platform_db_choice() -> str:
    choice = os.environ.get(PLATFORM_DB_ENV, "").strip().lower() or "sqlite"
    if choice not in ("sqlite", "postgres"):
        raise pytest.UsageError(f"{PLATFORM_DB_ENV}={choice!r}: use sqlite or postgres")
    return choice


# Short leases and reconcile period, so a killed worker's deployment is picked up again within seconds; local
# git repositories allowed; a generous replica start deadline for a loaded 2-core machine. Tenant containers
# keep a normal CPU weight here: the low production weight would let the test runner's own busy processes
# (outside the tenant cgroup tree) starve the builds under test (README: Resource limits).
PLATFORM_TEST_ENV = {
    "COLTSFOOT_TENANT_CPU_WEIGHT": "100",
    "COLTSFOOT_LEASE_SECONDS": "10",
    "COLTSFOOT_RECONCILE_SECONDS": "3",
    "COLTSFOOT_WORKER_STALL_SECONDS": "30",
    "COLTSFOOT_WORKER_PROBE_SECONDS": "3",
    "COLTSFOOT_ORPHAN_GRACE_SECONDS": "5",
    "COLTSFOOT_GIT_ALLOW_LOCAL": "1",
    "COLTSFOOT_START_DEADLINE": "60",
    "COLTSFOOT_LOG_LEVEL": "INFO",
    # Retention of daily database backups, small enough to see it work (tests/integration/test_backups.py).
    "COLTSFOOT_TENANT_BACKUP_KEEP": "2",
}


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
def dns_server() -> Generator[LocalDnsServer]:
    """An authoritative DNS server on a free loopback port that the platform's ownership checks ask
    (COLTSFOOT_DNS_RESOLVER); tests publish the TXT records a tenant would."""
    server = LocalDnsServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


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
    dns_server: LocalDnsServer,
) -> Generator[Platform]:
    """The Coltsfoot stack, migrated, with a Celery worker, beat and the API running, its edge on HTTP and
    HTTPS (`caddy_server.tls_listen`) and its DNS ownership checks asking `dns_server`.

    Leases and the reconcile period are short here, so a killed worker's deployment is picked up
    again within seconds; local git repositories and a plain-HTTP local registry are allowed. The platform DB is
    SQLite, or PostgreSQL through PgBouncer with COLTSFOOT_TEST_PLATFORM_DB=postgres."""
    database = None
    if platform_db_choice() == "postgres":
        database = PlatformDatabase(postgres_server, pgbouncer_server, secrets.token_urlsafe(24))
    platform = Platform(
        _session_dir(tmp_path_factory, "platform"),
        redis_server,
        caddy_server,
        postgres_server,
        pgbouncer_server,
        instance_id=instance_id,
        extra_env={
            **PLATFORM_TEST_ENV,
            "COLTSFOOT_IMAGE_PULL_TLS_VERIFY": "0",
            "COLTSFOOT_IMAGE_ALLOWED_REGISTRIES": f"docker.io,ghcr.io,quay.io,{registry_server.host}",
            "COLTSFOOT_DNS_RESOLVER": dns_server.address,
        },
        database=database,
    )
    yield from _run(platform)


@pytest.fixture(scope="module")
def isolated_stack(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer, pgbouncer_server: PgBouncerServer
) -> Generator[Stack]:
    """A complete stack of its own for one test module, for tests that break things (chaos tests): its own
    Redis (persistent), Caddy and Platform (worker, beat, API) on their own free ports, with their own instance
    id, sharing only the session's PostgreSQL and PgBouncer (which it never stops). Nothing another stack or a
    `make up` runs is touched: podman objects are acted on by this stack's `coltsfoot.instance` label only.

    On it (`stack.platform` is the Platform, with `client()`, `create_tenant()`, `edge_get()`):
    - `stack.stop_service(name)`, `stack.start_service(name)`, `stack.kill_service(name)` (SIGKILL of its whole
      process group, like a crash), `stack.restart_service(name)` for "redis", "caddy", "worker", "beat", "api".
      A service keeps its port and data directory, so it comes back where it was (Redis with its data as of
      its last save; Caddy empty, as its config is not persisted).
    - `stack.down(containers="remove")`: everything stopped and this instance's containers removed (images,
      networks and the platform DB kept), the equivalent of `make down` followed by a crash of the containers;
      `containers="stop"` is exactly `make down`. Then `stack.up()` starts everything again on the same state
      (same platform DB, same ports) and waits for each service.
    Teardown stops it and removes everything in podman labelled with its instance."""
    directory = _session_dir(tmp_path_factory, "isolated")
    # A restart backoff of 2, 4, 8 s (not 1, 2, 4): the crash-loop test sees the gaps grow by more than a
    # loaded machine's jitter in how long each restart takes.
    env = {**PLATFORM_TEST_ENV, "COLTSFOOT_RESTART_BACKOFF_BASE": "2"}
    stack = make_isolated_stack(directory, postgres=postgres_server, pgbouncer=pgbouncer_server, extra_env=env)
    failure = None
    try:
        stack.up()
    except ServiceError as exc:
        failure = f"the isolated stack did not start: {exc}"
        stack.down(containers="purge")
    if failure is not None:
        pytest.fail(failure, pytrace=False)
    try:
        yield stack
    finally:
        stack.down(containers="purge")


@pytest.fixture(scope="module")
def two_hosts(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer, pgbouncer_server: PgBouncerServer
) -> Generator[Stack]:
    """A stack of its own (as `isolated_stack`) with two simulated hosts, host-1 and host-2: a worker each, each
    offering 1 GiB to tenant containers, heartbeating every second and taken for down after 8 s of silence.
    `stack.require_platform().host_down("host-2")` kills one, `host_up` brings it back. The platform DB is
    SQLite, or PostgreSQL through PgBouncer with COLTSFOOT_TEST_PLATFORM_DB=postgres (`make integration-pg`)."""
    directory = _session_dir(tmp_path_factory, "two-hosts")
    env = {
        **PLATFORM_TEST_ENV,
        "COLTSFOOT_HOST_MEMORY_MB": "1024",
        "COLTSFOOT_HOST_HEARTBEAT_SECONDS": "1",
        "COLTSFOOT_HOST_DEAD_SECONDS": "8",
        # A control pass that died with its host holds its lease until it expires: keep that within the minute.
        "COLTSFOOT_RECONCILE_LEASE_SECONDS": "15",
    }
    database = None
    if platform_db_choice() == "postgres":
        # A database and role of this stack's own: the session's platform has `coltsfoot_platform`.
        database = PlatformDatabase(
            postgres_server,
            pgbouncer_server,
            secrets.token_urlsafe(24),
            role="coltsfoot_platform_hosts",
            name="coltsfoot_platform_hosts",
        )
    stack = make_isolated_stack(
        directory, postgres=postgres_server, pgbouncer=pgbouncer_server, extra_env=env, hosts=2, database=database
    )
    failure = None
    try:
        stack.up()
    except ServiceError as exc:
        failure = f"the two-host stack did not start: {exc}"
        stack.down(containers="purge")
    if failure is not None:
        pytest.fail(failure, pytrace=False)
    try:
        yield stack
    finally:
        stack.down(containers="purge")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On failure, attach the log tails of the services the test used to its report."""
    report: pytest.TestReport = yield
    if report.failed:
        services: list[Service] = []
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, Stack):
                services += value.services
            elif isinstance(value, Platform):
                services += [value, value.caddy, value.pgbouncer, value.postgres, value.redis]
            elif isinstance(value, Service):
                services.append(value)
        report.sections.extend(log_sections(dict.fromkeys(services)))
    return report
