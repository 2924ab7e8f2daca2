"""Static files as the platform serves them: `collectstatic` with the production storage gives hashed,
compressed names, and the API process (WhiteNoise) serves them with long caching; pages name the hashed
files, so a browser never keeps a stale one. The API docs load their assets from us, never from a CDN."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.test import Client

PRODUCTION_STORAGES = settings.STORAGES | {
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"}
}


def test_production_settings_serve_static_files_with_whitenoise_and_hashed_names():
    from config import settings as production

    assert production.STORAGES["staticfiles"]["BACKEND"] == "whitenoise.storage.CompressedManifestStaticFilesStorage"
    middleware = production.MIDDLEWARE
    assert middleware.index("whitenoise.middleware.WhiteNoiseMiddleware") == (
        middleware.index("django.middleware.security.SecurityMiddleware") + 1
    )


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("static")
    from django.test import override_settings

    with override_settings(STATIC_ROOT=root, STORAGES=PRODUCTION_STORAGES):
        call_command("collectstatic", "--noinput", "--verbosity", "0")
    return root


@pytest.fixture
def production_static(collected: Path, settings: Any) -> Path:
    settings.STATIC_ROOT = collected
    settings.STORAGES = PRODUCTION_STORAGES
    settings.WHITENOISE_USE_FINDERS = False
    return collected


def test_collectstatic_writes_hashed_and_compressed_copies(collected: Path):
    css = list((collected / "admin" / "css").glob("base.*.css"))
    assert len(css) == 1, css
    assert re.fullmatch(r"base\.[0-9a-f]{12}\.css", css[0].name)
    assert css[0].with_name(css[0].name + ".gz").is_file()
    assert list((collected / "ninja").glob("swagger-ui-bundle.*.js"))
    assert list((collected / "coltsfoot").glob("console.*.css"))


@pytest.mark.django_db
def test_pages_name_hashed_files_and_the_api_process_serves_them_cached(production_static: Path):
    client = Client()  # a fresh handler: WhiteNoise reads STATIC_ROOT when the middleware is built
    login = client.get("/admin/login/").content.decode()
    (css,) = re.findall(r'href="(/static/admin/css/base\.[0-9a-f]{12}\.css)"', login)

    response = client.get(css, HTTP_ACCEPT_ENCODING="gzip")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/css")
    assert response["Content-Encoding"] == "gzip"
    assert "immutable" in response["Cache-Control"]
    assert "max-age=315360000" in response["Cache-Control"]


@pytest.mark.django_db
def test_the_api_docs_load_their_assets_from_the_platform(production_static: Path):
    client = Client()
    page = client.get("/api/v1/docs").content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert any(re.search(r"/static/ninja/swagger-ui-bundle\.[0-9a-f]{12}\.js$", a) for a in assets), assets
    assert not [a for a in assets if a.startswith(("http:", "https:", "//"))]
    for asset in assets:
        assert client.get(asset).status_code == 200, asset
