"""One supervised process: its own session, output appended to a log file, its pid in a pid file.

A process is either started here (then this module holds its `Popen` and knows for certain when it
exits) or *adopted* from its pid file by a later command (`make up` run again, `make status`,
`make down`). Readiness is a probe polled until a deadline: a probe that fails once (a refused
connection, an unreadable reply) is simply tried again, and a process counts as dead only when the
kernel says so (its `Popen` reports an exit status, or its pid is gone or a zombie). That is the
difference from the bash supervisor this replaces, which declared Redis dead because one read of
`/proc/<pid>/cmdline` during Redis's process-title rewrite did not contain the expected word.

Deadlines are `time.monotonic()` values.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

LOCALHOST = "127.0.0.1"
TAIL_LINES = 60
SYSTEM_PATH_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")

# What a readiness probe returns: None once the service is ready, else what it is still waiting for
# (shown in the error if the deadline passes).
Probe = Callable[[], str | None]


class ServiceError(RuntimeError):
    """A service binary is missing, failed to start, died, or did not become ready in time."""


def deadline_after(seconds: float) -> float:
    return time.monotonic() + seconds


def free_port(host: str = LOCALHOST) -> int:
    """A port that is free on `host` right now. Another process may take it before the service binds it; the
    window is tiny and the kernel hands out ephemeral ports in a spread, so parallel test sessions don't collide."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_taken(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def dial_host(host: str) -> str:
    """The address to connect to for a service bound to `host` (0.0.0.0 is not an address to dial)."""
    return LOCALHOST if host in {"", "0.0.0.0", "*"} else host  # noqa: S104 - compared, not bound


def split_host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise ServiceError(f"{value!r} is not host:port")
    return host, int(port)


def system_path() -> str:
    """The caller's PATH plus the system directories (sudo and cron may leave the sbin ones out)."""
    parts = os.environ.get("PATH", "").split(os.pathsep)
    parts += [extra for extra in SYSTEM_PATH_DIRS if extra not in parts]
    return os.pathsep.join(p for p in parts if p)


def require_binary(name: str, package: str) -> str:
    path = shutil.which(name, path=system_path())
    if path is None:
        raise ServiceError(f"`{name}` not found on PATH; install it with `apt-get install -y {package}`.")
    return path


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
        self.give(path, 0o700)
        return path

    def own_dir(self, path: Path, mode: int = 0o700) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.give(path, mode)

    def give(self, path: Path, mode: int) -> None:
        if self.name is not None:
            os.chown(path, self.uid, self.gid)
        path.chmod(mode)


def pid_alive(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie. Only a definite answer from the kernel counts as dead: an
    error other than "no such process" leaves the process alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    # The command name in parentheses may itself contain ") ", so split at the last one.
    state = stat.rpartition(") ")[2][:1]
    return state != "Z"


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes in process group `pgid`, read from /proc."""
    members = []
    for stat_path in Path("/proc").glob("[0-9]*/stat"):
        try:
            stat = stat_path.read_text()
        except OSError:
            continue  # exited while we looked
        fields = stat.rpartition(") ")[2].split()
        # After the command name: state, ppid, pgrp, ...
        if len(fields) > 2 and fields[0] != "Z" and fields[2] == str(pgid):
            members.append(int(stat_path.parent.name))
    return members


def read_cmdline(pid: int) -> str | None:
    """The process's command line with spaces for NULs, or None if it cannot be read right now."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace").strip() or None


def cmdline_matches(pid: int, marker: Sequence[str], *, attempts: int = 5, interval: float = 0.1) -> bool:
    """Whether the process's command line contains every string of `marker`: the check that a pid file's pid
    is still ours and not a recycled pid of some unrelated program. A process rewriting its title (Redis does
    at start) can give an empty or partial read; only consistent non-matching reads make it "not ours"."""
    for attempt in range(attempts):
        cmdline = read_cmdline(pid)
        if cmdline is not None and all(part in cmdline for part in marker):
            return True
        if not pid_alive(pid):
            return False
        if attempt + 1 < attempts:
            time.sleep(interval)
    return False


def write_pid_file(path: Path, pid: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(f"{pid}\n")
    tmp.replace(path)


def read_pid_file(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 1 else None


class ManagedProcess:
    """One long-running child process in its own session (so Ctrl-C in a terminal reaches only the caller, and
    the pid is its process group's id), with stdout+stderr appended to a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        pid_path: Path | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        user: ServiceUser | None = None,
        marker: Sequence[str] = (),
        stop_signal: signal.Signals = signal.SIGTERM,
        stop_timeout: float = 10.0,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.pid_path = pid_path
        self.env = env
        self.cwd = cwd
        self.user = user
        self.marker = tuple(marker) or (Path(self.argv[0]).name,)
        self.stop_signal = stop_signal
        self.stop_timeout = stop_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.adopted_pid: int | None = None
        self.start_offset = 0

    @property
    def pid(self) -> int | None:
        if self.proc is not None:
            return self.proc.pid
        return self.adopted_pid

    @property
    def running(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return self.adopted_pid is not None and pid_alive(self.adopted_pid)

    def exit_description(self) -> str:
        if self.proc is not None and self.proc.returncode is not None:
            code = self.proc.returncode
            return f"exited with status {code}" if code >= 0 else f"was killed by signal {-code}"
        return "exited"

    def start(self) -> None:
        if self.running:
            raise ServiceError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.start_offset = log.tell()
            log.write(f"=== {time.strftime('%F %T')} starting {self.name}: {self.argv!r}\n".encode())
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
        self.adopted_pid = None
        if self.pid_path is not None:
            write_pid_file(self.pid_path, self.proc.pid)
        logger.info("started %s (pid %s), log %s", self.name, self.proc.pid, self.log_path)

    def adopt(self) -> bool:
        """Take over the process named in the pid file if it still runs and is ours. A stale pid file is
        removed. Returns whether there is a running process now."""
        if self.running:
            return True
        if self.pid_path is None:
            return False
        pid = read_pid_file(self.pid_path)
        if pid is not None and pid_alive(pid) and cmdline_matches(pid, self.marker):
            self.adopted_pid = pid
            return True
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()
        return False

    def wait_ready(self, probe: Probe, *, timeout: float, what: str, interval: float = 0.1) -> None:
        """Poll `probe` until it reports ready. Fails, with the log tail, only when the process has exited
        or the deadline has passed; a failed probe in between is tried again."""
        deadline = deadline_after(timeout)
        while True:
            missing = probe()
            if missing is None:
                return
            if not self.running:
                raise ServiceError(
                    f"{self.name} {self.exit_description()} while starting (waiting for {what}; last: {missing})\n"
                    f"{self.tail_report()}"
                )
            if time.monotonic() >= deadline:
                raise ServiceError(
                    f"{self.name}: no {what} within {timeout:.0f}s (last: {missing})\n{self.tail_report()}"
                )
            time.sleep(interval)

    def check_alive(self) -> None:
        if self.pid is None:
            raise ServiceError(f"{self.name} was never started")
        if not self.running:
            raise ServiceError(f"{self.name} {self.exit_description()}\n{self.tail_report()}")

    def signal(self, signum: signal.Signals) -> None:
        pid = self.pid
        if pid is not None and self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def stop(self) -> bool:
        """The service's own shutdown signal to the leader, then SIGKILL to the whole process group (which
        also catches children the leader left behind, e.g. Celery pool processes or PostgreSQL backends).
        Returns whether it was running."""
        pid = self.pid
        if pid is None or not self.running:
            self._forget()
            return False
        self.signal(self.stop_signal)
        if not self._wait_gone(self.stop_timeout):
            logger.warning("%s ignored %s for %.0fs; killing it", self.name, self.stop_signal.name, self.stop_timeout)
        self._kill_group(pid)
        self._forget()
        logger.info("stopped %s (pid %s)", self.name, pid)
        return True

    def kill(self) -> None:
        """SIGKILL the process and everything in its group at once, like a machine losing power."""
        pid = self.pid
        if pid is not None:
            self._kill_group(pid)
        self._forget()

    def _kill_group(self, pid: int) -> None:
        # start_new_session made the child a session and group leader, so its pid is the group id; the
        # group outlives the leader while any member does.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        self._wait_gone(10.0)
        # The leader is reaped first; its children (granian or gunicorn workers holding the listening socket)
        # may take a moment longer to die, and a start on the same port must not find them still there.
        deadline = deadline_after(10.0)
        while group_members(pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def _wait_gone(self, timeout: float) -> bool:
        if self.proc is not None:
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = deadline_after(timeout)
        while self.running:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def _forget(self) -> None:
        """After a stop: drop the pid file, but keep `proc` so its exit status stays known."""
        self.adopted_pid = None
        if self.pid_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.pid_path.unlink()

    # --- logs ----------------------------------------------------------------------------------------

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

    def log_probe(self, pattern: re.Pattern[str]) -> Probe:
        """A probe that is ready once the output of the current run (since the last start) matches."""

        def probe() -> str | None:
            if pattern.search(self.read_log(self.start_offset)):
                return None
            return f"a line matching {pattern.pattern!r} in {self.log_path}"

        return probe

    def wait_for_log(self, pattern: re.Pattern[str], deadline: float) -> None:
        self.wait_ready(self.log_probe(pattern), timeout=max(0.0, deadline - time.monotonic()), what="log line")
