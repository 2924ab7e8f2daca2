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
from config.settings import STATIC_ROOT

INSTALLED_APPS = [*INSTALLED_APPS, "zeal"]
MIDDLEWARE = [*MIDDLEWARE, "zeal.middleware.zeal_middleware"]
ZEAL_RAISE = True
ZEAL_ALLOWLIST: list[dict[str, str]] = []
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
CELERY_TASK_ALWAYS_EAGER = False
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
RETIRE_DRAIN_SECONDS = 0
# No wait for the edge's lookups after a switch (tests/unit/test_pipeline.py checks the wait itself).
UPSTREAM_SWITCH_WAIT_SECONDS = 0.0
# Hermetic: templates name static files as they are, and WhiteNoise serves them from the apps' own
# directories, so no `collectstatic` is needed. The production storage (hashed, compressed names) is
# tested on its own in tests/unit/test_static.py.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # WhiteNoise warns about a missing one
# Unit tests never call nft (tests/unit/test_firewall.py checks the ruleset as text).
FIREWALL = False
# Never the host's real /sys/fs/cgroup (the tests run as root here): an empty directory, which
# drivers.cgroups sees as "no cgroup filesystem"; its own tests point it at a fake tree.
CGROUP_ROOT = Path(tempfile.mkdtemp(prefix="coltsfoot-test-cgroup-"))
