"""The runtime driver: the one module that runs podman.

Everything else in the platform talks to containers through the typed operations at the bottom
of this file, which all go through `run`. Unit tests of other modules mock `run` (or an
operation) with `autospec=True`; this module's own tests mock `subprocess.run`.

The argv builders are pure functions so the exact hardening flags are unit-tested. They return
arguments *without* the global prefix (`podman --runtime runsc --runtime-flag ...`), which `run`
adds, so every container this module starts runs under gVisor.

Checked against podman 4.3.1 (Debian 12):
- `podman secret create` has no `--replace`, so `secret_set` removes and re-creates.
- `podman run` defaults `--http-proxy=true` (copies the *host's* proxy variables into the
  container) and `--pull=missing` (would reach for a registry on a typo): both are turned off.
- Exit code 125 is podman's own failure (126/127: runsc could not start the command); anything
  else from an attached `podman run` is the container's exit code.
- `--secret NAME,type=env` puts the value in `podman inspect`'s Config.Env (fixed upstream only
  in 2024, podman#23788), so secrets are mounted as files instead (`type=mount`, mode 0400, owned
  by the container's uid) and a shell prologue exports them before the tenant's command runs.
- `podman logs --tail` mangles lines around partially written ones (k8s-file "P" records), so
  `container_logs` reads the whole (size-capped) log and keeps the tail itself.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import json
import logging
import re
import subprocess
from collections.abc import Mapping
from collections.abc import Sequence
from datetime import datetime

from django.conf import settings

from core.faults import InfrastructureError
from drivers import cgroups

logger = logging.getLogger(__name__)

STDERR_LIMIT = 4096
STOP_TIMEOUT_SECONDS = 5
LOG_MAX_SIZE = "16mb"
# 125: podman failed; 126/127: the runtime could not start the command (e.g. no /bin/bash in
# the image). Podman then prints "Error: ..." on its stderr; a command in the sandbox that exits
# 126/127 itself does not, since the sandbox's stderr is merged into stdout.
PODMAN_FAILURE_EXIT_CODES = frozenset({125, 126, 127})
SECRETS_DIR = "/run/secrets"

_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$")
_LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,252}$")
# An image reference as podman accepts it (name[:tag][@digest]); above all it cannot start with
# "-", so a tenant's `{"image": "--privileged"}` can never be parsed as a flag.
_REF_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,510}$")
# Both are used with fullmatch (a "$" would let a trailing newline through).
_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_CGROUP_PATH_RE = re.compile(r"(/[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}){1,8}")
_SLICE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}\.slice")

# Sub-commands (first one or two words) that only read state: logged at debug, not info.
_READ_ONLY_COMMANDS = frozenset(
    {
        ("ps",),
        ("logs",),
        ("inspect",),
        ("images",),
        ("info",),
        ("version",),
        ("container", "inspect"),
        ("container", "exists"),
        ("image", "exists"),
        ("image", "inspect"),
        ("network", "exists"),
        ("network", "inspect"),
        ("network", "ls"),
        ("secret", "inspect"),
        ("secret", "ls"),
    }
)

_NOT_FOUND_PATTERNS = (
    "no such container",
    "no such image",
    "image not known",
    "no such object",
    "network not found",
    "no such network",
    "no such secret",
    "no such pod",
    "no such volume",
)
# Contention on podman's locks/storage and network hiccups: retrying later can succeed.
_TRANSIENT_PATTERNS = (
    "database is locked",
    "resource temporarily unavailable",
    "device or resource busy",
    "locking",
    "lock held",
    "timed out",
    "timeout",
    "connection refused",
    "connection reset",
    "temporary failure in name resolution",
    "no route to host",
    "network is unreachable",
    "unexpected eof",
    "too many requests",
    "service unavailable",
    "bad gateway",
)


class PodmanError(InfrastructureError):
    """A podman call failed. `transient` says whether retrying later may succeed."""

    def __init__(
        self,
        message: str,
        *,
        argv: list[str],
        returncode: int | None,
        stderr: str,
        transient: bool,
        stdout: str = "",
    ) -> None:
        super().__init__(message)
        self.argv = argv
        self.returncode = returncode
        self.stderr = _tail(stderr, STDERR_LIMIT)
        self.transient = transient
        # Whole stdout, for callers that want a failed command's output (it may be large).
        self.stdout = stdout


class PodmanNotFound(PodmanError):
    """The container/image/network/secret does not exist; callers removing it treat this as success."""


# --- Specs and argv builders (pure) ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ContainerSpec:
    """Everything needed to start one sandboxed container. `secret_env` maps an environment
    variable name to a podman secret name, so secret values never appear in argv, logs or
    `podman inspect` (see `sandbox_script`)."""

    name: str
    image: str
    network: str
    uid: int
    gid: int
    memory_mb: int
    cpus: float
    pids_limit: int
    env: Mapping[str, str]
    secret_env: Mapping[str, str]
    command: str
    labels: Mapping[str, str]
    mounts: tuple[tuple[str, str, bool], ...] = ()
    tmpfs_size_mb: int = 64
    workdir: str = "/app"
    # Only dependency installation turns this off: it writes /app/.venv (mode 1777 in the base
    # image, so the tenant's own uid can) and the container is then committed.
    read_only: bool = True
    # bash, not dash: bash execs the last simple command of a `-c` script, so a Procfile's
    # `gunicorn ...` becomes PID 1 and gets podman stop's SIGTERM (a graceful drain). Under dash
    # (Debian's /bin/sh) the shell stays PID 1 and the app is killed without draining. Images
    # without bash (a tenant's own image) can use "/bin/sh".
    shell_path: str = "/bin/bash"
    # RLIMIT_NPROC inside the sandbox: gVisor enforces it on the guest's processes and threads, so a fork
    # bomb gets EAGAIN there long before `pids_limit` (host pids, which gVisor's own threads use too) is hit
    # and the whole sandbox dies. 0: not set.
    nproc_limit: int = 0
    # The cgroup the container's cgroup is created under ("": podman's default), see `cgroup_parent_ensure`.
    cgroup_parent: str = ""
    # Secrets mounted as files under /run/secrets (file name -> secret name) that the prologue does not
    # export: a platform service reads its own config from one (the Redis add-on's, with its password).
    secret_files: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # A fixed IPv4 address on `network` ("": podman's IPAM picks one), and a fixed MAC address: a replacement
    # under the same address and MAC is reachable at once, without waiting for its peers' ARP caches to expire.
    ip: str = ""
    mac: str = ""

    def __post_init__(self) -> None:
        _check_name(self.name)
        _check_name(self.network)
        _check_ref(self.image)
        if self.uid < 0 or self.gid < 0:
            raise ValueError("uid and gid must be non-negative")
        if self.memory_mb <= 0 or self.cpus <= 0 or self.pids_limit <= 0 or self.tmpfs_size_mb <= 0:
            raise ValueError("memory_mb, cpus, pids_limit and tmpfs_size_mb must be positive")
        if self.nproc_limit < 0:
            raise ValueError("nproc_limit must not be negative")
        if self.cgroup_parent:
            _check_cgroup_path(self.cgroup_parent)
        for key, value in self.env.items():
            _check_env_name(key)
            _check_arg(value, f"value of {key}")
        for key, secret in self.secret_env.items():
            _check_env_name(key)
            _check_name(secret)
        if set(self.env) & set(self.secret_env):
            raise ValueError("a variable cannot be both plain and secret")
        for file_name, secret in self.secret_files.items():
            _check_name(file_name)
            _check_name(secret)
        if set(self.secret_files) & set(self.secret_env):
            raise ValueError("a secret file cannot share its name with a secret variable")
        if self.ip:
            ipaddress.IPv4Address(self.ip)  # raises ValueError
        if self.mac and not _MAC_RE.fullmatch(self.mac):
            raise ValueError(f"invalid MAC address: {self.mac!r}")
        for key, value in self.labels.items():
            _check_label(key, value)
        for host_path, container_path, _read_only in self.mounts:
            for path in (host_path, container_path):
                if not path.startswith("/") or ":" in path or "," in path:
                    raise ValueError(f"mount path must be absolute without ':' or ',': {path!r}")
                _check_arg(path, "mount path")
        if not self.workdir.startswith("/") or not self.shell_path.startswith("/"):
            raise ValueError("workdir and shell_path must be absolute paths")
        _check_arg(self.command, "command")


def _check_arg(value: str, what: str) -> None:
    if "\x00" in value:
        raise ValueError(f"{what} contains a NUL byte")


def _check_name(name: str) -> None:
    if not _NAME_RE.match(name):
        raise ValueError(f"invalid podman object name: {name!r}")


def _check_ref(ref: str) -> None:
    if not _REF_RE.match(ref):
        raise ValueError(f"invalid image reference: {ref!r}")


def _check_cgroup_path(path: str) -> None:
    """An absolute cgroupfs path of plain components, or a systemd slice name."""
    if not (_CGROUP_PATH_RE.fullmatch(path) or _SLICE_RE.fullmatch(path)):
        raise ValueError(f"invalid cgroup parent: {path!r}")


def _check_path(path: str) -> None:
    if not path.startswith("/"):
        raise ValueError(f"path must be absolute: {path!r}")
    _check_arg(path, "path")


def _check_env_name(name: str) -> None:
    if not _ENV_NAME_RE.match(name):
        raise ValueError(f"invalid environment variable name: {name!r}")


def _check_label(key: str, value: str) -> None:
    if not _LABEL_KEY_RE.match(key):
        raise ValueError(f"invalid label key: {key!r}")
    _check_arg(value, f"label {key}")


def _label_args(labels: Mapping[str, str]) -> list[str]:
    args: list[str] = []
    for key in sorted(labels):
        _check_label(key, labels[key])
        args += ["--label", f"{key}={labels[key]}"]
    return args


def _sandbox_args(spec: ContainerSpec) -> list[str]:
    """The hardening shared by long-running and one-off containers. Never publishes a port:
    the edge dials the container's address on its (isolated) network."""
    args = [
        f"--name={spec.name}",
        "--pull=never",
        "--http-proxy=false",
        "--cap-drop=all",
        "--security-opt=no-new-privileges",
        *(["--read-only", "--read-only-tmpfs=false"] if spec.read_only else []),
        "--tmpfs",
        f"/tmp:rw,size={spec.tmpfs_size_mb}m,mode=1777",  # noqa: S108 - the sandbox's own tmpfs
        f"--memory={spec.memory_mb}m",
        f"--memory-swap={spec.memory_mb}m",
        f"--cpus={spec.cpus:g}",
        f"--pids-limit={spec.pids_limit}",
        *([f"--ulimit=nproc={spec.nproc_limit}:{spec.nproc_limit}"] if spec.nproc_limit else []),
        *([f"--cgroup-parent={spec.cgroup_parent}"] if spec.cgroup_parent else []),
        f"--log-opt=max-size={LOG_MAX_SIZE}",
        "--user",
        f"{spec.uid}:{spec.gid}",
        "--network",
        spec.network,
        *([f"--ip={spec.ip}"] if spec.ip else []),
        *([f"--mac-address={spec.mac}"] if spec.mac else []),
        *_label_args(spec.labels),
    ]
    for key in sorted(spec.env):
        args += ["--env", f"{key}={spec.env[key]}"]
    for key in sorted(spec.secret_env):
        mount = f"type=mount,target={key},uid={spec.uid},gid={spec.gid},mode=0400"
        args += ["--secret", f"{spec.secret_env[key]},{mount}"]
    for file_name in sorted(spec.secret_files):
        mount = f"type=mount,target={file_name},uid={spec.uid},gid={spec.gid},mode=0400"
        args += ["--secret", f"{spec.secret_files[file_name]},{mount}"]
    for host_path, container_path, read_only in spec.mounts:
        args += ["--volume", f"{host_path}:{container_path}:{'ro' if read_only else 'rw'}"]
    args += ["--workdir", spec.workdir, spec.image, spec.shell_path, "-c", sandbox_script(spec)]
    return args


def sandbox_script(spec: ContainerSpec) -> str:
    """The `-c` script for the shell: stderr joins stdout (logs and one-off output keep their order, and
    podman's own stderr carries only podman's errors), secret files become environment variables
    (the `x` keeps trailing newlines that `$(...)` would strip), then the tenant's command. Lines,
    not `;`, so a command that starts with `#` or `&&` cannot change the prologue's meaning; the
    variable names are validated identifiers, so they need no quoting."""
    lines = ["exec 2>&1"]
    for key in sorted(spec.secret_env):
        lines.append(f'{key}=$(cat {SECRETS_DIR}/{key}; printf x) && {key}="${{{key}%x}}" && export {key}')
    lines.append(spec.command)
    return "\n".join(lines)


def run_detached_argv(spec: ContainerSpec) -> list[str]:
    return ["run", "--detach", *_sandbox_args(spec)]


def run_oneoff_argv(spec: ContainerSpec, *, remove: bool = True) -> list[str]:
    """Attached: the `release:` command, dependency installation (with `remove=False`, so the
    stopped container can be committed)."""
    return ["run", *(["--rm"] if remove else []), *_sandbox_args(spec)]


def rm_argv(name: str) -> list[str]:
    _check_name(name)
    return ["rm", "--force", "--ignore", f"--time={STOP_TIMEOUT_SECONDS}", name]


def stop_argv(name: str, timeout: int) -> list[str]:
    _check_name(name)
    return ["stop", f"--time={timeout}", name]


def container_inspect_argv(name: str, template: str) -> list[str]:
    _check_name(name)
    return ["container", "inspect", "--format", template, name]


def inspect_networks_argv(name: str) -> list[str]:
    return container_inspect_argv(name, "{{json .NetworkSettings.Networks}}")


def is_running_argv(name: str) -> list[str]:
    return container_inspect_argv(name, "{{.State.Running}}")


def logs_argv(name: str, tail: int | None = None) -> list[str]:
    """`tail` is here for completeness; see the module docstring before using it."""
    _check_name(name)
    return ["logs", *([f"--tail={tail}"] if tail is not None else []), name]


def ps_by_label_argv(key: str, value: str) -> list[str]:
    _check_label(key, value)
    return ["ps", "--all", "--filter", f"label={key}={value}", "--format", "{{.Names}}"]


def ps_json_argv(key: str, value: str) -> list[str]:
    """Every container carrying the label, running or not, as JSON: one call per reconcile pass."""
    _check_label(key, value)
    return ["ps", "--all", "--filter", f"label={key}={value}", "--format", "json"]


def images_json_argv(key: str, value: str) -> list[str]:
    """Every (tagged or dangling, not intermediate) image carrying the label, as JSON."""
    _check_label(key, value)
    return ["images", "--filter", f"label={key}={value}", "--format", "json"]


def network_ls_json_argv(key: str, value: str) -> list[str]:
    _check_label(key, value)
    return ["network", "ls", "--filter", f"label={key}={value}", "--format", "json"]


def inspect_state_argv(name: str) -> list[str]:
    return container_inspect_argv(name, "{{json .State}}")


def network_create_argv(name: str, labels: Mapping[str, str] | None = None) -> list[str]:
    _check_name(name)
    return ["network", "create", "--opt", "isolate=true", *_label_args(labels or {}), name]


def network_exists_argv(name: str) -> list[str]:
    _check_name(name)
    return ["network", "exists", name]


def network_subnets_argv(name: str) -> list[str]:
    _check_name(name)
    return ["network", "inspect", "--format", "{{json .Subnets}}", name]


def network_rm_argv(name: str) -> list[str]:
    _check_name(name)
    return ["network", "rm", name]


def build_argv(
    context_dir: str,
    containerfile: str,
    tag: str,
    *,
    labels: Mapping[str, str] | None = None,
    layers: bool = True,
) -> list[str]:
    """Tenant Containerfiles only copy files (dependencies were installed in a sandbox), so the
    build needs no registry. (`--network=none` would be the natural companion, but podman 4.3
    refuses any --network but host with --isolation=chroot; with no RUN step it is moot.)

    `layers=False` commits the image once at the end instead of once per instruction: for an app
    image, whose first step copies a new source every time, nothing after it could come from the
    cache anyway (measured: 1.0 s instead of 1.9 s for the app image's five steps)."""
    _check_path(context_dir)
    _check_path(containerfile)
    _check_ref(tag)
    return [
        "build",
        "--isolation=chroot",
        "--layers" if layers else "--layers=false",
        "--pull=never",
        "--http-proxy=false",
        "--file",
        containerfile,
        "--tag",
        tag,
        *_label_args(labels or {}),
        context_dir,
    ]


def commit_argv(container: str, tag: str, changes: Sequence[str] = ()) -> list[str]:
    _check_name(container)
    _check_ref(tag)
    args = ["commit", "--quiet"]
    for change in changes:
        args += ["--change", change]
    return [*args, container, tag]


def image_exists_argv(ref: str) -> list[str]:
    _check_ref(ref)
    return ["image", "exists", ref]


def image_inspect_id_argv(ref: str) -> list[str]:
    _check_ref(ref)
    return ["image", "inspect", "--format", "{{.Id}}", ref]


def image_inspect_size_argv(ref: str) -> list[str]:
    _check_ref(ref)
    return ["image", "inspect", "--format", "{{.Size}}", ref]


def image_inspect_config_argv(ref: str) -> list[str]:
    _check_ref(ref)
    return ["image", "inspect", "--format", "{{json .Config}}", ref]


def pull_argv(ref: str, tls_verify: bool) -> list[str]:
    _check_ref(ref)
    return ["pull", "--quiet", f"--tls-verify={'true' if tls_verify else 'false'}", ref]


def import_argv(tarball_or_dash: str, ref: str, changes: Sequence[str] = ()) -> list[str]:
    if tarball_or_dash != "-":
        _check_path(tarball_or_dash)
    _check_ref(ref)
    args = ["import", "--quiet"]
    for change in changes:
        args += ["--change", change]
    return [*args, tarball_or_dash, ref]


def tag_argv(ref: str, new_ref: str) -> list[str]:
    _check_ref(ref)
    _check_ref(new_ref)
    return ["tag", ref, new_ref]


def image_rm_argv(ref: str) -> list[str]:
    _check_ref(ref)
    return ["rmi", "--ignore", ref]


def secret_create_argv(name: str) -> list[str]:
    """The value is read from stdin (`-`): never argv, never a file."""
    _check_name(name)
    return ["secret", "create", name, "-"]


def secret_rm_argv(name: str) -> list[str]:
    _check_name(name)
    return ["secret", "rm", name]


def secret_inspect_argv(name: str) -> list[str]:
    _check_name(name)
    return ["secret", "inspect", "--format", "{{.ID}}", name]


def secret_ls_argv() -> list[str]:
    return ["secret", "ls", "--noheading", "--format", "{{.Name}}"]


# --- The seam -----------------------------------------------------------------------------------


def global_argv() -> list[str]:
    argv = [settings.PODMAN_BIN, "--runtime", settings.RUNSC_PATH]
    for flag in settings.RUNSC_FLAGS:
        argv += ["--runtime-flag", flag]
    return argv


def redact_argv(args: Sequence[str]) -> list[str]:
    """Hide environment values (`--env K=V` -> `--env K=***`) for logging."""
    redacted: list[str] = []
    hide_next = False
    for arg in args:
        if hide_next:
            redacted.append(arg.split("=", 1)[0] + "=***" if "=" in arg else arg)
            hide_next = False
        elif arg in ("--env", "-e", "--build-arg"):
            redacted.append(arg)
            hide_next = True
        elif arg.startswith(("--env=", "--build-arg=")):
            flag, _, assignment = arg.partition("=")
            redacted.append(f"{flag}={assignment.split('=', 1)[0]}=***")
        else:
            redacted.append(arg)
    return redacted


def _is_read_only(args: Sequence[str]) -> bool:
    return tuple(args[:1]) in _READ_ONLY_COMMANDS or tuple(args[:2]) in _READ_ONLY_COMMANDS


def _tail(text: str, limit: int) -> str:
    return text if len(text) <= limit else "…" + text[-limit:]


def _classify(stderr: str) -> tuple[type[PodmanError], bool]:
    lowered = stderr.lower()
    if any(pattern in lowered for pattern in _NOT_FOUND_PATTERNS):
        return PodmanNotFound, False
    return PodmanError, any(pattern in lowered for pattern in _TRANSIENT_PATTERNS)


def run(args: list[str], *, timeout: float | None = None, stdin: str | None = None) -> str:
    """Run `podman <global flags> *args` and return its stdout; raise PodmanError on failure.

    `stdin` is the only way a secret value may reach podman; it is never logged.
    """
    argv = [*global_argv(), *args]
    effective_timeout = settings.PODMAN_TIMEOUT_SECONDS if timeout is None else timeout
    shown = redact_argv(args)
    if _is_read_only(args):
        logger.debug("podman %s", " ".join(shown))
    else:
        logger.info("podman %s", " ".join(shown))
    try:
        if stdin is None:
            completed = subprocess.run(
                argv,
                check=True,
                capture_output=True,
                text=True,
                timeout=effective_timeout,
                stdin=subprocess.DEVNULL,
            )
        else:
            completed = subprocess.run(
                argv,
                check=True,
                capture_output=True,
                text=True,
                timeout=effective_timeout,
                input=stdin,
            )
    except subprocess.CalledProcessError as exc:
        stderr = exc.stderr or ""
        error_class, transient = _classify(stderr)
        message = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit status {exc.returncode}"
        raise error_class(
            f"podman {' '.join(shown[:2])} failed: {_tail(message, 500)}",
            argv=redact_argv(argv),
            returncode=exc.returncode,
            stderr=stderr,
            transient=transient,
            stdout=exc.stdout or "",
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise PodmanError(
            f"podman {' '.join(shown[:2])} timed out after {effective_timeout:g}s",
            argv=redact_argv(argv),
            returncode=None,
            stderr=_as_text(exc.stderr),
            transient=True,
            stdout=_as_text(exc.stdout),
        ) from exc
    except OSError as exc:  # FileNotFoundError / PermissionError: podman missing or not executable
        raise PodmanError(
            f"cannot execute {settings.PODMAN_BIN!r}: {exc}",
            argv=redact_argv(argv),
            returncode=None,
            stderr="",
            transient=False,
        ) from exc
    return completed.stdout


def _as_text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


# --- Operations -----------------------------------------------------------------------------


def network_exists(name: str) -> bool:
    try:
        run(network_exists_argv(name))
    except PodmanError as exc:
        if exc.returncode == 1:
            return False
        raise
    return True


def network_ensure(name: str, labels: Mapping[str, str] | None = None) -> None:
    """Create the isolated network unless it exists; a concurrent creator winning is success."""
    if network_exists(name):
        return
    try:
        run(network_create_argv(name, labels))
    except PodmanError as exc:
        if "already exists" in exc.stderr or "already used" in exc.stderr:
            return
        raise


def network_gateway(name: str) -> str:
    """The host side of the network's bridge (its first IPv4 gateway): how a container reaches a
    service on the host that listens on 0.0.0.0, such as PgBouncer."""
    subnets = json.loads(run(network_subnets_argv(name)) or "null") or []
    for subnet in subnets if isinstance(subnets, list) else []:
        gateway = subnet.get("gateway", "") if isinstance(subnet, dict) else ""
        if isinstance(gateway, str) and gateway and ":" not in gateway:
            return gateway
    raise PodmanError(
        f"network {name} has no IPv4 gateway",
        argv=network_subnets_argv(name),
        returncode=None,
        stderr="",
        transient=False,
    )


def container_run_detached(spec: ContainerSpec) -> str:
    """Start the container; returns its id."""
    if spec.cgroup_parent:
        cgroups.parent_ensure()
    return run(run_detached_argv(spec)).strip()


def container_remove(name: str) -> None:
    """Stop (briefly) and remove; a container that is already gone is success."""
    try:
        run(rm_argv(name))
    except PodmanNotFound:
        return


def container_stop(name: str, timeout: int = STOP_TIMEOUT_SECONDS) -> None:
    try:
        run(stop_argv(name, timeout), timeout=settings.PODMAN_TIMEOUT_SECONDS + timeout)
    except PodmanNotFound:
        return


def container_address(name: str, network: str) -> str:
    """The container's IPv4 address on `network` ("" if it has none yet)."""
    networks = json.loads(run(inspect_networks_argv(name)) or "null") or {}
    entry = networks.get(network) if isinstance(networks, dict) else None
    if not isinstance(entry, dict):
        return ""
    address = entry.get("IPAddress", "")
    return address if isinstance(address, str) else ""


def container_logs(name: str, tail: int = 200) -> str:
    """The last `tail` lines of the container's output (stderr is merged into stdout inside the
    sandbox). The log file is capped at LOG_MAX_SIZE, so reading it whole is bounded."""
    lines = run(logs_argv(name)).splitlines(keepends=True)
    return "".join(lines[-tail:]) if tail > 0 else ""


def container_labels(name: str) -> dict[str, str] | None:
    """The container's labels; None if it does not exist."""
    try:
        labels = json.loads(run(container_inspect_argv(name, "{{json .Config.Labels}}")) or "null") or {}
    except PodmanNotFound:
        return None
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}


def container_is_running(name: str) -> bool:
    try:
        return run(is_running_argv(name)).strip() == "true"
    except PodmanNotFound:
        return False


def containers_with_label(key: str, value: str) -> list[str]:
    return [line.strip() for line in run(ps_by_label_argv(key, value)).splitlines() if line.strip()]


@dataclasses.dataclass(frozen=True)
class ObservedContainer:
    """One container as `podman ps --all --format json` reports it."""

    name: str
    labels: Mapping[str, str]
    state: str  # created, running, exited, stopped, paused, ...
    exit_code: int
    started_at: float  # unix seconds, 0 if it never started
    exited_at: float
    created_at: float
    id: str = ""  # the container's full id: a replacement under the same name has a new one

    @property
    def running(self) -> bool:
        return self.state == "running"


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def parse_ps_json(output: str) -> list[ObservedContainer]:
    """Parse `podman ps --format json` (podman 4.3: `Names` is a list, times are unix seconds)."""
    entries = json.loads(output or "[]") or []
    observed = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        names = entry.get("Names") or []
        name = names[0] if isinstance(names, list) and names else names
        if not isinstance(name, str) or not name:
            continue
        labels = entry.get("Labels") or {}
        observed.append(
            ObservedContainer(
                name=name,
                labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
                state=str(entry.get("State") or "").lower(),
                exit_code=int(_number(entry.get("ExitCode"))),
                started_at=_number(entry.get("StartedAt")),
                exited_at=_number(entry.get("ExitedAt")),
                created_at=_number(entry.get("Created")),
                id=str(entry.get("Id") or ""),
            )
        )
    return observed


def containers_observe(key: str, value: str) -> list[ObservedContainer]:
    """Every container with the label, in one podman call."""
    return parse_ps_json(run(ps_json_argv(key, value)))


@dataclasses.dataclass(frozen=True)
class ObservedImage:
    """One image as `podman images --format json` reports it. `size` is podman's (virtual) size:
    its layers and every parent's."""

    id: str
    names: tuple[str, ...]
    labels: Mapping[str, str]
    size: int
    created_at: float
    containers: int

    @property
    def ref(self) -> str:
        """What removes it: its first name, or its id when it has none (dangling)."""
        return self.names[0] if self.names else self.id


def parse_images_json(output: str) -> list[ObservedImage]:
    """Parse `podman images --format json` (podman 4.3: `Names` a list or absent, `Created` unix seconds)."""
    entries = json.loads(output or "[]") or []
    observed = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("Id"), str) or not entry["Id"]:
            continue
        names = entry.get("Names") or []
        labels = entry.get("Labels") or {}
        observed.append(
            ObservedImage(
                id=entry["Id"],
                names=tuple(str(name) for name in names) if isinstance(names, list) else (),
                labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
                size=int(_number(entry.get("Size"))),
                created_at=_number(entry.get("Created")),
                containers=int(_number(entry.get("Containers"))),
            )
        )
    return observed


def images_observe(key: str, value: str) -> list[ObservedImage]:
    """Every image with the label, in one podman call."""
    return parse_images_json(run(images_json_argv(key, value)))


def log_paths_argv(ids: Sequence[str]) -> list[str]:
    for container_id in ids:
        _check_name(container_id)
    return ["container", "inspect", "--format", "{{.Id}} {{.HostConfig.LogConfig.Path}}", *ids]


def container_log_paths(ids: Sequence[str]) -> dict[str, str]:
    """Container id -> the path of its k8s-file log (podman's own copy of its output), in one call; a
    container removed meanwhile is left out."""
    if not ids:
        return {}
    try:
        output = run(log_paths_argv(ids))
    except PodmanError as exc:
        output = exc.stdout  # some of them are gone: podman still prints the others
    paths = {}
    for line in output.splitlines():
        container_id, _, path = line.strip().partition(" ")
        if container_id and path:
            paths[container_id] = path
    return paths


def networks_with_label(key: str, value: str) -> set[str]:
    """The names of the networks carrying the label, in one podman call."""
    return set(networks_observe(key, value))


def parse_network_ls_json(output: str) -> dict[str, float]:
    """Parse `podman network ls --format json`: each network's name and when it was created (unix seconds,
    0 if podman did not say). A network removed and created again under the same name has a new time."""
    entries = json.loads(output or "[]") or []
    networks: dict[str, float] = {}
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        name = entry.get("name") or entry.get("Name")
        if not isinstance(name, str) or not name:
            continue
        networks[name] = _rfc3339_seconds(entry.get("created") or entry.get("Created"))
    return networks


def _rfc3339_seconds(value: object) -> float:
    """'2026-12-01T12:49:16.504213802Z' -> unix seconds (podman gives nanoseconds; Python parses micro)."""
    if not isinstance(value, str) or not value:
        return 0.0
    head, dot, rest = value.partition(".")
    if dot:
        digits = "".join(itertools.takewhile(str.isdigit, rest))
        value = f"{head}.{digits[:6]}{rest[len(digits) :]}"
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return 0.0


def networks_observe(key: str, value: str) -> dict[str, float]:
    """The networks carrying the label with their creation times, in one podman call."""
    return parse_network_ls_json(run(network_ls_json_argv(key, value)))


@dataclasses.dataclass(frozen=True)
class ExitState:
    running: bool
    exit_code: int | None
    oom_killed: bool


def container_exit_state(name: str) -> ExitState | None:
    """Whether the container runs, its exit code and whether the OOM killer ended it; None if gone."""
    try:
        state = json.loads(run(inspect_state_argv(name)) or "{}") or {}
    except PodmanNotFound:
        return None
    if not isinstance(state, dict):
        return None
    code = state.get("ExitCode")
    return ExitState(
        running=bool(state.get("Running")),
        exit_code=int(code) if isinstance(code, int) else None,
        oom_killed=bool(state.get("OOMKilled")),
    )


def oneoff_run(spec: ContainerSpec, *, timeout: float, remove: bool = True) -> tuple[int, str]:
    """Run a command to completion in a sandbox; returns (exit code, combined output).

    A non-zero exit of the command is a result, not an exception; podman or runsc failing (exit
    125-127 with an "Error:" of their own) or the timeout is. On timeout the container is removed, since killing
    the podman client leaves it running under conmon. With `remove=False` the stopped container
    stays for `image_commit`; the caller removes it.
    """
    container_remove(spec.name)  # a stale one from a crashed attempt holds the name
    if spec.cgroup_parent:
        cgroups.parent_ensure()
    try:
        output = run(run_oneoff_argv(spec, remove=remove), timeout=timeout)
    except PodmanError as exc:
        if exc.returncode is None:
            try:
                container_remove(spec.name)
            except PodmanError:
                logger.warning("could not remove timed-out one-off %s", spec.name, exc_info=True)
            raise
        if exc.returncode in PODMAN_FAILURE_EXIT_CODES and "Error:" in exc.stderr:
            raise
        # The sandbox's stderr is merged into stdout; podman's own stderr here is noise such
        # as runsc's "failed to connect to syslog".
        logger.debug("one-off %s exited %s; podman said: %s", spec.name, exc.returncode, exc.stderr.strip())
        return exc.returncode, exc.stdout
    return 0, output


def image_build(
    context_dir: str,
    containerfile: str,
    tag: str,
    *,
    labels: Mapping[str, str] | None = None,
    layers: bool = True,
    timeout: float | None = None,
) -> str:
    """Build and return the build output (for the deployment's build log)."""
    effective_timeout = settings.BUILD_TIMEOUT_SECONDS if timeout is None else timeout
    return run(build_argv(context_dir, containerfile, tag, labels=labels, layers=layers), timeout=effective_timeout)


def image_commit(container: str, tag: str, *, changes: Sequence[str] = (), timeout: float | None = None) -> str:
    """Commit a (stopped) container's filesystem as an image; returns the image id. The image
    inherits the container's config (user, command, every `--env`): `changes` (Containerfile
    instructions) can override them, so keep credentials such as an index URL in secret_env."""
    effective_timeout = settings.BUILD_TIMEOUT_SECONDS if timeout is None else timeout
    return run(commit_argv(container, tag, changes), timeout=effective_timeout).strip()


def image_exists(ref: str) -> bool:
    try:
        run(image_exists_argv(ref))
    except PodmanError as exc:
        if exc.returncode == 1:
            return False
        raise
    return True


def image_id(ref: str) -> str:
    return run(image_inspect_id_argv(ref)).strip()


def image_size(ref: str) -> int:
    """The image's (virtual) size in bytes; 0 if it does not exist."""
    try:
        return int(run(image_inspect_size_argv(ref)).strip() or 0)
    except PodmanNotFound:
        return 0


def image_command(ref: str) -> list[str]:
    """The image's own ENTRYPOINT + CMD, which an image deploy runs as its web process."""
    config = json.loads(run(image_inspect_config_argv(ref)) or "{}") or {}
    entrypoint = config.get("Entrypoint") or []
    cmd = config.get("Cmd") or []
    return [str(part) for part in [*entrypoint, *cmd]]


def image_pull(ref: str, tls_verify: bool = True, *, timeout: float | None = None) -> str:
    """Pull and return the image id."""
    effective_timeout = settings.BUILD_TIMEOUT_SECONDS if timeout is None else timeout
    return run(pull_argv(ref, tls_verify), timeout=effective_timeout).strip()


def image_tag(ref: str, new_ref: str) -> None:
    run(tag_argv(ref, new_ref))


def image_remove(ref: str) -> None:
    try:
        run(image_rm_argv(ref))
    except PodmanNotFound:
        return


def secret_list() -> list[str]:
    return [line.strip() for line in run(secret_ls_argv()).splitlines() if line.strip()]


def secret_set(name: str, value: str) -> None:
    """Create or replace a secret. Podman 4.3 has no `--replace`: remove, then create; if a
    concurrent writer re-created it in between, go round once more."""
    _check_name(name)
    for attempt in range(2):
        secret_remove(name)
        try:
            run(secret_create_argv(name), stdin=value)
        except PodmanError as exc:
            if attempt == 0 and "in use" in exc.stderr:
                continue
            raise
        return


def secret_remove(name: str) -> None:
    try:
        run(secret_rm_argv(name))
    except PodmanNotFound:
        return


def network_interfaces_with_label(key: str, value: str) -> dict[str, str]:
    """Network name -> its bridge on the host (CNI's `cni-podmanN`) for the networks carrying the
    label, in one podman call. The firewall filters traffic by these interface names."""
    entries = json.loads(run(network_ls_json_argv(key, value)) or "[]") or []
    found: dict[str, str] = {}
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        name = entry.get("name") or entry.get("Name")
        interface = entry.get("network_interface") or entry.get("NetworkInterface")
        if isinstance(name, str) and name and isinstance(interface, str) and interface:
            found[name] = interface
    return found
