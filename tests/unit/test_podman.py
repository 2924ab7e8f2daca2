"""The runtime driver: exact argv for every builder, and how `run` maps subprocess failures.

`drivers.podman.run` is the seam other modules mock; here `subprocess.run` is mocked
instead, because this module is the one that calls it. Nothing here starts podman.
"""

from __future__ import annotations

import dataclasses
import logging
import subprocess
from typing import Any
from unittest import mock

import pytest

from drivers import podman

PREFIX = ["podman", "--runtime", "/usr/bin/runsc", "--runtime-flag", "network=host"]


@pytest.fixture(autouse=True)
def _runtime_settings(settings):
    settings.PODMAN_BIN = "podman"
    settings.RUNSC_PATH = "/usr/bin/runsc"
    settings.RUNSC_FLAGS = ["network=host"]
    settings.PODMAN_TIMEOUT_SECONDS = 120
    settings.BUILD_TIMEOUT_SECONDS = 900


@pytest.fixture
def subprocess_run():
    with mock.patch("drivers.podman.subprocess.run", autospec=True) as run:
        run.return_value = subprocess.CompletedProcess(args=[], returncode=0, stdout="", stderr="")
        yield run


BASE_SPEC = podman.ContainerSpec(
    name="tsl-0b7c-1",
    image="localhost/app:3",
    network="tn-4f2a",
    uid=200001,
    gid=200001,
    memory_mb=256,
    cpus=0.5,
    pids_limit=128,
    env={"PORT": "8000", "DEBUG": "0"},
    secret_env={"DATABASE_URL": "sec-0b7c-database-url"},
    command="gunicorn app:app",
    labels={"coltsfoot.deployment": "0b7c", "coltsfoot.app": "9e1d"},
    nproc_limit=256,
    cgroup_parent="/coltsfoot-tenants/t-4f2a",
)


def make_spec(**overrides: Any) -> podman.ContainerSpec:
    return dataclasses.replace(BASE_SPEC, **overrides)


HARDENING = [
    "--name=tsl-0b7c-1",
    "--pull=never",
    "--http-proxy=false",
    "--cap-drop=all",
    "--security-opt=no-new-privileges",
    "--read-only",
    "--read-only-tmpfs=false",
    "--tmpfs",
    "/tmp:rw,size=64m,mode=1777",
    "--memory=256m",
    "--memory-swap=256m",
    "--cpus=0.5",
    "--pids-limit=128",
    "--ulimit=nproc=256:256",
    "--cgroup-parent=/coltsfoot-tenants/t-4f2a",
    "--log-opt=max-size=16mb",
    "--user",
    "200001:200001",
    "--network",
    "tn-4f2a",
    "--label",
    "coltsfoot.app=9e1d",
    "--label",
    "coltsfoot.deployment=0b7c",
    "--env",
    "DEBUG=0",
    "--env",
    "PORT=8000",
    "--secret",
    "sec-0b7c-database-url,type=mount,target=DATABASE_URL,uid=200001,gid=200001,mode=0400",
    "--workdir",
    "/app",
    "localhost/app:3",
    "/bin/bash",
    "-c",
    "exec 2>&1\n"
    "DATABASE_URL=$(cat /run/secrets/DATABASE_URL; printf x) && "
    'DATABASE_URL="${DATABASE_URL%x}" && export DATABASE_URL\n'
    "gunicorn app:app",
]


# --- argv builders ---------------------------------------------------------------------------


def test_run_detached_argv():
    assert podman.run_detached_argv(make_spec()) == ["run", "--detach", *HARDENING]


def test_run_oneoff_argv_is_attached_and_removed():
    assert podman.run_oneoff_argv(make_spec()) == ["run", "--rm", *HARDENING]


def test_oneoff_for_dependencies_keeps_container_and_writable_root():
    argv = podman.run_oneoff_argv(make_spec(read_only=False), remove=False)
    assert argv[:2] == ["run", "--name=tsl-0b7c-1"]
    assert "--read-only" not in argv
    assert "--read-only-tmpfs=false" not in argv
    assert [a for a in HARDENING if a not in {"--read-only", "--read-only-tmpfs=false"}] == argv[1:]


def test_without_nproc_limit_or_cgroup_parent_podman_defaults_apply():
    argv = podman.run_detached_argv(make_spec(nproc_limit=0, cgroup_parent=""))
    assert not any(arg.startswith(("--ulimit", "--cgroup-parent")) for arg in argv)
    assert "--pids-limit=128" in argv


def test_a_systemd_slice_is_a_valid_cgroup_parent():
    argv = podman.run_detached_argv(make_spec(cgroup_parent="coltsfoot_tenants.slice"))
    assert "--cgroup-parent=coltsfoot_tenants.slice" in argv


@pytest.mark.parametrize(
    "parent",
    ["relative/path", "/a/../b", "/a//b", "/a b", "/--privileged", "/a\x00", "/a\n", "/", "x.slice/y", "--cgroupns"],
)
def test_cgroup_parent_that_could_escape_or_inject_is_refused(parent: str):
    with pytest.raises(ValueError, match="cgroup parent"):
        make_spec(cgroup_parent=parent)


def test_negative_nproc_limit_is_refused():
    with pytest.raises(ValueError, match="nproc_limit"):
        make_spec(nproc_limit=-1)


def test_shell_can_be_plain_sh_for_images_without_bash():
    assert podman.run_detached_argv(make_spec(shell_path="/bin/sh"))[-3:-1] == ["/bin/sh", "-c"]


def test_run_argv_never_publishes_ports():
    argv = podman.run_detached_argv(make_spec())
    assert not {"-p", "--publish", "-P", "--publish-all", "--network=host"} & set(argv)
    assert not any(arg.startswith(("--publish", "-p=")) for arg in argv)


def test_run_argv_with_mounts_and_sizes():
    spec = make_spec(
        mounts=(("/srv/ca.crt", "/etc/ssl/certs/ca-certificates.crt", True), ("/srv/b", "/app", False)),
        tmpfs_size_mb=32,
        cpus=2.0,
        workdir="/app/src",
    )
    argv = podman.run_oneoff_argv(spec)
    assert "/tmp:rw,size=32m,mode=1777" in argv
    assert "--cpus=2" in argv
    volumes = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--volume"]
    assert volumes == ["/srv/ca.crt:/etc/ssl/certs/ca-certificates.crt:ro", "/srv/b:/app:rw"]
    assert argv[argv.index("--workdir") + 1] == "/app/src"


def test_secret_values_never_in_argv():
    spec = make_spec(secret_env={"API_KEY": "sec-api-key"})
    argv = podman.run_detached_argv(spec)
    assert "sec-api-key,type=mount,target=API_KEY,uid=200001,gid=200001,mode=0400" in argv
    assert not any(arg.startswith("API_KEY=") for arg in argv[: argv.index("localhost/app:3")])
    assert podman.secret_create_argv("sec-api-key") == ["secret", "create", "sec-api-key", "-"]


def test_sandbox_script_merges_stderr_and_loads_secrets_in_order():
    spec = make_spec(secret_env={"B_KEY": "sec-b", "A_KEY": "sec-a"}, command="# tenant\n&& weird")
    assert podman.sandbox_script(spec).split("\n") == [
        "exec 2>&1",
        'A_KEY=$(cat /run/secrets/A_KEY; printf x) && A_KEY="${A_KEY%x}" && export A_KEY',
        'B_KEY=$(cat /run/secrets/B_KEY; printf x) && B_KEY="${B_KEY%x}" && export B_KEY',
        "# tenant",
        "&& weird",
    ]
    assert podman.sandbox_script(make_spec(secret_env={})) == "exec 2>&1\ngunicorn app:app"


@pytest.mark.parametrize(
    "overrides",
    [
        {"env": {"BAD-NAME": "x"}},
        {"env": {"A=B": "x"}},
        {"env": {"OK": "nul\x00byte"}},
        {"secret_env": {"PORT": "sec-port"}},
        {"secret_env": {"TOKEN": "bad name"}},
        {"name": "-rf"},
        {"network": "net;rm"},
        {"labels": {"a=b": "c"}},
        {"mounts": (("relative", "/x", True),)},
        {"mounts": (("/a:b", "/x", True),)},
        {"uid": -1},
        {"memory_mb": 0},
        {"shell_path": "sh"},
        {"workdir": "app"},
    ],
)
def test_spec_rejects_hostile_values(overrides):
    with pytest.raises(ValueError, match=r"."):
        make_spec(**overrides)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (podman.rm_argv("c1"), ["rm", "--force", "--ignore", "--time=5", "c1"]),
        (podman.stop_argv("c1", 10), ["stop", "--time=10", "c1"]),
        (
            podman.network_create_argv("tn-1", {"coltsfoot.tenant": "t1"}),
            ["network", "create", "--opt", "isolate=true", "--label", "coltsfoot.tenant=t1", "tn-1"],
        ),
        (podman.network_create_argv("tn-1"), ["network", "create", "--opt", "isolate=true", "tn-1"]),
        (podman.network_exists_argv("tn-1"), ["network", "exists", "tn-1"]),
        (podman.network_rm_argv("tn-1"), ["network", "rm", "tn-1"]),
        (
            podman.inspect_networks_argv("c1"),
            ["container", "inspect", "--format", "{{json .NetworkSettings.Networks}}", "c1"],
        ),
        (podman.is_running_argv("c1"), ["container", "inspect", "--format", "{{.State.Running}}", "c1"]),
        (podman.logs_argv("c1"), ["logs", "c1"]),
        (podman.logs_argv("c1", 200), ["logs", "--tail=200", "c1"]),
        (
            podman.ps_by_label_argv("coltsfoot.app", "9e1d"),
            ["ps", "--all", "--filter", "label=coltsfoot.app=9e1d", "--format", "{{.Names}}"],
        ),
        (
            podman.build_argv("/b/ctx", "/b/Containerfile", "localhost/app:3", labels={"coltsfoot.app": "9e1d"}),
            [
                "build",
                "--isolation=chroot",
                "--layers",
                "--pull=never",
                "--http-proxy=false",
                "--file",
                "/b/Containerfile",
                "--tag",
                "localhost/app:3",
                "--label",
                "coltsfoot.app=9e1d",
                "/b/ctx",
            ],
        ),
        (
            podman.build_argv("/b/ctx", "/b/Containerfile", "localhost/app:4", layers=False),
            [
                "build",
                "--isolation=chroot",
                "--layers=false",
                "--pull=never",
                "--http-proxy=false",
                "--file",
                "/b/Containerfile",
                "--tag",
                "localhost/app:4",
                "/b/ctx",
            ],
        ),
        (podman.commit_argv("c1", "localhost/deps:3"), ["commit", "--quiet", "c1", "localhost/deps:3"]),
        (
            podman.commit_argv("c1", "localhost/deps:3", ['CMD ["/bin/true"]']),
            ["commit", "--quiet", "--change", 'CMD ["/bin/true"]', "c1", "localhost/deps:3"],
        ),
        (podman.image_exists_argv("localhost/a:1"), ["image", "exists", "localhost/a:1"]),
        (podman.image_inspect_id_argv("localhost/a:1"), ["image", "inspect", "--format", "{{.Id}}", "localhost/a:1"]),
        (podman.pull_argv("reg.example/a:1", True), ["pull", "--quiet", "--tls-verify=true", "reg.example/a:1"]),
        (podman.pull_argv("localhost:5000/a", False), ["pull", "--quiet", "--tls-verify=false", "localhost:5000/a"]),
        (podman.import_argv("-", "localhost/base:1"), ["import", "--quiet", "-", "localhost/base:1"]),
        (
            podman.import_argv("/t/root.tar", "localhost/base:1", ["ENV HOME=/tmp", "WORKDIR /app"]),
            [
                "import",
                "--quiet",
                "--change",
                "ENV HOME=/tmp",
                "--change",
                "WORKDIR /app",
                "/t/root.tar",
                "localhost/base:1",
            ],
        ),
        (podman.tag_argv("localhost/a:1", "localhost/a:live"), ["tag", "localhost/a:1", "localhost/a:live"]),
        (podman.image_rm_argv("localhost/a:1"), ["rmi", "--ignore", "localhost/a:1"]),
        (podman.secret_rm_argv("s1"), ["secret", "rm", "s1"]),
        (podman.secret_inspect_argv("s1"), ["secret", "inspect", "--format", "{{.ID}}", "s1"]),
        (podman.secret_ls_argv(), ["secret", "ls", "--noheading", "--format", "{{.Name}}"]),
    ],
)
def test_argv_builders(argv, expected):
    assert argv == expected


@pytest.mark.parametrize(
    "call",
    [
        lambda: make_spec(image="--privileged"),
        lambda: make_spec(image="a b"),
        lambda: podman.pull_argv("--all-tags", True),
        lambda: podman.tag_argv("localhost/a:1", "-q"),
        lambda: podman.image_rm_argv(""),
        lambda: podman.rm_argv("--all"),
        lambda: podman.logs_argv("-f"),
        lambda: podman.build_argv("ctx", "/Containerfile", "localhost/a:1"),
        lambda: podman.import_argv("--change", "localhost/a:1"),
    ],
)
def test_builders_refuse_values_that_podman_would_parse_as_flags(call):
    with pytest.raises(ValueError, match=r"."):
        call()


def test_tenant_image_references_are_accepted():
    ref = "registry.example.com:5000/team/app:v1.2@sha256:" + "a" * 64
    assert podman.pull_argv(ref, True)[-1] == ref
    assert make_spec(image=ref).image == ref


# --- run ----------------------------------------------------------------------------------------


def test_run_prepends_runtime_and_uses_timeouts(subprocess_run, settings):
    settings.RUNSC_FLAGS = ["network=host", "debug"]
    subprocess_run.return_value = subprocess.CompletedProcess(args=[], returncode=0, stdout="abc\n", stderr="")

    assert podman.run(["ps"]) == "abc\n"

    subprocess_run.assert_called_once_with(
        ["podman", "--runtime", "/usr/bin/runsc", "--runtime-flag", "network=host", "--runtime-flag", "debug", "ps"],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_run_passes_stdin_and_explicit_timeout(subprocess_run):
    podman.run(["secret", "create", "s1", "-"], stdin="hunter2", timeout=7)
    subprocess_run.assert_called_once_with(
        [*PREFIX, "secret", "create", "s1", "-"],
        check=True,
        capture_output=True,
        text=True,
        timeout=7,
        input="hunter2",
    )


def _fail(returncode: int, stderr: str, stdout: str = "") -> subprocess.CalledProcessError:
    return subprocess.CalledProcessError(returncode, ["podman"], output=stdout, stderr=stderr)


@pytest.mark.parametrize(
    "stderr",
    [
        'Error: no container with name or ID "c1" found: no such container',
        "Error: inspecting object: no such container c1",
        "Error: nosuch: image not known",
        "Error: unable to find network with name or ID tn: network not found",
        'Error: no secret with name or id "s1": no such secret',
    ],
)
def test_run_maps_missing_objects_to_not_found(subprocess_run, stderr):
    subprocess_run.side_effect = _fail(125, stderr)
    with pytest.raises(podman.PodmanNotFound) as caught:
        podman.run(["container", "inspect", "c1"])
    assert caught.value.returncode == 125
    assert caught.value.transient is False
    assert caught.value.stderr == stderr
    assert caught.value.argv == [*PREFIX, "container", "inspect", "c1"]


@pytest.mark.parametrize(
    ("stderr", "transient"),
    [
        ("Error: database is locked", True),
        ("Error: acquiring lock 3 for container: resource temporarily unavailable", True),
        ('Error: Get "https://reg/v2/": dial tcp 10.0.0.1:443: connect: connection refused', True),
        ("Error: lookup reg: Temporary failure in name resolution", True),
        ("Error: invalid reference format", False),
        ("Error: unknown flag: --frobnicate", False),
        ("", False),
    ],
)
def test_run_classifies_failures(subprocess_run, stderr, transient):
    subprocess_run.side_effect = _fail(125, stderr)
    with pytest.raises(podman.PodmanError) as caught:
        podman.run(["pull", "x"])
    assert type(caught.value) is podman.PodmanError
    assert caught.value.transient is transient


def test_run_truncates_stderr(subprocess_run):
    subprocess_run.side_effect = _fail(125, "x" * 100_000 + "Error: the end")
    with pytest.raises(podman.PodmanError) as caught:
        podman.run(["build", "."])
    assert len(caught.value.stderr) <= podman.STDERR_LIMIT + 1
    assert caught.value.stderr.endswith("Error: the end")
    assert "Error: the end" in str(caught.value)


def test_run_timeout_is_transient(subprocess_run):
    subprocess_run.side_effect = subprocess.TimeoutExpired(["podman"], 120, output=b"partial", stderr=None)
    with pytest.raises(podman.PodmanError) as caught:
        podman.run(["pull", "x"])
    assert caught.value.transient is True
    assert caught.value.returncode is None
    assert caught.value.stdout == "partial"


def test_missing_podman_binary_is_permanent(subprocess_run):
    subprocess_run.side_effect = FileNotFoundError(2, "No such file or directory")
    with pytest.raises(podman.PodmanError) as caught:
        podman.run(["ps"])
    assert caught.value.transient is False
    assert not isinstance(caught.value, podman.PodmanNotFound)


def test_env_values_are_redacted_in_logs_and_errors(subprocess_run, caplog):
    spec = make_spec(env={"API_TOKEN": "tok-very-secret", "PORT": "8000"})
    subprocess_run.side_effect = _fail(125, "Error: boom")
    with caplog.at_level(logging.DEBUG, logger="drivers.podman"), pytest.raises(podman.PodmanError) as caught:
        podman.run(podman.run_detached_argv(spec))

    assert caplog.records
    for record in caplog.records:
        assert "tok-very-secret" not in record.getMessage()
        assert "tok-very-secret" not in repr(record.__dict__)
    assert "API_TOKEN=***" in caplog.text
    assert record.levelno == logging.INFO  # a state change
    assert "tok-very-secret" not in " ".join(caught.value.argv)
    assert "tok-very-secret" not in str(caught.value)


def test_redact_argv_forms():
    assert podman.redact_argv(["run", "--env", "A=1", "-e", "B=2=3", "--env=C=4", "--label", "k=v"]) == [
        "run",
        "--env",
        "A=***",
        "-e",
        "B=***",
        "--env=C=***",
        "--label",
        "k=v",
    ]


def test_secret_value_goes_through_stdin_only(subprocess_run, caplog):
    with caplog.at_level(logging.DEBUG, logger="drivers.podman"):
        podman.secret_set("sec-1", "hunter2-value")

    calls = subprocess_run.call_args_list
    assert [c.args[0][len(PREFIX) :] for c in calls] == [["secret", "rm", "sec-1"], ["secret", "create", "sec-1", "-"]]
    assert calls[1].kwargs["input"] == "hunter2-value"
    for c in calls:
        assert "hunter2-value" not in c.args[0]
    assert "hunter2-value" not in caplog.text


def test_secret_set_replaces_missing_secret(subprocess_run):
    subprocess_run.side_effect = [_fail(125, 'Error: no secret with name or id "s": no such secret'), mock.DEFAULT]
    podman.secret_set("s", "v")
    assert subprocess_run.call_count == 2


def test_reads_are_logged_at_debug(subprocess_run, caplog):
    with caplog.at_level(logging.DEBUG, logger="drivers.podman"):
        podman.run(podman.logs_argv("c1"))
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]


# --- operations ------------------------------------------------------------------------------


def _args(subprocess_run: mock.MagicMock) -> list[list[str]]:
    return [c.args[0][len(PREFIX) :] for c in subprocess_run.call_args_list]


def test_container_remove_treats_gone_as_success(subprocess_run):
    subprocess_run.side_effect = _fail(1, 'Error: no container with name or ID "c1" found: no such container')
    podman.container_remove("c1")


def test_container_remove_raises_other_errors(subprocess_run):
    subprocess_run.side_effect = _fail(125, "Error: cannot remove container: device or resource busy")
    with pytest.raises(podman.PodmanError) as caught:
        podman.container_remove("c1")
    assert caught.value.transient is True


def test_container_run_detached_returns_id(subprocess_run):
    subprocess_run.return_value = subprocess.CompletedProcess([], 0, stdout="f00d\n", stderr="")
    assert podman.container_run_detached(make_spec()) == "f00d"
    assert _args(subprocess_run) == [podman.run_detached_argv(make_spec())]


def test_container_logs_keeps_the_tail_itself(subprocess_run):
    subprocess_run.return_value = subprocess.CompletedProcess([], 0, stdout="a\nb\nc\n", stderr="")
    assert podman.container_logs("c1", tail=2) == "b\nc\n"
    assert _args(subprocess_run) == [["logs", "c1"]]


def test_container_address(subprocess_run):
    subprocess_run.return_value = subprocess.CompletedProcess(
        [], 0, stdout='{"tn-4f2a":{"IPAddress":"10.89.0.7","Gateway":"10.89.0.1"}}\n', stderr=""
    )
    assert podman.container_address("c1", "tn-4f2a") == "10.89.0.7"
    assert podman.container_address("c1", "other") == ""


def test_container_is_running(subprocess_run):
    subprocess_run.return_value = subprocess.CompletedProcess([], 0, stdout="true\n", stderr="")
    assert podman.container_is_running("c1") is True
    subprocess_run.side_effect = _fail(125, "Error: inspecting object: no such container c1")
    assert podman.container_is_running("c1") is False


def test_containers_with_label(subprocess_run):
    subprocess_run.return_value = subprocess.CompletedProcess([], 0, stdout="a\nb\n\n", stderr="")
    assert podman.containers_with_label("coltsfoot.app", "x") == ["a", "b"]


def test_network_ensure_creates_when_missing(subprocess_run):
    subprocess_run.side_effect = [_fail(1, ""), mock.DEFAULT]
    podman.network_ensure("tn-1", {"coltsfoot.tenant": "t"})
    assert _args(subprocess_run) == [
        ["network", "exists", "tn-1"],
        ["network", "create", "--opt", "isolate=true", "--label", "coltsfoot.tenant=t", "tn-1"],
    ]


def test_network_gateway(subprocess_run):
    subprocess_run.return_value = subprocess.CompletedProcess(
        [],
        0,
        stdout='[{"subnet":"fd00::/64","gateway":"fd00::1"},{"subnet":"10.89.3.0/24","gateway":"10.89.3.1"}]\n',
        stderr="",
    )
    assert podman.network_gateway("tn-1") == "10.89.3.1"
    assert _args(subprocess_run) == [["network", "inspect", "--format", "{{json .Subnets}}", "tn-1"]]


def test_network_ensure_is_a_noop_when_present(subprocess_run):
    podman.network_ensure("tn-1")
    assert _args(subprocess_run) == [["network", "exists", "tn-1"]]


def test_network_ensure_tolerates_a_concurrent_creator(subprocess_run):
    subprocess_run.side_effect = [
        _fail(1, ""),
        _fail(125, "Error: network name tn-1 already used: network already exists"),
    ]
    podman.network_ensure("tn-1")


def test_image_exists(subprocess_run):
    assert podman.image_exists("localhost/a:1") is True
    subprocess_run.side_effect = _fail(1, "")
    assert podman.image_exists("localhost/a:1") is False


def test_oneoff_run_returns_nonzero_exit_as_result(subprocess_run):
    subprocess_run.side_effect = [mock.DEFAULT, _fail(3, "", stdout="migrating\nboom\n")]
    assert podman.oneoff_run(make_spec(), timeout=60) == (3, "migrating\nboom\n")
    rm, oneoff = subprocess_run.call_args_list
    assert rm.args[0][len(PREFIX) :] == podman.rm_argv("tsl-0b7c-1")
    assert oneoff.kwargs["timeout"] == 60
    assert oneoff.args[0][len(PREFIX) :] == podman.run_oneoff_argv(make_spec())


def test_oneoff_run_drops_podman_noise_from_output(subprocess_run):
    noise = "failed to connect to syslog: Initialization\n"
    subprocess_run.side_effect = [mock.DEFAULT, _fail(127, noise, stdout="bash: line 2: nope: command not found\n")]
    assert podman.oneoff_run(make_spec(), timeout=60) == (127, "bash: line 2: nope: command not found\n")


def test_oneoff_run_raises_when_runsc_cannot_start_the_command(subprocess_run):
    stderr = "Error: `/usr/bin/runsc start` failed: failed to load /bin/bash: no such file or directory"
    subprocess_run.side_effect = [mock.DEFAULT, _fail(126, stderr)]
    with pytest.raises(podman.PodmanError) as caught:
        podman.oneoff_run(make_spec(), timeout=60)
    assert caught.value.transient is False


def test_oneoff_run_success(subprocess_run):
    subprocess_run.return_value = subprocess.CompletedProcess([], 0, stdout="ok\n", stderr="")
    assert podman.oneoff_run(make_spec(), timeout=60) == (0, "ok\n")


def test_oneoff_run_raises_when_podman_itself_fails(subprocess_run):
    subprocess_run.side_effect = [mock.DEFAULT, _fail(125, "Error: localhost/app:3: image not known")]
    with pytest.raises(podman.PodmanNotFound):
        podman.oneoff_run(make_spec(), timeout=60)


def test_oneoff_run_timeout_removes_the_container(subprocess_run):
    subprocess_run.side_effect = [mock.DEFAULT, subprocess.TimeoutExpired(["podman"], 60), mock.DEFAULT]
    with pytest.raises(podman.PodmanError) as caught:
        podman.oneoff_run(make_spec(), timeout=60)
    assert caught.value.transient is True
    assert _args(subprocess_run)[-1] == podman.rm_argv("tsl-0b7c-1")


def test_image_build_uses_build_timeout(subprocess_run):
    podman.image_build("/ctx", "/ctx/Containerfile", "localhost/a:1")
    assert subprocess_run.call_args.kwargs["timeout"] == 900


def test_spec_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        make_spec().name = "other"  # type: ignore[misc]


# --- base image --------------------------------------------------------------------------------


def test_debian_mirror_from_apt_sources(tmp_path, settings):
    from drivers import base_image

    settings.BASE_IMAGE_MIRROR = ""
    sources_d = tmp_path / "sources.list.d"
    sources_d.mkdir()
    (sources_d / "other.sources").write_text(
        "Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: nodistro\n"
    )
    (sources_d / "debian.sources").write_text(
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\nTypes: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
    )
    assert base_image.debian_mirror([tmp_path / "missing.list", sources_d]) == "http://mirror.example/debian"

    legacy = tmp_path / "sources.list"
    legacy.write_text("deb [signed-by=/k.gpg] http://old.example/debian bookworm main\n")
    assert base_image.debian_mirror([legacy]) == "http://old.example/debian"
    assert base_image.debian_mirror([tmp_path / "missing.list"]) == base_image.DEFAULT_MIRROR

    settings.BASE_IMAGE_MIRROR = "http://configured.example/debian"
    assert base_image.debian_mirror([legacy]) == "http://configured.example/debian"


def test_base_image_present_is_a_noop(settings):
    from drivers import base_image

    settings.BASE_IMAGE = "localhost/coltsfoot-base:bookworm"
    with (
        mock.patch("drivers.base_image.podman.image_exists", autospec=True, return_value=True),
        mock.patch("drivers.base_image.podman.image_id", autospec=True, return_value="abc"),
        mock.patch("drivers.base_image.base_image_build", autospec=True) as build,
    ):
        assert base_image.base_image_ensure() == "abc"
    build.assert_not_called()


def test_base_image_from_a_registry_is_pulled_not_built(settings):
    from drivers import base_image

    settings.BASE_IMAGE = "registry.example/python-base:3"
    with (
        mock.patch("drivers.base_image.podman.image_exists", autospec=True, return_value=False),
        mock.patch("drivers.base_image.podman.image_pull", autospec=True) as pull,
        mock.patch("drivers.base_image.podman.image_id", autospec=True, return_value="def"),
        mock.patch("drivers.base_image.base_image_build", autospec=True) as build,
    ):
        assert base_image.base_image_ensure() == "def"
    pull.assert_called_once_with("registry.example/python-base:3", tls_verify=True)
    build.assert_not_called()


def test_network_listing_gives_each_network_its_creation_time():
    output = """[
      {"name": "cf-t-a", "created": "2026-12-01T12:49:16.504213802Z", "labels": {"coltsfoot.instance": "x"}},
      {"name": "cf-t-b", "created": "2026-12-01T12:49:16+00:00"},
      {"name": "cf-t-c"},
      {"created": "2026-12-01T12:49:16Z"},
      "junk"
    ]"""
    networks = podman.parse_network_ls_json(output)
    assert networks == {"cf-t-a": pytest.approx(1796129356.504214), "cf-t-b": 1796129356.0, "cf-t-c": 0.0}
    assert podman.parse_network_ls_json("") == {}
