"""A whole stack: services started in order, stopped in reverse, each addressable by name.

`make up` builds one over the state dir (`devstack.local`) and leaves it running; tests and benchmarks build
one over temp dirs and free ports and stop it at the end (`with Stack(...)`). Chaos tests use the by-name
controls to stop, start or SIGKILL one service while the others keep running: a service keeps its ports and
data directory, so it comes back where it was.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from devstack.services import CaddyServer
from devstack.services import ContainerPolicy
from devstack.services import PgBouncerServer
from devstack.services import Platform
from devstack.services import PlatformDatabase
from devstack.services import PostgresServer
from devstack.services import ProcessService
from devstack.services import RedisServer
from devstack.services import Service

logger = logging.getLogger(__name__)

# Called after each process service is ensured: (service, whether it was started now).
Report = Callable[[ProcessService, bool], None]


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    pid: int | None
    where: str


class Stack:
    """`services` in start order; a `Platform` among them stands for its own processes (worker, beat, API)."""

    def __init__(self, services: Sequence[Service]) -> None:
        self.services = list(services)

    @property
    def platform(self) -> Platform | None:
        return next((s for s in self.services if isinstance(s, Platform)), None)

    def require_platform(self) -> Platform:
        platform = self.platform
        if platform is None:
            raise KeyError("this stack has no platform")
        return platform

    def leaves(self) -> list[ProcessService]:
        """Every single-process service, in start order (a platform's processes in its place)."""
        leaves: list[ProcessService] = []
        for service in self.services:
            if isinstance(service, Platform):
                leaves += service.services
            elif isinstance(service, ProcessService):
                leaves.append(service)
        return leaves

    def service(self, name: str) -> ProcessService:
        for service in self.leaves():
            if service.name == name:
                return service
        raise KeyError(f"no service {name!r} in this stack (it has {', '.join(s.name for s in self.leaves())})")

    # --- the whole stack -------------------------------------------------------------------------------

    def up(self, *, report: Report | None = None, before_platform: Callable[[], None] | None = None) -> None:
        """Start whatever is not running (adopting what runs from its pid file), in order, each waited for.
        The platform is migrated, its static files collected and its firewall table installed first (all
        idempotent, before the API starts); `before_platform` runs right after that."""
        for service in self.services:
            if isinstance(service, Platform):
                service.prepare()
                if before_platform is not None:
                    before_platform()
                for process in service.services:
                    started = process.ensure()
                    if report is not None:
                        report(process, started)
            else:
                started = service.ensure()
                if report is not None and isinstance(service, ProcessService):
                    report(service, started)

    def down(self, *, containers: ContainerPolicy = "stop") -> None:
        """Stop everything in reverse order; the platform's podman objects as `containers` says, right after its
        worker stopped (so nothing recreates them)."""
        for service in reversed(self.services):
            if isinstance(service, Platform):
                service.stop(containers=containers)
            else:
                service.stop()

    def adopt(self) -> None:
        for service in self.leaves():
            service.adopt()

    def status(self) -> list[ServiceStatus]:
        """One line per process service, from the pid files (adopting what runs)."""
        self.adopt()
        return [ServiceStatus(s.name, s.pid, s.describe()) for s in self.leaves()]

    # --- one service -------------------------------------------------------------------------------------

    def stop_service(self, name: str) -> None:
        self.service(name).stop()

    def start_service(self, name: str) -> None:
        """Start it again on the same ports and data (an error if it already runs)."""
        self.service(name).start()

    def kill_service(self, name: str) -> None:
        """SIGKILL it and its process group, like a crash: no shutdown, no final save."""
        self.service(name).kill()

    def restart_service(self, name: str) -> None:
        self.service(name).restart()

    def __enter__(self) -> Self:
        try:
            self.up()
        except BaseException:
            self.down(containers="purge")
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.down(containers="purge")


def isolated_stack(
    directory: Path,
    *,
    postgres: PostgresServer | None = None,
    pgbouncer: PgBouncerServer | None = None,
    instance_id: str | None = None,
    extra_env: dict[str, str] | None = None,
    with_beat: bool = True,
    hosts: int = 1,
    database: PlatformDatabase | None = None,
) -> Stack:
    """A complete stack of its own under `directory` on free ports: Redis (persistent, so a restart keeps its
    data), Caddy, and a Platform (a worker per simulated host, beat, API) with its own instance id. PostgreSQL
    and PgBouncer are made too unless shared ones are given (then this stack never stops them). Not started:
    use `with`, or `up()`. `database`: the platform DB on the shared PostgreSQL through its PgBouncer (SQLite
    under the stack's directory by default)."""
    directory.mkdir(parents=True, exist_ok=True)
    redis = RedisServer(directory / "redis", persistent=True)
    caddy = CaddyServer(directory / "caddy")
    services: list[Service] = [redis, caddy]
    if postgres is None:
        postgres = PostgresServer(directory / "postgres")
        services.append(postgres)
    if pgbouncer is None:
        pgbouncer = PgBouncerServer(directory / "pgbouncer", postgres)
        services.append(pgbouncer)
    platform = Platform(
        directory / "platform",
        redis,
        caddy,
        postgres,
        pgbouncer,
        instance_id=instance_id,
        extra_env=extra_env,
        with_beat=with_beat,
        hosts=hosts,
        database=database,
    )
    return Stack([*services, platform])
