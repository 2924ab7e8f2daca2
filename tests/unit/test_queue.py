"""Queuing on commit, by task name: a broker outage never loses an intent or answers 500.

These tests commit for real (`transaction=True`), so the on-commit send runs inside the request,
as it does in production, and a send that raised would reach the client."""

from __future__ import annotations

import logging
from typing import Any
from unittest import mock

import pytest
import redis.exceptions
from kombu.exceptions import OperationalError

from config.celery import app as celery_app
from conftest import Actor
from platform_apps.models import App
from platform_apps.models import Deployment

IMAGE = "docker.io/library/python:3.13"

BROKER_DOWN = [
    pytest.param(OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused."), id="kombu"),
    pytest.param(ConnectionRefusedError(111, "Connection refused"), id="socket"),
    pytest.param(redis.exceptions.ConnectionError("Connection refused"), id="redis"),
]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("error", BROKER_DOWN)
def test_broker_down_still_answers_and_keeps_the_intent(owner: Actor, error: Exception, caplog: Any):
    kept = owner.call("POST", "/apps", {"name": "kept"}).json()["id"]
    gone = owner.call("POST", "/apps", {"name": "gone"}).json()["id"]
    caplog.set_level(logging.WARNING, logger="core.queue")
    with mock.patch.object(celery_app, "send_task", autospec=True, side_effect=error) as send_task:
        deployed = owner.call("POST", f"/apps/{kept}/deployments", {"image": IMAGE})
        deleted = owner.call("DELETE", f"/apps/{gone}")

    assert deployed.status_code == 202, deployed.content
    assert deleted.status_code == 202, deleted.content
    deployment_id = deployed.json()["id"]
    # The intents are committed, for the reconciler to re-queue.
    assert Deployment.objects.get(public_id=deployment_id).state == Deployment.State.QUEUED
    assert App.objects.get(public_id=gone).state == App.State.DELETING
    # Both sends were tried (so the failure was the broker's, not a skipped send)...
    assert [(call.args[0], call.kwargs["args"]) for call in send_task.call_args_list] == [
        ("coltsfoot.deployment_run", [deployment_id]),
        ("coltsfoot.app_teardown", [gone]),
    ]
    # ...and each failure left a warning naming the task and its ids.
    warnings = [record for record in caplog.records if record.name == "core.queue"]
    assert [(record.levelno, record.task, record.task_args) for record in warnings] == [
        (logging.WARNING, "coltsfoot.deployment_run", [deployment_id]),
        (logging.WARNING, "coltsfoot.app_teardown", [gone]),
    ]


@pytest.mark.django_db(transaction=True)
def test_a_send_that_works_goes_to_the_task_by_name_after_commit(owner: Actor):
    app_id = owner.call("POST", "/apps", {"name": "web"}).json()["id"]
    with mock.patch.object(celery_app, "send_task", autospec=True) as send_task:
        deployed = owner.call("POST", f"/apps/{app_id}/deployments", {"image": IMAGE})
    assert deployed.status_code == 202
    send_task.assert_called_once_with("coltsfoot.deployment_run", args=[deployed.json()["id"]])


def test_a_refused_deploy_sends_nothing(owner: Actor, django_capture_on_commit_callbacks: Any):
    app_id = owner.call("POST", "/apps", {"name": "web"}).json()["id"]
    with (
        mock.patch.object(celery_app, "send_task", autospec=True) as send_task,
        django_capture_on_commit_callbacks(execute=True),
    ):
        refused = owner.call("POST", f"/apps/{app_id}/deployments", {"image": "registry.internal/evil:1"})
    assert refused.status_code == 422
    send_task.assert_not_called()
