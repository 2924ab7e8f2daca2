"""The host firewall on the real stack, probed from inside a tenant container.

A tiny app (examples/hello plus a probe endpoint) dials addresses with Python sockets and short timeouts. The
"LAN", "metadata" and "public" hosts it dials are network namespaces this module creates itself, each behind a
veth pair with a host route (checked with `ip route get` before anything dials them): nothing here sends
traffic to a real address outside this machine. The egress policies are switched by re-applying the table
with `manage.py firewall_apply --egress ...` (beat stopped meanwhile, so the reconciler's sync does not put the
configured policy back under the test), from the same container.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from devstack.services import Platform
from drivers import firewall
from tests.integration.helpers import deploy_archive
from tests.integration.helpers import hello_files
from tests.integration.helpers import tar_gz
from tests.integration.helpers import wait_for_deployment
from tests.integration.helpers import wait_until

pytestmark = pytest.mark.integration

PROBE_APP = """
from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor

from flask import Flask
from flask import jsonify
from flask import request

from app import app


def dial(host: str, port: int, timeout: float) -> str:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return "open"
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return type(exc).__name__


@app.get("/probe")
def probe():
    host = request.args["host"]
    ports = [int(p) for p in request.args["ports"].split(",")]
    timeout = float(request.args.get("timeout", "2"))
    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(lambda port: dial(host, port, timeout), ports))
    return jsonify(dict(zip([str(p) for p in ports], results)))


@app.get("/resolve")
def resolve():
    try:
        infos = socket.getaddrinfo(request.args["name"], 443, type=socket.SOCK_STREAM)
    except OSError as exc:
        return jsonify({"ok": False, "error": str(exc)})
    return jsonify({"ok": True, "addresses": sorted({info[4][0] for info in infos})})
"""

FAKE_PORT = 8080
LAN = "10.213.7.2"
METADATA = "169.254.77.7"
PUBLIC = "198.51.100.7"


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


@dataclass
class FakeHost:
    """A network namespace with one address, behind a veth pair whose host side has the route to it, serving
    HTTP on FAKE_PORT."""

    address: str
    host_side: str
    netns: str
    veth: str
    server: subprocess.Popen[bytes] | None = None


@contextlib.contextmanager
def fake_hosts(specs: dict[str, tuple[str, str]]) -> Iterator[dict[str, FakeHost]]:
    """`specs`: name -> (address in the namespace, host side address, same /24). Everything made is removed
    at the end, even after a failure half-way."""
    suffix = secrets.token_hex(3)
    made: dict[str, FakeHost] = {}
    try:
        for index, (name, (address, host_side)) in enumerate(specs.items()):
            host = FakeHost(address, host_side, netns=f"cf-fw-{suffix}-{index}", veth=f"cffw{suffix}{index}")
            ip("netns", "add", host.netns)
            made[name] = host
            ip("link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
            ip("addr", "add", f"{host_side}/24", "dev", host.veth)
            ip("link", "set", host.veth, "up")
            ip("-n", host.netns, "addr", "add", f"{address}/24", "dev", "eth0")
            ip("-n", host.netns, "link", "set", "eth0", "up")
            ip("-n", host.netns, "link", "set", "lo", "up")
            ip("-n", host.netns, "route", "add", "default", "via", host_side)
            # Never dial an address that would leave the machine: it must route to our veth.
            route = ip("-j", "route", "get", address).stdout
            assert json.loads(route)[0]["dev"] == host.veth, route
            host.server = subprocess.Popen(
                ["ip", "netns", "exec", host.netns, "python3", "-m", "http.server", "--bind", address, str(FAKE_PORT)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        for host in made.values():
            wait_until(lambda h=host: _listening(h), timeout=20, message=f"the fake host {host.address}")
        yield made
    finally:
        for host in made.values():
            if host.server is not None:
                host.server.kill()
                host.server.wait(timeout=10)
            subprocess.run(["ip", "link", "del", host.veth], capture_output=True, timeout=30, check=False)
            subprocess.run(["ip", "netns", "del", host.netns], capture_output=True, timeout=30, check=False)


def _listening(host: FakeHost) -> bool:
    dial = f"import socket; socket.create_connection(('{host.address}', {FAKE_PORT}), 1)"
    result = subprocess.run(
        ["ip", "netns", "exec", host.netns, "python3", "-c", dial],
        capture_output=True,
        timeout=10,
        check=False,
    )
    return result.returncode == 0


@pytest.fixture(scope="module")
def prober(platform: Platform) -> dict[str, Any]:
    """A tenant whose app can probe from inside its container: its URL, the gateway of its network."""
    created = platform.create_tenant(f"fw{uuid.uuid4().hex[:8]}")
    client = platform.client(created["token"])
    app = client.post("/apps", json={"name": "probe"}).json()
    files = hello_files(
        **{"probe.py": PROBE_APP, "Procfile": "web: gunicorn --bind 0.0.0.0:$PORT --workers 2 --threads 4 probe:app\n"}
    )
    deployment = deploy_archive(client, app["id"], tar_gz(files))
    done = wait_for_deployment(client, deployment["id"], {"live", "failed"}, timeout=600)
    assert done["state"] == "live", client.get(f"/deployments/{deployment['id']}/log").text
    network = f"cf-t-{uuid.UUID(created['tenant_id']).hex[:20]}"
    inspected = subprocess.run(
        ["podman", "network", "inspect", network], capture_output=True, text=True, timeout=60, check=True
    )
    details = json.loads(inspected.stdout)[0]
    return {
        "url": app["url"],
        "gateway": details["subnets"][0]["gateway"],
        "bridge": details["network_interface"],
        "network": network,
    }


def probe(
    platform: Platform, prober: dict[str, Any], host: str, ports: list[int], timeout: float = 2.0
) -> dict[int, str]:
    """What the app's container sees dialing host:port for each port: "open", "timeout" or the error."""
    url = f"{prober['url'].rstrip('/')}/probe?host={host}&ports={','.join(map(str, ports))}&timeout={timeout}"
    response = platform.edge_get(url, timeout=timeout * 4 + 30)
    assert response.status_code == 200, response.text
    return {int(port): str(state) for port, state in response.json().items()}


def reachable(platform: Platform, prober: dict[str, Any], host: str) -> bool:
    return probe(platform, prober, host, [FAKE_PORT])[FAKE_PORT] == "open"


def resolves(platform: Platform, prober: dict[str, Any]) -> bool:
    # The same lookup every dependency install makes, through the resolver the host gives containers.
    response = platform.edge_get(f"{prober['url'].rstrip('/')}/resolve?name=pypi.org", timeout=30)
    assert response.status_code == 200, response.text
    return bool(response.json()["ok"])


def installed(platform: Platform) -> firewall.Installed | None:
    return firewall.installed(platform.firewall_table)


@contextlib.contextmanager
def egress_policy(platform: Platform, egress: str) -> Iterator[None]:
    """The table re-applied with another policy while beat is stopped; the configured one restored after."""
    platform.stop_beat()
    time.sleep(1.0)  # a reconcile pass already queued finishes (and syncs) before our apply
    try:
        summary = platform.firewall_apply("--egress", egress)
        assert summary["egress"] == str(firewall.egress_parse(egress))
        before = installed(platform)
        yield
        assert installed(platform) == before, "the table changed under the test (a reconcile pass?)"
    finally:
        platform.firewall_apply()
        platform.start_beat()


@pytest.fixture(scope="module")
def hosts() -> Iterator[dict[str, FakeHost]]:
    with fake_hosts(
        {"lan": (LAN, "10.213.7.1"), "metadata": (METADATA, "169.254.77.1"), "public": (PUBLIC, "198.51.100.1")}
    ) as made:
        yield made


def test_the_table_covers_the_tenant_network_created_after_it(platform: Platform, prober: dict[str, Any]):
    assert platform.firewall_managed
    listing = subprocess.run(
        ["nft", "list", "set", "inet", platform.firewall_table, "tenant_bridges"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert f'"{prober["bridge"]}"' in listing


def test_every_host_port_but_pgbouncer_is_closed_on_the_gateway(platform: Platform, prober: dict[str, Any]):
    # A listener of our own on all interfaces, as any service on this host might be.
    with socket.socket() as listener:
        listener.bind(("0.0.0.0", 0))  # noqa: S104 - the point: a service bound on every interface
        listener.listen()
        own_port = listener.getsockname()[1]
        listening = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True, timeout=30, check=True).stdout
        ports = {int(line.split()[3].rsplit(":", 1)[1]) for line in listening.splitlines() if line.strip()}
        ports |= {own_port, platform.pgbouncer.port, 22, 53, 80, 443}
        states = probe(platform, prober, prober["gateway"], sorted(ports))
    assert states[platform.pgbouncer.port] == "open"
    opened = sorted(port for port, state in states.items() if state == "open")
    assert opened == [platform.pgbouncer.port], states


@pytest.mark.parametrize("egress", ["public", "none", "203.0.113.0/24", "198.51.100.0/24,10.213.7.0/24"])
def test_lan_and_metadata_are_unreachable_and_public_follows_the_policy(
    platform: Platform, prober: dict[str, Any], hosts: dict[str, FakeHost], egress: str
):
    with egress_policy(platform, egress):
        assert not reachable(platform, prober, LAN)
        assert not reachable(platform, prober, METADATA)
        public = reachable(platform, prober, PUBLIC)
        assert resolves(platform, prober), f"DNS does not resolve under {egress}"
    expected = egress == "public" or egress.startswith("198.51.100.0/24")
    assert public is expected, f"public host reachable={public} under egress={egress}"


def test_without_the_table_the_lan_would_be_reachable(
    platform: Platform, prober: dict[str, Any], hosts: dict[str, FakeHost]
):
    """The control: the fake LAN host is unreachable because of the firewall, not of the test's plumbing."""
    platform.stop_beat()
    time.sleep(1.0)
    try:
        platform.firewall_remove()
        assert reachable(platform, prober, LAN)
        assert reachable(platform, prober, METADATA)
    finally:
        platform.firewall_apply()
        platform.start_beat()
    assert not reachable(platform, prober, LAN)


def test_ready_checks_the_table(platform: Platform):
    with platform.client() as client:
        assert client.get("/ready").json()["checks"]["firewall"] is True
    platform.stop_beat()
    time.sleep(1.0)
    try:
        platform.firewall_remove()
        with platform.client() as client:
            response = client.get("/ready")
        assert response.status_code == 503
        assert response.json()["checks"]["firewall"] is False
    finally:
        platform.firewall_apply()
        platform.start_beat()
    with platform.client() as client:
        assert client.get("/ready").status_code == 200


def test_a_rerun_replaces_the_table_without_duplicates(platform: Platform, prober: dict[str, Any]):
    before = installed(platform)
    assert before is not None
    platform.firewall_apply("--force")
    platform.firewall_apply("--force")
    platform.ensure()  # what a `make up` rerun does: migrate, apply, adopt the running processes
    tables = firewall.table_names()
    assert tables.count(f"inet {platform.firewall_table}") == 1
    after = installed(platform)
    assert after == before
    assert after is not None
    assert after.rules == {"input": 8, "forward": 9}  # public: no egress drop; one accept within a tenant bridge
