"""The ASGI application of the bare Ninja reference server (settings and URLs: `bench.bare_ninja_settings`).

Served by `bench.api` with the platform API's own granian command line, only the application target differs."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ["DJANGO_SETTINGS_MODULE"] = "bench.bare_ninja_settings"
application = get_asgi_application()
