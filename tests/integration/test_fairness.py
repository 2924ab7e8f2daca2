"""Resource fairness on the real stack: a gunicorn with 40 workers runs in one gVisor sandbox, and a fork
bomb stays inside its own replica while a neighbour tenant's app and the platform API keep answering.

The CPU side (a tenant burning its whole quota against a neighbour's p95 and the API's p99) is measured by
`bench/fairness.py`, which needs a quiet machine; here only containment is asserted.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from devstack.services import Platform
from tests.integration.helpers import deploy_archive
from tests.integration.helpers import hello_files
from tests.integration.helpers import tar_gz
from tests.integration.helpers import wait_for_deployment
from tests.integration.helpers import wait_until

pytestmark = pytest.mark.integration

WORKERS = 40

# The hello app with one more route: how many processes its sandbox holds (gVisor's /proc shows the guest's).
PROCS_ROUTE = """

@app.get("/procs")
def procs() -> Response:
    return Response(str(sum(1 for entry in os.listdir("/proc") if entry.isdigit())), mimetype="text/plain")
"""

# A web process that serves HTTP and, on GET /bomb?seconds=N, forks without bound for N seconds: every
# child forks again (a real bomb), pressing on after EAGAIN. Children exit at the deadline; SIGCHLD is
# ignored so the kernel reaps them. GET / says how often fork failed, i.e. whether the guest's own limit held.
BOMB = r"""
import http.server
import os
import signal
import threading
import time
import urllib.parse

failures = 0


def press(deadline):
    global failures
    while time.monotonic() < deadline:
        try:
            pid = os.fork()
        except OSError:
            failures += 1
            time.sleep(0.005)
            continue
        if pid == 0:
            try:
                press(deadline)
            finally:
                os._exit(0)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        body = f"fork failures {failures}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        if url.path == "/bomb":  # only once the answer is out: the bomb may take the whole sandbox down
            seconds = min(60.0, float(urllib.parse.parse_qs(url.query).get("seconds", ["10"])[0]))
            threading.Thread(target=press, args=(time.monotonic() + seconds,), daemon=True).start()

    def log_message(self, *args):
        pass


signal.signal(signal.SIGCHLD, signal.SIG_IGN)
http.server.ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler).serve_forever()
"""


@dataclass
class Deployed:
    client: httpx.Client
    app: dict[str, Any]


def _tenant(platform: Platform, prefix: str, **quotas: int) -> httpx.Client:
    slug = f"{prefix}{uuid.uuid4().hex[:6]}"
    created = platform.create_tenant(slug)
    if quotas:
        assignments = ", ".join(f"{key}={value}" for key, value in quotas.items())
        code = f"from tenants.models import Tenant; Tenant.objects.filter(slug={slug!r}).update({assignments})"
        platform.manage("shell", "-c", code)
    return platform.client(created["token"], timeout=30.0)


def _deploy(client: httpx.Client, app: dict[str, Any], files: dict[str, str | bytes]) -> None:
    deployment = deploy_archive(client, app["id"], tar_gz(files))
    done = wait_for_deployment(client, deployment["id"], {"live", "failed"}, timeout=420)
    assert done["state"] == "live", (done, client.get(f"/deployments/{deployment['id']}/log").text[-3000:])


@pytest.fixture(scope="module")
def many_workers(platform: Platform) -> Iterator[Deployed]:
    """The hello app under gunicorn with 40 workers, in a tenant allowed the memory they need."""
    client = _tenant(platform, "fw", max_memory_mb=1536)
    response = client.post("/apps", json={"name": "workers", "memory_mb": 1536, "cpus": 1.0})
    assert response.status_code == 201, response.text
    app = response.json()
    app_py = hello_files()["app.py"]
    assert isinstance(app_py, bytes)
    files = hello_files(
        Procfile=f"web: gunicorn --bind 0.0.0.0:$PORT --workers {WORKERS} --timeout 120 app:app\n",
        **{"app.py": app_py.decode() + PROCS_ROUTE},
    )
    _deploy(client, app, files)
    yield Deployed(client, app)
    client.close()


@pytest.fixture(scope="module")
def bomb(platform: Platform) -> Iterator[Deployed]:
    client = _tenant(platform, "fb")
    response = client.post("/apps", json={"name": "bomb", "cpus": 0.5})
    assert response.status_code == 201, response.text
    app = response.json()
    _deploy(client, app, {"Procfile": "web: python3 bomb.py\n", "bomb.py": BOMB})
    yield Deployed(client, app)
    client.close()


def test_a_gunicorn_with_40_workers_runs_and_serves(platform: Platform, many_workers: Deployed):
    url = many_workers.app["url"]

    def all_workers_up() -> bool:
        response = platform.edge_get(f"{url.rstrip('/')}/procs", timeout=10.0)
        return response.status_code == 200 and int(response.text) >= WORKERS + 1  # the master too

    wait_until(all_workers_up, timeout=120, interval=2, message=f"{WORKERS} gunicorn workers")
    for _ in range(20):
        assert platform.edge_get(url, timeout=10.0).status_code == 200
    replicas = many_workers.client.get(f"/apps/{many_workers.app['id']}/replicas").json()["items"]
    assert [r["restarts"] for r in replicas] == [0], replicas  # it never died on the way


def test_a_fork_bomb_is_contained_to_its_own_replica(platform: Platform, many_workers: Deployed, bomb: Deployed):
    neighbour_url = many_workers.app["url"]
    assert platform.edge_get(neighbour_url, timeout=10.0).status_code == 200
    api = platform.client(timeout=5.0)

    seconds = 25.0
    assert platform.edge_get(f"{bomb.app['url'].rstrip('/')}/bomb?seconds={seconds:g}", timeout=10.0).status_code == 200
    failures: list[str] = []
    answered = 0
    deadline = time.monotonic() + seconds + 5
    while time.monotonic() < deadline:
        for what in ("neighbour", "api"):
            try:
                if what == "neighbour":
                    status = platform.edge_get(neighbour_url, timeout=5.0).status_code
                else:
                    status = api.get("/health").status_code
            except httpx.HTTPError as exc:
                failures.append(f"{what}: {type(exc).__name__}")
                continue
            if status != 200:
                failures.append(f"{what}: {status}")
            answered += 1
        time.sleep(0.5)
    api.close()
    assert not failures, failures
    assert answered >= 40

    # The bomb's own replica: either gVisor's process limit held and it still serves (fork kept failing with
    # EAGAIN), or the sandbox died and the reconciler restarted it. Either way it answers again.
    def bomb_answers() -> bool:
        try:
            return platform.edge_get(bomb.app["url"], timeout=5.0).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(bomb_answers, timeout=120, interval=1, message="the bomb's replica to answer again")
    replicas = bomb.client.get(f"/apps/{bomb.app['id']}/replicas").json()["items"]
    if replicas[0]["restarts"] == 0:
        # It survived: then the guest must have been refused forks, not the host.
        text = platform.edge_get(bomb.app["url"], timeout=5.0).text
        assert int(text.split()[-1]) > 0, text
    # And the neighbour never restarted.
    neighbour = many_workers.client.get(f"/apps/{many_workers.app['id']}/replicas").json()["items"]
    assert [r["restarts"] for r in neighbour] == [0], neighbour
