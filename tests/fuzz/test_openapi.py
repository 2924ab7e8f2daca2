"""Schemathesis over the API's own OpenAPI document, in process through the WSGI application.

Every operation is called with a tenant token on a seeded tenant (an app with a live deployment, an
add-on, a webhook secret, a spare token), with a bounded, derandomized number of generated requests
each, and every answer must be: no server error, a status the document lists, a body that matches
the schema it gives for that status, and for every 4xx the API's one error shape. Path ids are the
seeded objects' (so the calls reach the code behind the lookups), and the queue's sender is mocked:
nothing leaves the process. Hermetic and about a minute on two cores.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import Phase
from hypothesis import settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance
from schemathesis.specs.openapi.checks import response_schema_conformance
from schemathesis.specs.openapi.checks import status_code_conformance

from devstack.services import RedisServer
from tests.fuzz.seed import Seed
from tests.fuzz.seed import seed_tenant

MAX_EXAMPLES = 25


from config.wsgi import application  # noqa: E402  (pytest-django has set Django up by now)

# Serving the document touches no database, so it can be loaded at collection: one test per operation.
schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", application)


def error_shape(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx is `{"error": {"code": str, "message": str, "details": ...}}` and nothing else."""
    if not 400 <= response.status_code < 500:
        return None
    body = response.json()
    assert isinstance(body, dict), body
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict), body
    assert set(error) == {"code", "message", "details"}, body
    assert isinstance(error["code"], str), body
    assert error["code"], body
    assert isinstance(error["message"], str), body
    return True


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    error_shape,
]


@pytest.fixture(scope="session")
def log_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The log store's Redis (real, on a free port, saving nothing): the logs endpoints read it."""
    server = RedisServer(tmp_path_factory.mktemp("fuzz-log-redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def seed(db: None, settings: Any, tmp_path: Any, log_redis: RedisServer) -> Iterator[Seed]:
    settings.BUILD_ROOT = tmp_path / "builds"
    settings.LOG_REDIS_URL = log_redis.url
    settings.LOG_KEY_PREFIX = "fuzz:logs"
    settings.LOG_STREAM_MAX_SECONDS = 1  # a follow stream ends at once, so each example returns
    # Nothing is queued (the broker is not there, and the pipeline is not under test here), and
    # /ready reports on dependencies this hermetic run does not start.
    with (
        mock.patch("core.queue.send", autospec=True),
        mock.patch("config.api._check_broker", autospec=True, return_value=True),
        mock.patch("config.api._check_caddy", autospec=True, return_value=True),
    ):
        yield seed_tenant()


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_api(case: Any, seed: Seed) -> None:
    seed.aim(case)
    case.call_and_validate(headers={"Authorization": f"Bearer {seed.token}"}, checks=CHECKS)


class _Answer:
    def __init__(self, status_code: int, body: Any) -> None:
        self.status_code = status_code
        self._body = body

    def json(self) -> Any:
        return self._body


@pytest.mark.parametrize(
    "body",
    [
        {"detail": "Not found"},
        {"error": "not_found"},
        {"error": {"code": "not_found", "message": "No such app."}},
        {"error": {"code": "", "message": "x", "details": None}},
        {"error": {"code": "x", "message": "x", "details": None}, "extra": 1},
    ],
)
def test_the_error_shape_check_refuses_other_shapes(body: Any) -> None:
    with pytest.raises(AssertionError):
        error_shape(None, _Answer(404, body), None)
    assert error_shape(None, _Answer(404, {"error": {"code": "x", "message": "y", "details": None}}), None)
    assert error_shape(None, _Answer(200, body), None) is None
