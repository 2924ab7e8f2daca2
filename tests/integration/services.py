"""Process managers for the integration tests: real Redis, Caddy, PostgreSQL, PgBouncer and the Coltsfoot
stack itself, each on free ports in a temporary directory.

Every service logs to a file so that a failure can show the tail of it; every wait has a deadline; every
stop is terminate, then kill. Nothing here ever touches a developer's running services or standard ports.

Deadlines are absolute `time.monotonic()` values (see `deadline_after`) so that several waits can share one.
"""

from __future__ import annotations

import abc
import contextlib
import json
import logging
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from typing import Self
from urllib.parse import quote

import httpx
import psycopg

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCALHOST = "127.0.0.1"
# Tenant containers sit on isolated podman bridges whose gateway address only exists while a container is
# attached, so PgBouncer cannot bind to it ahead of time; 0.0.0.0 is the address they can always reach.
ALL_INTERFACES = "0.0.0.0"  # noqa: S104
TAIL_LINES = 60

# The label the platform puts on every podman object it creates (containers, networks, images, volumes),
# with COLTSFOOT_INSTANCE_ID as its value; teardown removes everything carrying this session's value.
INSTANCE_LABEL = "coltsfoot.instance"
TENANT_LABEL = "coltsfoot.tenant"
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
    "LANG",
    "TZ",
)


class ServiceError(RuntimeError):
    """A service binary is missing, failed to start or did not become ready in time."""


def deadline_after(seconds: float) -> float:
    return time.monotonic() + seconds


def free_port(host: str = LOCALHOST) -> int:
    """A port that is free on `host` right now. Another process may take it before the service binds it; the
    window is tiny and the kernel hands out ephemeral ports in a spread, so xdist workers don't collide."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(host: str, port: int, deadline: float, *, process: ManagedProcess | None = None) -> None:
    """Wait until a TCP connect to host:port succeeds; fail early if `process` exits meanwhile."""
    while True:
        if process is not None:
            process.check_alive()
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            pass
        if time.monotonic() >= deadline:
            raise ServiceError(_with_tail(f"nothing listens on {host}:{port} before the deadline", process))
        time.sleep(0.05)


def wait_for_http(
    url: str,
    deadline: float,
    *,
    process: ManagedProcess | None = None,
    ok: Callable[[int], bool] = lambda status: True,
) -> httpx.Response:
    """Wait until GET url answers with a status `ok` accepts (by default: any HTTP answer at all)."""
    last = "no answer"
    while True:
        if process is not None:
            process.check_alive()
        try:
            response = httpx.get(url, timeout=2.0, trust_env=False)
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            if ok(response.status_code):
                return response
            last = f"HTTP {response.status_code}: {response.text[:200]}"
        if time.monotonic() >= deadline:
            raise ServiceError(_with_tail(f"{url} not ready before the deadline ({last})", process))
        time.sleep(0.1)


def require_binary(name: str, package: str) -> str:
    path = shutil.which(name, path=_system_path())
    if path is None:
        raise ServiceError(f"`{name}` not found on PATH; install it with `apt-get install -y {package}`.")
    return path


def postgres_bindir() -> Path:
    """Debian keeps the server binaries out of PATH, under /usr/lib/postgresql/<major>/bin."""
    override = os.environ.get("COLTSFOOT_TEST_PG_BINDIR", "").strip()
    if override:
        return Path(override)
    on_path = shutil.which("postgres")
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


def _system_path() -> str:
    parts = os.environ.get("PATH", "").split(os.pathsep)
    for extra in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        if extra not in parts:
            parts.append(extra)
    return os.pathsep.join(p for p in parts if p)


def _with_tail(message: str, process: ManagedProcess | None) -> str:
    return message if process is None else f"{process.name}: {message}\n{process.tail_report()}"


class ServiceUser:
    """The OS account a service runs as. PostgreSQL and PgBouncer refuse to run as root, so under root they
    run as `postgres`; as an ordinary user they simply run as that user."""

    def __init__(self, name: str | None) -> None:
        self.name = name
        if name is None:
            self.uid, self.gid, self.home = os.getuid(), os.getgid(), str(Path.home())
        else:
            try:
                entry = pwd.getpwnam(name)
            except KeyError:
                raise ServiceError(
                    f"OS user {name!r} does not exist; `apt-get install -y postgresql` creates it."
                ) from None
            self.uid, self.gid, self.home = entry.pw_uid, entry.pw_gid, entry.pw_dir

    @classmethod
    def for_postgres(cls) -> ServiceUser:
        return cls("postgres" if os.geteuid() == 0 else None)

    def popen_kwargs(self) -> dict[str, Any]:
        if self.name is None:
            return {}
        # extra_groups=[] drops root's supplementary groups too.
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def private_dir(self, prefix: str) -> Path:
        """A fresh 0700 directory under the system temp dir owned by this user. pytest's own temp dirs are
        0700 root, so a service running as `postgres` could not even traverse them."""
        path = Path(tempfile.mkdtemp(prefix=prefix))
        if self.name is not None:
            os.chown(path, self.uid, self.gid)
        return path

    def give(self, path: Path, mode: int) -> None:
        if self.name is not None:
            os.chown(path, self.uid, self.gid)
        path.chmod(mode)


class ManagedProcess:
    """One long-running child process in its own session (so Ctrl-C in the terminal reaches only pytest,
    whose teardown then stops it), with stdout+stderr appended to a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        user: ServiceUser | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
        stop_timeout: float = 10.0,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self.user = user
        self.stop_signal = stop_signal
        self.stop_timeout = stop_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_offset = 0

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        if self.running:
            raise ServiceError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.start_offset = log.tell()
            log.write(f"=== {time.strftime('%H:%M:%S')} starting {self.name}: {self.argv!r}\n".encode())
            log.flush()
            try:
                self.proc = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    cwd=self.cwd,
                    start_new_session=True,
                    **(self.user.popen_kwargs() if self.user is not None else {}),
                )
            except OSError as exc:
                raise ServiceError(f"{self.name}: cannot execute {self.argv[0]}: {exc}") from exc
        logger.info("started %s (pid %s), log %s", self.name, self.proc.pid, self.log_path)

    def check_alive(self) -> None:
        if self.proc is None:
            raise ServiceError(f"{self.name} was never started")
        code = self.proc.poll()
        if code is not None:
            raise ServiceError(f"{self.name} exited with status {code}\n{self.tail_report()}")

    def stop(self) -> None:
        """The service's own shutdown signal to the leader, then SIGKILL to the whole process group (which also
        catches children the leader left behind, e.g. Celery pool processes)."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(self.stop_signal)
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "%s ignored %s for %.0fs; killing it", self.name, self.stop_signal.name, self.stop_timeout
                )
        self._kill_group(proc)
        logger.info("stopped %s (pid %s, status %s)", self.name, proc.pid, proc.returncode)

    def kill(self) -> None:
        """SIGKILL the process and everything in its group at once, like a machine losing power."""
        if self.proc is not None:
            self._kill_group(self.proc)

    def _kill_group(self, proc: subprocess.Popen[bytes]) -> None:
        # start_new_session made the child a session and group leader, so its pid is the group id; the group
        # outlives the leader while any member does.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)

    def read_log(self, since: int = 0) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(since)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = TAIL_LINES) -> str:
        return "\n".join(self.read_log().splitlines()[-lines:])

    def tail_report(self, lines: int = TAIL_LINES) -> str:
        return f"--- last {lines} lines of {self.log_path} ---\n{self.tail(lines)}\n--- end of {self.name} log ---"

    def wait_for_log(self, pattern: re.Pattern[str], deadline: float) -> re.Match[str]:
        """Wait until the output of the current run (since the last start) matches `pattern`."""
        while True:
            match = pattern.search(self.read_log(self.start_offset))
            if match is not None:
                return match
            self.check_alive()
            if time.monotonic() >= deadline:
                raise ServiceError(_with_tail(f"no line matching {pattern.pattern!r} before the deadline", self))
            time.sleep(0.1)


class Service(abc.ABC):
    """Base for one started service: context manager, log tails for failure reports."""

    name = "service"

    def processes(self) -> list[ManagedProcess]:
        return []

    @abc.abstractmethod
    def start(self) -> None: ...

    def stop(self) -> None:
        for process in reversed(self.processes()):
            process.stop()

    def log_tails(self, lines: int = TAIL_LINES) -> dict[str, str]:
        return {p.name: p.tail(lines) for p in self.processes() if p.proc is not None}

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class RedisServer(Service):
    name = "redis"

    def __init__(self, tmpdir: Path, *, start_timeout: float = 20.0) -> None:
        self.dir = tmpdir / "redis"
        self.port = free_port()
        self.url = f"redis://{LOCALHOST}:{self.port}/0"
        self.start_timeout = start_timeout
        self.process: ManagedProcess | None = None

    def processes(self) -> list[ManagedProcess]:
        return [self.process] if self.process is not None else []

    def start(self) -> None:
        binary = require_binary("redis-server", "redis-server")
        self.dir.mkdir(parents=True, exist_ok=True)
        argv = [binary, "--port", str(self.port), "--bind", LOCALHOST, "--save", "", "--appendonly", "no"]
        argv += ["--dir", str(self.dir), "--daemonize", "no", "--protected-mode", "yes", "--logfile", ""]
        self.process = ManagedProcess("redis", argv, self.dir / "redis.log", env={"PATH": _system_path()})
        started = time.monotonic()
        self.process.start()
        deadline = deadline_after(self.start_timeout)
        wait_for_port(LOCALHOST, self.port, deadline, process=self.process)
        while not redis_ping(LOCALHOST, self.port):
            self.process.check_alive()  # something else may hold the port: then redis exits at once
            if time.monotonic() >= deadline:
                raise ServiceError(_with_tail("no PONG before the deadline", self.process))
            time.sleep(0.05)
        logger.info("redis ready at %s in %.2fs", self.url, time.monotonic() - started)


def redis_ping(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class CaddyServer(Service):
    """Caddy with only its admin endpoint configured; the platform creates the edge server through the admin
    API and binds it to `edge_listen`, a port reserved here."""

    name = "caddy"

    def __init__(self, tmpdir: Path, *, start_timeout: float = 20.0) -> None:
        self.dir = tmpdir / "caddy"
        self.admin_port = free_port()
        self.edge_port = free_port()
        while self.edge_port == self.admin_port:
            self.edge_port = free_port()
        self.admin_url = f"http://{LOCALHOST}:{self.admin_port}"
        self.edge_listen = f"{LOCALHOST}:{self.edge_port}"
        self.edge_url = f"http://{LOCALHOST}:{self.edge_port}"
        self.config_path = self.dir / "caddy.json"
        self.start_timeout = start_timeout
        self.process: ManagedProcess | None = None

    def processes(self) -> list[ManagedProcess]:
        return [self.process] if self.process is not None else []

    def start(self) -> None:
        binary = require_binary("caddy", "caddy")
        home = self.dir / "home"
        for sub in ("data", "config"):
            (home / sub).mkdir(parents=True, exist_ok=True)
        # persist=false: config changes made through the admin API are not autosaved anywhere. No apps and no
        # TLS, so `caddy run` has no certificates to manage or install.
        config = {"admin": {"listen": f"{LOCALHOST}:{self.admin_port}", "config": {"persist": False}}}
        self.config_path.write_text(json.dumps(config))
        # Caddy keeps its storage under $XDG_DATA_HOME/caddy (else ~/.local/share/caddy) and its autosave under
        # $XDG_CONFIG_HOME/caddy: both point into the temp dir so the developer's real ones stay untouched.
        env = {
            "PATH": _system_path(),
            "HOME": str(home),
            "XDG_DATA_HOME": str(home / "data"),
            "XDG_CONFIG_HOME": str(home / "config"),
        }
        argv = [binary, "run", "--config", str(self.config_path)]
        self.process = ManagedProcess("caddy", argv, self.dir / "caddy.log", env=env, cwd=self.dir)
        started = time.monotonic()
        self.process.start()
        wait_for_http(
            f"{self.admin_url}/config/",
            deadline_after(self.start_timeout),
            process=self.process,
            ok=lambda status: status == 200,
        )
        logger.info("caddy admin ready at %s in %.2fs", self.admin_url, time.monotonic() - started)


class PostgresServer(Service):
    """A throwaway PostgreSQL cluster: trust over its private Unix socket, SCRAM over TCP on 127.0.0.1 only.
    Tenant containers never reach it directly; they reach PgBouncer, which connects from 127.0.0.1."""

    name = "postgres"

    def __init__(self, tmpdir: Path, *, start_timeout: float = 60.0) -> None:
        self.log_dir = tmpdir / "postgres"
        self.port = free_port()
        self.host = LOCALHOST
        self.superuser = "postgres"
        self.password = secrets.token_urlsafe(24)
        self.admin_dsn = self.dsn(self.superuser, self.password, "postgres")
        self.start_timeout = start_timeout
        self.user = ServiceUser.for_postgres()
        self.rundir: Path | None = None
        self.process: ManagedProcess | None = None

    def dsn(self, user: str, password: str, dbname: str) -> str:
        return f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{self.host}:{self.port}/{dbname}"

    @property
    def socket_dir(self) -> Path:
        if self.rundir is None:
            raise ServiceError("postgres is not started")
        return self.rundir / "sock"

    def processes(self) -> list[ManagedProcess]:
        return [self.process] if self.process is not None else []

    def start(self) -> None:
        bindir = postgres_bindir()
        started = time.monotonic()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.rundir = self.user.private_dir("coltsfoot-it-pg-")
        datadir, sockdir = self.rundir / "data", self.rundir / "sock"
        sockdir.mkdir()
        self.user.give(sockdir, 0o700)
        pwfile = self.rundir / "pwfile"
        pwfile.write_text(self.password + "\n")
        self.user.give(pwfile, 0o600)
        env = {"PATH": _system_path(), "HOME": str(self.rundir), "LC_ALL": "C.UTF-8", "TZ": "UTC"}
        initdb = [str(bindir / "initdb"), "-D", str(datadir), "-U", self.superuser, "--pwfile", str(pwfile)]
        initdb += ["--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"]
        initdb += ["--no-sync", "--no-instructions"]
        log_path = self.log_dir / "initdb.log"
        with log_path.open("ab") as log:
            result = subprocess.run(
                initdb,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.rundir,
                timeout=120,
                check=False,
                **self.user.popen_kwargs(),
            )
        pwfile.unlink()
        if result.returncode != 0:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-TAIL_LINES:])
            raise ServiceError(f"initdb failed with status {result.returncode}\n--- {log_path} ---\n{tail}")
        # initdb wrote trust for local sockets and SCRAM for 127.0.0.1/::1; listen_addresses keeps it on
        # loopback. Durability is irrelevant for a throwaway cluster, so skip fsyncs; small buffers keep
        # `pytest -n N` light.
        argv = [str(bindir / "postgres"), "-D", str(datadir), "-p", str(self.port), "-k", str(sockdir)]
        for setting in (
            f"listen_addresses={LOCALHOST}",
            "unix_socket_permissions=0700",
            "password_encryption=scram-sha-256",
            "fsync=off",
            "synchronous_commit=off",
            "full_page_writes=off",
            "shared_buffers=32MB",
            "max_connections=100",
            "logging_collector=off",
        ):
            argv += ["-c", setting]
        # SIGINT is PostgreSQL's "fast" shutdown; SIGTERM ("smart") would wait for PgBouncer's connections.
        self.process = ManagedProcess(
            "postgres",
            argv,
            self.log_dir / "postgres.log",
            env=env,
            cwd=self.rundir,
            user=self.user,
            stop_signal=signal.SIGINT,
            stop_timeout=20.0,
        )
        self.process.start()
        deadline = deadline_after(self.start_timeout)
        wait_for_port(LOCALHOST, self.port, deadline, process=self.process)
        # The port opens before recovery finishes ("the database system is starting up"): wait for a login.
        last = ""
        while True:
            try:
                with psycopg.connect(self.admin_dsn, connect_timeout=2, autocommit=True) as conn:
                    conn.execute("SELECT 1")
                break
            except psycopg.OperationalError as exc:
                last = str(exc).strip()
            self.process.check_alive()
            if time.monotonic() >= deadline:
                raise ServiceError(_with_tail(f"no login before the deadline ({last})", self.process))
            time.sleep(0.1)
        logger.info("postgres ready on port %s in %.2fs", self.port, time.monotonic() - started)

    def stop(self) -> None:
        super().stop()
        if self.rundir is not None:
            shutil.rmtree(self.rundir, ignore_errors=True)
            self.rundir = None


class PgBouncerServer(Service):
    """PgBouncer in transaction mode in front of `postgres`, with an auth_file the platform rewrites and a
    RELOAD on the admin console to pick up new users without a restart.

    Client auth is SCRAM. For PgBouncer to log in to PostgreSQL as a user it only knows a SCRAM secret of
    (no plaintext), the auth_file line must hold that user's verifier exactly as PostgreSQL stores it
    (`SELECT rolpassword FROM pg_authid`): PgBouncer then replays the client's proof ("SCRAM pass-through").
    """

    name = "pgbouncer"

    def __init__(
        self,
        tmpdir: Path,
        postgres: PostgresServer,
        *,
        query_timeout: int = 60,
        start_timeout: float = 20.0,
    ) -> None:
        self.log_dir = tmpdir / "pgbouncer"
        self.postgres = postgres
        self.listen_addr = ALL_INTERFACES
        self.port = free_port(ALL_INTERFACES)
        self.admin_user = "pgbouncer"
        self.admin_password = secrets.token_urlsafe(24)
        self.admin_dsn = self.dsn(self.admin_user, self.admin_password, "pgbouncer")
        self.query_timeout = query_timeout
        self.start_timeout = start_timeout
        self.user = ServiceUser.for_postgres()
        self.rundir = self.user.private_dir("coltsfoot-it-pgb-")
        self.auth_file = self.rundir / "userlist.txt"
        self.config_path = self.rundir / "pgbouncer.ini"
        self.process: ManagedProcess | None = None

    def dsn(self, user: str, password: str, dbname: str, host: str = LOCALHOST) -> str:
        return f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{self.port}/{dbname}"

    def processes(self) -> list[ManagedProcess]:
        return [self.process] if self.process is not None else []

    def config_text(self) -> str:
        pg = self.postgres
        lines = [
            "[databases]",
            # Fallback: any database name a client asks for goes to the tenant cluster under the same name.
            f"* = host={pg.host} port={pg.port}",
            "",
            "[pgbouncer]",
            f"listen_addr = {self.listen_addr}",
            f"listen_port = {self.port}",
            f"unix_socket_dir = {self.rundir}",
            "auth_type = scram-sha-256",
            f"auth_file = {self.auth_file}",
            f"admin_users = {self.admin_user}",
            f"stats_users = {self.admin_user}",
            "pool_mode = transaction",
            f"query_timeout = {self.query_timeout}",
            "query_wait_timeout = 30",
            "max_client_conn = 500",
            "default_pool_size = 10",
            # The default 15 s would lock a pool out after one failed server login (say, a role dropped and
            # recreated by a test); retry quickly instead.
            "server_login_retry = 1",
            "server_tls_sslmode = disable",
            "ignore_startup_parameters = extra_float_digits",
            "log_connections = 1",
            "log_disconnections = 1",
            "",
        ]
        return "\n".join(lines)

    def start(self) -> None:
        binary = require_binary("pgbouncer", "pgbouncer")
        started = time.monotonic()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text())
        self.user.give(self.config_path, 0o600)
        self.write_auth_file({self.admin_user: self.admin_password})
        env = {"PATH": _system_path(), "HOME": str(self.rundir)}
        # Not daemonized, no logfile: PgBouncer logs to stderr, i.e. our log file. SIGTERM is its immediate
        # shutdown in 1.18 (SIGINT would wait for clients).
        self.process = ManagedProcess(
            "pgbouncer",
            [binary, str(self.config_path)],
            self.log_dir / "pgbouncer.log",
            env=env,
            cwd=self.rundir,
            user=self.user,
        )
        self.process.start()
        deadline = deadline_after(self.start_timeout)
        wait_for_port(LOCALHOST, self.port, deadline, process=self.process)
        while True:
            try:
                self.admin("SHOW VERSION")
                break
            except psycopg.OperationalError as exc:
                last = str(exc).strip()
            self.process.check_alive()
            if time.monotonic() >= deadline:
                raise ServiceError(_with_tail(f"admin console not ready before the deadline ({last})", self.process))
            time.sleep(0.1)
        logger.info("pgbouncer ready on port %s in %.2fs", self.port, time.monotonic() - started)

    def write_auth_file(self, secrets_by_user: dict[str, str]) -> None:
        """Replace the auth_file (name -> plaintext or SCRAM/MD5 secret). Keeps it readable by the PgBouncer OS
        user: a file it cannot read makes RELOAD keep the old users and only log an error."""
        lines = [f'"{_quote_auth(name)}" "{_quote_auth(secret)}"' for name, secret in secrets_by_user.items()]
        tmp = self.auth_file.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        self.user.give(tmp, 0o600)
        tmp.replace(self.auth_file)

    def read_auth_file(self) -> dict[str, str]:
        entries: dict[str, str] = {}
        for match in re.finditer(r'^"((?:[^"]|"")*)"\s+"((?:[^"]|"")*)"', self.auth_file.read_text(), re.MULTILINE):
            entries[match.group(1).replace('""', '"')] = match.group(2).replace('""', '"')
        return entries

    def admin(self, command: str) -> list[tuple[Any, ...]]:
        """Run one admin-console command (SHOW ..., RELOAD, PAUSE, ...) and return its rows."""
        with psycopg.connect(self.admin_dsn, connect_timeout=2, autocommit=True) as conn:
            cursor = conn.execute(command.encode())
            return cursor.fetchall() if cursor.description is not None else []

    def reload(self) -> None:
        self.admin("RELOAD")

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.rundir, ignore_errors=True)


def _quote_auth(value: str) -> str:
    return value.replace('"', '""')


def podman_cleanup(labels: Iterable[str], *, keep_images: Iterable[str] = (), timeout: float = 120.0) -> None:
    """Remove the podman containers, pods, networks, volumes and images carrying any of `labels` ("key=value"),
    except the images named in `keep_images` (the shared base image is built once per machine). Never raises:
    teardown must not fail because podman is missing or has nothing to remove."""
    podman = shutil.which("podman", path=_system_path())
    filters = [f"label={label}" for label in labels]
    if podman is None or not filters:
        return
    keep: set[str] = set()
    for ref in keep_images:
        found = _podman_quiet(podman, ["image", "inspect", "--format", "{{.Id}}", ref], timeout)
        keep.update(_image_id(line) for line in found)
    # Containers first (networks and images in use can't go), then what they used.
    kinds: list[tuple[list[str], list[str]]] = [
        (["ps", "--all", "--quiet", "--no-trunc"], ["rm", "--force", "--time", "0"]),
        (["pod", "ps", "--quiet", "--no-trunc"], ["pod", "rm", "--force", "--time", "0"]),
        (["network", "ls", "--quiet"], ["network", "rm", "--force"]),
        (["volume", "ls", "--quiet"], ["volume", "rm", "--force"]),
        (["images", "--quiet", "--no-trunc"], ["rmi", "--force"]),
    ]
    for list_args, remove_args in kinds:
        ids: set[str] = set()
        for label_filter in filters:
            ids.update(_podman_quiet(podman, [*list_args, "--filter", label_filter], timeout))
        if remove_args[0] == "rmi":
            ids = {image for image in ids if _image_id(image) not in keep}
        if not ids:
            continue
        what = " ".join(remove_args[:2])
        try:
            removed = subprocess.run(
                [podman, *remove_args, *sorted(ids)], capture_output=True, text=True, timeout=timeout, check=False
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


class Platform(Service):
    """The Coltsfoot stack from this repository (API under gunicorn, Celery worker, optional beat) wired to
    the given services, with its state under tmpdir/data. Runs with `sys.executable`: pytest already runs
    inside the project's virtualenv."""

    name = "platform"

    def __init__(
        self,
        tmpdir: Path,
        redis: RedisServer,
        caddy: CaddyServer,
        postgres: PostgresServer,
        pgbouncer: PgBouncerServer,
        *,
        instance_id: str | None = None,
        extra_env: dict[str, str] | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self.dir = tmpdir
        self.data_dir = tmpdir / "data"
        self.log_dir = tmpdir / "logs"
        self.home = tmpdir / "home"
        self.redis = redis
        self.caddy = caddy
        self.postgres = postgres
        self.pgbouncer = pgbouncer
        self.instance_id = instance_id or f"it-{os.getpid()}-{secrets.token_hex(4)}"
        self.start_timeout = start_timeout
        self.api_port = free_port()
        self.api_base = f"http://{LOCALHOST}:{self.api_port}"
        self.api_url = f"{self.api_base}/api/v1"
        self.edge_url = caddy.edge_url
        self.env = self.build_env(extra_env or {})
        self.api: ManagedProcess | None = None
        self.worker: ManagedProcess | None = None
        self.beat: ManagedProcess | None = None
        self.tenant_ids: list[str] = []

    def build_env(self, extra: dict[str, str]) -> dict[str, str]:
        env = {key: os.environ[key] for key in PASSTHROUGH_ENV if os.environ.get(key)}
        env.update(
            {
                "PATH": _system_path(),
                "HOME": str(self.home),
                "LANG": env.get("LANG", "C.UTF-8"),
                "PYTHONUNBUFFERED": "1",
                "DJANGO_SETTINGS_MODULE": "config.settings",
                "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
                "COLTSFOOT_INSTANCE_ID": self.instance_id,
                "COLTSFOOT_DATA_DIR": str(self.data_dir),
                "COLTSFOOT_REDIS_URL": self.redis.url,
                "COLTSFOOT_API_BIND": f"{LOCALHOST}:{self.api_port}",
                "COLTSFOOT_CADDY_ADMIN_URL": self.caddy.admin_url,
                "COLTSFOOT_EDGE_LISTEN": self.caddy.edge_listen,
                "COLTSFOOT_EDGE_URL_TEMPLATE": f"http://{{host}}:{self.caddy.edge_port}/",
                "COLTSFOOT_TENANT_PG_ADMIN_DSN": self.postgres.admin_dsn,
                "COLTSFOOT_PGBOUNCER_PORT": str(self.pgbouncer.port),
                "COLTSFOOT_PGBOUNCER_ADMIN_DSN": self.pgbouncer.admin_dsn,
                "COLTSFOOT_PGBOUNCER_AUTH_FILE": str(self.pgbouncer.auth_file),
                "COLTSFOOT_START_DEADLINE": "60",
                "COLTSFOOT_LOG_LEVEL": "INFO",
            }
        )
        env.update(extra)
        return env

    def processes(self) -> list[ManagedProcess]:
        return [p for p in (self.worker, self.beat, self.api) if p is not None]

    # --- management commands -------------------------------------------------------------------------------

    def manage(self, *args: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
        """Run `manage.py ARGS` against this stack; raise ServiceError with its output if it fails."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, str(REPO_ROOT / "manage.py"), *args]
        try:
            result = subprocess.run(
                argv, env=self.env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise ServiceError(f"manage.py {' '.join(args)} did not finish within {timeout:.0f}s") from exc
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / "manage.log").open("a") as log:
            log.write(f"=== manage.py {' '.join(args)} -> {result.returncode}\n{result.stdout}{result.stderr}")
        if result.returncode != 0:
            raise ServiceError(
                f"manage.py {' '.join(args)} exited with status {result.returncode}\n"
                f"--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-4000:]}"
            )
        return result

    def migrate(self) -> None:
        self.manage("migrate", "--noinput")

    def create_tenant(self, slug: str) -> dict[str, str]:
        """`manage.py create_tenant SLUG` -> {"tenant_id": ..., "token": ...} from its one JSON line."""
        result = self.manage("create_tenant", slug)
        for line in reversed(result.stdout.splitlines()):
            line = line.strip()
            if not line.startswith("{"):
                continue
            with contextlib.suppress(json.JSONDecodeError):
                payload = json.loads(line)
                if isinstance(payload, dict) and {"tenant_id", "token"} <= payload.keys():
                    tenant = {str(k): str(v) for k, v in payload.items()}
                    self.tenant_ids.append(tenant["tenant_id"])
                    return tenant
        raise ServiceError(f"create_tenant printed no JSON line with tenant_id and token:\n{result.stdout[-2000:]}")

    # --- long-running processes ----------------------------------------------------------------------------

    def _process(self, name: str, argv: list[str], *, stop_timeout: float = 10.0) -> ManagedProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        return ManagedProcess(
            name, argv, self.log_dir / f"{name}.log", env=self.env, cwd=REPO_ROOT, stop_timeout=stop_timeout
        )

    def start_worker(self) -> None:
        if self.worker is not None and self.worker.running:
            raise ServiceError("the Celery worker is already running")
        # Each test session has its own Redis, so mingle/gossip would only slow the start down.
        argv = [sys.executable, "-m", "celery", "-A", "config", "worker", "--loglevel=INFO"]
        argv += ["--concurrency=2", "--pool=prefork", "--without-mingle", "--without-gossip"]
        argv += ["--hostname", f"worker-{self.instance_id}@%h"]
        self.worker = self.worker or self._process("worker", argv, stop_timeout=15.0)
        started = time.monotonic()
        self.worker.start()
        self.worker.wait_for_log(re.compile(r"@\S+ ready\."), deadline_after(self.start_timeout))
        logger.info("celery worker ready in %.2fs", time.monotonic() - started)

    def stop_worker(self) -> None:
        """Warm shutdown: running tasks finish first (up to the stop timeout)."""
        if self.worker is not None:
            self.worker.stop()

    def kill_worker(self) -> None:
        """SIGKILL the worker and its pool processes at once: in-flight tasks are neither acked nor finished."""
        if self.worker is not None:
            self.worker.kill()

    def restart_worker(self) -> None:
        self.kill_worker()
        self.start_worker()

    def start_beat(self) -> None:
        if self.beat is not None and self.beat.running:
            raise ServiceError("celery beat is already running")
        argv = [sys.executable, "-m", "celery", "-A", "config", "beat", "--loglevel=INFO"]
        argv += ["--schedule", str(self.data_dir / "celerybeat-schedule"), "--pidfile", str(self.dir / "beat.pid")]
        self.beat = self.beat or self._process("beat", argv)
        self.beat.start()
        self.beat.wait_for_log(re.compile(r"beat: Starting"), deadline_after(self.start_timeout))

    def stop_beat(self) -> None:
        if self.beat is not None:
            self.beat.stop()

    def start_api(self, *, workers: int = 2) -> None:
        if self.api is not None and self.api.running:
            raise ServiceError("the API server is already running")
        argv = [sys.executable, "-m", "gunicorn", "config.wsgi:application"]
        argv += ["--bind", f"{LOCALHOST}:{self.api_port}", "--workers", str(workers), "--timeout", "120"]
        argv += ["--graceful-timeout", "5", "--access-logfile", "-", "--error-logfile", "-"]
        self.api = self.api or self._process("api", argv)
        started = time.monotonic()
        self.api.start()
        wait_for_http(
            f"{self.api_url}/health",
            deadline_after(self.start_timeout),
            process=self.api,
            ok=lambda status: status == 200,
        )
        logger.info("API ready at %s in %.2fs", self.api_url, time.monotonic() - started)

    def stop_api(self) -> None:
        if self.api is not None:
            self.api.stop()

    def start(self) -> None:
        """Migrate, then the worker and the API (beat only on request: tests drive reconcile themselves)."""
        self.migrate()
        self.start_worker()
        self.start_api()

    def stop(self) -> None:
        self.stop_api()
        self.stop_beat()
        self.stop_worker()
        # After the worker is gone, so nothing recreates containers behind our back.
        self.cleanup_podman()

    def cleanup_podman(self) -> None:
        """Remove what this stack created in podman: everything labelled with its instance id and, as a
        fallback, anything labelled with a tenant it created (tenant UUIDs are never reused)."""
        labels = [f"{INSTANCE_LABEL}={self.instance_id}"]
        labels += [f"{TENANT_LABEL}={tenant_id}" for tenant_id in self.tenant_ids]
        base_image = self.env.get("COLTSFOOT_BASE_IMAGE", DEFAULT_BASE_IMAGE)
        podman_cleanup(labels, keep_images=[base_image])

    # --- clients -------------------------------------------------------------------------------------------

    def client(self, token: str | None = None, *, timeout: float = 30.0) -> httpx.Client:
        """An httpx client for the API: `client(token).get("/apps")` hits {api_url}/apps with the bearer token."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.api_url, headers=headers, timeout=timeout, trust_env=False)

    def edge_request(self, method: str, app_url: str, *, timeout: float = 10.0, **kwargs: Any) -> httpx.Response:
        """Send a request to an app through the Caddy edge. `app_url` is the URL the API reports
        (http://<app>-<tenant>.localhost:<edge>/path); we dial 127.0.0.1 and keep its Host header, since
        resolving *.localhost is not something every resolver does."""
        url = httpx.URL(app_url)
        target = httpx.URL(self.edge_url).copy_with(raw_path=url.raw_path)
        headers = {"Host": url.netloc.decode(), **kwargs.pop("headers", {})}
        return httpx.request(method, target, headers=headers, timeout=timeout, trust_env=False, **kwargs)

    def edge_get(self, app_url: str, **kwargs: Any) -> httpx.Response:
        return self.edge_request("GET", app_url, **kwargs)


def log_sections(services: Iterable[Service], lines: int = TAIL_LINES) -> list[tuple[str, str]]:
    """(title, text) pairs with the log tails of every started process, for pytest report sections."""
    sections = []
    for service in services:
        for name, text in service.log_tails(lines).items():
            sections.append((f"{name} log (last {lines} lines)", text))
    return sections


class RegistryServer(Service):
    """A plain-HTTP OCI registry on 127.0.0.1 (Debian's `docker-registry`, i.e. distribution v2), storing its
    blobs in the temp dir. Image-deploy tests push to it with `--tls-verify=false`; the platform is told to
    allow it and to pull from it without TLS."""

    name = "registry"

    def __init__(self, tmpdir: Path, *, start_timeout: float = 20.0) -> None:
        self.dir = tmpdir / "registry"
        self.port = free_port()
        self.host = f"{LOCALHOST}:{self.port}"
        self.url = f"http://{self.host}"
        self.config_path = self.dir / "config.yml"
        self.start_timeout = start_timeout
        self.process: ManagedProcess | None = None

    def processes(self) -> list[ManagedProcess]:
        return [self.process] if self.process is not None else []

    def start(self) -> None:
        binary = require_binary("docker-registry", "docker-registry")
        storage = self.dir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        # JSON is YAML. No auth and no TLS: it listens on loopback only, for this session.
        config = {
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}},
            "http": {"addr": self.host, "secret": secrets.token_urlsafe(24)},
        }
        self.config_path.write_text(json.dumps(config))
        env = {"PATH": _system_path(), "HOME": str(self.dir)}
        argv = [binary, "serve", str(self.config_path)]
        self.process = ManagedProcess("registry", argv, self.dir / "registry.log", env=env, cwd=self.dir)
        started = time.monotonic()
        self.process.start()
        wait_for_http(
            f"{self.url}/v2/", deadline_after(self.start_timeout), process=self.process, ok=lambda status: status == 200
        )
        logger.info("registry ready at %s in %.2fs", self.url, time.monotonic() - started)
