"""Settings for the unit tests: a throwaway secret and data dir, and django-zeal raising on N+1."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("DJANGO_SECRET_KEY", "unit-tests-only-not-a-secret")
os.environ.setdefault("COLTSFOOT_DATA_DIR", tempfile.mkdtemp(prefix="coltsfoot-test-"))

from config.settings import *  # noqa: F403
from config.settings import INSTALLED_APPS
from config.settings import MIDDLEWARE

INSTALLED_APPS = [*INSTALLED_APPS, "zeal"]
MIDDLEWARE = [*MIDDLEWARE, "zeal.middleware.zeal_middleware"]
ZEAL_RAISE = True
ZEAL_ALLOWLIST: list[dict[str, str]] = []
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
CELERY_TASK_ALWAYS_EAGER = False
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
RETIRE_DRAIN_SECONDS = 0
# Never the host's real /sys/fs/cgroup (the tests run as root here): an empty directory, which
# drivers.cgroups sees as "no cgroup filesystem"; its own tests point it at a fake tree.
CGROUP_ROOT = Path(tempfile.mkdtemp(prefix="coltsfoot-test-cgroup-"))
