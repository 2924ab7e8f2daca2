"""The tenant CLI on the real stack, run as a tenant runs it: a separate process with only COLTSFOOT_API and
COLTSFOOT_TOKEN in its environment. It deploys `examples/hello` while streaming the build, exits 0 with the
app's URL, and a broken app exits 3 with its error code; `status` shows the replicas, `config set` shows up
in `config`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from devstack.services import Platform
from tests.integration.helpers import HELLO
from tests.integration.helpers import wait_until

pytestmark = pytest.mark.integration

DEPLOY_TIMEOUT = 600


@pytest.fixture(scope="module")
def tenant(platform: Platform) -> dict[str, Any]:
    return platform.create_tenant(f"c{uuid.uuid4().hex[:8]}")


@pytest.fixture
def coltsfoot(platform: Platform, tenant: dict[str, Any], tmp_path: Path):
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path / "home"),
        "COLTSFOOT_CONFIG_DIR": str(tmp_path / "config"),
        "COLTSFOOT_API": platform.api_url,
        "COLTSFOOT_TOKEN": tenant["token"],
        "NO_COLOR": "1",
    }

    def run(*args: str, cwd: Path = tmp_path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "coltsfoot_cli", *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    return run


def _copy_hello(tmp_path: Path, name: str) -> Path:
    directory = tmp_path / name
    shutil.copytree(HELLO, directory)
    return directory


def test_deploy_streams_the_build_and_ends_live_with_the_url(coltsfoot, platform: Platform, tmp_path: Path):
    directory = _copy_hello(tmp_path, "hello")
    (directory / ".gitignore").write_text("*.local\n")
    (directory / "notes.local").write_text("not uploaded")

    result = coltsfoot("deploy", str(directory), timeout=DEPLOY_TIMEOUT)
    assert result.returncode == 0, result.stdout + result.stderr
    # The build and release output, live: the pipeline's steps and the release command's own line.
    assert "-----> Building the app image" in result.stdout or "-----> Dependencies" in result.stdout, result.stdout
    assert "hello: release phase ran" in result.stdout
    url = result.stdout.strip().splitlines()[-1]
    assert url.startswith("http://hello-"), result.stdout
    assert url.endswith("/"), result.stdout
    wait_until(
        lambda: "Hello from Coltsfoot!" in platform.edge_get(url).text, timeout=60, message="the app through the edge"
    )
    project = json.loads((directory / ".coltsfoot").read_text())
    assert project["app"] == "hello"

    # In the app's directory, commands know the app.
    status = coltsfoot("status", "--json", cwd=directory)
    assert status.returncode == 0, status.stderr
    replicas = json.loads(status.stdout)["replicas"]
    assert [r["name"] for r in replicas] == ["web.1"]
    wait_until(
        lambda: json.loads(coltsfoot("status", "--json", cwd=directory).stdout)["app"]["status"] == "running",
        timeout=60,
        message="the app to be running",
    )
    table = coltsfoot("status", cwd=directory)
    assert "web.1" in table.stdout
    assert "running" in table.stdout
    assert url in table.stdout

    # Config: set a var, see it, and the re-release it triggers goes live with it.
    changed = coltsfoot("config", "set", "GREETING=Hi from the CLI", cwd=directory)
    assert changed.returncode == 0, changed.stderr
    shown = coltsfoot("config", "--json", cwd=directory)
    assert json.loads(shown.stdout)["vars"] == {"GREETING": "Hi from the CLI"}
    wait_until(lambda: "Hi from the CLI" in platform.edge_get(url).text, timeout=180, message="the new greeting")

    releases = coltsfoot("releases", "--json", cwd=directory)
    assert [d["number"] for d in json.loads(releases.stdout)][-1] == 1


def test_a_broken_app_exits_3_with_its_error_code(coltsfoot, tmp_path: Path):
    directory = _copy_hello(tmp_path, "broken")
    (directory / "Procfile").write_text("worker: python app.py\n")
    result = coltsfoot("deploy", str(directory), "--app", "broken", timeout=DEPLOY_TIMEOUT)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "build.no_web_process" in result.stderr


def test_a_refused_token_exits_4(coltsfoot, platform: Platform, tmp_path: Path):
    config = tmp_path / "config"
    result = subprocess.run(
        [sys.executable, "-m", "coltsfoot_cli", "apps"],
        env={
            "PATH": os.environ.get("PATH", ""),
            "COLTSFOOT_API": platform.api_url,
            "COLTSFOOT_TOKEN": "cf_no.pe",
            "COLTSFOOT_CONFIG_DIR": str(config),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 4, result.stderr
    assert "auth.invalid_token" in result.stderr
