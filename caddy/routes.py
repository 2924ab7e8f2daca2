"""Pure builders for the Caddy JSON config that Coltsfoot owns.

Nothing here talks to Caddy: these functions only build (and validate) the JSON objects that
`caddy.client.CaddyClient` sends, so unit tests can check the shape directly.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any
from uuid import UUID

type JsonObject = dict[str, Any]

EDGE_SERVER_NAME = "coltsfoot_edge"
CATCHALL_ROUTE_ID = "coltsfoot-catchall"

# A visitor request that is in flight while a route switches, or that hits a replica being
# retired, is retried on another upstream for up to this long instead of failing.
LB_TRY_DURATION = "5s"
LB_TRY_INTERVAL = "250ms"
# A dead container's address blackholes the dial: fail it fast (a live replica on the local bridge
# accepts within milliseconds) so the retry above still has time to pick another replica.
DIAL_TIMEOUT = "1s"
# One failed dial takes a replica out of rotation for this long (passive health check): long
# enough that a replica that just died is not dialled again before the reconciler has dropped it
# from the app's upstream records, short enough that a single-replica app that blipped is back in
# rotation soon. With dynamic upstreams, Caddy 2.6.2 keeps a replica's failure count only while a
# request to it is in flight (the upstream's host state is released at the end of each proxy
# attempt, reverseproxy.go), so under light traffic the check does little; the retries above and
# the reconciler's prompt removal of dead replicas carry the failover.
PASSIVE_FAIL_DURATION = "10s"

# Timeouts of the edge server (Go's http.Server underneath). A client must send its request
# headers within READ_HEADER_TIMEOUT (slowloris), and a keep-alive connection with no request is
# closed after IDLE_TIMEOUT. READ_TIMEOUT bounds reading the whole request, body included (a
# trickled upload); Go keeps that deadline on the connection while the response is written, so
# it is long: a streamed response (SSE) through the edge lasts at most this long before its
# client reconnects. No write timeout: a response may stream for as long as it needs.
EDGE_READ_HEADER_TIMEOUT = "10s"
EDGE_READ_TIMEOUT = "10m"
EDGE_IDLE_TIMEOUT = "2m"


@dataclass(frozen=True)
class UpstreamLookup:
    """Where an app route finds its replicas: Caddy's `a` dynamic upstreams, i.e. the A/AAAA records of
    `name` (asked of the DNS server at `resolver`, `ip:port`, over UDP), each dialled on `port`.

    Caddy 2.6 caches a lookup for `refresh` (a Caddy duration such as "1s") and looks the name up again at the
    first request after that, so a change of the records reaches traffic within `refresh` of the change, with
    no config load. The cache is keyed by name and port and survives config loads."""

    name: str
    port: int
    resolver: str
    refresh: str


_LABEL_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_MAX_HOSTNAME_LENGTH = 253


def route_id(app_id: UUID) -> str:
    """The deterministic Caddy `@id` of an app's route."""
    return f"app-{app_id}"


def validate_hostname(hostname: str) -> str:
    """Return `hostname` lower-cased if it is a plain DNS name, else raise ValueError.

    No wildcards, ports, trailing dots or IP addresses: a route matches exact names only.
    """
    name = hostname.lower()
    if not name or len(name) > _MAX_HOSTNAME_LENGTH:
        raise ValueError(f"invalid hostname {hostname!r}: length must be 1-{_MAX_HOSTNAME_LENGTH}")
    labels = name.split(".")
    if not all(_LABEL_RE.match(label) for label in labels):
        raise ValueError(f"invalid hostname {hostname!r}: not a DNS name")
    if labels[-1].isdigit():
        # "10.0.0.1" is made of valid labels but is an address, not a name.
        raise ValueError(f"invalid hostname {hostname!r}: top-level label is numeric")
    return name


def validate_upstream(upstream: str) -> str:
    """Return `upstream` as Caddy's `dial` string if it is `ip:port` (IPv6 as `[ip]:port`).

    Host names are refused: the platform dials container addresses it assigned itself.
    """
    host, sep, port = upstream.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"invalid upstream {upstream!r}: expected ip:port")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        address = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        raise ValueError(f"invalid upstream {upstream!r}: expected ip:port") from None
    if (address.version == 6) != bracketed:
        raise ValueError(f"invalid upstream {upstream!r}: IPv6 addresses must be written [ip]:port")
    return f"[{address}]:{int(port)}" if bracketed else f"{address}:{int(port)}"


def https_redirect(https_port: int) -> JsonObject:
    """A handler that answers plain-HTTP requests with a 308 to the same URL over HTTPS and lets
    HTTPS requests through to the next handler (a subroute whose one route matches `http` only)."""
    if not 1 <= https_port <= 65535:
        raise ValueError(f"invalid HTTPS port {https_port!r}")
    port = "" if https_port == 443 else f":{https_port}"
    return {
        "handler": "subroute",
        "routes": [
            {
                "match": [{"protocol": "http"}],
                "handle": [
                    {
                        "handler": "static_response",
                        "status_code": 308,
                        # The request's host without its port, so the port is the HTTPS listener's.
                        "headers": {"Location": [f"https://{{http.request.host}}{port}{{http.request.uri}}"]},
                    }
                ],
            }
        ],
    }


def validate_lookup(lookup: UpstreamLookup) -> UpstreamLookup:
    """`lookup` if its name, port, resolver and refresh are well-formed, else ValueError."""
    validate_hostname(lookup.name)
    if not 1 <= lookup.port <= 65535:
        raise ValueError(f"invalid upstream port {lookup.port!r}")
    validate_upstream(lookup.resolver)
    if not re.fullmatch(r"[1-9][0-9]*(ms|s)", lookup.refresh):
        raise ValueError(f"invalid refresh {lookup.refresh!r}: expected e.g. 500ms or 1s")
    return lookup


def app_route(
    app_id: UUID, hostnames: list[str], upstream: UpstreamLookup, *, force_https: bool = False, https_port: int = 443
) -> JsonObject:
    """The edge route sending `hostnames` to the app's replicas, which Caddy finds by looking up `upstream`
    (see `UpstreamLookup`); with `force_https`, plain-HTTP requests are redirected to HTTPS on `https_port`
    first. The route names no replica: a deploy changes the records behind the name, not the route.

    Raises ValueError if a hostname or the lookup is malformed or there is no hostname.
    """
    if isinstance(hostnames, str):
        raise ValueError("hostnames must be a list, not a string")
    hosts = list(dict.fromkeys(validate_hostname(name) for name in hostnames))
    if not hosts:
        raise ValueError("a route needs at least one hostname")
    lookup = validate_lookup(upstream)
    redirect = [https_redirect(https_port)] if force_https else []
    return {
        "@id": route_id(app_id),
        "match": [{"host": hosts}],
        "handle": [
            *redirect,
            {
                "handler": "reverse_proxy",
                "dynamic_upstreams": {
                    "source": "a",
                    "name": lookup.name,
                    # Caddy's field is a string (it may hold a placeholder).
                    "port": str(lookup.port),
                    "refresh": lookup.refresh,
                    # udp/: a lookup is one datagram each way (over TCP dnsmasq forks a child per connection).
                    "resolver": {"addresses": [f"udp/{lookup.resolver}"]},
                },
                "load_balancing": {
                    "selection_policy": {"policy": "least_conn"},
                    "try_duration": LB_TRY_DURATION,
                    "try_interval": LB_TRY_INTERVAL,
                },
                "health_checks": {
                    "passive": {"fail_duration": PASSIVE_FAIL_DURATION, "max_fails": 1},
                },
                "transport": {"protocol": "http", "dial_timeout": DIAL_TIMEOUT},
            },
        ],
        "terminal": True,
    }


def route_upstream_name(route: JsonObject) -> str | None:
    """The DNS name an app route looks its replicas up by (None for a static page)."""
    for handler in route.get("handle") or []:
        if isinstance(handler, dict) and handler.get("handler") == "reverse_proxy":
            dynamic = handler.get("dynamic_upstreams")
            if isinstance(dynamic, dict) and dynamic.get("name"):
                return str(dynamic["name"])
    return None


UNAVAILABLE_PAGE = (
    '<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>503 App not running</title></head>\n'
    "<body><h1>This app is not running right now</h1>\n"
    "<p>None of its instances is answering. The platform is restarting it; try again in a few seconds.</p>"
    "</body></html>\n"
)
UNAVAILABLE_RETRY_AFTER = "10"


def _page_route(
    app_id: UUID,
    hostnames: list[str],
    status: int,
    body: str,
    headers: dict[str, list[str]],
    *,
    force_https: bool,
    https_port: int,
) -> JsonObject:
    if isinstance(hostnames, str):
        raise ValueError("hostnames must be a list, not a string")
    hosts = list(dict.fromkeys(validate_hostname(name) for name in hostnames))
    if not hosts:
        raise ValueError("a route needs at least one hostname")
    redirect = [https_redirect(https_port)] if force_https else []
    return {
        "@id": route_id(app_id),
        "match": [{"host": hosts}],
        "handle": [
            *redirect,
            {
                "handler": "static_response",
                "status_code": status,
                "headers": {"Content-Type": ["text/html; charset=utf-8"], **headers, "Cache-Control": ["no-store"]},
                "body": body,
            },
        ],
        "terminal": True,
    }


def unavailable_route(
    app_id: UUID, hostnames: list[str], *, force_https: bool = False, https_port: int = 443
) -> JsonObject:
    """The app's route while none of its replicas runs: a clear 503 page at once, not a 502 after
    the proxy gave up. Same `@id` as the app route, so switching either way is one PATCH."""
    return _page_route(
        app_id,
        hostnames,
        503,
        UNAVAILABLE_PAGE,
        {"Retry-After": [UNAVAILABLE_RETRY_AFTER]},
        force_https=force_https,
        https_port=https_port,
    )


SUSPENDED_PAGE = (
    '<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>403 App suspended</title></head>\n'
    "<body><h1>This app is suspended</h1>\n"
    "<p>The platform's administrators have suspended the account that runs this app, so it is not served. "
    "If it is yours, contact them.</p></body></html>\n"
)


def suspended_route(
    app_id: UUID, hostnames: list[str], *, force_https: bool = False, https_port: int = 443
) -> JsonObject:
    """The app's route while its tenant is suspended: a 403 page saying so, whatever its replicas
    do. Same `@id` as the app route, so suspending and reactivating are one PATCH each."""
    return _page_route(app_id, hostnames, 403, SUSPENDED_PAGE, {}, force_https=force_https, https_port=https_port)


def catchall_route() -> JsonObject:
    """The last edge route: any host without an app gets a 404 in the platform's error format."""
    body = {
        "error": {
            "code": "app.not_found",
            "message": "No app is served at this hostname.",
            "details": None,
        }
    }
    return {
        "@id": CATCHALL_ROUTE_ID,
        "handle": [
            {
                "handler": "static_response",
                "status_code": 404,
                "headers": {"Content-Type": ["application/json"]},
                "body": json.dumps(body),
            }
        ],
        "terminal": True,
    }


def listen_port(listen: str) -> int:
    """The port of a `host:port` (or `:port`) listen address."""
    _host, sep, port = listen.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"invalid listen address {listen!r}: expected host:port or :port")
    return int(port)


def edge_server(listen: str, app_routes: list[JsonObject] | None = None, *, tls_listen: str = "") -> JsonObject:
    """The `coltsfoot_edge` server: plain HTTP on `listen` and, when `tls_listen` is set, HTTPS there,
    with one set of routes for both: `app_routes` then the catch-all.

    Caddy 2.6 serves TLS on every listener of a server that has TLS connection policies except the
    one on the HTTP app's `http_port`, which therefore must be `listen`'s port (see `http_ports`).
    Certificates are chosen by SNI from the TLS app's on-demand automation (`tls_automation`).

    Day to day, app routes are inserted before the catch-all by the client, never by rebuilding
    this; the whole server with every route is sent only to a Caddy that lost its config.
    """
    if ":" not in listen:
        raise ValueError(f"invalid edge listen address {listen!r}: expected host:port or :port")
    tls: JsonObject = {}
    if tls_listen:
        if listen_port(tls_listen) == listen_port(listen):
            raise ValueError("the edge's HTTP and HTTPS listeners need different ports")
        # One empty policy: any SNI, the certificate the automation gives for it.
        tls = {"tls_connection_policies": [{}]}
    return {
        "listen": [listen, *([tls_listen] if tls_listen else [])],
        **tls,
        # Caddy's durations are strings ("10s"); see EDGE_*_TIMEOUT above for the choice.
        "read_header_timeout": EDGE_READ_HEADER_TIMEOUT,
        "read_timeout": EDGE_READ_TIMEOUT,
        "idle_timeout": EDGE_IDLE_TIMEOUT,
        # No automatic HTTPS: the platform decides which names get certificates (the ask endpoint) and
        # which requests are redirected (an app's force_https), not Caddy's host matchers.
        "automatic_https": {"disable": True},
        "routes": [*(app_routes or []), catchall_route()],
    }


def http_ports(listen: str, tls_listen: str = "") -> JsonObject:
    """The HTTP app's `http_port`/`https_port` for the edge's listeners (see `edge_server`)."""
    ports = {"http_port": listen_port(listen)}
    if tls_listen:
        ports["https_port"] = listen_port(tls_listen)
    return ports


def tls_automation(
    *,
    issuer: str,
    ask_url: str,
    issue_per_minute: int,
    acme_email: str = "",
    acme_directory_url: str = "",
) -> JsonObject:
    """The TLS app: every certificate on demand (at the first handshake with that SNI), and only for
    names the platform's `ask` endpoint answers 2xx for; `issue_per_minute` bounds issuance attempts.

    `issuer` is `internal` (Caddy's own CA: development and tests) or `acme` (a public CA at
    `acme_directory_url`, with `acme_email` as the account's contact).
    """
    if not ask_url.startswith(("http://", "https://")):
        raise ValueError("the ask endpoint must be an http(s) URL")
    if issue_per_minute < 1:
        raise ValueError("issue_per_minute must be at least 1")
    issuer_config: JsonObject
    if issuer == "internal":
        issuer_config = {"module": "internal"}
    elif issuer == "acme":
        if not acme_directory_url.startswith("https://"):
            raise ValueError("the ACME directory URL must be an https URL")
        issuer_config = {"module": "acme", "ca": acme_directory_url}
        if acme_email:
            issuer_config["email"] = acme_email
    else:
        raise ValueError(f"unknown certificate issuer {issuer!r}: expected internal or acme")
    return {
        "automation": {
            "on_demand": {
                "ask": ask_url,
                "rate_limit": {"interval": "1m", "burst": issue_per_minute},
            },
            "policies": [{"on_demand": True, "issuers": [issuer_config]}],
        }
    }


def pki_app() -> JsonObject:
    """Caddy's local CA (the `internal` issuer's) as the platform wants it: never installed into the
    host's trust store (Caddy would do that at first use, as root). Clients trust it explicitly, from
    the admin API's `/pki/ca/local`."""
    return {"certificate_authorities": {"local": {"install_trust": False}}}
