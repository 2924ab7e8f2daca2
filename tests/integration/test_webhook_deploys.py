"""Deploys from CI: signed webhooks carrying an archive, naming a git repository or sent by GitHub on a push,
and image deploys from a registry. Real API, worker, podman + runsc, Caddy and a local registry; every check
is made through the API or the edge."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Generator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.services import DEFAULT_BASE_IMAGE
from devstack.services import INSTANCE_LABEL
from devstack.services import Platform
from devstack.services import RegistryServer
from platform_apps.webhooks.signatures import sign_generic
from platform_apps.webhooks.signatures import sign_github
from tests.integration.helpers import HELLO
from tests.integration.helpers import hello_archive
from tests.integration.helpers import latest_deployment_number
from tests.integration.helpers import wait_for_deployment

pytestmark = pytest.mark.integration

GIT_IDENTITY = ["-c", "user.name=CI Bot", "-c", "user.email=ci@example.invalid", "-c", "commit.gpgsign=false"]
PUSHED_GREETING = "Hello from a GitHub push!"


def _podman(*args: str, timeout: float = 300) -> str:
    result = subprocess.run(
        ["podman", "--runtime", "/usr/bin/runsc", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"podman {' '.join(args[:2])} failed:\n{result.stderr[-2000:]}"
    return result.stdout


def _git(repo: Path, *args: str) -> str:
    # A scrubbed environment: the developer's own git config must not change what gets committed.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(repo), "GIT_CONFIG_NOSYSTEM": "1"}
    env["GIT_CONFIG_GLOBAL"] = os.devnull
    result = subprocess.run(
        ["git", *GIT_IDENTITY, "-C", str(repo), *args], capture_output=True, text=True, timeout=60, env=env, check=True
    )
    return result.stdout.strip()


def _post_hook(platform: Platform, app: dict[str, Any], body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(
        httpx.URL(platform.api_base).join(app["webhook_url"]),
        content=body,
        headers=headers,
        timeout=60,
        trust_env=False,
    )


def _generic_headers(secret: str, body: bytes, content_type: str, delivery: str | None = None) -> dict[str, str]:
    timestamp = str(int(time.time()))
    return {
        "Content-Type": content_type,
        "X-Coltsfoot-Timestamp": timestamp,
        "X-Coltsfoot-Signature": sign_generic(secret.encode(), timestamp, body),
        "X-Coltsfoot-Delivery": delivery or str(uuid.uuid4()),
    }


def _github_push(secret: str, *, ref: str, after: str, clone_url: str) -> tuple[bytes, dict[str, str]]:
    payload = {
        "ref": ref,
        "before": "0" * 40,
        "after": after,
        "created": False,
        "deleted": False,
        "forced": False,
        "repository": {"full_name": "ci/hello", "clone_url": clone_url},
        "head_commit": {"id": after, "message": "Change the greeting"},
    }
    body = json.dumps(payload).encode()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": sign_github(secret.encode(), body),
    }
    return body, headers


@pytest.fixture(scope="module")
def client(platform: Platform) -> httpx.Client:
    created = platform.create_tenant(f"ci{uuid.uuid4().hex[:8]}")
    return platform.client(created["token"], timeout=60)


@pytest.fixture(scope="module")
def hooked(client: httpx.Client) -> dict[str, Any]:
    """One app with a webhook secret, shared by the archive and git tests in order."""
    app = client.post("/apps", json={"name": "hooked"}).json()
    assert app["has_webhook_secret"] is False
    response = client.post(f"/apps/{app['id']}/webhook-secret")
    assert response.status_code == 200, response.text
    secret = response.json()["secret"]
    assert response.json()["webhook_url"] == app["webhook_url"]
    assert client.get(f"/apps/{app['id']}").json()["has_webhook_secret"] is True
    assert secret not in client.get(f"/apps/{app['id']}").text
    return {"app": app, "secret": secret}


@pytest.fixture
def hello_repo(tmp_path: Path) -> Path:
    """A git repository holding examples/hello on branch `main`, as a CI checkout would."""
    repo = tmp_path / "hello-repo"
    repo.mkdir()
    _git(repo, "init", "--quiet", "-b", "main")
    for path in HELLO.iterdir():
        if path.is_file():
            shutil.copyfile(path, repo / path.name)
    _git(repo, "add", "--all")
    _git(repo, "commit", "--quiet", "-m", "Hello")
    return repo


def test_signed_archive_deploys_once_per_delivery(platform: Platform, client: httpx.Client, hooked: dict[str, Any]):
    app, secret = hooked["app"], hooked["secret"]
    body = hello_archive()
    headers = _generic_headers(secret, body, "application/gzip")

    first = _post_hook(platform, app, body, headers)
    assert first.status_code == 202, first.text
    deployment = first.json()
    assert deployment["app_id"] == app["id"]
    assert deployment["source"]["kind"] == "archive"
    done = wait_for_deployment(client, deployment["id"], {"live", "failed"})
    assert done["state"] == "live", client.get(f"/deployments/{deployment['id']}/log").text
    page = platform.edge_get(app["url"])
    assert page.status_code == 200
    assert "Hello from Coltsfoot!" in page.text
    assert deployment["id"] in page.text

    # CI retries the very same delivery: the answer is the first deployment, and nothing new is queued.
    count = client.get(f"/apps/{app['id']}/deployments").json()["count"]
    again = _post_hook(platform, app, body, headers)
    assert again.status_code == 200, again.text
    assert again.json()["id"] == deployment["id"]
    assert client.get(f"/apps/{app['id']}/deployments").json()["count"] == count

    # Without the secret nothing happens.
    forged = _generic_headers("whsec_not-the-secret", body, "application/gzip")
    refused = _post_hook(platform, app, body, forged)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "webhook.bad_signature"
    assert client.get(f"/apps/{app['id']}/deployments").json()["count"] == count


def test_git_deploy_then_github_push_of_a_new_commit(
    platform: Platform, client: httpx.Client, hooked: dict[str, Any], hello_repo: Path
):
    app, secret = hooked["app"], hooked["secret"]
    url = f"file://{hello_repo}"
    first_sha = _git(hello_repo, "rev-parse", "HEAD")

    body = json.dumps({"git": {"url": url, "ref": "main"}}).encode()
    response = _post_hook(platform, app, body, _generic_headers(secret, body, "application/json"))
    assert response.status_code == 202, response.text
    deployment = response.json()
    assert deployment["source"] == {"kind": "git", "url": url, "ref": "main"}
    done = wait_for_deployment(client, deployment["id"], {"live", "failed"})
    assert done["state"] == "live", client.get(f"/deployments/{deployment['id']}/log").text
    assert done["source"]["commit"] == first_sha
    page = platform.edge_get(app["url"])
    assert page.status_code == 200
    assert "Hello from Coltsfoot!" in page.text
    assert deployment["id"] in page.text

    # A developer changes the greeting and pushes; GitHub tells the platform.
    app_py = hello_repo / "app.py"
    original = app_py.read_text()
    assert '"Hello from Coltsfoot!"' in original
    app_py.write_text(original.replace('"Hello from Coltsfoot!"', json.dumps(PUSHED_GREETING)))
    _git(hello_repo, "commit", "--quiet", "-am", "Change the greeting")
    new_sha = _git(hello_repo, "rev-parse", "HEAD")
    assert new_sha != first_sha

    body, headers = _github_push(secret, ref="refs/heads/main", after=new_sha, clone_url=url)
    pushed = _post_hook(platform, app, body, headers)
    assert pushed.status_code == 202, pushed.text
    assert pushed.json()["source"]["ref"] == new_sha
    done = wait_for_deployment(client, pushed.json()["id"], {"live", "failed"})
    assert done["state"] == "live", client.get(f"/deployments/{pushed.json()['id']}/log").text
    assert done["source"]["commit"] == new_sha
    page = platform.edge_get(app["url"])
    assert page.status_code == 200
    assert PUSHED_GREETING in page.text
    assert pushed.json()["id"] in page.text


def test_github_push_to_another_branch_deploys_nothing(
    platform: Platform, client: httpx.Client, hooked: dict[str, Any], hello_repo: Path
):
    app, secret = hooked["app"], hooked["secret"]
    _git(hello_repo, "checkout", "--quiet", "-b", "feature")
    (hello_repo / "VERSION").write_text("feature\n")
    _git(hello_repo, "add", "VERSION")
    _git(hello_repo, "commit", "--quiet", "-m", "Work in progress")
    sha = _git(hello_repo, "rev-parse", "HEAD")
    before = latest_deployment_number(client, app["id"])
    live_before = client.get(f"/apps/{app['id']}").json()["live_deployment_id"]

    body, headers = _github_push(secret, ref="refs/heads/feature", after=sha, clone_url=f"file://{hello_repo}")
    response = _post_hook(platform, app, body, headers)
    assert response.status_code == 204, response.text
    assert response.content == b""

    # A ping (sent when the hook is set up) is acknowledged the same way.
    ping = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1}).encode()
    ping_headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "ping",
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": sign_github(secret.encode(), ping),
    }
    assert _post_hook(platform, app, ping, ping_headers).status_code == 204

    time.sleep(1)
    assert latest_deployment_number(client, app["id"]) == before
    assert client.get(f"/apps/{app['id']}").json()["live_deployment_id"] == live_before


IMAGE_SERVER = """
import http.server
import os


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"image deploy ok\\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


http.server.ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler).serve_forever()
"""

IMAGE_CONTAINERFILE = f"""FROM {DEFAULT_BASE_IMAGE}
COPY server.py /srv/server.py
CMD ["python3", "/srv/server.py"]
"""


@pytest.fixture
def pushed_image(platform: Platform, registry_server: RegistryServer, tmp_path: Path) -> Generator[str]:
    """A tiny image built here, pushed to the local registry, and removed from local storage again, so the
    platform has to pull it like an image built by someone else's CI."""
    context = tmp_path / "image"
    context.mkdir()
    (context / "server.py").write_text(IMAGE_SERVER)
    (context / "Containerfile").write_text(IMAGE_CONTAINERFILE)
    ref = f"{registry_server.host}/demo:1"
    _podman(
        "build",
        "--isolation=chroot",
        "--pull=never",
        "--label",
        f"{INSTANCE_LABEL}={platform.instance_id}",
        "-t",
        ref,
        "-f",
        str(context / "Containerfile"),
        str(context),
    )
    _podman("push", "--tls-verify=false", ref)
    _podman("rmi", ref)
    try:
        yield ref
    finally:
        subprocess.run(["podman", "rmi", "--ignore", ref], capture_output=True, timeout=120, check=False)


def test_image_deploy_pulls_and_runs_the_images_own_command(
    platform: Platform, client: httpx.Client, pushed_image: str
):
    app = client.post("/apps", json={"name": "image"}).json()
    response = client.post(f"/apps/{app['id']}/deployments", json={"image": pushed_image})
    assert response.status_code == 202, response.text
    deployment = response.json()
    assert deployment["source"] == {"kind": "image", "url": pushed_image}
    done = wait_for_deployment(client, deployment["id"], {"live", "failed"}, timeout=180)
    assert done["state"] == "live", client.get(f"/deployments/{deployment['id']}/log").text
    page = platform.edge_get(app["url"])
    assert page.status_code == 200
    assert page.text == "image deploy ok\n"
    assert f"Pulling {pushed_image}" in client.get(f"/deployments/{deployment['id']}/log").text
    # The tenant's image gets the same sandbox as a built one: gVisor, a read-only root, a non-root user.
    names = _podman("ps", "--filter", f"label=coltsfoot.app={app['id']}", "--format", "{{.Names}}").split()
    assert len(names) == 1
    info = json.loads(_podman("inspect", names[0]))[0]
    assert info["OCIRuntime"].endswith("runsc")
    assert info["HostConfig"]["ReadonlyRootfs"] is True
    assert info["Config"]["User"]
    assert not info["Config"]["User"].startswith("0")
