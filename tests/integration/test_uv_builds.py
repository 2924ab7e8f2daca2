"""Dependencies install with uv inside the gVisor build sandbox, for a `uv.lock` project and a `requirements.txt`
one, each tenant with a uv cache of its own (never shared: a build runs package code)."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from devstack.services import Platform
from tests.integration.helpers import deploy_archive
from tests.integration.helpers import hello_archive
from tests.integration.helpers import tar_gz
from tests.integration.helpers import wait_for_deployment

pytestmark = pytest.mark.integration

HELLO_UV = Path(__file__).resolve().parents[2] / "examples" / "hello-uv"


def _deploy(platform: Platform, tenant: dict[str, Any], name: str, archive: bytes) -> tuple[dict[str, Any], str]:
    client = platform.client(tenant["token"])
    app = client.post("/apps", json={"name": name}).json()
    deployment = deploy_archive(client, app["id"], archive)
    done = wait_for_deployment(client, deployment["id"], {"live", "failed"}, timeout=600)
    log = client.get(f"/deployments/{deployment['id']}/log").text
    assert done["state"] == "live", log[-4000:]
    return app, log


def _cache_files(platform: Platform, tenant_id: str) -> list[Path]:
    cache = platform.data_dir / "uv-cache" / uuid.UUID(tenant_id).hex
    return [path for path in cache.rglob("*") if path.is_file()] if cache.exists() else []


def test_a_uv_lock_app_and_a_requirements_app_build_with_uv_and_serve(platform: Platform):
    tenant = platform.create_tenant(f"uv{uuid.uuid4().hex[:8]}")
    files: dict[str, str | bytes] = {path.name: path.read_text() for path in HELLO_UV.iterdir() if path.is_file()}
    locked, locked_log = _deploy(platform, tenant, "locked", tar_gz(files))
    assert "Installing dependencies locked in uv.lock" in locked_log
    # uv's own report, from inside the sandbox: the 8 locked pins (all but the project itself), by uv, not pip.
    assert "Installed 8 packages" in locked_log, locked_log[-4000:]
    assert " + werkzeug==3.1.9" in locked_log
    assert "pip install" not in locked_log

    plain, plain_log = _deploy(platform, tenant, "plain", hello_archive())
    assert "Installing dependencies from requirements.txt" in plain_log
    assert re.search(r"Installed \d+ packages", plain_log), plain_log[-4000:]

    for app in (locked, plain):
        response = platform.edge_get(app["url"])
        assert response.status_code == 200
        assert "Hello from Coltsfoot!" in response.text

    # The tenant's cache holds what the builds downloaded; another tenant has none of it until it builds.
    assert _cache_files(platform, tenant["tenant_id"])
    stranger = platform.create_tenant(f"uv{uuid.uuid4().hex[:8]}")
    assert _cache_files(platform, stranger["tenant_id"]) == []
