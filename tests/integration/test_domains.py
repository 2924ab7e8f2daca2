"""Custom domains end to end, as a tenant and a visitor see them: the API says which TXT record proves
ownership, the tenant publishes it at a real (local, authoritative) DNS server, the platform checks it
through its resolver setting, and only then does the edge route the name and present a certificate for it
(Caddy's internal CA here, trusted from its admin API's /pki/ca/local). One app is deployed for the module."""

from __future__ import annotations

import socket
import ssl
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.services import Platform
from tests.integration.dns_server import LocalDnsServer
from tests.integration.helpers import deploy_archive
from tests.integration.helpers import hello_archive
from tests.integration.helpers import wait_for_deployment
from tests.integration.helpers import wait_until

pytestmark = pytest.mark.integration


def _https_get(platform: Platform, hostname: str, path: str = "/", *, cafile: Path) -> tuple[int, str]:
    """GET https://<hostname><path> through the edge's HTTPS listener (SNI and Host are `hostname`),
    verifying the certificate against `cafile` and the name. Raises ssl.SSLError when refused."""
    context = ssl.create_default_context(cafile=str(cafile))
    with (
        socket.create_connection(("127.0.0.1", platform.caddy.tls_port), timeout=15) as raw,
        context.wrap_socket(raw, server_hostname=hostname) as conn,
    ):
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: {hostname}\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode(errors="replace")


def _http_get(platform: Platform, hostname: str, path: str = "/") -> httpx.Response:
    return platform.edge_get(f"http://{hostname}:{platform.caddy.edge_port}{path}", follow_redirects=False)


def _status(platform: Platform, hostname: str, path: str = "/") -> int | None:
    """The edge's HTTP status for `hostname`, or None while the connection fails (Caddy 2.6 reloads its
    whole config on every admin change, and a request in that moment can be reset): for polling."""
    try:
        return _http_get(platform, hostname, path).status_code
    except httpx.TransportError:
        return None


def _ask(platform: Platform, name: str, *, key: str | None = None) -> int:
    """Ask the platform's `ask` endpoint exactly as Caddy does, at the URL in Caddy's live config."""
    with httpx.Client(base_url=platform.caddy.admin_url, headers={"Origin": platform.caddy.admin_url}) as admin:
        url = httpx.URL(admin.get("/config/apps/tls/automation/on_demand/ask").json())
    params = dict(url.params)
    if key is not None:
        params["key"] = key
    return httpx.get(url.copy_with(params={**params, "domain": name}), timeout=10, trust_env=False).status_code


def _domain(client: httpx.Client, app_id: str, domain_id: str) -> dict[str, Any]:
    response = client.get(f"/apps/{app_id}/domains/{domain_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


@pytest.fixture(scope="module")
def site(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tenant with one live app (examples/hello), and a random apex under example.com for its names."""
    tenant = platform.create_tenant(f"d{uuid.uuid4().hex[:8]}")
    client = platform.client(tenant["token"])
    app = client.post("/apps", json={"name": "web"}).json()
    deployment = deploy_archive(client, app["id"], hello_archive())
    done = wait_for_deployment(client, deployment["id"], {"live", "failed"})
    assert done["state"] == "live", client.get(f"/deployments/{deployment['id']}/log").text
    return {
        "client": client,
        "app": app,
        "apex": f"t{uuid.uuid4().hex[:10]}.example.com",
        "cafile": tmp_path_factory.mktemp("caddy-root") / "root.pem",
        "state": {},
    }


def _trust_caddy_root(platform: Platform, cafile: Path) -> None:
    with httpx.Client(base_url=platform.caddy.admin_url, headers={"Origin": platform.caddy.admin_url}) as admin:
        response = admin.get("/pki/ca/local")
    assert response.status_code == 200, response.text
    cafile.write_text(response.json()["root_certificate"])


def test_a_domain_is_routed_and_certified_once_its_txt_record_proves_ownership(
    platform: Platform, dns_server: LocalDnsServer, site: dict[str, Any]
):
    client, app = site["client"], site["app"]
    hostname = f"www.{site['apex']}"
    created = client.post(f"/apps/{app['id']}/domains", json={"hostname": hostname.upper() + "."})
    assert created.status_code == 201, created.text
    domain = created.json()
    assert domain["hostname"] == hostname
    assert domain["status"] == "pending"
    assert domain["verification"]["type"] == "TXT"
    assert domain["verification"]["name"] == f"_coltsfoot-challenge.{hostname}"
    assert domain["target"] == app["hostname"]
    assert domain["certificate"] is None

    # Nothing published yet: the check finds nothing, the name stays pending and unrouted.
    response = client.post(f"/apps/{app['id']}/domains/{domain['id']}/verify")
    assert response.status_code == 202, response.text
    wait_until(
        lambda: _domain(client, app["id"], domain["id"])["last_check"]["checked_at"] is not None,
        timeout=30,
        message="the first ownership check",
    )
    checked = _domain(client, app["id"], domain["id"])
    assert checked["status"] == "pending"
    assert checked["last_check"]["found"] == []
    assert checked["last_check"]["error"]
    assert _http_get(platform, hostname).status_code == 404

    # The tenant publishes the record the API named; verify again.
    dns_server.publish_txt(domain["verification"]["name"], domain["verification"]["value"])
    assert client.post(f"/apps/{app['id']}/domains/{domain['id']}/verify").status_code == 202
    wait_until(lambda: _domain(client, app["id"], domain["id"])["status"] == "verified", timeout=30, message="verified")

    # Routed over HTTP...
    wait_until(lambda: _status(platform, hostname) == 200, timeout=30, message="the domain's route")
    assert "Hello from Coltsfoot!" in _http_get(platform, hostname).text
    # ...and over HTTPS with a certificate for the name that chains to Caddy's internal root.
    wait_until(
        lambda: (_domain(client, app["id"], domain["id"])["certificate"] or {}).get("status") == "issued",
        timeout=60,
        message="the certificate",
    )
    certificate = _domain(client, app["id"], domain["id"])["certificate"]
    assert certificate["expires_at"]
    _trust_caddy_root(platform, site["cafile"])
    status, body = _https_get(platform, hostname, cafile=site["cafile"])
    assert status == 200
    assert "Hello from Coltsfoot!" in body
    # The app's platform hostname is served over HTTPS too.
    status, body = _https_get(platform, app["hostname"], cafile=site["cafile"])
    assert status == 200
    site["state"]["domain"] = domain


def test_an_unverified_name_gets_no_certificate_and_no_app(platform: Platform, site: dict[str, Any]):
    client, app = site["client"], site["app"]
    pending = client.post(f"/apps/{app['id']}/domains", json={"hostname": f"pending.{site['apex']}"})
    assert pending.status_code == 201, pending.text
    for name in (pending.json()["hostname"], f"never-added.{site['apex']}"):
        with pytest.raises(ssl.SSLError) as refused:
            _https_get(platform, name, cafile=site["cafile"])
        # Refused in the handshake (no certificate at all), not a certificate that failed verification.
        assert not isinstance(refused.value, ssl.SSLCertVerificationError), refused.value
        response = _http_get(platform, name)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "app.not_found"


def test_the_ask_endpoint_refuses_names_the_platform_does_not_serve(platform: Platform, site: dict[str, Any]):
    domain = site["state"]["domain"]
    assert _ask(platform, domain["hostname"]) == 200
    assert _ask(platform, site["app"]["hostname"]) == 200
    assert _ask(platform, f"pending.{site['apex']}") == 404
    assert _ask(platform, f"unknown.{site['apex']}") == 404
    assert _ask(platform, "example.com") == 404
    # Without Caddy's secret, even a served name is refused.
    assert _ask(platform, domain["hostname"], key="guess") == 404


def test_another_tenant_cannot_add_a_name_verified_by_someone_else(platform: Platform, site: dict[str, Any]):
    other = platform.create_tenant(f"o{uuid.uuid4().hex[:8]}")
    client = platform.client(other["token"])
    app = client.post("/apps", json={"name": "squat"}).json()
    response = client.post(f"/apps/{app['id']}/domains", json={"hostname": site["state"]["domain"]["hostname"]})
    assert response.status_code == 409, response.text
    assert response.json()["error"]["code"] == "domain.hostname_taken"
    # Nor see the first tenant's app or domain.
    first_app = site["app"]["id"]
    assert client.get(f"/apps/{first_app}/domains").status_code == 404


def test_force_https_redirects_plain_http_with_308(platform: Platform, site: dict[str, Any]):
    client, app = site["client"], site["app"]
    hostname = site["state"]["domain"]["hostname"]
    response = client.patch(f"/apps/{app['id']}", json={"force_https": True})
    assert response.status_code == 200, response.text
    assert response.json()["force_https"] is True
    wait_until(lambda: _status(platform, hostname, "/a?b=c") == 308, timeout=30, message="redirect")
    redirect = _http_get(platform, hostname, "/a?b=c")
    assert redirect.headers["location"] == f"https://{hostname}:{platform.caddy.tls_port}/a?b=c"
    assert _http_get(platform, app["hostname"]).status_code == 308
    status, _body = _https_get(platform, hostname, cafile=site["cafile"])
    assert status == 200
    assert client.patch(f"/apps/{app['id']}", json={"force_https": False}).status_code == 200
    wait_until(lambda: _status(platform, hostname) == 200, timeout=30, message="no redirect")


def test_deleting_the_domain_stops_serving_the_app_on_it(platform: Platform, site: dict[str, Any]):
    client, app = site["client"], site["app"]
    domain = site["state"]["domain"]
    response = client.delete(f"/apps/{app['id']}/domains/{domain['id']}")
    assert response.status_code == 204, response.text
    wait_until(lambda: _status(platform, domain["hostname"]) == 404, timeout=30, message="unrouted")
    assert _http_get(platform, domain["hostname"]).json()["error"]["code"] == "app.not_found"
    # Over HTTPS the app is gone too: the handshake is refused, or (a certificate Caddy still holds in its
    # storage until it expires; it is never renewed) the edge answers its 404, never the app.
    refused: ssl.SSLError | None = None
    try:
        status, body = _https_get(platform, domain["hostname"], cafile=site["cafile"])
    except ssl.SSLError as exc:
        refused = exc
    if refused is not None:
        assert not isinstance(refused, ssl.SSLCertVerificationError), refused
    else:
        assert status == 404
        assert "Hello from Coltsfoot!" not in body
    assert _ask(platform, domain["hostname"]) == 404
    assert client.get(f"/apps/{app['id']}/domains/{domain['id']}").status_code == 404
    # The app itself is still served on its platform hostname.
    assert _http_get(platform, app["hostname"]).status_code == 200
