"""Fixtures for the CLI's tests: the CLI run in-process (typer's runner) against an API answered by respx,
with its config dir, working directory and environment of its own. Nothing here touches Django."""

from __future__ import annotations

import logging
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import respx
from typer.testing import CliRunner
from typer.testing import Result

from coltsfoot_cli.main import app

API = "http://api.test/api/v1"
TOKEN = "cf_abc123.s3cretpart"
APP_ID = "6a1f6a4e-2f5b-4c4e-9a53-1f8b0f6a7c01"
DEPLOYMENT_ID = "0b7c9d2e-3a41-4f7e-8d5c-2b9e6f1a4c02"


def app_json(**overrides: Any) -> dict[str, Any]:
    return {
        "id": APP_ID,
        "name": "hello",
        "hostname": "hello-acme.localhost",
        "url": "http://hello-acme.localhost:8080/",
        "state": "active",
        "replicas": 1,
        "memory_mb": 256,
        "cpus": 1.0,
        "deploy_branch": "main",
        "live_deployment_id": None,
        "status": "stopped",
        "webhook_url": f"{API}/hooks/apps/{APP_ID}/deploy",
        "has_webhook_secret": False,
        "created_at": "2026-12-01T10:00:00Z",
        "updated_at": "2026-12-01T10:00:00Z",
        **overrides,
    }


def deployment_json(**overrides: Any) -> dict[str, Any]:
    return {
        "id": DEPLOYMENT_ID,
        "app_id": APP_ID,
        "number": 1,
        "state": "queued",
        "source": {"kind": "archive"},
        "image": None,
        "error": None,
        "created_at": "2026-12-01T10:00:00Z",
        "started_at": None,
        "finished_at": None,
        **overrides,
    }


def error_json(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


@dataclass
class Cli:
    runner: CliRunner
    workdir: Path

    def __call__(self, *args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
        # As on a tenant's laptop, where nothing configured logging: the root handlers of this test session (the
        # platform's LOGGING, or one an earlier test left on a stream since closed, which then prints "Logging
        # error" tracebacks) must not write into the command's output.
        with mock.patch.object(logging.getLogger(), "handlers", []):
            return self.runner.invoke(app, list(args), input=input, env=env)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory, a private config dir, and an environment logged in to API."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("COLTSFOOT_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("COLTSFOOT_API", API)
    monkeypatch.setenv("COLTSFOOT_TOKEN", TOKEN)
    monkeypatch.delenv("NO_COLOR", raising=False)
    return work


@pytest.fixture
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Reconnect and poll delays are recorded instead of waited for."""
    waited: list[float] = []
    monkeypatch.setattr("time.sleep", waited.append)
    return waited


@pytest.fixture
def cli(workdir: Path, no_sleep: list[float]) -> Cli:
    return Cli(CliRunner(), workdir)


@pytest.fixture
def api() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=API, assert_all_called=False, assert_all_mocked=True) as router:
        yield router


@pytest.fixture
def hello(api: respx.MockRouter) -> Callable[..., dict[str, Any]]:
    """GET /apps lists one app, `hello` (overridable), and GET /apps/{id} answers it."""

    def install(**overrides: Any) -> dict[str, Any]:
        body = app_json(**overrides)
        api.get("/apps").respond(json={"items": [body], "count": 1})
        api.get(f"/apps/{APP_ID}").respond(json=body)
        return body

    return install
