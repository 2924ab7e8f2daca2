"""`make up HOSTS=N` (devstack.local): N simulated hosts, each a worker with its own host name, kept per state dir,
and `make host-down HOST=...`'s target."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest

from devstack import services
from devstack.local import LocalConfig
from devstack.local import LocalStack
from devstack.process import ServiceError


def local(state: Path, **env: str) -> LocalStack:
    environment = {"COLTSFOOT_STATE_DIR": str(state), "HOME": str(state / "home"), **env}
    stack = LocalStack(LocalConfig.from_env(environment), environment)
    stack.dirs_ensure()
    return stack


def workers(stack: LocalStack, *, create: bool) -> list[tuple[str, str]]:
    platform = stack.build(stack.secrets_ensure(), "instance", create=create).require_platform()
    return [(worker.name, worker.env()["COLTSFOOT_HOST_NAME"]) for worker in platform.workers]


def test_one_host_by_default_and_its_worker_keeps_its_name(tmp_path: Path):
    assert workers(local(tmp_path / "state"), create=True) == [("worker", "host-1")]


def test_hosts_2_runs_a_worker_per_host_and_later_runs_keep_the_count(tmp_path: Path):
    expected = [("worker", "host-1"), ("worker-host-2", "host-2")]
    assert workers(local(tmp_path / "state", COLTSFOOT_HOSTS="2"), create=True) == expected
    # A later `make up`, `make down` or `make status` without HOSTS still knows both workers.
    assert workers(local(tmp_path / "state"), create=True) == expected
    assert workers(local(tmp_path / "state"), create=False) == expected
    assert workers(local(tmp_path / "state", COLTSFOOT_HOSTS="1"), create=True) == [("worker", "host-1")]


@pytest.mark.parametrize("value", ["0", "ten", "10", "-1"])
def test_a_host_count_out_of_range_is_refused(tmp_path: Path, value: str):
    with pytest.raises(ServiceError, match="number of hosts"):
        workers(local(tmp_path / "state", COLTSFOOT_HOSTS=value), create=True)


def test_host_down_kills_that_hosts_worker_and_stops_only_its_containers(tmp_path: Path):
    stack = local(tmp_path / "state", COLTSFOOT_HOSTS="2")
    platform = stack.build(stack.secrets_ensure(), "inst-1", create=True).require_platform()
    with (
        mock.patch.object(services.CeleryWorker, "kill", autospec=True) as kill,
        mock.patch.object(services, "podman_stop_instance", autospec=True, return_value=3) as stop,
    ):
        assert platform.host_down("host-2") == 3
    kill.assert_called_once_with(platform.workers[1])
    stop.assert_called_once_with("inst-1", platform.env, host="host-2", grace_seconds=0)
    with pytest.raises(ServiceError, match="no host 'host-3'"):
        platform.host_down("host-3")


def test_only_the_hosts_containers_are_listed(tmp_path: Path):
    completed = mock.Mock(returncode=0, stdout="abc\n")
    with (
        mock.patch("devstack.services.shutil.which", return_value="/usr/bin/podman"),
        mock.patch("devstack.services.subprocess.run", autospec=True, return_value=completed) as run,
    ):
        assert services.podman_running_containers("inst-1", {}, host="host-2") == ["abc"]
    argv = run.call_args.args[0]
    assert argv[-4:] == ["--filter", "label=coltsfoot.instance=inst-1", "--filter", "label=coltsfoot.host=host-2"]
