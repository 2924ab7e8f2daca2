"""The services of a Coltsfoot stack: Redis, Caddy, PostgreSQL, PgBouncer, the Celery worker and beat, the API
(and, for tests, a local OCI registry).

Each is a `ProcessService`: what to run (`argv`, `env`, `user`), what to prepare first (`prepare`: directories,
config files, initdb), what it listens on (checked free before a start, for a clear message), and when it is
ready (`probe`, polled until `start_timeout`). Adding a process is a subclass of a dozen lines; `Platform`
groups the platform's own processes (`services`), so a later one (a log collector) is one more entry there.

The same classes serve `make up` (fixed ports, directories under the state dir, processes left running and
adopted again from their pid files by the next command) and the tests and benchmarks (free ports, temp dirs,
everything stopped at the end). Nothing here touches a process it did not start or adopt from its own pid
file.
"""

from __future__ import annotations

import abc
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any
from typing import Literal
from typing import Self
from urllib.parse import quote

import httpx
import psycopg
from psycopg import sql

from devstack.process import LOCALHOST
from devstack.process import TAIL_LINES
from devstack.process import ManagedProcess
from devstack.process import ServiceError
from devstack.process import ServiceUser
from devstack.process import dial_host
from devstack.process import free_port
from devstack.process import port_taken
from devstack.process import require_binary
from devstack.process import split_host_port
from devstack.process import system_path
from drivers import firewall
from drivers import pgbouncer as pgbouncer_files
from drivers.upstream_hosts import UPSTREAM_DOMAIN

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
# Tenant containers sit on isolated podman bridges whose gateway address only exists while a container is
# attached, so PgBouncer cannot bind to it ahead of time; 0.0.0.0 is the address they can always reach.
ALL_INTERFACES = "0.0.0.0"  # noqa: S104

# The label the platform puts on every podman object it creates (containers, networks, images, volumes),
# with COLTSFOOT_INSTANCE_ID as its value: teardown and `make down` touch only their own instance's objects.
INSTANCE_LABEL = "coltsfoot.instance"
TENANT_LABEL = "coltsfoot.tenant"
HOST_LABEL = "coltsfoot.host"
DEFAULT_BASE_IMAGE = "localhost/coltsfoot-base:bookworm"

# Developer settings the platform may legitimately need in tests (a corporate CA, a private index, another
# base image); everything else in the caller's environment is left out so it cannot point at real services.
PASSTHROUGH_ENV = (
    "COLTSFOOT_BASE_IMAGE",
    "COLTSFOOT_BUILD_CA_BUNDLE",
    "COLTSFOOT_PIP_INDEX_URL",
    "COLTSFOOT_PODMAN",
    "COLTSFOOT_RUNSC",
    "COLTSFOOT_RUNSC_FLAGS",
    "COLTSFOOT_FIREWALL",
    "COLTSFOOT_NFT",
    "COLTSFOOT_TENANT_EGRESS",
    "COLTSFOOT_DNS_RESOLVER",
    "LANG",
    "TZ",
)


def http_probe(url: str, *, expect: int = 200) -> str | None:
    """Ready when GET url answers `expect`; else what it answered."""
    try:
        response = httpx.get(url, timeout=2.0, trust_env=False)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    if response.status_code == expect:
        return None
    return f"HTTP {response.status_code}: {response.text[:200]}"


def redis_ping(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class Service(abc.ABC):
    """Something a stack starts and stops: one process or a group of them."""

    name = "service"

    @abc.abstractmethod
    def start(self) -> None:
        """Start it and wait until it is ready; raise ServiceError (with the log tail) otherwise."""

    @abc.abstractmethod
    def stop(self) -> None: ...

    @abc.abstractmethod
    def processes(self) -> list[ManagedProcess]: ...

    def ensure(self) -> bool:
        """Adopt it if it already runs (from its pid file), else start it. Returns whether it was started."""
        if self.adopt():
            return False
        self.start()
        return True

    def adopt(self) -> bool:
        return False

    @property
    def running(self) -> bool:
        processes = self.processes()
        return bool(processes) and all(p.running for p in processes)

    def describe(self) -> str:
        """Where it listens, for `status` and the start report."""
        return ""

    def log_tails(self, lines: int = TAIL_LINES) -> dict[str, str]:
        return {p.name: p.tail(lines) for p in self.processes() if p.pid is not None or p.log_path.exists()}

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class ProcessService(Service):
    """A service that is one long-running process. Subclasses set the class attributes and implement `argv`
    and `probe`; the rest has sensible defaults."""

    # Strings that must all appear in /proc/<pid>/cmdline for a pid file's pid to count as this service.
    marker: tuple[str, ...] = ()
    stop_signal = signal.SIGTERM
    stop_timeout = 10.0
    start_timeout = 20.0
    ready_what = "an answer"
    # Environment variable that moves the service's port, named in the "port taken" message.
    port_variable = ""

    def __init__(self, directory: Path, *, log_dir: Path | None = None, run_dir: Path | None = None) -> None:
        self.dir = directory
        self.log_path = (log_dir or directory) / f"{self.name}.log"
        self.pid_path = (run_dir or directory) / f"{self.name}.pid"
        self._process: ManagedProcess | None = None

    # --- what subclasses describe ----------------------------------------------------------------------

    @abc.abstractmethod
    def argv(self) -> list[str]: ...

    @abc.abstractmethod
    def probe(self) -> str | None:
        """None once the service is ready, else what it is still waiting for. Never raises for "not yet"."""

    def env(self) -> dict[str, str]:
        return {"PATH": system_path()}

    def cwd(self) -> Path:
        return self.dir

    def user(self) -> ServiceUser | None:
        return None

    def prepare(self) -> None:
        """Directories and config files; runs before every start."""
        self.dir.mkdir(parents=True, exist_ok=True)

    def listens(self) -> list[tuple[str, int]]:
        """(address to dial, port) pairs that must be free before a start."""
        return []

    def markers(self) -> tuple[str, ...]:
        return self.marker

    def ready_description(self) -> str:
        return self.ready_what

    def port_variable_for(self, port: int) -> str:
        return self.port_variable

    # --- lifecycle -------------------------------------------------------------------------------------

    @property
    def process(self) -> ManagedProcess:
        if self._process is None:
            self._process = self._new_process()
        return self._process

    def _new_process(self) -> ManagedProcess:
        return ManagedProcess(
            self.name,
            self.argv(),
            self.log_path,
            pid_path=self.pid_path,
            env=self.env(),
            cwd=self.cwd(),
            user=self.user(),
            marker=self.markers(),
            stop_signal=self.stop_signal,
            stop_timeout=self.stop_timeout,
        )

    def processes(self) -> list[ManagedProcess]:
        return [self.process]

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process.running else None

    def adopt(self) -> bool:
        return self.process.adopt()

    def start(self) -> None:
        if self.process.running:
            raise ServiceError(f"{self.name} is already running (pid {self.process.pid})")
        self.prepare()
        for host, port in self.listens():
            if port_taken(host, port):
                variable = self.port_variable_for(port)
                hint = f"; free it or set {variable}" if variable else ""
                raise ServiceError(
                    f"{self.name}: {host}:{port} is already taken by a process this stack did not start{hint}"
                )
        # A fresh process object each time: argv and env may depend on what prepare() found.
        self._process = self._new_process()
        started = time.monotonic()
        self.process.start()
        self.process.wait_ready(self.probe, timeout=self.start_timeout, what=self.ready_description())
        logger.info("%s ready in %.2fs", self.name, time.monotonic() - started)

    def stop(self) -> None:
        self.process.stop()

    def kill(self) -> None:
        """SIGKILL it and its process group (its data and port stay, so `start` brings it back there)."""
        self.process.kill()

    def restart(self) -> None:
        self.stop()
        self.start()

    def read_log(self, since: int = 0) -> str:
        return self.process.read_log(since)

    def tail(self, lines: int = TAIL_LINES) -> str:
        return self.process.tail(lines)


class RedisServer(ProcessService):
    """Redis on 127.0.0.1. `persistent` keeps its data across a restart (a dump every minute and at SIGTERM),
    as `make up` does; otherwise it saves nothing."""

    name = "redis"
    marker = ("redis-server",)
    ready_what = "PONG"
    stop_timeout = 20.0
    port_variable = "COLTSFOOT_REDIS_PORT"

    def __init__(
        self,
        directory: Path,
        *,
        port: int | None = None,
        persistent: bool = False,
        log_dir: Path | None = None,
        run_dir: Path | None = None,
    ) -> None:
        super().__init__(directory, log_dir=log_dir, run_dir=run_dir)
        self.port = port or free_port()
        self.persistent = persistent
        self.url = f"redis://{LOCALHOST}:{self.port}/0"

    def argv(self) -> list[str]:
        argv = [require_binary("redis-server", "redis-server"), "--port", str(self.port), "--bind", LOCALHOST]
        argv += ["--protected-mode", "yes", "--dir", str(self.dir), "--appendonly", "no", "--daemonize", "no"]
        argv += ["--save", "60 1" if self.persistent else "", "--logfile", ""]
        return argv

    def listens(self) -> list[tuple[str, int]]:
        return [(LOCALHOST, self.port)]

    def probe(self) -> str | None:
        return None if redis_ping(LOCALHOST, self.port) else f"PONG from {LOCALHOST}:{self.port}"

    def describe(self) -> str:
        return f"{LOCALHOST}:{self.port}"


class CaddyServer(ProcessService):
    """Caddy with only its admin endpoint configured; the platform creates the edge server through the admin
    API and binds it to `edge_listen`. Its config is not persisted: a restarted Caddy starts empty."""

    name = "caddy"
    marker = ("caddy", "run")
    ready_what = "admin API"

    def __init__(
        self,
        directory: Path,
        *,
        admin_listen: str | None = None,
        edge_listen: str | None = None,
        tls_listen: str | None = None,
        log_dir: Path | None = None,
        run_dir: Path | None = None,
    ) -> None:
        super().__init__(directory, log_dir=log_dir, run_dir=run_dir)
        if admin_listen is None:
            admin_listen = f"{LOCALHOST}:{free_port()}"
        if edge_listen is None:
            edge_port = free_port()
            while edge_port == split_host_port(admin_listen)[1]:
                edge_port = free_port()
            edge_listen = f"{LOCALHOST}:{edge_port}"
        if tls_listen is None:
            # The edge's HTTPS listener (custom domains): the platform adds it through the admin API too.
            taken = {split_host_port(admin_listen)[1], split_host_port(edge_listen)[1]}
            tls_port = free_port()
            while tls_port in taken:
                tls_port = free_port()
            tls_listen = f"{LOCALHOST}:{tls_port}"
        self.admin_listen = admin_listen
        self.admin_host, self.admin_port = split_host_port(admin_listen)
        self.edge_listen = edge_listen
        edge_host, self.edge_port = split_host_port(edge_listen)
        self.tls_listen = tls_listen
        tls_host, self.tls_port = split_host_port(tls_listen)
        self.tls_url = f"https://{dial_host(tls_host)}:{self.tls_port}"
        self.admin_url = f"http://{dial_host(self.admin_host)}:{self.admin_port}"
        self.edge_url = f"http://{dial_host(edge_host)}:{self.edge_port}"
        self.config_path = self.dir / "caddy.json"
        self.home = self.dir / "home"

    def prepare(self) -> None:
        for sub in ("data", "config"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        # persist=false: changes made through the admin API are not autosaved. No apps and no TLS, so
        # `caddy run` has no certificates to manage or install.
        config = {"admin": {"listen": self.admin_listen, "config": {"persist": False}}}
        self.config_path.write_text(json.dumps(config) + "\n")

    def argv(self) -> list[str]:
        return [require_binary("caddy", "caddy"), "run", "--config", str(self.config_path)]

    def markers(self) -> tuple[str, ...]:
        return (*self.marker, str(self.config_path))

    def port_variable_for(self, port: int) -> str:
        if port == self.admin_port:
            return "COLTSFOOT_CADDY_ADMIN_URL"
        return "COLTSFOOT_EDGE_TLS_LISTEN" if port == self.tls_port else "COLTSFOOT_EDGE_LISTEN"

    def env(self) -> dict[str, str]:
        # Caddy keeps its storage under $XDG_DATA_HOME/caddy and its autosave under $XDG_CONFIG_HOME/caddy:
        # both point into its own directory so a developer's real ones stay untouched.
        return {
            "PATH": system_path(),
            "HOME": str(self.home),
            "XDG_DATA_HOME": str(self.home / "data"),
            "XDG_CONFIG_HOME": str(self.home / "config"),
        }

    def listens(self) -> list[tuple[str, int]]:
        host, _port = split_host_port(self.edge_listen)
        tls_host, _tls_port = split_host_port(self.tls_listen)
        return [
            (dial_host(self.admin_host), self.admin_port),
            (dial_host(host), self.edge_port),
            (dial_host(tls_host), self.tls_port),
        ]

    def probe(self) -> str | None:
        return http_probe(f"{self.admin_url}/config/")

    def describe(self) -> str:
        return f"admin {self.admin_listen}, edge {self.edge_listen}, HTTPS {self.tls_listen}"


class PostgresServer(ProcessService):
    """A PostgreSQL cluster: peer auth over its private Unix socket, SCRAM over TCP on 127.0.0.1 only. Tenant
    containers never reach it directly; they reach PgBouncer, which connects from 127.0.0.1.

    `rundir` (data/ and sock/ inside) must be a directory the service user can reach: under root that is the
    `postgres` user, which cannot traverse /root or pytest's temp dirs. Without one, a private temp dir is made
    and the cluster is ephemeral (no fsync, removed at stop)."""

    name = "postgres"
    # SIGINT is PostgreSQL's "fast" shutdown; SIGTERM ("smart") would wait for PgBouncer's connections.
    stop_signal = signal.SIGINT
    stop_timeout = 60.0
    start_timeout = 60.0
    ready_what = "login"
    port_variable = "COLTSFOOT_PG_PORT"

    def __init__(
        self,
        log_dir: Path,
        *,
        rundir: Path | None = None,
        port: int | None = None,
        password: str | None = None,
        run_dir: Path | None = None,
    ) -> None:
        self.service_user = ServiceUser.for_postgres()
        self.ephemeral = rundir is None
        self.rundir = rundir if rundir is not None else self.service_user.private_dir("coltsfoot-pg-")
        super().__init__(self.rundir, log_dir=log_dir, run_dir=run_dir or log_dir)
        self.datadir = self.rundir / "data"
        self.socket_dir = self.rundir / "sock"
        self.port = port or free_port()
        self.host = LOCALHOST
        self.superuser = "postgres"
        self.password = password or secrets.token_urlsafe(24)
        self.admin_dsn = self.dsn(self.superuser, self.password, "postgres")
        self.initialized = False  # whether the last prepare() ran initdb

    def dsn(self, user: str, password: str, dbname: str) -> str:
        return f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{self.host}:{self.port}/{dbname}"

    def user(self) -> ServiceUser:
        return self.service_user

    def env(self) -> dict[str, str]:
        return {"PATH": system_path(), "HOME": str(self.rundir), "LC_ALL": "C.UTF-8", "TZ": "UTC"}

    def markers(self) -> tuple[str, ...]:
        return ("postgres", str(self.datadir))

    def prepare(self) -> None:
        self.initialized = False
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.service_user.own_dir(self.rundir)
        self.service_user.own_dir(self.socket_dir)
        if not (self.datadir / "PG_VERSION").is_file():
            self._initdb()
            self.initialized = True

    def _initdb(self) -> None:
        pwfile = self.rundir / "initdb.pw"
        pwfile.write_text(self.password + "\n")
        self.service_user.give(pwfile, 0o600)
        initdb = [str(postgres_bindir() / "initdb"), "-D", str(self.datadir), "-U", self.superuser]
        initdb += ["--pwfile", str(pwfile), "--auth-local=peer", "--auth-host=scram-sha-256", "-E", "UTF8"]
        initdb += ["--locale=C.UTF-8", "--no-instructions"]
        if self.ephemeral:
            initdb.append("--no-sync")
        try:
            with self.log_path.open("ab") as log:
                log.write(f"=== {time.strftime('%F %T')} initdb {self.datadir}\n".encode())
                log.flush()
                result = subprocess.run(
                    initdb,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.env(),
                    cwd=self.rundir,
                    timeout=120,
                    check=False,
                    **self.service_user.popen_kwargs(),
                )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            shutil.rmtree(self.datadir, ignore_errors=True)
            raise ServiceError(f"initdb failed with status {result.returncode}\n{self.process.tail_report()}")

    def argv(self) -> list[str]:
        argv = [str(postgres_bindir() / "postgres"), "-D", str(self.datadir), "-p", str(self.port)]
        argv += ["-k", str(self.socket_dir)]
        settings = [
            f"listen_addresses={LOCALHOST}",
            "unix_socket_permissions=0700",
            "password_encryption=scram-sha-256",
            "max_connections=100",
            "logging_collector=off",
        ]
        if self.ephemeral:
            # Durability is irrelevant for a throwaway cluster; small buffers keep parallel sessions light.
            settings += ["fsync=off", "synchronous_commit=off", "full_page_writes=off", "shared_buffers=32MB"]
        else:
            settings += ["shared_buffers=64MB"]
        for setting in settings:
            argv += ["-c", setting]
        return argv

    def listens(self) -> list[tuple[str, int]]:
        return [(LOCALHOST, self.port)]

    def probe(self) -> str | None:
        # The port opens before recovery finishes ("the database system is starting up"): wait for a login.
        try:
            with psycopg.connect(self.admin_dsn, connect_timeout=2, autocommit=True) as conn:
                conn.execute("SELECT 1")
        except psycopg.OperationalError as exc:
            return str(exc).strip() or type(exc).__name__
        return None

    def describe(self) -> str:
        return f"{LOCALHOST}:{self.port}"

    def stop(self) -> None:
        super().stop()
        if self.ephemeral:
            shutil.rmtree(self.rundir, ignore_errors=True)


class PgBouncerServer(ProcessService):
    """PgBouncer in transaction mode in front of `postgres`, with the ini and auth_file of `drivers.pgbouncer`
    and RELOAD on the admin console to pick up new users without a restart.

    Client auth is SCRAM. For PgBouncer to log in to PostgreSQL as a user it only knows a SCRAM secret of
    (no plaintext), the auth_file line must hold that user's verifier exactly as PostgreSQL stores it
    (`SELECT rolpassword FROM pg_authid`): PgBouncer then replays the client's proof ("SCRAM pass-through").
    Its own admin user gets a verifier computed from `admin_password`.
    """

    name = "pgbouncer"
    ready_what = "admin console"
    port_variable = "COLTSFOOT_PGBOUNCER_PORT"

    def __init__(
        self,
        log_dir: Path,
        postgres: PostgresServer,
        *,
        rundir: Path | None = None,
        port: int | None = None,
        admin_password: str | None = None,
        statement_timeout_ms: int = 30_000,
        idle_tx_timeout_ms: int = 60_000,
        run_dir: Path | None = None,
    ) -> None:
        self.service_user = ServiceUser.for_postgres()
        self.ephemeral = rundir is None
        self.rundir = rundir if rundir is not None else self.service_user.private_dir("coltsfoot-pgb-")
        super().__init__(self.rundir, log_dir=log_dir, run_dir=run_dir or log_dir)
        self.postgres = postgres
        self.listen_addr = ALL_INTERFACES
        self.port = port or free_port(ALL_INTERFACES)
        self.admin_user = "pgbouncer"
        self.admin_password = admin_password or secrets.token_urlsafe(24)
        self.admin_dsn = self.dsn(self.admin_user, self.admin_password, "pgbouncer")
        self.auth_file = self.rundir / "userlist.txt"
        self.config_path = self.rundir / "pgbouncer.ini"
        self.config = pgbouncer_files.PgBouncerConfig(
            listen_addr=self.listen_addr,
            listen_port=self.port,
            server_host=postgres.host,
            server_port=postgres.port,
            auth_file=self.auth_file,
            admin_user=self.admin_user,
            statement_timeout_ms=statement_timeout_ms,
            idle_tx_timeout_ms=idle_tx_timeout_ms,
        )
        self.query_timeout = self.config.query_timeout
        self.files_changed = False

    def dsn(self, user: str, password: str, dbname: str, host: str = LOCALHOST) -> str:
        return f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{self.port}/{dbname}"

    def user(self) -> ServiceUser:
        return self.service_user

    def env(self) -> dict[str, str]:
        return {"PATH": system_path(), "HOME": str(self.rundir)}

    def markers(self) -> tuple[str, ...]:
        return ("pgbouncer", str(self.config_path))

    def prepare(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.service_user.own_dir(self.rundir)
        # Both files must stay readable by the PgBouncer OS user: a file it cannot read makes RELOAD keep
        # the old users and only log an error. New files take the directory's owner.
        ini_changed = pgbouncer_files.config_write(self.config_path, self.config)
        auth_changed = pgbouncer_files.admin_user_ensure(self.auth_file, self.admin_user, self.admin_password)
        self.files_changed = ini_changed or auth_changed

    def argv(self) -> list[str]:
        # Not daemonized and no logfile: PgBouncer logs to stderr, i.e. our log file. SIGTERM is its immediate
        # shutdown in 1.18 (SIGINT would wait for clients).
        return [require_binary("pgbouncer", "pgbouncer"), str(self.config_path)]

    def adopt(self) -> bool:
        if not super().adopt():
            return False
        # Already running: rewrite its files (the ports or the admin password may have changed) and make it
        # re-read them; SIGHUP is the same as RELOAD on the console.
        self.prepare()
        if self.files_changed:
            self.process.signal(signal.SIGHUP)
            self.process.wait_ready(self.probe, timeout=self.start_timeout, what=self.ready_what)
        return True

    def listens(self) -> list[tuple[str, int]]:
        return [(LOCALHOST, self.port)]

    def probe(self) -> str | None:
        try:
            self.admin("SHOW VERSION")
        except psycopg.OperationalError as exc:
            return str(exc).strip() or type(exc).__name__
        return None

    def describe(self) -> str:
        return f"{self.listen_addr}:{self.port}"

    def read_auth_file(self) -> dict[str, str]:
        return pgbouncer_files.userlist_read(self.auth_file)

    def admin(self, command: str) -> list[tuple[Any, ...]]:
        """Run one admin-console command (SHOW ..., RELOAD, PAUSE, ...) and return its rows."""
        with psycopg.connect(self.admin_dsn, connect_timeout=2, autocommit=True) as conn:
            cursor = conn.execute(command.encode())
            return cursor.fetchall() if cursor.description is not None else []

    def reload(self) -> None:
        self.admin("RELOAD")

    def stop(self) -> None:
        super().stop()
        if self.ephemeral:
            shutil.rmtree(self.rundir, ignore_errors=True)


PLATFORM_DB_ROLE = "coltsfoot_platform"
PLATFORM_DB_NAME = "coltsfoot_platform"


class PlatformDatabase:
    """The platform DB on the stack's own PostgreSQL, reached through its PgBouncer in transaction mode: a
    database and a login role of its own, never a tenant's (tenant roles are `t_<hex>`, their databases
    `d_<hex>`). The role owns its database and nothing else: no superuser, no CREATEDB, no CREATEROLE. CONNECT
    on the database is taken from PUBLIC, so a tenant role that names it through PgBouncer is refused by
    PostgreSQL. Its timezone is UTC, so Django never needs a session-level SET on a pooled connection.

    `ensure` is idempotent (every `make up`, every test session): it creates what is missing, sets the
    password only when the stored verifier does not match it, and puts the role's SCRAM verifier in PgBouncer's
    auth_file (RELOAD only when the file changed)."""

    def __init__(
        self,
        postgres: PostgresServer,
        pgbouncer: PgBouncerServer,
        password: str,
        *,
        role: str = PLATFORM_DB_ROLE,
        name: str = PLATFORM_DB_NAME,
    ) -> None:
        self.postgres = postgres
        self.pgbouncer = pgbouncer
        self.password = password
        self.role = role
        self.name = name

    @property
    def url(self) -> str:
        """DATABASE_URL of the platform processes: through PgBouncer."""
        return self.pgbouncer.dsn(self.role, self.password, self.name)

    def ensure(self) -> None:
        role, name = sql.Identifier(self.role), sql.Identifier(self.name)
        try:
            with psycopg.connect(self.postgres.admin_dsn, autocommit=True, connect_timeout=5) as conn:
                row = conn.execute("SELECT rolpassword FROM pg_catalog.pg_authid WHERE rolname = %s", (self.role,))
                found = row.fetchone()
                if found is None:
                    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
                conn.execute(
                    sql.SQL("ALTER ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS").format(
                        role
                    )
                )
                if found is None or not pgbouncer_files.scram_verifier_matches(str(found[0] or ""), self.password):
                    # A verifier computed here: the plaintext never reaches the server (nor its logs).
                    verifier = pgbouncer_files.scram_verifier(self.password)
                    conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(role, sql.Literal(verifier)))
                exists = conn.execute("SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s", (self.name,))
                if exists.fetchone() is None:
                    conn.execute(sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'UTF8'").format(name, role))
                conn.execute(sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(name))
                conn.execute(sql.SQL("ALTER DATABASE {} SET timezone TO 'UTC'").format(name))
                stored = conn.execute("SELECT rolpassword FROM pg_catalog.pg_authid WHERE rolname = %s", (self.role,))
                verifier_row = stored.fetchone()
        except psycopg.Error as exc:
            raise ServiceError(f"the platform DB {self.name} on {self.postgres.describe()} failed: {exc}") from exc
        if verifier_row is None or not verifier_row[0]:
            raise ServiceError(f"the platform DB role {self.role} has no password")
        with pgbouncer_files.userlist_lock(self.pgbouncer.auth_file):
            changed = pgbouncer_files.userlist_upsert(self.pgbouncer.auth_file, self.role, str(verifier_row[0]))
            if changed and self.pgbouncer.process.running:
                self.pgbouncer.reload()
        logger.info("platform DB %s ready (role %s, auth_file changed: %s)", self.name, self.role, changed)


class RegistryServer(ProcessService):
    """A plain-HTTP OCI registry on 127.0.0.1 (Debian's `docker-registry`, i.e. distribution v2), storing its
    blobs in its directory. Image-deploy tests push to it with `--tls-verify=false`."""

    name = "registry"
    marker = ("docker-registry", "serve")

    def __init__(self, directory: Path, *, port: int | None = None) -> None:
        super().__init__(directory)
        self.port = port or free_port()
        self.host = f"{LOCALHOST}:{self.port}"
        self.url = f"http://{self.host}"
        self.config_path = self.dir / "config.yml"
        self.http_secret = secrets.token_urlsafe(24)

    def prepare(self) -> None:
        storage = self.dir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        # JSON is YAML. No auth and no TLS: it listens on loopback only.
        config = {
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}},
            "http": {"addr": self.host, "secret": self.http_secret},
        }
        self.config_path.write_text(json.dumps(config))

    def argv(self) -> list[str]:
        return [require_binary("docker-registry", "docker-registry"), "serve", str(self.config_path)]

    def env(self) -> dict[str, str]:
        return {"PATH": system_path(), "HOME": str(self.dir)}

    def listens(self) -> list[tuple[str, int]]:
        return [(LOCALHOST, self.port)]

    def probe(self) -> str | None:
        return http_probe(f"{self.url}/v2/")


def dns_answers(host: str, port: int, name: str, *, timeout: float = 1.0) -> bool:
    """Whether a DNS server answers a query (A record of `name`) over UDP on host:port, whatever its answer."""
    query_id = secrets.randbelow(0x10000)
    header = query_id.to_bytes(2, "big") + b"\x01\x00" + (1).to_bytes(2, "big") + b"\x00" * 6
    question = b"".join(len(label).to_bytes(1, "big") + label.encode("ascii") for label in name.split("."))
    packet = header + question + b"\x00" + b"\x00\x01\x00\x01"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            sock.sendto(packet, (host, port))
            reply = sock.recv(512)
    except OSError:
        return False
    return reply[:2] == query_id.to_bytes(2, "big")


class UpstreamDnsServer(ProcessService):
    """The platform's DNS server for the edge's upstream names (Debian's dnsmasq): answers
    `<app uuid>.apps.coltsfoot.internal` from one hosts file per app in `hosts_dir`, which it re-reads by itself
    when a file is replaced or removed (`--hostsdir`, inotify). Bound to 127.0.0.1 only (tenants never reach
    it: their containers see the host only through their bridge's gateway), it knows nothing else and never
    forwards a query (`--no-resolv`, `--no-hosts`; other names are REFUSED). In the foreground, logging to
    stderr, no pid file of its own, and it keeps the uid it was started with (as root dnsmasq would switch to
    `nobody`, who cannot read a hosts dir under /root)."""

    name = "dns"
    marker = ("dnsmasq", "--hostsdir")
    ready_what = "a DNS answer"
    port_variable = "COLTSFOOT_UPSTREAM_DNS"

    def __init__(
        self,
        directory: Path,
        hosts_dir: Path,
        *,
        port: int | None = None,
        log_dir: Path | None = None,
        run_dir: Path | None = None,
    ) -> None:
        super().__init__(directory, log_dir=log_dir, run_dir=run_dir)
        self.hosts_dir = hosts_dir
        self.port = port or free_port()
        self.listen = f"{LOCALHOST}:{self.port}"

    def prepare(self) -> None:
        super().prepare()
        self.hosts_dir.mkdir(parents=True, exist_ok=True)

    def argv(self) -> list[str]:
        import pwd

        user = pwd.getpwuid(os.geteuid()).pw_name
        return [
            require_binary("dnsmasq", "dnsmasq-base"),
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            f"--listen-address={LOCALHOST}",
            "--bind-interfaces",
            f"--port={self.port}",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            f"--hostsdir={self.hosts_dir}",
            # Unknown names of the platform's domain: NXDOMAIN at once (never asked of anyone else).
            f"--local=/{UPSTREAM_DOMAIN}/",
            "--log-facility=-",
            "--pid-file=",
            f"--user={user}",
        ]

    def markers(self) -> tuple[str, ...]:
        return (*self.marker, f"--hostsdir={self.hosts_dir}")

    def listens(self) -> list[tuple[str, int]]:
        return [(LOCALHOST, self.port)]

    def probe(self) -> str | None:
        answered = dns_answers(LOCALHOST, self.port, f"probe.{UPSTREAM_DOMAIN}")
        return None if answered else f"a DNS answer on {self.listen}"

    def describe(self) -> str:
        return f"{self.listen}, hosts in {self.hosts_dir}"


def postgres_bindir() -> Path:
    """Debian keeps the server binaries out of PATH, under /usr/lib/postgresql/<major>/bin."""
    override = os.environ.get("COLTSFOOT_TEST_PG_BINDIR", "").strip()
    if override:
        return Path(override)
    on_path = shutil.which("postgres", path=system_path())
    if on_path is not None:
        return Path(on_path).parent
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if not candidates:
        raise ServiceError(
            "PostgreSQL server binaries not found (no `postgres` on PATH, nothing in /usr/lib/postgresql/*/bin); "
            "install them with `apt-get install -y postgresql` or set COLTSFOOT_TEST_PG_BINDIR."
        )
    return candidates[-1].parent


# --- the platform's own processes ---------------------------------------------------------------------


class PlatformProcess(ProcessService):
    """A process of the Coltsfoot platform itself, run with the platform's environment from the repository root,
    under `sys.executable` (the supervisor already runs inside the project's virtualenv)."""

    def __init__(self, platform: Platform) -> None:
        super().__init__(platform.dir, log_dir=platform.log_dir, run_dir=platform.run_dir)
        self.platform = platform

    def env(self) -> dict[str, str]:
        return dict(self.platform.env)

    def cwd(self) -> Path:
        return REPO_ROOT

    def prepare(self) -> None:
        for directory in (self.platform.data_dir, self.platform.home, self.platform.log_dir):
            directory.mkdir(parents=True, exist_ok=True)


FIRST_HOST = "host-1"


def host_names(count: int) -> list[str]:
    """The simulated hosts of a stack: host-1, host-2, ..."""
    return [f"host-{number}" for number in range(1, count + 1)]


class CeleryWorker(PlatformProcess):
    """The worker of one host (README "Several hosts"): COLTSFOOT_HOST_NAME names it, so it registers that host,
    consumes its queue and manages only the containers labelled with it. The first host's service is `worker`,
    the others' `worker-host-2`, ..."""

    marker = ("celery", "worker")
    # Warm shutdown: a running task finishes first, up to this.
    stop_timeout = 60.0
    start_timeout = 60.0
    ready_what = "'ready.' in its log"

    def __init__(self, platform: Platform, host: str = FIRST_HOST) -> None:
        self.host = host
        self.name = "worker" if host == FIRST_HOST else f"worker-{host}"
        super().__init__(platform)

    def env(self) -> dict[str, str]:
        return {**self.platform.env, "COLTSFOOT_HOST_NAME": self.host}

    def argv(self) -> list[str]:
        # Each stack has its own Redis, so mingle/gossip would only slow the start down.
        argv = [sys.executable, "-m", "celery", "-A", "config", "worker", "--loglevel=INFO", "--concurrency=2"]
        argv += ["--pool=prefork", "--without-mingle", "--without-gossip"]
        return [*argv, "--hostname", f"coltsfoot-{self.platform.instance_id}-{self.host}@%h"]

    def probe(self) -> str | None:
        return self.process.log_probe(re.compile(r"@\S+ ready\."))()

    def describe(self) -> str:
        return "celery worker"


class CeleryBeat(PlatformProcess):
    name = "beat"
    marker = ("celery", "beat")
    start_timeout = 60.0
    ready_what = "'beat: Starting' in its log"

    def argv(self) -> list[str]:
        schedule = self.platform.dir / "celerybeat-schedule"
        return [sys.executable, "-m", "celery", "-A", "config", "beat", "--loglevel=INFO", "--schedule", str(schedule)]

    def probe(self) -> str | None:
        return self.process.log_probe(re.compile(r"beat: Starting"))()

    def describe(self) -> str:
        return "celery beat"


class ApiServer(PlatformProcess):
    """The API under granian's ASGI interface: ordinary requests run Django's sync views in threads, while an
    open log follow stream (SSE) is a coroutine waiting on Redis, not a worker tied up for its lifetime."""

    name = "api"
    marker = ("granian", "config.asgi:application")
    # Above granian's kill timeout, so requests in flight get it in full.
    stop_timeout = 20.0
    start_timeout = 60.0
    port_variable = "COLTSFOOT_API_BIND"
    workers = 2

    def ready_description(self) -> str:
        return f"answer on {self.platform.api_url}/health"

    def argv(self) -> list[str]:
        host, port = split_host_port(self.platform.api_bind)
        # asginl: ASGI without the lifespan protocol, which Django does not speak.
        argv = [sys.executable, "-m", "granian", "--interface", "asginl", "config.asgi:application"]
        argv += ["--host", host, "--port", str(port), "--workers", str(self.workers)]
        # Open follow streams would hold a graceful stop until they end: the workers get 10 s, then go.
        return [*argv, "--workers-kill-timeout", "10", "--access-log", "--no-ws"]

    def markers(self) -> tuple[str, ...]:
        return (*self.marker, f"--port {self.platform.api_port}")

    def listens(self) -> list[tuple[str, int]]:
        host, port = split_host_port(self.platform.api_bind)
        return [(dial_host(host), port)]

    def probe(self) -> str | None:
        return http_probe(f"{self.platform.api_url}/health")

    def describe(self) -> str:
        return self.platform.api_url


class LogCollector(PlatformProcess):
    """`manage.py collect_logs`: copies the output of this instance's replicas into their apps' log streams."""

    name = "collector"
    marker = ("manage.py", "collect_logs")
    start_timeout = 60.0
    ready_what = "'log collector ready' in its log"

    def argv(self) -> list[str]:
        return [sys.executable, str(REPO_ROOT / "manage.py"), "collect_logs"]

    def probe(self) -> str | None:
        return self.process.log_probe(re.compile(r"log collector ready"))()

    def describe(self) -> str:
        return "log collector"


# What stopping a platform does with its instance's podman objects: "purge" removes everything labelled with the
# instance (containers, networks, volumes, images but the base image: test teardown); "remove" removes only the
# containers; "stop" stops them (`make down`: the next start brings live deployments back from their images);
# "keep" leaves them running.
ContainerPolicy = Literal["purge", "remove", "stop", "keep"]


class Platform(Service):
    """The Coltsfoot stack from this repository (the API under gunicorn, the Celery worker and beat) wired to the
    given services, with its state under `directory` (data/, logs/, run/, home/ unless given).

    `base_env` is the environment the processes start from: by default only `PASSTHROUGH_ENV` of the caller's
    (tests, benchmarks: nothing else may point them at real services); `make up` passes the caller's whole
    environment. `with_beat=False` leaves beat out of `start` (tests that drive the reconciler themselves)."""

    name = "platform"

    def __init__(
        self,
        directory: Path,
        redis: RedisServer,
        caddy: CaddyServer,
        postgres: PostgresServer,
        pgbouncer: PgBouncerServer,
        *,
        instance_id: str | None = None,
        api_bind: str | None = None,
        data_dir: Path | None = None,
        log_dir: Path | None = None,
        run_dir: Path | None = None,
        base_env: dict[str, str] | None = None,
        secret_key: str | None = None,
        extra_env: dict[str, str] | None = None,
        with_beat: bool = True,
        dns_port: int | None = None,
        database: PlatformDatabase | None = None,
        hosts: int = 1,
    ) -> None:
        if hosts < 1:
            raise ServiceError(f"a stack runs at least one host, not {hosts}")
        self.dir = directory
        # None: the SQLite platform DB under the data dir; else PostgreSQL through PgBouncer (DATABASE_URL).
        self.database = database
        self.data_dir = data_dir or directory / "data"
        self.log_dir = log_dir or directory / "logs"
        self.run_dir = run_dir or directory / "run"
        # The edge's upstream names: dnsmasq over a hosts dir under the platform's data dir.
        self.dns = UpstreamDnsServer(
            directory / "dns", self.data_dir / "upstreams", port=dns_port, log_dir=self.log_dir, run_dir=self.run_dir
        )
        # HOME of the platform processes: the caller's with `make up`, a directory of the stack's own otherwise.
        self.home = Path(base_env["HOME"]) if base_env and base_env.get("HOME") else directory / "home"
        self.redis = redis
        self.caddy = caddy
        self.postgres = postgres
        self.pgbouncer = pgbouncer
        self.instance_id = instance_id or f"it-{os.getpid()}-{secrets.token_hex(4)}"
        self.api_bind = api_bind or f"{LOCALHOST}:{free_port()}"
        api_host, self.api_port = split_host_port(self.api_bind)
        self.api_base = f"http://{dial_host(api_host)}:{self.api_port}"
        self.api_url = f"{self.api_base}/api/v1"
        self.edge_url = caddy.edge_url
        self.base_env = base_env
        self.secret_key = secret_key or secrets.token_urlsafe(50)
        self.env = self.build_env(extra_env or {})
        self.with_beat = with_beat
        # One worker per simulated host; `worker` is the first host's.
        self.workers = [CeleryWorker(self, host) for host in host_names(hosts)]
        self.worker = self.workers[0]
        self.beat = CeleryBeat(self)
        self.api = ApiServer(self)
        self.collector = LogCollector(self)
        self.tenant_ids: list[str] = []

    @property
    def services(self) -> list[ProcessService]:
        """The platform's processes in start order (stopped in reverse). A new one goes here."""
        return [self.dns, self.collector, *self.workers, *([self.beat] if self.with_beat else []), self.api]

    def build_env(self, extra: dict[str, str]) -> dict[str, str]:
        if self.base_env is not None:
            env = dict(self.base_env)
        else:
            env = {key: os.environ[key] for key in PASSTHROUGH_ENV if os.environ.get(key)}
            env.update({"HOME": str(self.home), "LANG": env.get("LANG", "C.UTF-8")})
        # A DATABASE_URL in a developer's shell most likely belongs to another project: this platform DB is
        # SQLite under COLTSFOOT_DATA_DIR, or the stack's own PostgreSQL database (`database`).
        env.pop("DATABASE_URL", None)
        env.update(
            {
                "PATH": system_path(),
                "PYTHONUNBUFFERED": "1",
                "DJANGO_SETTINGS_MODULE": "config.settings",
                "DJANGO_SECRET_KEY": self.secret_key,
                "COLTSFOOT_INSTANCE_ID": self.instance_id,
                "COLTSFOOT_DATA_DIR": str(self.data_dir),
                "COLTSFOOT_REDIS_URL": self.redis.url,
                "COLTSFOOT_API_BIND": self.api_bind,
                "COLTSFOOT_CADDY_ADMIN_URL": self.caddy.admin_url,
                "COLTSFOOT_EDGE_LISTEN": self.caddy.edge_listen,
                "COLTSFOOT_EDGE_TLS_LISTEN": self.caddy.tls_listen,
                "COLTSFOOT_EDGE_URL_TEMPLATE": f"http://{{host}}:{self.caddy.edge_port}/",
                "COLTSFOOT_TENANT_PG_ADMIN_DSN": self.postgres.admin_dsn,
                "COLTSFOOT_PGBOUNCER_PORT": str(self.pgbouncer.port),
                "COLTSFOOT_PGBOUNCER_ADMIN_DSN": self.pgbouncer.admin_dsn,
                "COLTSFOOT_PGBOUNCER_AUTH_FILE": str(self.pgbouncer.auth_file),
                "COLTSFOOT_UPSTREAM_DNS": self.dns.listen,
                "COLTSFOOT_UPSTREAM_HOSTS_DIR": str(self.dns.hosts_dir),
            }
        )
        if self.database is not None:
            env["DATABASE_URL"] = self.database.url
        env.update(extra)
        return env

    def processes(self) -> list[ManagedProcess]:
        return [service.process for service in self.services]

    def describe(self) -> str:
        return self.api_url

    # --- management commands -------------------------------------------------------------------------

    def manage(
        self, *args: str, timeout: float = 180.0, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run `manage.py ARGS` against this stack (with `env` added to its environment, e.g.
        DJANGO_SUPERUSER_PASSWORD), output appended to logs/manage.log; raise ServiceError with its output if
        it fails."""
        for directory in (self.data_dir, self.home, self.log_dir):
            directory.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, str(REPO_ROOT / "manage.py"), *args]
        with (self.log_dir / "manage.log").open("a") as log:
            log.write(f"=== {time.strftime('%F %T')} manage.py {' '.join(args)}\n")
        try:
            result = subprocess.run(
                argv,
                env={**self.env, **(env or {})},
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ServiceError(f"manage.py {' '.join(args)} did not finish within {timeout:.0f}s") from exc
        with (self.log_dir / "manage.log").open("a") as log:
            log.write(f"--> status {result.returncode}\n{result.stdout}{result.stderr}")
        if result.returncode != 0:
            raise ServiceError(
                f"manage.py {' '.join(args)} exited with status {result.returncode}\n"
                f"--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-4000:]}"
            )
        return result

    def migrate(self) -> None:
        self.manage("migrate", "--noinput")

    def collectstatic(self) -> None:
        """Gather the admin's and the API docs' assets into STATIC_ROOT (under the data dir), hashed and
        compressed, for WhiteNoise in the API process: run before the API starts, which reads it once."""
        self.manage("collectstatic", "--noinput", "--verbosity", "0")

    def prepare(self) -> None:
        """What every start does first: the PostgreSQL platform DB (if any), migrate, collect the static files and
        install the firewall table (each idempotent)."""
        if self.database is not None:
            self.database.ensure()
        self.migrate()
        self.collectstatic()
        self.firewall_apply()

    # --- the host firewall (drivers/firewall.py) ------------------------------------------------------

    @property
    def firewall_managed(self) -> bool:
        """COLTSFOOT_FIREWALL of the platform's environment (default: on under Linux as root)."""
        return firewall.managed(self.env.get("COLTSFOOT_FIREWALL"))

    @property
    def firewall_table(self) -> str:
        return firewall.table_name(self.instance_id)

    def firewall_apply(self, *args: str) -> dict[str, str]:
        """`manage.py firewall_apply ARGS`: install (or replace, idempotently) this instance's nftables table
        before the worker starts; the command's JSON summary. A no-op when the platform does not manage it."""
        result = self.manage("firewall_apply", *args)
        return json_line(result.stdout, {"managed"}) or {}

    def firewall_remove(self) -> None:
        """Remove this instance's table (and nothing else). Never raises: teardown must go on."""
        if not self.firewall_managed:
            return
        nft = shutil.which(self.env.get("COLTSFOOT_NFT", "nft"), path=system_path())
        if nft is None:
            return
        try:
            firewall.remove(self.firewall_table, nft=nft)
        except (firewall.FirewallError, ValueError) as exc:
            logger.warning("removing the firewall table %s failed: %s", self.firewall_table, exc)

    def create_tenant(self, slug: str, *, max_cpus: float | None = None) -> dict[str, str]:
        """`manage.py create_tenant SLUG [--max-cpus N]` -> {"tenant_id": ..., "token": ...} from its one JSON
        line."""
        result = self.manage("create_tenant", slug, *(["--max-cpus", str(max_cpus)] if max_cpus else []))
        tenant = json_line(result.stdout, {"tenant_id", "token"})
        if tenant is None:
            raise ServiceError(f"create_tenant printed no JSON line with tenant_id and token:\n{result.stdout[-2000:]}")
        self.tenant_ids.append(tenant["tenant_id"])
        return tenant

    # --- the processes -------------------------------------------------------------------------------

    def start(self) -> None:
        """Migrate, collect the static files and install the firewall table, then the worker, beat (unless
        with_beat=False) and the API."""
        self.prepare()
        for service in self.services:
            service.start()

    def ensure(self) -> bool:
        """`make up`: migrate, collect the static files and install the firewall table (all idempotent), then
        start whichever process is not running. True if any was."""
        self.prepare()
        started = False
        for service in self.services:  # every one, not just up to the first that was started
            started = service.ensure() or started
        return started

    def adopt(self) -> bool:
        running = True
        for service in self.services:
            running = service.adopt() and running
        return running

    def stop(self, *, containers: ContainerPolicy = "purge") -> None:
        """Stop the API, beat and worker, then deal with this instance's podman objects (see ContainerPolicy)."""
        for service in reversed([self.collector, *self.workers, self.beat, self.api]):
            service.stop()
        self.dns.stop()  # last: the edge looks every app's replicas up there while anything serves
        self.firewall_remove()
        # After the worker is gone, so nothing recreates containers behind our back.
        if containers == "purge":
            self.cleanup_podman()
        elif containers == "remove":
            labels = [f"{INSTANCE_LABEL}={self.instance_id}"]
            podman_cleanup(labels, podman=self.env.get("COLTSFOOT_PODMAN", "podman"), kinds=("containers",))
        elif containers == "stop":
            podman_stop_instance(self.instance_id, self.env)

    def start_worker(self) -> None:
        self.worker.start()

    def stop_worker(self) -> None:
        """Warm shutdown: running tasks finish first (up to the worker's stop timeout)."""
        self.worker.stop()

    def kill_worker(self) -> None:
        """SIGKILL the worker and its pool processes at once: in-flight tasks are neither acked nor finished."""
        self.worker.kill()

    def restart_worker(self) -> None:
        self.kill_worker()
        self.start_worker()

    def host_worker(self, host: str) -> CeleryWorker:
        for worker in self.workers:
            if worker.host == host:
                return worker
        raise ServiceError(f"no host {host!r} in this stack (it has {', '.join(w.host for w in self.workers)})")

    def host_down(self, host: str) -> int:
        """What the death of a host looks like from the rest of the platform: its worker is SIGKILLed and its
        containers (those labelled coltsfoot.host=<host>) are stopped at once. Returns how many containers."""
        self.host_worker(host).kill()
        return podman_stop_instance(self.instance_id, self.env, host=host, grace_seconds=0)

    def host_up(self, host: str) -> bool:
        """Start the host's worker again if it is not running (its containers are its reconciler's business)."""
        return self.host_worker(host).ensure()

    def start_beat(self) -> None:
        self.beat.start()

    def stop_beat(self) -> None:
        self.beat.stop()

    def start_api(self) -> None:
        self.api.start()

    def stop_api(self) -> None:
        self.api.stop()

    def cleanup_podman(self) -> None:
        """Remove what this stack created in podman: everything labelled with its instance id and, as a
        fallback, anything labelled with a tenant it created (tenant UUIDs are never reused)."""
        labels = [f"{INSTANCE_LABEL}={self.instance_id}"]
        labels += [f"{TENANT_LABEL}={tenant_id}" for tenant_id in self.tenant_ids]
        base_image = self.env.get("COLTSFOOT_BASE_IMAGE", DEFAULT_BASE_IMAGE)
        podman_cleanup(labels, keep_images=[base_image], podman=self.env.get("COLTSFOOT_PODMAN", "podman"))

    # --- clients -------------------------------------------------------------------------------------

    def client(self, token: str | None = None, *, timeout: float = 30.0) -> httpx.Client:
        """An httpx client for the API: `client(token).get("/apps")` hits {api_url}/apps with the bearer token."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.api_url, headers=headers, timeout=timeout, trust_env=False)

    def edge_request(self, method: str, app_url: str, *, timeout: float = 10.0, **kwargs: Any) -> httpx.Response:
        """Send a request to an app through the Caddy edge. `app_url` is the URL the API reports
        (http://<app>-<tenant>.localhost:<edge>/path); we dial the edge and keep its Host header, since
        resolving *.localhost is not something every resolver does."""
        url = httpx.URL(app_url)
        target = httpx.URL(self.edge_url).copy_with(raw_path=url.raw_path)
        headers = {"Host": url.netloc.decode(), **kwargs.pop("headers", {})}
        return httpx.request(method, target, headers=headers, timeout=timeout, trust_env=False, **kwargs)

    def edge_get(self, app_url: str, **kwargs: Any) -> httpx.Response:
        return self.edge_request("GET", app_url, **kwargs)


def json_line(output: str, keys: set[str]) -> dict[str, str] | None:
    """The last line of `output` that is a JSON object with all of `keys` (values as strings)."""
    for line in reversed(output.splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        with contextlib.suppress(json.JSONDecodeError):
            payload = json.loads(line)
            if isinstance(payload, dict) and keys <= payload.keys():
                return {str(k): str(v) for k, v in payload.items()}
    return None


def log_sections(services: Iterable[Service], lines: int = TAIL_LINES) -> list[tuple[str, str]]:
    """(title, text) pairs with the log tails of every started process, for pytest report sections."""
    sections = []
    for service in services:
        for name, text in service.log_tails(lines).items():
            sections.append((f"{name} log (last {lines} lines)", text))
    return sections


# --- podman ---------------------------------------------------------------------------------------------


def podman_runtime_args(env: dict[str, str]) -> list[str]:
    """The global podman flags the platform uses (its runsc runtime and runtime flags)."""
    args = ["--runtime", env.get("COLTSFOOT_RUNSC", "/usr/bin/runsc")]
    for flag in env.get("COLTSFOOT_RUNSC_FLAGS", "network=host").split(","):
        if flag.strip():
            args += ["--runtime-flag", flag.strip()]
    return args


def podman_running_containers(instance_id: str, env: dict[str, str], *, host: str = "") -> list[str] | None:
    """Ids of this instance's running containers (only those of `host`, if given); None if podman could not be
    asked. Label filters are ANDed by podman."""
    podman = shutil.which(env.get("COLTSFOOT_PODMAN", "podman"), path=system_path())
    if podman is None:
        return None
    argv = [podman, *podman_runtime_args(env), "ps", "--quiet", "--filter", f"label={INSTANCE_LABEL}={instance_id}"]
    if host:
        argv += ["--filter", f"label={HOST_LABEL}={host}"]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        logger.warning("podman ps failed: %s", exc)
        return None
    return result.stdout.split() if result.returncode == 0 else None


def podman_stop_instance(instance_id: str, env: dict[str, str], *, host: str = "", grace_seconds: int = 10) -> int:
    """`podman stop` this instance's running containers (never anyone else's; only `host`'s, if given), each given
    `grace_seconds` before SIGKILL; returns how many."""
    ids = podman_running_containers(instance_id, env, host=host) or []
    podman = shutil.which(env.get("COLTSFOOT_PODMAN", "podman"), path=system_path())
    if not ids or podman is None:
        return 0
    argv = [podman, *podman_runtime_args(env), "stop", "--time", str(grace_seconds), *ids]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServiceError(f"podman stop failed: {exc}") from exc
    if result.returncode != 0:
        raise ServiceError(f"podman stop failed for some app containers: {result.stderr.strip()[:500]}")
    logger.info("stopped %d container(s) labelled %s=%s", len(ids), INSTANCE_LABEL, instance_id)
    return len(ids)


PODMAN_KINDS = ("containers", "pods", "networks", "volumes", "images")


def podman_cleanup(
    labels: Iterable[str],
    *,
    keep_images: Iterable[str] = (),
    podman: str = "podman",
    kinds: Iterable[str] = PODMAN_KINDS,
    timeout: float = 120.0,
) -> None:
    """Remove the podman objects of `kinds` (by default containers, pods, networks, volumes and images) carrying
    any of `labels` ("key=value"), except the images named in `keep_images` (the shared base image is built once
    per machine). Never raises: teardown must not fail because podman is missing or has nothing to remove."""
    binary = shutil.which(podman, path=system_path())
    filters = [f"label={label}" for label in labels]
    if binary is None or not filters:
        return
    keep: set[str] = set()
    for ref in keep_images:
        found = _podman_quiet(binary, ["image", "inspect", "--format", "{{.Id}}", ref], timeout)
        keep.update(_image_id(line) for line in found)
    # Containers first (networks and images in use can't go), then what they used.
    commands: dict[str, tuple[list[str], list[str]]] = {
        "containers": (["ps", "--all", "--quiet", "--no-trunc"], ["rm", "--force", "--time", "0"]),
        "pods": (["pod", "ps", "--quiet", "--no-trunc"], ["pod", "rm", "--force", "--time", "0"]),
        "networks": (["network", "ls", "--quiet"], ["network", "rm", "--force"]),
        "volumes": (["volume", "ls", "--quiet"], ["volume", "rm", "--force"]),
        "images": (["images", "--quiet", "--no-trunc"], ["rmi", "--force"]),
    }
    wanted = set(kinds)
    for kind, (list_args, remove_args) in commands.items():
        if kind not in wanted:
            continue
        ids: set[str] = set()
        for label_filter in filters:
            ids.update(_podman_quiet(binary, [*list_args, "--filter", label_filter], timeout))
        if remove_args[0] == "rmi":
            ids = {image for image in ids if _image_id(image) not in keep}
        if not ids:
            continue
        what = " ".join(remove_args[:2])
        try:
            removed = subprocess.run(
                [binary, *remove_args, *sorted(ids)], capture_output=True, text=True, timeout=timeout, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            logger.warning("podman %s failed: %s", what, exc)
            continue
        if removed.returncode != 0:
            logger.warning("podman %s failed: %s", what, removed.stderr.strip()[:500])
        else:
            logger.info("podman cleanup: %s %d object(s)", what, len(ids))


def _podman_quiet(podman: str, args: list[str], timeout: float) -> list[str]:
    """The whitespace-separated words podman printed, or [] if it failed."""
    try:
        result = subprocess.run([podman, *args], capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        logger.warning("podman %s failed: %s", " ".join(args[:2]), exc)
        return []
    return result.stdout.split() if result.returncode == 0 else []


def _image_id(value: str) -> str:
    return value.removeprefix("sha256:")
