"""The tenants' parent cgroup, on fake cgroup trees (v1 hybrid as on this machine, v2, none)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from drivers import cgroups
from drivers import podman


@pytest.fixture
def v1_root(settings: Any, tmp_path: Path) -> Path:
    """What /sys/fs/cgroup looks like here: one v1 hierarchy per controller (and an empty unified one)."""
    for controller in ("cpu", "pids", "memory", "unified"):
        (tmp_path / controller).mkdir()
    (tmp_path / "cpu" / "cpu.shares").write_text("1024\n")
    settings.CGROUP_ROOT = tmp_path
    settings.TENANT_CGROUP_PARENT = "/coltsfoot-tenants"
    settings.TENANT_CPU_WEIGHT = 10
    settings.TENANT_PIDS_MAX = 5000
    cgroups._warned.clear()
    return tmp_path


@pytest.fixture
def v2_root(settings: Any, tmp_path: Path) -> Path:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    (tmp_path / "cgroup.subtree_control").write_text("memory\n")
    settings.CGROUP_ROOT = tmp_path
    settings.TENANT_CGROUP_PARENT = "/coltsfoot/tenants"
    settings.TENANT_CPU_WEIGHT = 10
    settings.TENANT_PIDS_MAX = 5000
    cgroups._warned.clear()
    return tmp_path


def fake_cgroupfs_mkdir(path: Path) -> None:
    """A real cgroupfs fills a new directory with its control files; the fake does for the ones we write."""
    (path / "cgroup.subtree_control").write_text("")


def test_v1_parent_gets_lower_cpu_shares_and_a_pids_cap(v1_root: Path):
    assert cgroups.parent_ensure() is True
    assert (v1_root / "cpu" / "coltsfoot-tenants" / "cpu.shares").read_text() == "102"
    assert (v1_root / "pids" / "coltsfoot-tenants" / "pids.max").read_text() == "5000"


def test_v1_is_idempotent_and_repairs_a_changed_value(v1_root: Path, caplog: pytest.LogCaptureFixture):
    cgroups.parent_ensure()
    shares = v1_root / "cpu" / "coltsfoot-tenants" / "cpu.shares"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="drivers.cgroups"):
        cgroups.parent_ensure()
    assert "tenant cgroup configured" not in caplog.text  # nothing written the second time
    shares.write_text("1024\n")  # someone reset it
    cgroups.parent_ensure()
    assert shares.read_text() == "102"


def test_pids_cap_defaults_to_half_the_hosts_pid_max(v1_root: Path, settings: Any, tmp_path: Path):
    settings.TENANT_PIDS_MAX = 0
    pid_max = tmp_path / "pid_max"
    pid_max.write_text("32768\n")
    with mock.patch.object(cgroups, "PID_MAX_FILE", pid_max):
        cgroups.parent_ensure()
    assert (v1_root / "pids" / "coltsfoot-tenants" / "pids.max").read_text() == "16384"


@pytest.mark.parametrize(("weight", "shares"), [(100, 1024), (10, 102), (1, 10), (10000, 102400)])
def test_v2_weight_maps_to_v1_shares(weight: int, shares: int):
    assert cgroups.v1_shares(weight) == shares


def test_v2_parent_gets_cpu_weight_and_controllers_for_its_children(v2_root: Path, settings: Any):
    # A fake tree does not create control files by itself: pre-create them where mkdir would.
    for path in (v2_root / "coltsfoot", v2_root / "coltsfoot" / "tenants"):
        path.mkdir()
        fake_cgroupfs_mkdir(path)
    assert cgroups.parent_ensure() is True
    assert (v2_root / "coltsfoot" / "tenants" / "cpu.weight").read_text() == "10"
    assert (v2_root / "coltsfoot" / "tenants" / "pids.max").read_text() == "5000"
    # The root already delegated memory; cpu and pids are added, down to the parent's own children.
    assert (v2_root / "cgroup.subtree_control").read_text() == "+cpu +pids"
    assert (v2_root / "coltsfoot" / "tenants" / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"


def test_no_cgroup_filesystem_warns_once_and_containers_still_start(
    settings: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    settings.CGROUP_ROOT = tmp_path
    settings.TENANT_CGROUP_PARENT = "/coltsfoot-tenants"
    cgroups._warned.clear()
    with caplog.at_level(logging.WARNING, logger="drivers.cgroups"):
        assert cgroups.parent_ensure() is False
        assert cgroups.parent_ensure() is False
    assert caplog.text.count("no cgroup filesystem") == 1


def test_unwritable_cgroup_is_a_warning_not_a_failure(v1_root: Path, caplog: pytest.LogCaptureFixture):
    with (
        mock.patch.object(Path, "mkdir", autospec=True, side_effect=PermissionError("read-only file system")),
        caplog.at_level(logging.WARNING, logger="drivers.cgroups"),
    ):
        assert cgroups.parent_ensure() is False
    assert "read-only file system" in caplog.text


@pytest.mark.parametrize("parent", ["", "coltsfoot_tenants.slice"])
def test_no_parent_or_a_systemd_slice_is_left_alone(v1_root: Path, parent: str):
    assert cgroups.parent_ensure(parent) is False
    assert not (v1_root / "cpu" / "coltsfoot-tenants").exists()


def test_each_tenant_gets_its_own_child_of_the_parent():
    assert cgroups.tenant_cgroup("/coltsfoot-tenants", "4f2a") == "/coltsfoot-tenants/t-4f2a"
    assert cgroups.tenant_cgroup("/coltsfoot-tenants/", "4f2a") == "/coltsfoot-tenants/t-4f2a"
    assert cgroups.tenant_cgroup("coltsfoot.slice", "4f2a") == "coltsfoot.slice"
    assert cgroups.tenant_cgroup("", "4f2a") == ""


def test_starting_a_container_configures_the_parent_first(v1_root: Path):
    spec = podman.ContainerSpec(
        name="tsl-1",
        image="localhost/app:1",
        network="tn-1",
        uid=200001,
        gid=200001,
        memory_mb=256,
        cpus=1.0,
        pids_limit=2304,
        env={},
        secret_env={},
        command="true",
        labels={},
        nproc_limit=256,
        cgroup_parent="/coltsfoot-tenants/t-1",
    )
    shares = v1_root / "cpu" / "coltsfoot-tenants" / "cpu.shares"

    def podman_run(args: list[str], **kwargs: Any) -> str:
        assert shares.read_text() == "102", "the weight must be in place before the container starts"
        return "f00d\n"

    with mock.patch.object(podman, "run", autospec=True, side_effect=podman_run) as run:
        assert podman.container_run_detached(spec) == "f00d"
    assert "--cgroup-parent=/coltsfoot-tenants/t-1" in run.call_args.args[0]
