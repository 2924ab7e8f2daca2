from __future__ import annotations

import gc
import os

from django.core.asgi import get_asgi_application

from config.settings_utils import require_secret_key

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
require_secret_key()
application = get_asgi_application()
# Everything imported so far lives as long as the process: keep it out of the collector's generations, so a
# full collection walks only what requests allocate. Sequential GET /apps on an idle API (python -m bench.logs):
# the slowest of 300 took 174-241 ms in four runs without this (full collections over Django, Ninja and Pydantic
# at import size), 42-44 ms in two runs with it.
gc.freeze()
