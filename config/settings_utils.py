"""Helpers that read configuration from the environment.

Kept free of Django imports so that every entry point (manage.py, wsgi/asgi, celery) can use
them before Django is configured.
"""

from __future__ import annotations

import math
import os
import re
import sys
from pathlib import Path

import platformdirs

APP_NAME = "coltsfoot"


def require_secret_key() -> str:
    """Return DJANGO_SECRET_KEY or exit 1 with one clear line on stderr (no traceback)."""
    value = os.environ.get("DJANGO_SECRET_KEY", "").strip()
    if not value:
        sys.stderr.write("coltsfoot: DJANGO_SECRET_KEY is not set; export it (see .env.example) and start again.\n")
        sys.stderr.flush()
        # os._exit would skip flushing other buffers; SystemExit would print nothing more either,
        # but callers such as gunicorn catch SystemExit and print their own traceback.
        raise SystemExit(1)
    return value


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default).strip() or default


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        sys.stderr.write(f"coltsfoot: {name} must be an integer, got {raw!r}.\n")
        raise SystemExit(1) from None


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        sys.stderr.write(f"coltsfoot: {name} must be a positive number, got {raw!r}.\n")
        raise SystemExit(1)
    return value


def host_cpu_count() -> int:
    """The CPUs this process may run on (its affinity, which a container or taskset narrows), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no sched_getaffinity outside Linux
        return max(1, os.cpu_count() or 1)


def host_memory_mb() -> int:
    """The machine's memory in MiB (MemTotal), at least 1; 1024 when /proc/meminfo cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return max(1, int(line.split()[1]) // 1024)
    except (OSError, ValueError, IndexError):
        pass
    return 1024


def env_host_name(name: str, default: str) -> str:
    """A host's name: a DNS label (it names a Celery queue and a podman label value)."""
    value = env_str(name, default).strip()
    if not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", value):
        sys.stderr.write(f"coltsfoot: {name} must be a DNS label (a-z, 0-9, '-'), got {value!r}.\n")
        raise SystemExit(1)
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def data_dir() -> Path:
    """The platform's state directory: COLTSFOOT_DATA_DIR or the platformdirs user-data dir."""
    override = os.environ.get("COLTSFOOT_DATA_DIR", "").strip()
    path = Path(override) if override else Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path
