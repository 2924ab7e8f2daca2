"""The ids a request is about reach every log line through the context, not through each call."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from conftest import Actor
from core.logging import ContextFilter
from core.logging import StructuredFormatter
from core.logging import app_id_var
from core.logging import deployment_id_var
from core.logging import tenant_id_var

IMAGE = "docker.io/library/python:3.13"


class Lines(logging.Handler):
    """What the platform's console handler would print: the context filter, then the JSON formatter."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.addFilter(ContextFilter())
        self.setFormatter(StructuredFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def lines() -> Any:
    handler = Lines()
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler.lines
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


def test_a_deploy_logs_tenant_app_and_deployment_ids(owner: Actor, lines: list[dict[str, Any]]):
    app_id = owner.call("POST", "/apps", {"name": "web"}).json()["id"]
    deployment = owner.call("POST", f"/apps/{app_id}/deployments", {"image": IMAGE}).json()
    (queued,) = [line for line in lines if line["event"] == "deployment queued"]
    assert queued["tenant_id"] == str(owner.tenant.public_id)
    assert queued["app_id"] == app_id
    assert queued["deployment_id"] == deployment["id"]
    assert queued["request_id"]
    (created,) = [line for line in lines if line["event"] == "app created"]
    assert (created["tenant_id"], created["app_id"]) == (str(owner.tenant.public_id), app_id)


def test_the_context_ends_with_the_request(owner: Actor, outsider: Actor, lines: list[dict[str, Any]]):
    app_id = owner.call("POST", "/apps", {"name": "web"}).json()["id"]
    assert owner.call("PATCH", f"/apps/{app_id}", {"replicas": 2}).status_code == 200
    assert (tenant_id_var.get(), app_id_var.get(), deployment_id_var.get()) == (None, None, None)
    # The next request, by another tenant, carries none of the first one's ids.
    assert outsider.call("POST", "/apps", {"name": "other"}).status_code == 201
    (other,) = [line for line in lines if line["event"] == "app created" and line["app_id"] != app_id]
    assert other["tenant_id"] == str(outsider.tenant.public_id)
    assert all(line.get("app_id") != app_id for line in lines[lines.index(other) :])
