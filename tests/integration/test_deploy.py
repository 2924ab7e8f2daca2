"""The deploy pipeline end to end: real API (gunicorn), real Celery worker, real podman + runsc,
real Caddy. Every check is made through the API or the edge, as a tenant or visitor would."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from typing import Any

import httpx
import pytest

from devstack.services import Platform
from tests.integration.helpers import deploy_archive
from tests.integration.helpers import hello_archive
from tests.integration.helpers import tar_gz
from tests.integration.helpers import wait_for_deployment
from tests.integration.helpers import wait_until

pytestmark = pytest.mark.integration


def _podman(*args: str) -> str:
    result = subprocess.run(
        ["podman", "--runtime", "/usr/bin/runsc", *args], check=True, capture_output=True, text=True, timeout=60
    )
    return result.stdout


def _app_containers(app_id: str) -> list[str]:
    out = _podman("ps", "--filter", f"label=coltsfoot.app={app_id}", "--format", "{{.Names}}")
    return sorted(line for line in out.splitlines() if line.strip())


@pytest.fixture(scope="module")
def tenant(platform: Platform) -> dict[str, Any]:
    # The module's apps stay (about 8 CPUs of replicas x cpus in all): above the default quota of 4.
    created = platform.create_tenant(f"t{uuid.uuid4().hex[:8]}", max_cpus=16)
    return {**created, "client": platform.client(created["token"])}


@pytest.fixture(scope="module")
def live_app(platform: Platform, tenant: dict[str, Any]) -> dict[str, Any]:
    """One app deployed once from examples/hello, shared by the tests that build on it."""
    client = tenant["client"]
    app = client.post("/apps", json={"name": "hello", "replicas": 2}).json()
    first = deploy_archive(client, app["id"], hello_archive())
    assert first["state"] == "queued"
    done = wait_for_deployment(client, first["id"], {"live", "failed"})
    assert done["state"] == "live", client.get(f"/deployments/{first['id']}/log").text
    return {"app": app, "first": done}


def test_hello_is_served_through_the_edge_from_gvisor(platform: Platform, tenant: dict[str, Any], live_app: Any):
    app = live_app["app"]
    response = platform.edge_get(app["url"])
    assert response.status_code == 200
    assert "Hello from Coltsfoot!" in response.text
    assert live_app["first"]["id"] in response.text

    log = tenant["client"].get(f"/deployments/{live_app['first']['id']}/log").text
    assert "release phase ran" in log

    names = _app_containers(app["id"])
    assert len(names) == 2
    for name in names:
        info = json.loads(_podman("inspect", name))[0]
        assert info["OCIRuntime"].endswith("runsc")
        host = info["HostConfig"]
        assert host["ReadonlyRootfs"] is True
        dropped = {cap.upper().removeprefix("CAP_") for cap in host["CapDrop"]}
        assert dropped >= {"CHOWN", "DAC_OVERRIDE", "KILL", "SETUID", "SETGID", "NET_BIND_SERVICE"}
        assert not info.get("EffectiveCaps")
        assert "no-new-privileges" in " ".join(host["SecurityOpt"])
        assert host["PortBindings"] in ({}, None)
        user = info["Config"]["User"]
        assert user
        assert not user.startswith("0")
    # An unknown host gets the edge's own 404, in the API's error shape.
    missing = platform.edge_get(app["url"].replace("hello-", "nothing-"))
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "app.not_found"


def test_redeploy_without_dropping_a_request(platform: Platform, tenant: dict[str, Any], live_app: Any):
    client = tenant["client"]
    app = live_app["app"]
    stop = threading.Event()
    results: list[int | str] = []

    def hammer() -> None:
        while not stop.is_set():
            try:
                results.append(platform.edge_get(app["url"], timeout=10).status_code)
            except httpx.HTTPError as exc:
                results.append(type(exc).__name__)

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        second = deploy_archive(client, app["id"], hello_archive(**{"VERSION": "2"}))
        done = wait_for_deployment(client, second["id"], {"live", "failed"})
        # Keep requesting while the old replicas drain and are retired.
        wait_until(lambda: len(_app_containers(app["id"])) == 2, timeout=60, message="the old replicas to go")
    finally:
        stop.set()
        thread.join()
    assert done["state"] == "live"
    failures = [r for r in results if r != 200]
    assert len(results) > 20
    assert failures == [], f"{len(failures)} of {len(results)} requests failed: {failures[:10]}"
    assert second["id"] in platform.edge_get(app["url"]).text
    states = {d["id"]: d["state"] for d in client.get(f"/apps/{app['id']}/deployments").json()["items"]}
    assert states[live_app["first"]["id"]] == "superseded"
    # The old replicas drain, then stop gracefully, after the switch.
    wait_until(lambda: len(_app_containers(app["id"])) == 2, timeout=60, message="the old replicas to be retired")
    assert all(name.startswith(f"tsl-{second['id']}-") for name in _app_containers(app["id"]))


def _replica_addresses(app_id: str) -> list[str]:
    addresses = []
    for name in _app_containers(app_id):
        networks = json.loads(_podman("inspect", name))[0]["NetworkSettings"]["Networks"]
        addresses += [n["IPAddress"] for n in networks.values() if n.get("IPAddress")]
    return sorted(addresses)


def test_a_deploy_switches_through_the_platforms_dns_without_touching_the_edge_config(
    platform: Platform, tenant: dict[str, Any], live_app: Any
):
    client = tenant["client"]
    app = live_app["app"]
    neighbour = client.post("/apps", json={"name": "neighbour", "replicas": 1}).json()
    first = deploy_archive(client, neighbour["id"], hello_archive())
    assert wait_for_deployment(client, first["id"], {"live", "failed"})["state"] == "live"
    route_path = f"{platform.caddy.admin_url}/id/app-{app['id']}"
    route = httpx.get(route_path, timeout=10).json()
    (proxy,) = [h for h in route["handle"] if h["handler"] == "reverse_proxy"]
    name = f"{app['id']}.apps.coltsfoot.internal"
    assert proxy["dynamic_upstreams"]["name"] == name
    assert proxy["dynamic_upstreams"]["resolver"] == {"addresses": [f"udp/{platform.dns.listen}"]}
    hosts_file = platform.dns.hosts_dir / app["id"]
    assert sorted(line.split()[0] for line in hosts_file.read_text().splitlines()) == _replica_addresses(app["id"])
    stop = threading.Event()
    results: dict[str, list[int | str]] = {"app": [], "neighbour": []}

    def hammer(which: str, url: str) -> None:
        while not stop.is_set():
            try:
                results[which].append(platform.edge_get(url, timeout=10).status_code)
            except httpx.HTTPError as exc:
                results[which].append(type(exc).__name__)

    threads = [
        threading.Thread(target=hammer, args=(k, u)) for k, u in (("app", app["url"]), ("neighbour", neighbour["url"]))
    ]
    for thread in threads:
        thread.start()
    try:
        second = deploy_archive(client, app["id"], hello_archive(**{"VERSION": "dns"}))
        done = wait_for_deployment(client, second["id"], {"live", "failed"})
        wait_until(lambda: len(_app_containers(app["id"])) == 2, timeout=60, message="the old replicas to go")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert done["state"] == "live", client.get(f"/deployments/{second['id']}/log").text
    for which, answers in results.items():
        failures = [r for r in answers if r != 200]
        assert len(answers) > 20, which
        assert failures == [], f"{which}: {len(failures)} of {len(answers)} requests failed: {failures[:10]}"
    # Traffic reached the new replicas through the name (dnsmasq answering from the rewritten hosts file) ...
    assert second["id"] in platform.edge_get(app["url"]).text
    assert sorted(line.split()[0] for line in hosts_file.read_text().splitlines()) == _replica_addresses(app["id"])
    # ... and the edge's config did not change: the switch was no Caddy config load.
    assert httpx.get(route_path, timeout=10).json() == route


def test_rollback_serves_the_earlier_image(platform: Platform, tenant: dict[str, Any], live_app: Any):
    client = tenant["client"]
    app = live_app["app"]
    first_id = live_app["first"]["id"]
    response = client.post(f"/apps/{app['id']}/rollback", json={"deployment_id": first_id})
    assert response.status_code == 202
    rollback = wait_for_deployment(client, response.json()["id"], {"live", "failed"})
    assert rollback["state"] == "live"
    assert rollback["source"] == {"kind": "rollback", "deployment_id": first_id}
    assert rollback["image"] == live_app["first"]["image"]
    assert rollback["id"] in platform.edge_get(app["url"]).text
    assert client.get(f"/apps/{app['id']}").json()["live_deployment_id"] == rollback["id"]
    wait_until(
        lambda: all(n.startswith(f"tsl-{rollback['id']}-") for n in _app_containers(app["id"])),
        timeout=60,
        message="the replaced replicas to be retired",
    )


def test_crashing_app_fails_with_its_output_and_old_version_keeps_serving(
    platform: Platform, tenant: dict[str, Any], live_app: Any
):
    client = tenant["client"]
    app = live_app["app"]
    serving = client.get(f"/apps/{app['id']}").json()["live_deployment_id"]
    crashing = hello_archive(
        Procfile="web: python -c 'import sys; print(\"boom: cannot start\"); sys.exit(3)'\n",
    )
    deployment = deploy_archive(client, app["id"], crashing)
    done = wait_for_deployment(client, deployment["id"], {"live", "failed"})
    assert done["state"] == "failed"
    assert done["error"]["code"] == "start.unhealthy"
    assert "boom: cannot start" in client.get(f"/deployments/{deployment['id']}/log").text
    page = platform.edge_get(app["url"])
    assert page.status_code == 200
    assert serving in page.text
    assert client.get(f"/apps/{app['id']}").json()["live_deployment_id"] == serving
    # The failed deployment left no container behind; the serving replicas are untouched.
    assert [n for n in _app_containers(app["id"]) if n.startswith(f"tsl-{deployment['id']}")] == []
    assert sorted(_app_containers(app["id"])) == [f"tsl-{serving}-0", f"tsl-{serving}-1"]


def test_missing_procfile_is_a_user_error(tenant: dict[str, Any]):
    client = tenant["client"]
    app = client.post("/apps", json={"name": "noproc"}).json()
    deployment = deploy_archive(client, app["id"], tar_gz({"app.py": "print('hi')\n", "requirements.txt": ""}))
    done = wait_for_deployment(client, deployment["id"], {"live", "failed"}, timeout=120)
    assert done["state"] == "failed"
    assert done["error"]["code"] == "build.no_web_process"


def test_hostile_archive_is_refused_up_front(tenant: dict[str, Any]):
    client = tenant["client"]
    app = client.post("/apps", json={"name": "hostile"}).json()
    response = client.post(
        f"/apps/{app['id']}/deployments", files={"source": ("x.tar.gz", b"not an archive", "application/gzip")}
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "source.not_an_archive"
    assert client.get(f"/apps/{app['id']}/deployments").json()["count"] == 0


def test_worker_killed_mid_deploy_converges(platform: Platform, tenant: dict[str, Any]):
    client = tenant["client"]
    app = client.post("/apps", json={"name": "resilient", "replicas": 2}).json()
    # A fresh dependency set, so the deploy spends long enough building to be killed mid-way.
    archive = hello_archive(**{"requirements.txt": "flask==3.1.3\ngunicorn==27.0.1\nitsdangerous>=2.2\n"})
    deployment = deploy_archive(client, app["id"], archive)
    wait_until(
        lambda: client.get(f"/deployments/{deployment['id']}").json()["state"] in {"building", "starting"},
        timeout=60,
        interval=0.1,
        message="the deployment to start building",
    )
    time.sleep(1.0)
    platform.kill_worker()
    platform.start_worker()
    done = wait_for_deployment(client, deployment["id"], {"live", "failed"}, timeout=420)
    assert done["state"] == "live", client.get(f"/deployments/{deployment['id']}/log").text
    assert platform.edge_get(app["url"]).status_code == 200
    deployments = client.get(f"/apps/{app['id']}/deployments").json()["items"]
    assert [d["state"] for d in deployments] == ["live"]
    wait_until(lambda: len(_app_containers(app["id"])) == 2, timeout=30, message="exactly two replicas")
    names = _app_containers(app["id"])
    assert all(name.startswith(f"tsl-{deployment['id']}-") for name in names)


def test_other_tenant_gets_404_on_every_deployment_endpoint(platform: Platform, tenant: dict[str, Any], live_app: Any):
    other = platform.create_tenant(f"o{uuid.uuid4().hex[:8]}")
    intruder = platform.client(other["token"])
    app_id = live_app["app"]["id"]
    deployment_id = live_app["first"]["id"]
    calls = [
        intruder.post(
            f"/apps/{app_id}/deployments", files={"source": ("s.tar.gz", hello_archive(), "application/gzip")}
        ),
        intruder.get(f"/apps/{app_id}/deployments"),
        intruder.get(f"/deployments/{deployment_id}"),
        intruder.get(f"/deployments/{deployment_id}/log"),
        intruder.post(f"/apps/{app_id}/rollback", json={"deployment_id": deployment_id}),
        intruder.delete(f"/apps/{app_id}"),
    ]
    assert [c.status_code for c in calls] == [404] * len(calls)
    assert all(c.json()["error"]["code"] == "not_found" for c in calls)
    assert platform.edge_get(live_app["app"]["url"]).status_code == 200


def test_delete_app_tears_everything_down(platform: Platform, tenant: dict[str, Any]):
    client = tenant["client"]
    app = client.post("/apps", json={"name": "goner"}).json()
    deployment = deploy_archive(client, app["id"], hello_archive())
    assert wait_for_deployment(client, deployment["id"], {"live", "failed"})["state"] == "live"
    assert platform.edge_get(app["url"]).status_code == 200
    response = client.delete(f"/apps/{app['id']}")
    assert response.status_code == 202
    assert response.json()["state"] == "deleting"
    wait_until(lambda: client.get(f"/apps/{app['id']}").status_code == 404, timeout=120, message="app gone")
    assert platform.edge_get(app["url"]).status_code == 404
    assert _app_containers(app["id"]) == []
    assert not (platform.dns.hosts_dir / app["id"]).exists()  # its upstream name is gone with it


def test_health_and_ready_report_real_dependencies(platform: Platform):
    client = platform.client()
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200
    checks = {"database": True, "broker": True, "caddy": True}
    if platform.firewall_managed:  # the host firewall's table (tests/integration/test_firewall.py)
        checks["firewall"] = True
    assert ready.json() == {"status": "ready", "checks": checks}
