"""Small helpers for the black-box integration tests: archives, waiting for states."""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
HELLO = REPO_ROOT / "examples" / "hello"


def tar_gz(files: dict[str, str | bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def hello_files(**overrides: str) -> dict[str, str | bytes]:
    files: dict[str, str | bytes] = {p.name: p.read_bytes() for p in HELLO.iterdir() if p.is_file()}
    files.update(overrides)
    return files


def hello_archive(**overrides: str) -> bytes:
    return tar_gz(hello_files(**overrides))


def deploy_archive(client: httpx.Client, app_id: str, archive: bytes) -> dict[str, Any]:
    response = client.post(
        f"/apps/{app_id}/deployments", files={"source": ("source.tar.gz", archive, "application/gzip")}
    )
    assert response.status_code == 202, response.text
    return response.json()  # type: ignore[no-any-return]


def wait_for_deployment(
    client: httpx.Client, deployment_id: str, states: set[str], *, timeout: float = 300.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        last = client.get(f"/deployments/{deployment_id}").json()
        if last["state"] in states:
            return last
        time.sleep(0.5)
    log = client.get(f"/deployments/{deployment_id}/log").text
    raise AssertionError(f"deployment stuck in {last.get('state')!r}, wanted {states}; log:\n{log[-4000:]}")


def wait_until(predicate: Any, *, timeout: float, interval: float = 0.5, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {message}")


def latest_deployment_number(client: httpx.Client, app_id: str) -> int:
    """The highest deployment number the app has so far (0 if none)."""
    response = client.get(f"/apps/{app_id}/deployments", params={"limit": 100})
    assert response.status_code == 200, response.text
    return max((d["number"] for d in response.json()["items"]), default=0)


def wait_for_deployment_after(
    client: httpx.Client, app_id: str, number: int, states: set[str], *, timeout: float = 300.0
) -> dict[str, Any]:
    """Wait for the first deployment numbered above `number` (say, a release the platform queued on its own
    after a config or add-on change) to reach one of `states`, and return it."""
    deadline = time.monotonic() + timeout
    newer: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        items = client.get(f"/apps/{app_id}/deployments", params={"limit": 100}).json()["items"]
        newer = sorted((d for d in items if d["number"] > number), key=lambda d: d["number"])
        if newer:
            break
        time.sleep(0.5)
    if not newer:
        raise AssertionError(f"no deployment after #{number} of app {app_id} within {timeout:.0f}s")
    return wait_for_deployment(client, newer[0]["id"], states, timeout=max(1.0, deadline - time.monotonic()))
