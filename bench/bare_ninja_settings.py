"""Settings and URLs of the bare Ninja reference server of `bench.api` (`bench.bare_ninja:application`).

One NinjaAPI with one trivial synchronous GET endpoint, under Django's ASGI handler like the platform's API, with
nothing else: no middleware, no database, no installed apps. It is the floor the platform's figures are compared
with: what granian + Django + Ninja cost per request on this machine with the same server command line.
"""

from __future__ import annotations

import os

from django.http import HttpRequest
from django.urls import path
from ninja import NinjaAPI

# The server gets the platform's environment (DJANGO_SECRET_KEY included); nothing here signs anything.
SECRET_KEY = os.environ["DJANGO_SECRET_KEY"]
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "bench.bare_ninja_settings"
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
LOGGING_CONFIG = None

api = NinjaAPI(title="bare", docs_url=None, openapi_url=None)


@api.get("/ping")
def ping(request: HttpRequest) -> dict[str, str]:
    return {"status": "ok"}


urlpatterns = [path("api/v1/", api.urls)]
