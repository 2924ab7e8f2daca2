"""Fixtures for the pipeline and task tests: the podman and Caddy fakes installed at their seams,
the health check answered by respx, and settings that keep builds in a temp dir."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest
import respx

from caddy.client import CaddyClient
from devstack.services import RedisServer
from drivers import logstore
from drivers import podman
from drivers.upstream_hosts import UpstreamHosts
from provisioning import pipeline
from tests.unit.fakes import PODMAN_OPERATIONS
from tests.unit.fakes import FakePodman
from tests.unit.fakes import FakeRoutes


@pytest.fixture
def fake_podman() -> Iterator[FakePodman]:
    fake = FakePodman()
    with contextlib.ExitStack() as stack:
        for name in PODMAN_OPERATIONS:
            stack.enter_context(mock.patch.object(podman, name, autospec=True, side_effect=getattr(fake, name)))
        # Anything not faked above would end in `run`: make that loud rather than real.
        stack.enter_context(
            mock.patch.object(podman, "run", autospec=True, side_effect=AssertionError("real podman called"))
        )
        yield fake


@pytest.fixture
def routes(settings: Any, tmp_path: Path) -> Iterator[FakeRoutes]:
    """The Caddy fake, and the real upstream hosts files in a directory of the test's own."""
    settings.UPSTREAM_HOSTS_DIR = tmp_path / "upstreams"
    fake = FakeRoutes(UpstreamHosts(settings.UPSTREAM_HOSTS_DIR))
    client = mock.create_autospec(CaddyClient, instance=True)
    client.__enter__.return_value = client
    for operation in ("route_get", "route_set", "route_delete", "route_delete_id", "edge_routes", "edge_load"):
        getattr(client, operation).side_effect = getattr(fake, operation)
    with contextlib.ExitStack() as stack:
        for target in (
            "provisioning.pipeline.CaddyClient",
            "provisioning.tasks.CaddyClient",
            "provisioning.reconciler.runner.CaddyClient",
        ):
            cls = stack.enter_context(mock.patch(target, autospec=True))
            cls.from_settings.return_value = client
        yield fake


@pytest.fixture
def http(fake_podman: FakePodman) -> Iterator[respx.MockRouter]:
    """`http://<address>:8000/` answers when a running, healthy fake container has that address."""

    def answer(request: httpx.Request) -> httpx.Response:
        container = fake_podman.by_address(request.url.host)
        if container is None or not container.running or not container.answers_http:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, text="hello")

    with respx.mock(assert_all_called=False) as router:
        router.get(port=pipeline.APP_PORT, path="/").mock(side_effect=answer)
        yield router


@pytest.fixture
def pipeline_settings(settings: Any, tmp_path: Path) -> None:
    settings.BUILD_ROOT = tmp_path / "builds"
    settings.BUILD_PIP_INDEX_URL = ""
    settings.BUILD_CA_BUNDLE = ""
    settings.START_DEADLINE_SECONDS = 2
    # A stand-in for the platform's uv binary (only mounted into the fake sandbox) and a cache root of the test's.
    uv = tmp_path / "bin" / "uv"
    uv.parent.mkdir()
    uv.write_bytes(b"")
    settings.BUILD_UV = str(uv)
    settings.BUILD_UV_CACHE_ROOT = tmp_path / "uv-cache"
    settings.BUILD_UV_CACHE_MAX_MB = 1


@pytest.fixture(autouse=True)
def _log_context_unbound() -> Iterator[None]:
    """Tasks run in-process here bind ids to the log context (as in a worker); no test sees another's."""
    yield
    from core.logging import unbind

    unbind()


@pytest.fixture(scope="session")
def log_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server for the log store (on a free port, in a temp dir, saving nothing), per test session."""
    server = RedisServer(tmp_path_factory.mktemp("log-redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def log_store(log_redis: RedisServer, settings: Any) -> logstore.LogStore:
    """Every test writes app logs to that Redis under a key prefix of its own, so tests never see each other's."""
    settings.LOG_REDIS_URL = log_redis.url
    settings.LOG_KEY_PREFIX = f"test-{uuid.uuid4().hex}:logs"
    return logstore.store()
