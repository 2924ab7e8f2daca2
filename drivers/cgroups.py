"""The cgroup that every tenant container runs under: the one module that writes cgroup files.

Podman (cgroup manager `cgroupfs`) passes `--cgroup-parent` to runsc as the OCI cgroups path, and runsc
creates the missing directories in every controller, so a container of tenant T lands in
`<parent>/t-<T>/libpod-<id>`. What runsc does not do is give the parent a CPU weight or a pids cap:
`parent_ensure` does, idempotently (it reads each file and writes only what differs), before each
container start, so it holds however the stack was started and after a reboot emptied /sys/fs/cgroup.

Measured on this machine (Debian 12, cgroup v1 "hybrid": v1 controllers plus an empty v2 hierarchy at
/sys/fs/cgroup/unified, cgroupfs manager, runsc 2022-12): the platform's processes (API, worker, Caddy,
PostgreSQL) sit in the root cgroup, where each runnable task competes with the weight of a nice-0 task
(1024), while the whole tenant tree competes as one entity with the parent's `cpu.shares`. With the
default weight 10 (shares 102), the tenants together get about a tenth of a core that a busy platform
process wants, and all of the machine when the platform is idle (shares are work-conserving). Below
the parent every tenant's cgroup keeps the default shares, so tenants split what they get equally
whatever their replica counts; a replica's `--cpus` (a CFS quota) still caps it on top.

On a pure cgroup v2 host the same is written as `cpu.weight` and `pids.max` under /sys/fs/cgroup, with the
controllers enabled for the children (not exercised on this machine). With the systemd cgroup manager the
parent is a slice (`coltsfoot_tenants.slice`): set `CPUWeight=` and `TasksMax=` on it in a drop-in; this
module then leaves it alone.
"""

from __future__ import annotations

import logging
from pathlib import Path

from django.conf import settings

logger = logging.getLogger(__name__)

V1_DEFAULT_SHARES = 1024
V2_DEFAULT_WEIGHT = 100
PID_MAX_FILE = Path("/proc/sys/kernel/pid_max")
# Controllers the children of the parent need on cgroup v2 (memory and pids limits, CPU quota and weight).
V2_CONTROLLERS = ("cpu", "memory", "pids")

# Parents already warned about, so a host where the files cannot be written logs it once, not per container.
_warned: set[str] = set()


def tenant_cgroup(parent: str, tenant_key: str) -> str:
    """The cgroup parent of one tenant's containers: a child of `parent`, so tenants share its weight equally.
    A systemd slice parent has no per-tenant child (podman wants a slice name there, not a path)."""
    if not parent or parent.endswith(".slice"):
        return parent
    return f"{parent.rstrip('/')}/t-{tenant_key}"


def v1_shares(weight: int) -> int:
    """cgroup v2 weight (1-10000, default 100) as v1 cpu.shares (2-262144, default 1024)."""
    return max(2, min(262144, weight * V1_DEFAULT_SHARES // V2_DEFAULT_WEIGHT))


def layout(root: Path) -> str:
    """`v1` when the cpu controller is mounted as cgroup v1 (legacy or hybrid), `v2` on a unified hierarchy,
    else `unknown` (no cgroup filesystem we can configure)."""
    if (root / "cpu" / "cpu.shares").is_file():
        return "v1"
    if (root / "cgroup.controllers").is_file():
        return "v2"
    return "unknown"


def _pids_max(configured: int) -> int:
    if configured > 0:
        return configured
    try:
        return max(1024, int(PID_MAX_FILE.read_text().strip()) // 2)
    except (OSError, ValueError):
        return 16384


def _write(path: Path, value: str) -> bool:
    """Write `value` unless the file already holds it; True if it was written."""
    try:
        if path.read_text().strip() == value:
            return False
    except FileNotFoundError:
        pass
    path.write_text(value)
    return True


def parent_ensure(parent: str | None = None) -> bool:
    """Create the tenants' parent cgroup and give it its CPU weight and pids cap; True if it is configured.

    Never raises: containers still start (with their own `--cpus` and `--pids-limit`) where the cgroup files
    cannot be written, e.g. rootless podman; that is logged once as a warning."""
    parent = settings.TENANT_CGROUP_PARENT if parent is None else parent
    if not parent or parent.endswith(".slice"):
        return False
    root = Path(settings.CGROUP_ROOT)
    weight = max(1, min(10000, int(settings.TENANT_CPU_WEIGHT)))
    pids = str(_pids_max(int(settings.TENANT_PIDS_MAX)))
    relative = parent.strip("/")
    kind = layout(root)
    changed: list[str] = []
    try:
        if kind == "v1":
            cpu = root / "cpu" / relative
            cpu.mkdir(parents=True, exist_ok=True)
            if _write(cpu / "cpu.shares", str(v1_shares(weight))):
                changed.append("cpu.shares")
            if (root / "pids").is_dir():
                pids_dir = root / "pids" / relative
                pids_dir.mkdir(parents=True, exist_ok=True)
                if _write(pids_dir / "pids.max", pids):
                    changed.append("pids.max")
        elif kind == "v2":
            available = set((root / "cgroup.controllers").read_text().split())
            wanted = [name for name in V2_CONTROLLERS if name in available]
            directory = root
            for part in relative.split("/"):
                _enable_controllers(directory, wanted)
                directory = directory / part
                directory.mkdir(exist_ok=True)
            _enable_controllers(directory, wanted)
            if _write(directory / "cpu.weight", str(weight)):
                changed.append("cpu.weight")
            if _write(directory / "pids.max", pids):
                changed.append("pids.max")
        else:
            _warn_once(parent, "no cgroup filesystem to configure at %s; tenant containers get no CPU weight", root)
            return False
    except OSError as exc:
        _warn_once(
            parent, "cannot configure the tenants' cgroup %s: %s; tenant containers get no CPU weight", parent, exc
        )
        return False
    if changed:
        logger.info(
            "tenant cgroup configured",
            extra={"cgroup": parent, "layout": kind, "cpu_weight": weight, "pids_max": pids, "changed": changed},
        )
    return True


def _enable_controllers(directory: Path, wanted: list[str]) -> None:
    control = directory / "cgroup.subtree_control"
    enabled = set(control.read_text().split())
    missing = [name for name in wanted if name not in enabled]
    if missing:
        control.write_text(" ".join(f"+{name}" for name in missing))


def _warn_once(parent: str, message: str, *args: object) -> None:
    if parent not in _warned:
        _warned.add(parent)
        logger.warning(message, *args)
