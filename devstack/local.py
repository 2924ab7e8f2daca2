"""`make up` / `make down` / `make status`: the whole platform on this machine, in the background.

`up` starts whatever is not running yet (Redis, Caddy, PostgreSQL, PgBouncer, the Celery worker and beat, the
log collector, the API under granian), migrates and collects the static files (before the API starts), creates
the `demo` tenant once, deploys examples/hello when the app does not answer, and prints the URLs and the demo
token. Running it again is harmless and quick. `down` stops all of that, app containers included (only this
installation's: they carry its instance id); `status` prints one line per service.

Everything lives under the state dir, COLTSFOOT_STATE_DIR (default ~/.local/state/coltsfoot):
  secrets.env        generated once, mode 600: DJANGO_SECRET_KEY, COLTSFOOT_FERNET_KEYS, the PostgreSQL
                     superuser and PgBouncer admin passwords. Reused by every `up`; values in the caller's
                     environment do not override it (edit the file to rotate, then `make down && make up`).
  instance-id        generated once: this installation's COLTSFOOT_INSTANCE_ID, the value of the
                     `coltsfoot.instance` label on everything it creates in podman.
  env                rewritten by every `up`, mode 600: the environment the platform processes get.
                     `set -a; . <state>/env; set +a` and `uv run python manage.py ...` talks to this stack.
  demo-tenant.json   the demo tenant's id and token (create_tenant shows a token only once), mode 600.
  data/              COLTSFOOT_DATA_DIR unless the caller sets it: SQLite DB, uploads, build dirs, static/.
  platform-db        `sqlite` or `postgres`: where this state dir's platform DB is (COLTSFOOT_PLATFORM_DB at the
                     first `up`; a later `up` keeps it, and refuses a COLTSFOOT_PLATFORM_DB that says otherwise).
                     With `postgres` it is the database and role `coltsfoot_platform` on the stack's PostgreSQL,
                     reached through PgBouncer (DATABASE_URL in env), its password STACK_PLATFORM_DB_PASSWORD.
  run/ logs/         pid files and one log per service (and manage.log).
  redis/ caddy/      their data and config (Caddy's HOME and XDG dirs point here).
  pg                 PostgreSQL's data dir and socket, PgBouncer's ini and auth_file. PostgreSQL and
                     PgBouncer refuse to run as root, so under root they run as the `postgres` user, which
                     cannot traverse /root: then this is a symlink to <postgres home>/coltsfoot-<hash>.

Ports (loopback unless said otherwise), chosen so a developer's own services keep theirs: API
COLTSFOOT_API_BIND=127.0.0.1:8000, edge COLTSFOOT_EDGE_LISTEN=127.0.0.1:8080 (HTTPS COLTSFOOT_EDGE_TLS_LISTEN=
127.0.0.1:8443; DNS checks ask COLTSFOOT_DNS_RESOLVER, passed through), Caddy admin from
COLTSFOOT_CADDY_ADMIN_URL=http://127.0.0.1:2019, Redis COLTSFOOT_REDIS_PORT=6390, PostgreSQL
COLTSFOOT_PG_PORT=5433, PgBouncer COLTSFOOT_PGBOUNCER_PORT=6433 on 0.0.0.0 (tenant containers reach it
through their network's gateway).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import secrets
import shlex
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography.fernet import Fernet

from devstack.process import ServiceError
from devstack.process import ServiceUser
from devstack.process import require_binary
from devstack.process import split_host_port
from devstack.services import REPO_ROOT
from devstack.services import CaddyServer
from devstack.services import PgBouncerServer
from devstack.services import Platform
from devstack.services import PlatformDatabase
from devstack.services import PostgresServer
from devstack.services import ProcessService
from devstack.services import RedisServer
from devstack.services import json_line
from devstack.services import podman_running_containers
from devstack.services import podman_stop_instance
from devstack.services import postgres_bindir
from devstack.stack import Stack

logger = logging.getLogger(__name__)

DEMO_TENANT = "demo"
DEMO_APP = "hello"
DEMO_SOURCE = REPO_ROOT / "examples" / "hello"
API_READY_TIMEOUT = 90.0
DEPLOY_TIMEOUT = 600.0
SECRET_KEYS = (
    "DJANGO_SECRET_KEY",
    "COLTSFOOT_FERNET_KEYS",
    "STACK_PG_SUPERUSER_PASSWORD",
    "STACK_PGBOUNCER_ADMIN_PASSWORD",
)
# Generated into secrets.env when missing (state dirs from before the PostgreSQL platform DB lack it).
PLATFORM_DB_LOGIN_VARIABLE = "STACK_PLATFORM_DB_PASSWORD"
PLATFORM_DBS = ("sqlite", "postgres")
MAX_HOSTS = 9
# Binaries `up` needs, with the Debian package that has them (scripts/bootstrap.sh installs them all).
REQUIRED = (("redis-server", "redis-server"), ("caddy", "caddy"), ("pgbouncer", "pgbouncer"), ("podman", "podman"))


def say(line: str = "") -> None:
    """Progress for the person running `make up` (stdout, unbuffered enough to follow a slow start)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def warn(line: str) -> None:
    sys.stderr.write(f"stack: {line}\n")
    sys.stderr.flush()


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, atomically (a reader never sees half of it)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    tmp.chmod(0o600)
    tmp.replace(path)


@dataclass(frozen=True)
class LocalConfig:
    """Where `make up` puts things, from the environment (defaults are the documented fixed ports)."""

    state: Path
    redis_port: int
    pg_port: int
    pgbouncer_port: int
    api_bind: str
    edge_listen: str
    edge_tls_listen: str
    caddy_admin_listen: str
    upstream_dns_port: int
    statement_timeout_ms: int
    idle_tx_timeout_ms: int

    @classmethod
    def from_env(cls, env: dict[str, str]) -> LocalConfig:
        def port(name: str, default: int) -> int:
            value = env.get(name, "").strip() or str(default)
            if not value.isdigit() or not 0 < int(value) < 65536:
                raise ServiceError(f"{name}={value!r} is not a port number")
            return int(value)

        def number(name: str, default: int) -> int:
            value = env.get(name, "").strip() or str(default)
            if not value.isdigit():
                raise ServiceError(f"{name}={value!r} is not a number")
            return int(value)

        admin_url = env.get("COLTSFOOT_CADDY_ADMIN_URL", "").strip() or "http://127.0.0.1:2019"
        admin_listen = admin_url.split("://", 1)[-1].split("/", 1)[0]
        state = env.get("COLTSFOOT_STATE_DIR", "").strip() or str(Path.home() / ".local" / "state" / "coltsfoot")
        dns = env.get("COLTSFOOT_UPSTREAM_DNS", "").strip() or "127.0.0.1:5354"
        dns_host, dns_port = split_host_port(dns)
        if dns_host != "127.0.0.1":
            raise ServiceError(f"COLTSFOOT_UPSTREAM_DNS={dns!r}: the platform's DNS server listens on 127.0.0.1 only")
        config = cls(
            state=Path(os.path.realpath(os.path.expanduser(state))),
            redis_port=port("COLTSFOOT_REDIS_PORT", 6390),
            pg_port=port("COLTSFOOT_PG_PORT", 5433),
            pgbouncer_port=port("COLTSFOOT_PGBOUNCER_PORT", 6433),
            api_bind=env.get("COLTSFOOT_API_BIND", "").strip() or "127.0.0.1:8000",
            edge_listen=env.get("COLTSFOOT_EDGE_LISTEN", "").strip() or "127.0.0.1:8080",
            edge_tls_listen=env.get("COLTSFOOT_EDGE_TLS_LISTEN", "").strip() or "127.0.0.1:8443",
            caddy_admin_listen=admin_listen,
            upstream_dns_port=dns_port,
            statement_timeout_ms=number("COLTSFOOT_TENANT_PG_STATEMENT_TIMEOUT_MS", 30_000),
            idle_tx_timeout_ms=number("COLTSFOOT_TENANT_PG_IDLE_TX_TIMEOUT_MS", 60_000),
        )
        for value in (config.api_bind, config.edge_listen, config.edge_tls_listen, config.caddy_admin_listen):
            split_host_port(value)
        return config


class LocalStack:
    """The `make up` installation over one state dir."""

    def __init__(self, config: LocalConfig, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.caller_env = dict(os.environ if env is None else env)
        state = config.state
        self.state = state
        self.run_dir = state / "run"
        self.log_dir = state / "logs"
        self.secrets_file = state / "secrets.env"
        self.instance_file = state / "instance-id"
        self.env_file = state / "env"
        self.demo_file = state / "demo-tenant.json"
        self.platform_db_file = state / "platform-db"
        self.hosts_file = state / "hosts"
        self.hardened_marker = state / "pg-hardened"
        self.service_user = ServiceUser.for_postgres()
        self.svc_dir = self._svc_dir()

    def _svc_dir(self) -> Path:
        if self.service_user.name is None:
            return self.state / "pg"
        digest = hashlib.sha256(str(self.state).encode()).hexdigest()[:12]
        return Path(self.service_user.home or "/var/lib/postgresql") / f"coltsfoot-{digest}"

    # --- state --------------------------------------------------------------------------------------

    def dirs_ensure(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        self.state.chmod(0o700)
        for directory in (self.run_dir, self.log_dir):
            directory.mkdir(exist_ok=True)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        fd = os.open(self.state / "stack.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ServiceError(f"another `make up` or `make down` is running for {self.state}") from None
            yield
        finally:
            os.close(fd)

    def secrets_ensure(self) -> dict[str, str]:
        if not self.secrets_file.is_file() or self.secrets_file.stat().st_size == 0:
            say(f"==> generating secrets in {self.secrets_file}")
            lines = [
                "# Generated once by `make up` (python -m devstack); every later `up` reuses these values.",
                "# COLTSFOOT_FERNET_KEYS encrypts config vars and add-on credentials: to rotate, put a new key first",
                "# and keep the old ones after it (comma-separated). The two passwords were set when the PostgreSQL",
                "# cluster and PgBouncer were first created; changing them here alone locks the platform out.",
                f"DJANGO_SECRET_KEY={secrets.token_urlsafe(50)}",
                f"COLTSFOOT_FERNET_KEYS={Fernet.generate_key().decode()}",
                f"STACK_PG_SUPERUSER_PASSWORD={secrets.token_hex(24)}",
                f"STACK_PGBOUNCER_ADMIN_PASSWORD={secrets.token_hex(24)}",
            ]
            write_private(self.secrets_file, "\n".join(lines) + "\n")
        values = self.secrets_load()
        if not values.get(PLATFORM_DB_LOGIN_VARIABLE):
            text = self.secrets_file.read_text()
            text += ("" if text.endswith("\n") else "\n") + f"{PLATFORM_DB_LOGIN_VARIABLE}={secrets.token_hex(24)}\n"
            write_private(self.secrets_file, text)
            values = self.secrets_load()
        return values

    def secrets_load(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for line in self.secrets_file.read_text().splitlines():
            if not line or line.startswith("#") or "=" not in line:
                continue
            key, _, value = line.partition("=")
            values[key.strip()] = value
        missing = [key for key in SECRET_KEYS if not values.get(key)]
        if missing:
            raise ServiceError(
                f"{self.secrets_file} lacks {', '.join(missing)}; restore it (or remove the whole state dir to start "
                "from scratch)"
            )
        return values

    def platform_db(self, *, create: bool) -> str:
        """`sqlite` or `postgres`: this state dir's platform DB, chosen by COLTSFOOT_PLATFORM_DB at the first `up`
        and kept in the state dir. Switching an existing state dir would silently start on an empty DB (every
        tenant and app gone from view), so it is refused."""
        wanted = self.caller_env.get("COLTSFOOT_PLATFORM_DB", "").strip().lower()
        if wanted and wanted not in PLATFORM_DBS:
            raise ServiceError(f"COLTSFOOT_PLATFORM_DB={wanted!r}: use sqlite (the default) or postgres")
        stored = ""
        with contextlib.suppress(FileNotFoundError):
            stored = self.platform_db_file.read_text().strip()
        if create and stored and wanted and wanted != stored:
            raise ServiceError(
                f"this state dir's platform DB is {stored} ({self.platform_db_file}); COLTSFOOT_PLATFORM_DB={wanted} "
                "would start on an empty one. Unset it, or use another COLTSFOOT_STATE_DIR (or start from scratch)"
            )
        chosen = stored or wanted or "sqlite"
        if create and not stored:
            write_private(self.platform_db_file, chosen + "\n")
        return chosen

    def hosts(self, *, create: bool) -> int:
        """How many simulated hosts this stack runs (README "Several hosts"): COLTSFOOT_HOSTS (`make up HOSTS=N`)
        when given to `up`, kept in the state dir so a later `up`, `down` or `status` knows every host's worker."""
        wanted = self.caller_env.get("COLTSFOOT_HOSTS", "").strip()
        if wanted and (not wanted.isdigit() or not 1 <= int(wanted) <= MAX_HOSTS):
            raise ServiceError(f"HOSTS={wanted!r}: a number of hosts from 1 to {MAX_HOSTS}")
        stored = ""
        with contextlib.suppress(FileNotFoundError):
            stored = self.hosts_file.read_text().strip()
        if create and wanted and wanted != stored:
            write_private(self.hosts_file, wanted + "\n")
            return int(wanted)
        return int(stored) if stored.isdigit() and int(stored) >= 1 else 1

    def instance_id(self, *, create: bool) -> str | None:
        """This installation's instance id: made once (from COLTSFOOT_INSTANCE_ID if the caller set one, else a
        new UUID) and kept in the state dir, so two state dirs on one machine never share one."""
        with contextlib.suppress(FileNotFoundError):
            stored = self.instance_file.read_text().strip()
            if stored:
                wanted = self.caller_env.get("COLTSFOOT_INSTANCE_ID", "").strip()
                if wanted and wanted != stored:
                    warn(f"COLTSFOOT_INSTANCE_ID={wanted} ignored: this state dir's instance id is {stored}")
                return stored
        if not create:
            return None
        instance = self.caller_env.get("COLTSFOOT_INSTANCE_ID", "").strip() or str(uuid.uuid4())
        write_private(self.instance_file, instance + "\n")
        return instance

    # --- the stack ------------------------------------------------------------------------------------

    def build(self, values: dict[str, str] | None, instance_id: str | None, *, create: bool = False) -> Stack:
        """The services of this installation. Without secrets (status, down before any up) the passwords are
        placeholders: nothing that needs them runs then."""
        values = values or {}
        platform_db = self.platform_db(create=create)
        config = self.config
        redis = RedisServer(
            self.state / "redis", port=config.redis_port, persistent=True, log_dir=self.log_dir, run_dir=self.run_dir
        )
        caddy = CaddyServer(
            self.state / "caddy",
            admin_listen=config.caddy_admin_listen,
            edge_listen=config.edge_listen,
            tls_listen=config.edge_tls_listen,
            log_dir=self.log_dir,
            run_dir=self.run_dir,
        )
        postgres = PostgresServer(
            self.log_dir,
            rundir=self.svc_dir,
            port=config.pg_port,
            password=values.get("STACK_PG_SUPERUSER_PASSWORD") or "unset",
            run_dir=self.run_dir,
        )
        pgbouncer = PgBouncerServer(
            self.log_dir,
            postgres,
            rundir=self.svc_dir / "pgbouncer",
            port=config.pgbouncer_port,
            admin_password=values.get("STACK_PGBOUNCER_ADMIN_PASSWORD") or "unset",
            statement_timeout_ms=config.statement_timeout_ms,
            idle_tx_timeout_ms=config.idle_tx_timeout_ms,
            run_dir=self.run_dir,
        )
        database = None
        if platform_db == "postgres":
            password = values.get(PLATFORM_DB_LOGIN_VARIABLE) or "unset"
            database = PlatformDatabase(postgres, pgbouncer, password)
        base_env = {k: v for k, v in self.caller_env.items() if k != "COLTSFOOT_INSTANCE_ID"}
        data_dir = Path(self.caller_env.get("COLTSFOOT_DATA_DIR", "").strip() or self.state / "data")
        extra = {"COLTSFOOT_FERNET_KEYS": values.get("COLTSFOOT_FERNET_KEYS", "")}
        if self.caller_env.get("COLTSFOOT_EDGE_URL_TEMPLATE", "").strip():
            extra["COLTSFOOT_EDGE_URL_TEMPLATE"] = self.caller_env["COLTSFOOT_EDGE_URL_TEMPLATE"]
        platform = Platform(
            self.state,
            redis,
            caddy,
            postgres,
            pgbouncer,
            instance_id=instance_id or "none",
            api_bind=config.api_bind,
            data_dir=data_dir,
            log_dir=self.log_dir,
            run_dir=self.run_dir,
            base_env=base_env,
            secret_key=values.get("DJANGO_SECRET_KEY") or "unset",
            extra_env=extra,
            dns_port=config.upstream_dns_port,
            database=database,
            hosts=self.hosts(create=create),
        )
        return Stack([redis, caddy, postgres, pgbouncer, platform])

    def env_file_write(self, platform: Platform) -> None:
        lines = [
            "# Written by `make up` (python -m devstack): the environment of the platform processes of this stack.",
            f"# set -a; . {self.env_file}; set +a   then   uv run python manage.py ...   works against it.",
        ]
        for name in sorted(platform.env):
            if name.startswith(("COLTSFOOT_", "DJANGO_")) or name == "DATABASE_URL":
                lines.append(f"{name}={shlex.quote(platform.env[name])}")
        write_private(self.env_file, "\n".join(lines) + "\n")

    def svc_dirs_ensure(self) -> None:
        self.service_user.own_dir(self.svc_dir)
        self.service_user.own_dir(self.svc_dir / "pgbouncer")
        link = self.state / "pg"
        if self.svc_dir != link and not link.exists() and not link.is_symlink():
            link.symlink_to(self.svc_dir)

    # --- commands -----------------------------------------------------------------------------------

    def up(self) -> None:
        for binary, package in REQUIRED:
            try:
                require_binary(binary, package)
            except ServiceError:
                raise ServiceError(
                    f"`{binary}` not found (package {package}); scripts/bootstrap.sh installs it, and `make up` runs "
                    "that first"
                ) from None
        postgres_bindir()
        if not DEMO_SOURCE.is_dir():
            raise ServiceError(f"{DEMO_SOURCE} is missing")
        self.dirs_ensure()
        with self.lock():
            say(f"==> state dir {self.state}")
            values = self.secrets_ensure()
            instance = self.instance_id(create=True)
            stack = self.build(values, instance, create=True)
            platform = stack.require_platform()
            platform.data_dir.mkdir(parents=True, exist_ok=True)
            self.env_file_write(platform)
            self.svc_dirs_ensure()

            say("==> services")
            postgres = next(s for s in stack.services if isinstance(s, PostgresServer))

            def harden_once() -> None:
                if postgres.initialized:
                    self.hardened_marker.unlink(missing_ok=True)
                if not self.hardened_marker.exists():
                    # Take CONNECT on postgres/template1 away from PUBLIC once per cluster (provisioning does too).
                    platform.manage("shell", "-c", "from drivers.postgres import cluster_harden; cluster_harden()")
                    self.hardened_marker.touch()

            stack.up(report=self._report, before_platform=harden_once)
            self._api_ready_wait(platform)

            say("==> demo tenant and app")
            demo = Demo(self, platform)
            demo.tenant_ensure()
            demo.app_ensure()
            demo.live_ensure()
            self._summary(platform, demo)

    def _report(self, service: ProcessService, started: bool) -> None:
        where = {
            "postgres": f"on {service.describe()}, data {self.svc_dir / 'data'}",
            "worker": "(celery, concurrency 2)",
            "beat": "(celery beat)",
            "collector": "(app log collector)",
            "api": f"on {self.config.api_bind}",
        }.get(service.name, f"on {service.describe()}")
        verb = "started" if started else "already running"
        say(f"    {service.name:<9} {verb} (pid {service.pid}) {where}")

    def _api_ready_wait(self, platform: Platform) -> None:
        deadline = time.monotonic() + API_READY_TIMEOUT
        last = ""
        while True:
            try:
                response = httpx.get(f"{platform.api_url}/ready", timeout=10.0, trust_env=False)
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}: {response.text[:500]}"
            platform.api.process.check_alive()
            if time.monotonic() >= deadline:
                raise ServiceError(
                    f"GET {platform.api_url}/ready did not answer 200 within {API_READY_TIMEOUT:.0f}s: {last}\n"
                    f"{platform.api.process.tail_report()}"
                )
            time.sleep(1.0)

    def _summary(self, platform: Platform, demo: Demo) -> None:
        edge = platform.caddy.edge_url.removeprefix("http://")
        say()
        say("Coltsfoot is up.")
        say(f"  API          {platform.api_url}")
        say(f"  API docs     {platform.api_url}/docs")
        say(f"  admin        {platform.api_base}/admin/   (first user: manage.py createsuperuser, see README)")
        say(f"  demo token   {demo.token}")
        say(f"               (tenant '{DEMO_TENANT}'; kept in {self.demo_file})")
        say(f"  demo app     {demo.app['url']}")
        say(f"               curl -H 'Host: {demo.app['hostname']}' http://{edge}/")
        say(f"  HTTPS edge   {platform.caddy.tls_url}   (internal CA root: {platform.caddy.admin_url}/pki/ca/local)")
        if platform.database is not None:
            where = f"PostgreSQL database {platform.database.name} (role {platform.database.role}) via PgBouncer"
            say(f"  platform DB  {where} on {platform.pgbouncer.describe()}")
        else:
            say(f"  platform DB  SQLite, {platform.data_dir / 'coltsfoot.sqlite3'}")
        say(f"  state dir    {self.state}")
        say(f"  logs         {self.log_dir}/")
        say(f"  environment  set -a; . {self.env_file}; set +a   (to run manage.py against this stack)")
        if platform.firewall_managed:
            egress = platform.env.get("COLTSFOOT_TENANT_EGRESS", "").strip() or "public"
            say(f"  firewall     nft table inet {platform.firewall_table} (tenant egress: {egress})")
        say(f'Try:  curl -H "Authorization: Bearer {demo.token}" {platform.api_url}/apps')
        say("Stop: make down")

    def down(self) -> None:
        self.dirs_ensure()
        with self.lock():
            say(f"==> stopping Coltsfoot (state dir {self.state})")
            instance = self.instance_id(create=False)
            stack = self.build(None, instance)
            platform = stack.require_platform()
            for service in reversed(stack.services):
                if service is platform:
                    for process in reversed(platform.services):
                        self._stop_one(process)
                    self._stop_containers(platform, instance)
                    self._firewall_remove(platform, instance)
                elif isinstance(service, ProcessService):
                    self._stop_one(service)
            for name in ("auth-header", "response", "deploy-response"):  # left by the bash supervisor
                (self.run_dir / name).unlink(missing_ok=True)

    def _stop_one(self, service: ProcessService) -> None:
        if not service.adopt():
            say(f"    {service.name:<9} not running")
            return
        pid = service.pid
        service.stop()
        say(f"    {service.name:<9} stopped (was pid {pid})")

    def _stop_containers(self, platform: Platform, instance: str | None) -> None:
        if instance is None:
            say(f"    {'apps':<9} no instance id in {self.instance_file}: no containers of this state dir")
            return
        try:
            count = podman_stop_instance(instance, platform.env)
        except ServiceError as exc:
            warn(str(exc))
            return
        if count:
            say(f"    {'apps':<9} stopped {count} container(s) labelled coltsfoot.instance={instance}")
        else:
            say(f"    {'apps':<9} no running containers labelled coltsfoot.instance={instance}")

    def _firewall_remove(self, platform: Platform, instance: str | None) -> None:
        if instance is None or not platform.firewall_managed:
            return
        platform.firewall_remove()
        say(f"    {'firewall':<9} table inet {platform.firewall_table} removed (other tables untouched)")

    def host_down(self, host: str) -> None:
        """`make host-down HOST=host-2`: that host's worker SIGKILLed and its containers stopped, as if the machine
        died; the others notice by its missing heartbeats. `make up` brings it back."""
        self.dirs_ensure()
        with self.lock():
            instance = self.instance_id(create=False)
            if instance is None:
                raise ServiceError(f"no stack in {self.state} yet: `make up HOSTS=2` first")
            platform = self.build(self.secrets_load(), instance).require_platform()
            worker = platform.host_worker(host)
            if not worker.adopt():
                say(f"    {worker.name:<9} not running")
            count = platform.host_down(host)
            say(f"==> {host} down: {worker.name} killed, {count} container(s) labelled coltsfoot.host={host} stopped")
            say("    the reconciler marks it down after COLTSFOOT_HOST_DEAD_SECONDS; `make up` brings it back")

    def status(self) -> None:
        instance = self.instance_id(create=False) if self.state.is_dir() else None
        stack = self.build(None, instance)
        platform = stack.require_platform()
        for line in stack.status():
            where = line.where
            if line.pid is not None:
                say(f"{line.name:<10} running  pid {line.pid:<8} {where}")
            else:
                say(f"{line.name:<10} stopped  {'':<12} {where}")
        if instance is None:
            say(f"{'apps':<10} no instance id yet (made by the first `make up`)")
        else:
            ids = podman_running_containers(instance, platform.env)
            count = "?" if ids is None else str(len(ids))
            say(f"{'apps':<10} {count} container(s) running (label coltsfoot.instance={instance})")
        say(f"{'state':<10} {self.state} (logs in {self.log_dir}/, postgres/pgbouncer in {self.svc_dir})")


class Demo:
    """The demo tenant and its `hello` app, made once and redeployed only when it does not answer."""

    def __init__(self, local: LocalStack, platform: Platform) -> None:
        self.local = local
        self.platform = platform
        self.token = ""
        self.app: dict[str, Any] = {}

    def client(self) -> httpx.Client:
        return self.platform.client(self.token, timeout=300.0)

    def api(self, method: str, path: str, *, expect: int, **kwargs: Any) -> Any:
        with self.client() as client:
            response = client.request(method, path, **kwargs)
        if response.status_code != expect:
            raise ServiceError(f"{method} {path} answered {response.status_code}: {response.text[:1000]}")
        return response.json()

    def tenant_ensure(self) -> None:
        demo_file = self.local.demo_file
        if demo_file.is_file() and demo_file.stat().st_size:
            self.token = json.loads(demo_file.read_text())["token"]
            with self.client() as client:
                response = client.get("/apps", params={"limit": 1})
            if response.status_code == 200:
                say(f"    demo tenant: token from {demo_file}")
                return
            if response.status_code != 401:
                raise ServiceError(f"GET /apps answered {response.status_code}: {response.text[:1000]}")
            warn(f"the token in {demo_file} is not accepted any more (the platform DB was reset?); making a new one")
        try:
            tenant = self.platform.create_tenant(DEMO_TENANT)
        except ServiceError:
            # The tenant exists but its token was lost with demo-tenant.json: mint a new full-scope token for it.
            code = (
                "import json\n"
                "from tenants.models import Tenant\n"
                "from tenants.services import token_create_initial\n"
                f"tenant = Tenant.objects.get(slug={DEMO_TENANT!r})\n"
                "_token, plaintext = token_create_initial(tenant=tenant, name='make-up')\n"
                "print(json.dumps({'tenant_id': str(tenant.public_id), 'token': plaintext}))\n"
            )
            found = json_line(self.platform.manage("shell", "-c", code).stdout, {"tenant_id", "token"})
            if found is None:
                raise ServiceError("minting a token for the demo tenant printed no JSON") from None
            tenant = found
        write_private(demo_file, json.dumps({"tenant_id": tenant["tenant_id"], "token": tenant["token"]}) + "\n")
        self.token = tenant["token"]
        say(f"    demo tenant: created, token saved in {demo_file}")

    def app_ensure(self) -> None:
        apps = self.api("GET", "/apps", expect=200, params={"limit": 100})
        found = next((a for a in apps["items"] if a["name"] == DEMO_APP), None)
        if found is None:
            found = self.api("POST", "/apps", expect=201, json={"name": DEMO_APP})
            say(f"    app {DEMO_APP}: created")
        self.app = found

    def edge_status(self) -> int | None:
        try:
            return self.platform.edge_get(self.app["url"], timeout=5.0).status_code
        except httpx.HTTPError:
            return None

    def deploy_source(self) -> str:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            tar.add(DEMO_SOURCE, arcname=".", filter=lambda info: None if "__pycache__" in info.name else info)
        files = {"source": (f"{DEMO_APP}.tar.gz", buffer.getvalue(), "application/gzip")}
        deployment = self.api("POST", f"/apps/{self.app['id']}/deployments", expect=202, files=files)
        say(f"    deployment #{deployment['number']} of {DEMO_SOURCE} queued ({deployment['id']})")
        return str(deployment["id"])

    def live_ensure(self) -> None:
        deadline = time.monotonic() + DEPLOY_TIMEOUT
        app_id = self.app["id"]
        for _attempt in range(3):
            app = self.api("GET", f"/apps/{app_id}", expect=200)
            live = app.get("live_deployment_id")
            deployments = self.api("GET", f"/apps/{app_id}/deployments", expect=200, params={"limit": 100})
            active = next(
                (d["id"] for d in deployments["items"] if d["state"] in {"queued", "building", "starting"}), None
            )
            if active is not None:
                say("    a deployment is already under way; waiting for it")
                deployment_id = str(active)
            elif live:
                # Live in the platform DB: the reconciler brings it back by itself after a `down` (its
                # containers are gone) or a Caddy restart (its routes are gone), from the same image.
                if self.edge_status() == 200:
                    say(f"    app {DEMO_APP}: live, answering through the edge")
                    return
                say(f"    app {DEMO_APP}: live; waiting for the reconciler to start it again")
                break
            else:
                deployment_id = self.deploy_source()
            if self.deployment_wait(deployment_id, deadline):
                break
            say(f"    deployment {deployment_id} was superseded; looking again")
        say(f"    waiting for {self.app['url']} to answer through the edge")
        while self.edge_status() != 200:
            if time.monotonic() >= deadline:
                raise ServiceError(
                    f"the deployment is live but {self.platform.edge_url}/ with Host: {self.app['hostname']} "
                    f"does not answer 200\n{self.platform.caddy.process.tail_report()}"
                )
            time.sleep(1.0)

    def deployment_wait(self, deployment_id: str, deadline: float) -> bool:
        """True once live, False if superseded; raises if it failed or time ran out."""
        started = time.monotonic()
        last = ""
        next_note = started + 30
        while True:
            with self.client() as client:
                response = client.get(f"/deployments/{deployment_id}")
            if response.status_code == 200:
                deployment = response.json()
                state, number = deployment["state"], deployment["number"]
                elapsed = int(time.monotonic() - started)
                if state != last:
                    say(f"    deployment #{number}: {state} ({elapsed}s)")
                    last, next_note = state, time.monotonic() + 30
                elif time.monotonic() >= next_note:
                    say(f"    deployment #{number}: still {state} ({elapsed}s)")
                    next_note = time.monotonic() + 30
                if state == "live":
                    return True
                if state == "superseded":
                    return False
                if state == "failed":
                    with self.client() as client:
                        log = client.get(f"/deployments/{deployment_id}/log").text
                    raise ServiceError(
                        f"the demo deployment #{number} failed: {deployment.get('error')}\n"
                        f"--- last 40 lines of the deployment log (GET /deployments/{deployment_id}/log) ---\n"
                        + "\n".join(log.splitlines()[-40:])
                        + f"\n--- end ---\n{self.platform.worker.process.tail_report()}"
                    )
            self.platform.worker.process.check_alive()
            if time.monotonic() >= deadline:
                raise ServiceError(
                    f"deployment {deployment_id} is still {last!r} after {DEPLOY_TIMEOUT:.0f}s\n"
                    f"{self.platform.worker.process.tail_report()}"
                )
            time.sleep(2.0)


def main_command(command: str, host: str = "") -> int:
    """Run `up`, `down`, `status` or `host-down HOST` for the state dir the environment names; 1 with a message
    on failure."""
    try:
        local = LocalStack(LocalConfig.from_env(dict(os.environ)))
        if command == "up":
            local.up()
        elif command == "down":
            local.down()
        elif command == "host-down":
            local.host_down(host)
        else:
            local.status()
    except ServiceError as exc:
        warn(str(exc))
        if command == "up":
            warn("services started so far keep running; `make down` stops them")
        return 1
    return 0
