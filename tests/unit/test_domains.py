"""Custom domains: what a tenant may name, the token that proves ownership, the API, the checks' outcomes,
the TLS `ask` decision, and the route and certificate JSON the edge gets. The DNS driver, the certificate
probe and the broker are the seams mocked here; the DB is real."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
from django.test import Client
from django.utils import timezone

from caddy import routes as caddy_routes
from conftest import Actor
from drivers import dns
from platform_apps.domains import services
from platform_apps.domains.hostnames import HostnameRejected
from platform_apps.domains.hostnames import hostname_normalise
from platform_apps.domains.selectors import route_hostnames
from platform_apps.domains.selectors import tls_name_allowed
from platform_apps.models import App
from platform_apps.models import Deployment
from platform_apps.models import Domain
from provisioning import domains as domain_workflow
from tests.unit.fakes import task_queued

# --- hostnames ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("www.example.com", "www.example.com"),
        ("WWW.Example.COM.", "www.example.com"),  # lower case, no trailing dot
        ("  shop.example.org ", "shop.example.org"),
        ("bücher.de", "xn--bcher-kva.de"),  # IDN to punycode
        ("BÜCHER.de", "xn--bcher-kva.de"),
        ("xn--bcher-kva.de", "xn--bcher-kva.de"),  # already punycode: the same name
        ("\uff57\uff57\uff57\uff0eexample\uff0ecom", "www.example.com"),  # full-width letters and dots
        ("a-b.c-d.example", "a-b.c-d.example"),
    ],
)
def test_hostnames_are_normalised_to_one_form(settings: Any, raw: str, stored: str):
    settings.APPS_DOMAIN = "apps.coltsfoot.test"
    assert hostname_normalise(raw) == stored


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("*.example.com", "domain.wildcard"),
        ("www.*.example.com", "domain.wildcard"),
        ("10.0.0.1", "domain.ip_address"),
        ("10.0.0.1.", "domain.ip_address"),
        ("[::1]", "domain.invalid_hostname"),
        ("::1", "domain.invalid_hostname"),
        ("1.2.3.4.5", "domain.ip_address"),  # a numeric top-level label
        ("www.ex\u0430mple.com", "domain.confusable"),  # Cyrillic a among Latin letters
        ("\u0440\u0430ypal.com", "domain.confusable"),
        ("a" * 64 + ".example.com", "domain.invalid_hostname"),  # a label over 63
        (".".join(["a" * 60] * 5), "domain.invalid_hostname"),  # over 253
        ("localhost", "domain.invalid_hostname"),  # one label
        ("", "domain.invalid_hostname"),
        ("under_score.example.com", "domain.invalid_hostname"),
        ("ex ample.com", "domain.invalid_hostname"),
        ("-lead.example.com", "domain.invalid_hostname"),
        ("a..b.com", "domain.invalid_hostname"),
        ("https://www.example.com/", "domain.invalid_hostname"),
        ("www.example.com:443", "domain.invalid_hostname"),
        ("user@example.com", "domain.invalid_hostname"),
        ("xn--zz.com", "domain.invalid_hostname"),  # not valid punycode
        ("apps.coltsfoot.test", "domain.platform_hostname"),
        ("hello-acme.apps.coltsfoot.test", "domain.platform_hostname"),
        ("HELLO-ACME.Apps.Coltsfoot.Test.", "domain.platform_hostname"),
    ],
)
def test_hostnames_that_cannot_be_custom_domains_are_refused(settings: Any, raw: str, code: str):
    settings.APPS_DOMAIN = "apps.coltsfoot.test"
    with pytest.raises(HostnameRejected) as refused:
        hostname_normalise(raw)
    assert refused.value.code == code


def test_a_whole_script_look_alike_is_a_different_name_not_the_original(settings: Any):
    # All-Cyrillic look-alike letters of "apple" are not mixed with Latin ones: the name is stored as its own punycode,
    # which DNS then has to prove control of; it never equals (or routes as) the Latin name.
    assert hostname_normalise("\u0430\u0440\u0440\u04cf\u0435.com").startswith("xn--")
    assert hostname_normalise("\u0430\u0440\u0440\u04cf\u0435.com") != "apple.com"


# --- the token ----------------------------------------------------------------------------------


def test_the_token_is_per_tenant_and_hostname():
    a, b = uuid.uuid4(), uuid.uuid4()
    token = services.verification_token(tenant_id=a, hostname="www.example.com")
    assert token == services.verification_token(tenant_id=a, hostname="www.example.com")
    assert token != services.verification_token(tenant_id=b, hostname="www.example.com")
    assert token != services.verification_token(tenant_id=a, hostname="shop.example.com")
    assert str(a) not in token


def test_the_token_depends_on_the_platform_secret(settings: Any):
    tenant = uuid.uuid4()
    before = services.verification_token(tenant_id=tenant, hostname="www.example.com")
    settings.SECRET_KEY = "another-secret-key-another-secret-key-another-secret-key"
    assert services.verification_token(tenant_id=tenant, hostname="www.example.com") != before


# --- the API ------------------------------------------------------------------------------------


@pytest.fixture
def app(owner: Actor) -> App:
    response = owner.call("POST", "/apps", {"name": "web"})
    assert response.status_code == 201, response.content
    return App.objects.get(public_id=response.json()["id"])


@pytest.fixture
def verify_queued() -> Iterator[mock.MagicMock]:
    with task_queued("domain_verify") as delay:
        yield delay


@pytest.fixture
def refresh_queued() -> Iterator[mock.MagicMock]:
    with task_queued("app_route_refresh") as delay:
        yield delay


@pytest.fixture
def certificate_queued() -> Iterator[mock.MagicMock]:
    with task_queued("domain_certificate_check") as delay:
        yield delay


def add(actor: Actor, app: App, hostname: str) -> Any:
    return actor.call("POST", f"/apps/{app.public_id}/domains", {"hostname": hostname})


def test_adding_a_domain_answers_201_pending_with_the_record_to_publish(owner: Actor, app: App):
    response = add(owner, app, "WWW.Example.com.")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["hostname"] == "www.example.com"
    assert body["status"] == "pending"
    assert body["verification"] == {
        "type": "TXT",
        "name": "_coltsfoot-challenge.www.example.com",
        "value": services.verification_token(tenant_id=owner.tenant.public_id, hostname="www.example.com"),
    }
    assert body["target"] == app.hostname
    assert body["certificate"] is None
    assert body["app_id"] == str(app.public_id)
    assert uuid.UUID(body["id"]).version == 4
    listed = owner.call("GET", f"/apps/{app.public_id}/domains").json()
    assert listed["count"] == 1
    assert listed["items"][0]["id"] == body["id"]


def test_invalid_hostnames_are_422_with_a_stable_code(owner: Actor, app: App):
    response = add(owner, app, "*.example.com")
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "domain.wildcard"
    response = add(owner, app, f"x.{app.hostname}")
    assert response.json()["error"]["code"] == "domain.platform_hostname"
    assert not Domain.objects.exists()


def test_an_app_has_at_most_the_configured_number_of_domains(owner: Actor, app: App, settings: Any):
    settings.MAX_DOMAINS_PER_APP = 2
    assert add(owner, app, "a.example.com").status_code == 201
    assert add(owner, app, "b.example.com").status_code == 201
    response = add(owner, app, "c.example.com")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "quota.domains_exceeded"


def test_a_name_is_unique_per_tenant_and_among_verified_domains(owner: Actor, outsider: Actor, app: App):
    assert add(owner, app, "www.example.com").status_code == 201
    assert add(owner, app, "WWW.example.com").json()["error"]["code"] == "domain.exists"
    other_app = App.objects.get(public_id=outsider.call("POST", "/apps", {"name": "web"}).json()["id"])
    # A pending claim does not block the name's real owner...
    claim = add(outsider, other_app, "www.example.com")
    assert claim.status_code == 201
    assert claim.json()["verification"]["value"] != add_value(owner, app)
    # ...but once someone verified it, nobody else can add it.
    Domain.objects.filter(tenant=owner.tenant).update(status=Domain.Status.VERIFIED)
    Domain.objects.filter(tenant=outsider.tenant).delete()
    response = add(outsider, other_app, "www.example.com")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "domain.hostname_taken"


def add_value(actor: Actor, app: App) -> str:
    return str(actor.call("GET", f"/apps/{app.public_id}/domains").json()["items"][0]["verification"]["value"])


def test_another_tenants_domains_are_404(owner: Actor, outsider: Actor, app: App):
    domain = add(owner, app, "www.example.com").json()
    for method, path in (
        ("GET", f"/apps/{app.public_id}/domains"),
        ("GET", f"/apps/{app.public_id}/domains/{domain['id']}"),
        ("POST", f"/apps/{app.public_id}/domains/{domain['id']}/verify"),
        ("DELETE", f"/apps/{app.public_id}/domains/{domain['id']}"),
    ):
        response = outsider.call(method, path)
        assert response.status_code == 404, (method, path)
        assert response.json()["error"]["code"] == "not_found"
    assert Domain.objects.filter(public_id=domain["id"], next_check_at__isnull=False).count() == 1


def test_verify_queues_a_check_and_answers_202(
    owner: Actor, app: App, verify_queued: mock.MagicMock, django_capture_on_commit_callbacks: Any
):
    domain = add(owner, app, "www.example.com").json()
    with django_capture_on_commit_callbacks(execute=True):
        response = owner.call("POST", f"/apps/{app.public_id}/domains/{domain['id']}/verify")
    assert response.status_code == 202
    assert response.json()["status"] == "pending"
    verify_queued.assert_called_once_with(domain["id"])


def test_verify_of_a_verified_domain_answers_200_and_queues_nothing(
    owner: Actor, app: App, verify_queued: mock.MagicMock, django_capture_on_commit_callbacks: Any
):
    domain = add(owner, app, "www.example.com").json()
    Domain.objects.filter(public_id=domain["id"]).update(status=Domain.Status.VERIFIED)
    with django_capture_on_commit_callbacks(execute=True):
        response = owner.call("POST", f"/apps/{app.public_id}/domains/{domain['id']}/verify")
    assert response.status_code == 200
    assert response.json()["status"] == "verified"
    verify_queued.assert_not_called()


def test_deleting_a_verified_domain_refreshes_the_route_at_once(
    owner: Actor, app: App, refresh_queued: mock.MagicMock, django_capture_on_commit_callbacks: Any
):
    domain = add(owner, app, "www.example.com").json()
    Domain.objects.filter(public_id=domain["id"]).update(status=Domain.Status.VERIFIED)
    with django_capture_on_commit_callbacks(execute=True):
        response = owner.call("DELETE", f"/apps/{app.public_id}/domains/{domain['id']}")
    assert response.status_code == 204
    refresh_queued.assert_called_once_with(str(app.public_id))
    assert not Domain.objects.exists()


def test_force_https_is_a_patch_that_refreshes_the_route(
    owner: Actor, app: App, refresh_queued: mock.MagicMock, django_capture_on_commit_callbacks: Any
):
    with django_capture_on_commit_callbacks(execute=True):
        response = owner.call("PATCH", f"/apps/{app.public_id}", {"force_https": True})
    assert response.status_code == 200, response.content
    assert response.json()["force_https"] is True
    refresh_queued.assert_called_once_with(str(app.public_id))
    assert owner.call("PATCH", f"/apps/{app.public_id}", {"force_https": "yes"}).status_code == 422


# --- the checks' outcomes ------------------------------------------------------------------------


def _pending(owner: Actor, app: App, hostname: str = "www.example.com") -> Domain:
    assert add(owner, app, hostname).status_code == 201
    return Domain.objects.get(hostname=hostname, tenant=owner.tenant)


def test_a_check_that_finds_the_token_verifies_routes_and_certifies(
    owner: Actor,
    app: App,
    refresh_queued: mock.MagicMock,
    certificate_queued: mock.MagicMock,
    django_capture_on_commit_callbacks: Any,
):
    domain = _pending(owner, app)
    with (
        mock.patch.object(dns, "txt_lookup", autospec=True, return_value=["other", domain.verification_token]) as look,
        django_capture_on_commit_callbacks(execute=True),
    ):
        assert domain_workflow.domain_check(domain.public_id) == "verified"
    look.assert_called_once_with("_coltsfoot-challenge.www.example.com", resolver=mock.ANY, timeout=mock.ANY)
    domain.refresh_from_db()
    assert domain.status == Domain.Status.VERIFIED
    assert domain.certificate_status == Domain.CertificateStatus.PENDING
    refresh_queued.assert_called_once_with(str(app.public_id))
    certificate_queued.assert_called_once_with(str(domain.public_id))
    assert route_hostnames(app) == [app.hostname, "www.example.com"]
    body = owner.call("GET", f"/apps/{app.public_id}/domains/{domain.public_id}").json()
    assert body["certificate"] == {"status": "pending", "expires_at": None, "issuer": None}


def test_a_check_that_finds_nothing_stays_pending_with_backoff_and_what_it_found(owner: Actor, app: App):
    domain = _pending(owner, app)
    with mock.patch.object(dns, "txt_lookup", autospec=True, return_value=["v=spf1 -all"]):
        assert domain_workflow.domain_check(domain.public_id) == "pending"
    domain.refresh_from_db()
    assert domain.check_found == ["v=spf1 -all"]
    assert domain.check_error
    first = domain.next_check_at
    assert first is not None
    with mock.patch.object(dns, "txt_lookup", autospec=True, side_effect=dns.DnsLookupError("timed out")):
        assert domain_workflow.domain_check(domain.public_id) == "pending"
    domain.refresh_from_db()
    assert domain.check_error == "timed out"
    assert domain.next_check_at is not None
    assert domain.next_check_at - timezone.now() > first - timezone.now()
    assert route_hostnames(app) == [app.hostname]
    assert [services.check_backoff_seconds(n) for n in (0, 1, 2, 10)] == [30, 60, 120, 3600]


def test_a_pending_domain_fails_after_its_window_and_verify_starts_a_new_one(
    owner: Actor, app: App, verify_queued: mock.MagicMock
):
    domain = _pending(owner, app)
    Domain.objects.filter(pk=domain.pk).update(check_until=timezone.now() - timedelta(seconds=1))
    assert services.domain_check_record(domain_id=domain.public_id, found=[], error="none") == "failed"
    body = owner.call("POST", f"/apps/{app.public_id}/domains/{domain.public_id}/verify")
    assert body.status_code == 202
    assert body.json()["status"] == "pending"
    domain.refresh_from_db()
    assert domain.check_until is not None
    assert domain.check_until > timezone.now()


def test_the_second_tenant_to_prove_a_name_does_not_get_it(
    owner: Actor, outsider: Actor, app: App, refresh_queued: mock.MagicMock, certificate_queued: mock.MagicMock
):
    other_app = App.objects.get(public_id=outsider.call("POST", "/apps", {"name": "web"}).json()["id"])
    first, second = _pending(owner, app), _pending(outsider, other_app)
    assert services.domain_check_record(domain_id=first.public_id, found=[first.verification_token], error="") == (
        "verified"
    )
    assert second.verification_token != first.verification_token
    assert services.domain_check_record(domain_id=second.public_id, found=[second.verification_token], error="") == (
        "failed"
    )
    assert route_hostnames(other_app) == [other_app.hostname]


def test_the_beat_task_picks_what_is_due(owner: Actor, app: App):
    due_now, later = _pending(owner, app, "a.example.com"), _pending(owner, app, "b.example.com")
    Domain.objects.filter(pk=due_now.pk).update(next_check_at=timezone.now() - timedelta(seconds=1))
    verified = _pending(owner, app, "c.example.com")
    Domain.objects.filter(pk=verified.pk).update(status=Domain.Status.VERIFIED, certificate_status="pending")
    pending, certificates = domain_workflow.due()
    assert pending == [str(due_now.public_id)]
    assert certificates == [str(verified.public_id)]
    assert str(later.public_id) not in pending


# --- the ask decision ----------------------------------------------------------------------------


def test_the_ask_decision_table(owner: Actor, app: App):
    verified = _pending(owner, app, "www.example.com")
    Domain.objects.filter(pk=verified.pk).update(status=Domain.Status.VERIFIED)
    _pending(owner, app, "pending.example.com")
    failed = _pending(owner, app, "failed.example.com")
    Domain.objects.filter(pk=failed.pk).update(status=Domain.Status.FAILED)
    table = {
        "www.example.com": True,  # verified
        "WWW.example.com.": True,  # the same name as Caddy might send it
        app.hostname: True,  # the app's platform hostname
        "pending.example.com": False,
        "failed.example.com": False,
        "unknown.example.com": False,
        "example.com": False,  # the parent of a verified name
        "x.www.example.com": False,  # a child of one
        "": False,
        "bücher.de": False,  # not ASCII: Caddy asks in punycode
        "a" * 300: False,
    }
    assert {name: tls_name_allowed(name) for name in table} == table
    # Once the app is being deleted, neither its hostname nor its domains may get a certificate.
    App.objects.filter(pk=app.pk).update(state=App.State.DELETING)
    assert not tls_name_allowed("www.example.com")
    assert not tls_name_allowed(app.hostname)


def test_the_ask_endpoint_needs_the_secret_and_is_rate_limited(owner: Actor, app: App, settings: Any):
    settings.TLS_ASK_SECRET = "s3cret"
    settings.TLS_ASK_PER_MINUTE = 3
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "ask"}}
    client = Client()
    assert client.get("/internal/tls/ask", {"domain": app.hostname}).status_code == 404
    assert client.get("/internal/tls/ask", {"domain": app.hostname, "key": "wrong"}).status_code == 404
    assert client.get("/internal/tls/ask", {"domain": app.hostname, "key": "s3cret"}).status_code == 200
    assert client.get("/internal/tls/ask", {"domain": "nope.example.com", "key": "s3cret"}).status_code == 404
    assert client.get("/internal/tls/ask", {"domain": app.hostname, "key": "s3cret"}).status_code == 200
    limited = client.get("/internal/tls/ask", {"domain": app.hostname, "key": "s3cret"})
    assert limited.status_code == 429
    assert int(limited["Retry-After"]) >= 1
    assert client.post("/internal/tls/ask?key=s3cret", {"domain": app.hostname}).status_code == 405


# --- the edge's JSON -----------------------------------------------------------------------------

APP = uuid.UUID("7c1d4a8e-0f7b-4d55-9a3e-2f6f1c9b8a10")
LOOKUP = caddy_routes.UpstreamLookup(
    name=f"{APP}.apps.coltsfoot.internal", port=8000, resolver="127.0.0.1:5354", refresh="1000ms"
)


def test_the_route_carries_the_verified_domains_after_the_platform_hostname():
    route = caddy_routes.app_route(APP, ["web-acme.localhost", "www.example.com", "shop.example.com"], LOOKUP)
    assert route["match"] == [{"host": ["web-acme.localhost", "www.example.com", "shop.example.com"]}]
    assert route["handle"][0]["handler"] == "reverse_proxy"
    assert caddy_routes.route_upstream_name(route) == LOOKUP.name
    page = caddy_routes.unavailable_route(APP, ["web-acme.localhost", "www.example.com"])
    assert page["match"] == [{"host": ["web-acme.localhost", "www.example.com"]}]


def test_force_https_puts_a_308_for_plain_http_before_the_proxy():
    route = caddy_routes.app_route(APP, ["www.example.com"], LOOKUP, force_https=True, https_port=8443)
    redirect, proxy = route["handle"]
    assert redirect == {
        "handler": "subroute",
        "routes": [
            {
                "match": [{"protocol": "http"}],
                "handle": [
                    {
                        "handler": "static_response",
                        "status_code": 308,
                        "headers": {"Location": ["https://{http.request.host}:8443{http.request.uri}"]},
                    }
                ],
            }
        ],
    }
    assert proxy["handler"] == "reverse_proxy"
    assert caddy_routes.route_upstream_name(route) == LOOKUP.name
    on_443 = caddy_routes.app_route(APP, ["www.example.com"], LOOKUP, force_https=True)
    assert on_443["handle"][0]["routes"][0]["handle"][0]["headers"]["Location"] == [
        "https://{http.request.host}{http.request.uri}"
    ]
    suspended = caddy_routes.suspended_route(APP, ["www.example.com"], force_https=True, https_port=8443)
    assert suspended["handle"][0]["handler"] == "subroute"


def test_the_edge_server_listens_on_http_and_https_with_one_set_of_routes():
    server = caddy_routes.edge_server("127.0.0.1:8080", tls_listen="127.0.0.1:8443")
    assert server["listen"] == ["127.0.0.1:8080", "127.0.0.1:8443"]
    assert server["tls_connection_policies"] == [{}]
    assert server["automatic_https"] == {"disable": True}
    assert caddy_routes.http_ports("127.0.0.1:8080", "127.0.0.1:8443") == {"http_port": 8080, "https_port": 8443}
    plain = caddy_routes.edge_server("127.0.0.1:8080")
    assert plain["listen"] == ["127.0.0.1:8080"]
    assert "tls_connection_policies" not in plain
    with pytest.raises(ValueError, match="different ports"):
        caddy_routes.edge_server("127.0.0.1:8080", tls_listen="0.0.0.0:8080")


ASK = "http://127.0.0.1:8000/internal/tls/ask?key=k"


def test_certificate_policy_with_the_internal_issuer():
    assert caddy_routes.tls_automation(issuer="internal", ask_url=ASK, issue_per_minute=20) == {
        "automation": {
            "on_demand": {"ask": ASK, "rate_limit": {"interval": "1m", "burst": 20}},
            "policies": [{"on_demand": True, "issuers": [{"module": "internal"}]}],
        }
    }
    assert caddy_routes.pki_app() == {"certificate_authorities": {"local": {"install_trust": False}}}


def test_certificate_policy_with_the_acme_issuer():
    directory = "https://acme-staging-v02.api.letsencrypt.org/directory"
    tls = caddy_routes.tls_automation(
        issuer="acme", ask_url=ASK, issue_per_minute=5, acme_email="ops@example.com", acme_directory_url=directory
    )
    assert tls["automation"]["policies"] == [
        {"on_demand": True, "issuers": [{"module": "acme", "ca": directory, "email": "ops@example.com"}]}
    ]
    assert tls["automation"]["on_demand"] == {"ask": ASK, "rate_limit": {"interval": "1m", "burst": 5}}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"issuer": "letsencrypt", "ask_url": ASK, "issue_per_minute": 5},
        {"issuer": "internal", "ask_url": "", "issue_per_minute": 5},  # on demand without ask: never
        {"issuer": "internal", "ask_url": ASK, "issue_per_minute": 0},
        {"issuer": "acme", "ask_url": ASK, "issue_per_minute": 5, "acme_directory_url": "http://ca.example/dir"},
    ],
)
def test_certificate_policies_that_would_be_unsafe_are_refused(kwargs: dict[str, Any]):
    with pytest.raises(ValueError, match=r"issuer|ask|issue_per_minute|ACME"):
        caddy_routes.tls_automation(**kwargs)


def test_the_client_from_settings_puts_the_ask_secret_in_caddys_ask_url(settings: Any):
    from caddy.client import CaddyClient

    settings.EDGE_TLS_LISTEN = "127.0.0.1:8443"
    settings.TLS_ASK_URL = "http://127.0.0.1:8000/internal/tls/ask"
    settings.TLS_ASK_SECRET = "abc"
    settings.TLS_ISSUER = "internal"
    with CaddyClient.from_settings() as client:
        tls = client._tls_app
    assert tls is not None
    assert tls["automation"]["on_demand"]["ask"] == "http://127.0.0.1:8000/internal/tls/ask?key=abc"


# --- the DNS driver ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "parsed"),
    [("127.0.0.1:5353", ("127.0.0.1", 5353)), ("10.0.0.53", ("10.0.0.53", 53)), ("[::1]:53", ("::1", 53))],
)
def test_the_resolver_setting_is_an_address_and_a_port(address: str, parsed: tuple[str, int]):
    assert dns.parse_resolver(address) == parsed


@pytest.mark.parametrize("address", ["dns.example.com:53", "127.0.0.1:0", "127.0.0.1:x", "[::1]x"])
def test_a_resolver_setting_that_is_not_an_address_is_refused(address: str):
    with pytest.raises(ValueError, match="invalid DNS resolver"):
        dns.parse_resolver(address)


def test_txt_lookup_asks_the_configured_resolver():
    from tests.integration.dns_server import LocalDnsServer

    server = LocalDnsServer()
    server.start()
    try:
        server.publish_txt("_coltsfoot-challenge.www.example.com", "coltsfoot-verification=abc")
        assert dns.txt_lookup("_coltsfoot-challenge.www.example.com", resolver=server.address, timeout=2) == [
            "coltsfoot-verification=abc"
        ]
        assert dns.txt_lookup("_coltsfoot-challenge.nothing.example.com", resolver=server.address, timeout=2) == []
    finally:
        server.stop()
    # Nobody answers there any more: a bounded, transient failure, not a hang.
    with pytest.raises(dns.DnsLookupError):
        dns.txt_lookup("_coltsfoot-challenge.www.example.com", resolver=server.address, timeout=0.5)


# --- routing: the pipeline's switch, the refresh task and the reconciler's repairs -----------------


@pytest.fixture
def live(db: None, pipeline_settings: None, fake_podman: Any, routes: Any, http: Any) -> App:
    from provisioning import tasks
    from tests.unit.fakes import archive_deployment
    from tests.unit.fakes import make_app

    app = make_app(name="web", replicas=1)
    deployment = archive_deployment(app)
    tasks.drive(deployment.public_id)
    assert Deployment.objects.get(pk=deployment.pk).state == Deployment.State.LIVE
    fresh: App = App.objects.select_related("tenant").get(pk=app.pk)
    return fresh


def _verified(app: App, hostname: str) -> Domain:
    token = services.verification_token(tenant_id=app.tenant.public_id, hostname=hostname)
    return Domain.objects.create(
        tenant=app.tenant, app=app, hostname=hostname, verification_token=token, status=Domain.Status.VERIFIED
    )


def _hosts(fake_routes: Any, app: App) -> list[str]:
    return list(fake_routes.raw[caddy_routes.route_id(app.public_id)]["match"][0]["host"])


def test_verified_domains_are_routed_by_the_refresh_and_kept_by_every_repair(live: App, routes: Any):
    from provisioning import tasks
    from provisioning.reconciler.runner import reconcile_pass

    assert _hosts(routes, live) == [live.hostname]
    _verified(live, "www.example.com")
    Domain.objects.create(
        tenant=live.tenant, app=live, hostname="pending.example.com", verification_token="t", status="pending"
    )
    assert tasks.app_route_refresh(str(live.public_id)) is True
    assert _hosts(routes, live) == [live.hostname, "www.example.com"]
    writes = routes.writes
    reconcile_pass()
    assert routes.writes == writes  # the reconciler wants the same route: nothing to repair
    routes.restart_empty()  # Caddy lost its config: the whole edge comes back with the domain in it
    reconcile_pass()
    assert _hosts(routes, live) == [live.hostname, "www.example.com"]
    # A deploy's route switch reads the hostnames at the switch, so it keeps the domain as well.
    from tests.unit.fakes import archive_deployment

    tasks.drive(archive_deployment(live).public_id)
    assert _hosts(routes, live) == [live.hostname, "www.example.com"]


def test_a_removed_domain_leaves_the_route_and_a_repair_does_not_bring_it_back(live: App, routes: Any):
    from provisioning import tasks
    from provisioning.reconciler.runner import reconcile_pass

    domain = _verified(live, "www.example.com")
    tasks.app_route_refresh(str(live.public_id))
    services.domain_delete(domain=domain)
    tasks.app_route_refresh(str(live.public_id))
    assert _hosts(routes, live) == [live.hostname]
    reconcile_pass()
    assert _hosts(routes, live) == [live.hostname]


def test_a_repair_planned_before_a_domain_was_removed_does_not_route_it_again(
    live: App, routes: Any, monkeypatch: pytest.MonkeyPatch
):
    from provisioning import tasks
    from provisioning.reconciler import runner

    domain = _verified(live, "www.example.com")
    tasks.app_route_refresh(str(live.public_id))
    real_observe = runner.observe

    def removed_meanwhile(caddy: Any) -> Any:
        # The pass has read the DB (with the domain); the tenant removes it and its refresh runs before the
        # pass reads the edge, so the pass sees a route that lacks a domain it still believes in.
        services.domain_delete(domain=domain)
        tasks.app_route_refresh(str(live.public_id))
        return real_observe(caddy)

    monkeypatch.setattr(runner, "observe", removed_meanwhile)
    runner.reconcile_pass()
    assert _hosts(routes, live) == [live.hostname]


def test_a_repair_waits_for_a_refresh_that_holds_the_apps_route(live: App, routes: Any):
    from provisioning import leases
    from provisioning.reconciler.runner import reconcile_pass

    _verified(live, "www.example.com")  # verified, but its refresh has not run: the route lacks it
    assert leases.lease_acquire(leases.route_lease(live.public_id), "a-refresh", 30)
    reconcile_pass()
    assert _hosts(routes, live) == [live.hostname]
    leases.lease_release(leases.route_lease(live.public_id), "a-refresh")
    reconcile_pass()
    assert _hosts(routes, live) == [live.hostname, "www.example.com"]


def test_force_https_is_in_the_route_and_the_reconciler_agrees(live: App, routes: Any, settings: Any):
    from provisioning import tasks
    from provisioning.reconciler.runner import reconcile_pass

    settings.EDGE_TLS_LISTEN = "127.0.0.1:9443"
    App.objects.filter(pk=live.pk).update(force_https=True)
    tasks.app_route_refresh(str(live.public_id))
    route = routes.raw[routes_id(live)]
    assert route["handle"][0]["routes"][0]["handle"][0]["status_code"] == 308
    assert route["handle"][0]["routes"][0]["handle"][0]["headers"]["Location"] == [
        "https://{http.request.host}:9443{http.request.uri}"
    ]
    writes = routes.writes
    reconcile_pass()
    assert routes.writes == writes


def routes_id(app: App) -> str:
    return caddy_routes.route_id(app.public_id)


def test_the_certificate_check_records_what_the_edge_presented(owner: Actor, app: App, settings: Any):
    from drivers import tls

    settings.EDGE_TLS_LISTEN = "127.0.0.1:9443"
    domain = _verified(app, "www.example.com")
    expires = timezone.now() + timedelta(days=7)
    presented = tls.Certificate(not_after=expires, issuer="Caddy Local Authority", names=("www.example.com",))
    with mock.patch.object(tls, "certificate_probe", autospec=True, return_value=presented) as probe:
        assert domain_workflow.certificate_check(domain.public_id) is True
    probe.assert_called_once_with("127.0.0.1:9443", "www.example.com", timeout=mock.ANY)
    body = owner.call("GET", f"/apps/{app.public_id}/domains/{domain.public_id}").json()
    assert body["certificate"]["status"] == "issued"
    assert body["certificate"]["issuer"] == "Caddy Local Authority"
    assert body["certificate"]["expires_at"].startswith(expires.date().isoformat())
    other = tls.Certificate(not_after=expires, issuer="x", names=("other.example.com",))
    with (
        mock.patch.object(tls, "certificate_probe", autospec=True, return_value=other),
        pytest.raises(tls.CertificateProbeError),
    ):
        domain_workflow.certificate_check(domain.public_id)


def test_the_refresh_leaves_the_route_to_a_deploy_that_is_switching_it(live: App, routes: Any):
    from provisioning import tasks
    from tests.unit.fakes import archive_deployment

    _verified(live, "www.example.com")
    archive_deployment(live, state=Deployment.State.STARTING)
    writes = routes.writes
    assert tasks.app_route_refresh(str(live.public_id)) is False
    assert routes.writes == writes


def test_an_unknown_certificate_issuer_setting_refuses_to_start(tmp_path: Any):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env |= {"DJANGO_SECRET_KEY": "x", "COLTSFOOT_DATA_DIR": str(tmp_path), "COLTSFOOT_TLS_ISSUER": "letsencrypt"}
    root = Path(__file__).resolve().parents[2]
    argv = [sys.executable, "manage.py", "check"]
    result = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == "coltsfoot: COLTSFOOT_TLS_ISSUER must be internal or acme, got 'letsencrypt'."


def test_the_beat_task_queues_the_checks_that_are_due(
    owner: Actor, app: App, verify_queued: mock.MagicMock, certificate_queued: mock.MagicMock
):
    from provisioning import tasks

    due_now = _pending(owner, app, "a.example.com")
    Domain.objects.filter(pk=due_now.pk).update(next_check_at=timezone.now() - timedelta(seconds=1))
    _pending(owner, app, "b.example.com")  # its first check is 30 s away
    verified = _verified(app, "c.example.com")
    assert tasks.domains_check() == {"verify": 1, "certificates": 1}
    verify_queued.assert_called_once_with(str(due_now.public_id))
    certificate_queued.assert_called_once_with(str(verified.public_id))


def test_operators_see_domains_read_only_in_the_admin(owner: Actor, app: App):
    from django.contrib.auth import get_user_model

    domain = _pending(owner, app)
    staff = Client()
    staff.force_login(get_user_model().objects.create_superuser("root", "root@example.com", "pw-for-tests"))
    listing = staff.get("/admin/platform_apps/domain/")
    assert listing.status_code == 200
    assert "www.example.com" in listing.content.decode()
    page = staff.get(f"/admin/platform_apps/domain/{domain.pk}/change/")
    assert page.status_code == 200
    assert staff.get("/admin/platform_apps/domain/add/").status_code == 403
    assert staff.post(f"/admin/platform_apps/domain/{domain.pk}/delete/", {"post": "yes"}).status_code == 403
    assert Domain.objects.filter(pk=domain.pk).exists()


@pytest.mark.parametrize(
    "config",
    [
        {"admin": {"listen": "caddy.test:2019"}},
        {"admin": {"listen": "caddy.test:2019"}, "apps": {"http": {"servers": {"other": {"listen": [":9"]}}}}},
    ],
)
def test_the_client_configures_certificates_before_the_https_listener_and_never_the_hosts_trust(
    respx_mock: Any, config: dict[str, Any]
):
    from caddy.client import CaddyClient
    from tests.unit.test_caddy import ADMIN
    from tests.unit.test_caddy import FakeCaddy

    caddy = FakeCaddy(config)
    respx_mock.route(host="caddy.test").mock(side_effect=caddy.handle)
    tls = caddy_routes.tls_automation(issuer="internal", ask_url=ASK, issue_per_minute=20)
    client = CaddyClient(ADMIN, timeout=2.0, edge_listen="127.0.0.1:8080", tls_listen="127.0.0.1:8443", tls_app=tls)

    client.edge_ensure()

    apps = caddy.config["apps"]
    assert apps["pki"] == {"certificate_authorities": {"local": {"install_trust": False}}}
    assert apps["tls"] == tls
    assert apps["http"]["http_port"] == 8080
    assert apps["http"]["https_port"] == 8443
    assert apps["http"]["servers"]["coltsfoot_edge"]["listen"] == ["127.0.0.1:8080", "127.0.0.1:8443"]
    writes = caddy.writes()
    # The local CA is told not to touch the host's trust store no later than the TLS app exists, and both
    # exist before the server that listens for TLS.
    first_tls = next(i for i, (_m, path) in enumerate(writes) if path in ("/config/apps", "/config/apps/tls"))
    assert writes[first_tls][1] == "/config/apps" or ("POST", "/config/apps/pki") in writes[:first_tls]
    server_write = next(i for i, (_m, path) in enumerate(writes) if "http" in path)
    assert first_tls < server_write
    before = len(caddy.requests)
    client.edge_ensure()
    assert caddy.writes() == writes  # nothing differs: nothing written (each write reloads Caddy 2.6)
    assert len(caddy.requests) > before


def test_refreshes_of_one_app_take_turns(live: App, routes: Any):
    from celery.exceptions import Retry

    from provisioning import leases
    from provisioning import tasks

    assert leases.lease_acquire(leases.route_lease(live.public_id), "another-task", 30)
    writes = routes.writes
    with pytest.raises(Retry):
        tasks.app_route_refresh(str(live.public_id))
    assert routes.writes == writes
    leases.lease_release(leases.route_lease(live.public_id), "another-task")
    # Its turn: it writes what the DB says now (a route whose shape did not change is not written again).
    App.objects.filter(pk=live.pk).update(force_https=True)
    assert tasks.app_route_refresh(str(live.public_id)) is True
    assert routes.writes == writes + 1
    assert routes.raw[caddy_routes.route_id(live.public_id)]["handle"][0]["handler"] == "subroute"
