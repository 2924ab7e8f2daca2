"""Caddy route builders and admin API client.

The client is exercised against `FakeCaddy`, a small in-memory model of Caddy 2.6's admin API
(config paths, `/id/` lookups, If-Match, and its habit of answering config errors with 500),
so the tests check what ends up in the config rather than which mocks were called.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import respx

from caddy.client import CaddyClient
from caddy.client import CaddyError
from caddy.routes import CATCHALL_ROUTE_ID
from caddy.routes import EDGE_SERVER_NAME
from caddy.routes import UpstreamLookup
from caddy.routes import app_route
from caddy.routes import catchall_route
from caddy.routes import edge_server
from caddy.routes import route_id
from caddy.routes import route_upstream_name
from caddy.routes import suspended_route
from caddy.routes import unavailable_route

ADMIN = "http://caddy.test:2019"
EDGE_LISTEN = "127.0.0.1:8080"
APP = uuid.UUID("6f1c2a34-1b2c-4d5e-8f90-123456789abc")
OTHER_APP = uuid.UUID("0a0b0c0d-1111-4222-8333-444455556666")
RESOLVER = "127.0.0.1:5354"


def up(dials: list[str], *, resolver: str = RESOLVER, refresh: str = "1000ms") -> UpstreamLookup:
    """A lookup that stands for `dials` in the client tests: its name is made of the first one (routes to
    different replicas differ), its port is that dial's. The route itself names no replica any more."""
    if not dials:
        raise ValueError("no upstream")
    host, _, port = dials[0].rpartition(":")
    label = "u-" + host.strip("[]").replace(".", "-").replace(":", "-")
    return UpstreamLookup(name=f"{label}.apps.coltsfoot.internal", port=int(port), resolver=resolver, refresh=refresh)


def fnv1a_32(data: bytes) -> int:
    value = 0x811C9DC5
    for byte in data:
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value


def go_json(value: Any) -> bytes:
    # Caddy (Go) writes compact JSON with sorted keys and a trailing newline.
    return (json.dumps(value, separators=(",", ":"), sort_keys=True) + "\n").encode()


class FakeCaddy:
    """In-memory Caddy admin API, faithful to the 2.6.2 behaviours the client relies on."""

    def __init__(self, config: Any) -> None:
        self.config: Any = config
        self.requests: list[tuple[str, str]] = []
        # Hook run just before a write is applied (to simulate a racing writer).
        self.before_write: Callable[[FakeCaddy], None] | None = None

    # -- helpers for tests ---------------------------------------------------------------

    def routes(self) -> list[dict[str, Any]]:
        return self.config["apps"]["http"]["servers"][EDGE_SERVER_NAME]["routes"]  # type: ignore[no-any-return]

    def route_ids(self) -> list[str | None]:
        return [route.get("@id") for route in self.routes()]

    def writes(self) -> list[tuple[str, str]]:
        return [(method, path) for method, path in self.requests if method != "GET"]

    # -- the API -------------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        method, path = request.method, request.url.path
        self.requests.append((method, path))
        if request.headers.get("host") != "caddy.test:2019":
            return self._error(403, f"host not allowed: {request.headers.get('host')}")
        if path.startswith("/id/"):
            found = self._find_id(self.config, path.removeprefix("/id/"), ["config"])
            if found is None:
                return self._error(404, f"unknown object ID '{path.removeprefix('/id/')}'")
            path = "/" + "/".join(found)
        parts = [part for part in path.split("/") if part]
        if not parts or parts[0] != "config":
            return self._error(404, "not found")
        if method == "GET":
            return self._get(path, parts[1:])
        if self.before_write is not None:
            hook, self.before_write = self.before_write, None
            hook(self)
        if_match = request.headers.get("if-match")
        if if_match is not None:
            etag_path, _, expected = if_match.strip('"').partition(" ")
            _, body = self._read(etag_path.strip("/").split("/")[1:])
            if body is None or f"{fnv1a_32(body):08x}" != expected:
                return self._error(412, "If-Match header did not match current config hash")
        value = json.loads(request.content) if request.content else None
        new_config = copy.deepcopy(self.config)
        wrapper = {"config": new_config}
        error = self._write(wrapper, ["config", *parts[1:]], method, value)
        if error is not None:
            return self._error(500 if error != "traversal" else 400, error)
        self.config = wrapper["config"]
        return httpx.Response(200)

    def _get(self, path: str, keys: list[str]) -> httpx.Response:
        error, body = self._read(keys)
        if body is None:
            return self._error(400, error)
        # Caddy 2.6 sends the ETag as a trailer, which httpx drops: no ETag header here either.
        return httpx.Response(200, content=body, headers={"Content-Type": "application/json"})

    def _read(self, keys: list[str]) -> tuple[str, bytes | None]:
        node = self.config
        for depth, key in enumerate(keys):
            if isinstance(node, dict):
                node = node.get(key)
            elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            elif depth == len(keys):
                node = None
            else:
                return f"invalid traversal path at: config/{'/'.join(keys[: depth + 1])}", None
            if node is None and depth < len(keys) - 1:
                return f"invalid traversal path at: config/{'/'.join(keys[: depth + 2])}", None
        return "", go_json(node)

    def _write(self, root: dict[str, Any], keys: list[str], method: str, value: Any) -> str | None:
        node: Any = root
        for key in keys[:-1]:
            if isinstance(node, dict) and key in node:
                node = node[key]
                if node is None and key == "config":
                    root["config"] = node = {}
            elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            else:
                return "traversal"
        last = keys[-1]
        if isinstance(node, dict):
            if method == "PUT" and last in node:
                return f"key already exists: {last}"
            if method in ("PATCH", "DELETE") and last not in node:
                return f"key does not exist: {last}"
            if method == "POST" and isinstance(node.get(last), list):
                node[last].append(value)
            elif method == "DELETE":
                del node[last]
            else:
                node[last] = value
            return None
        if isinstance(node, list) and last.isdigit():
            index = int(last)
            if index > len(node) or (method != "PUT" and index == len(node)):
                return f"array index out of bounds: {index}"
            if method == "PUT":
                node.insert(index, value)
            elif method == "PATCH":
                node[index] = value
            elif method == "DELETE":
                del node[index]
            return None
        return "traversal"

    def _find_id(self, node: Any, wanted: str, path: list[str]) -> list[str] | None:
        # Caddy indexes ids by walking the config and overwriting: the last duplicate wins.
        found = None
        if isinstance(node, dict):
            if node.get("@id") == wanted:
                found = path
            for key, child in node.items():
                found = self._find_id(child, wanted, [*path, key]) or found
        elif isinstance(node, list):
            for index, child in enumerate(node):
                found = self._find_id(child, wanted, [*path, str(index)]) or found
        return found

    @staticmethod
    def _error(status: int, message: str) -> httpx.Response:
        return httpx.Response(status, json={"error": message})


def edge_config(*routes: dict[str, Any]) -> dict[str, Any]:
    server = edge_server(EDGE_LISTEN)
    server["routes"] = [*routes, *server["routes"]]
    return {"admin": {"listen": "caddy.test:2019"}, "apps": {"http": {"servers": {EDGE_SERVER_NAME: server}}}}


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def client(sleeps: list[float]) -> CaddyClient:
    return CaddyClient(ADMIN, timeout=2.0, edge_listen=EDGE_LISTEN, sleep=sleeps.append)


@pytest.fixture
def fake(respx_mock: respx.MockRouter) -> Callable[[Any], FakeCaddy]:
    def install(config: Any) -> FakeCaddy:
        caddy = FakeCaddy(config)
        respx_mock.route(host="caddy.test").mock(side_effect=caddy.handle)
        return caddy

    return install


# -- builders ------------------------------------------------------------------------------


def test_app_route_looks_its_replicas_up_by_name() -> None:
    lookup = UpstreamLookup(name=f"{APP}.apps.coltsfoot.internal", port=8000, resolver=RESOLVER, refresh="1000ms")
    route = app_route(APP, ["hello-acme.localhost"], lookup)

    assert route["@id"] == f"app-{APP}" == route_id(APP)
    assert route["match"] == [{"host": ["hello-acme.localhost"]}]
    assert route["terminal"] is True
    [handler] = route["handle"]
    assert handler["handler"] == "reverse_proxy"
    # Caddy's `a` source: the replicas are the name's A/AAAA records at the platform's DNS server, over UDP.
    assert handler["dynamic_upstreams"] == {
        "source": "a",
        "name": f"{APP}.apps.coltsfoot.internal",
        "port": "8000",
        "refresh": "1000ms",
        "resolver": {"addresses": ["udp/127.0.0.1:5354"]},
    }
    assert "upstreams" not in handler  # no replica address in the route: a deploy does not change it
    assert route_upstream_name(route) == lookup.name
    assert handler["load_balancing"]["selection_policy"]["policy"] in ("least_conn", "round_robin")
    assert handler["load_balancing"]["try_duration"] == "5s"
    assert handler["health_checks"]["passive"]["fail_duration"]
    assert handler["transport"]["dial_timeout"] == "1s"
    json.dumps(route)  # serialisable as is


def test_app_route_normalises_names() -> None:
    route = app_route(APP, ["Hello-Acme.localhost", "hello-acme.localhost"], up(["10.0.0.1:8000"]))

    assert route["match"] == [{"host": ["hello-acme.localhost"]}]
    assert route_upstream_name(unavailable_route(APP, ["hello-acme.localhost"])) is None


@pytest.mark.parametrize(
    "hostname",
    ["", "*.acme.localhost", "a..b", "-a.localhost", "a-.localhost", "a.localhost:80", "a.localhost.", "a_b.localhost",
     "10.0.0.1", "x" * 64 + ".localhost", "a/b.localhost", "ü.localhost", "a b.localhost"],
)  # fmt: skip
def test_app_route_rejects_bad_hostnames(hostname: str) -> None:
    with pytest.raises(ValueError, match="hostname"):
        app_route(APP, [hostname], up(["10.0.0.1:8000"]))


@pytest.mark.parametrize(
    "lookup",
    [
        UpstreamLookup(name="bad_name.apps.coltsfoot.internal", port=8000, resolver=RESOLVER, refresh="1s"),
        UpstreamLookup(name="10.0.0.1", port=8000, resolver=RESOLVER, refresh="1s"),
        UpstreamLookup(name="a.apps.coltsfoot.internal", port=0, resolver=RESOLVER, refresh="1s"),
        UpstreamLookup(name="a.apps.coltsfoot.internal", port=70000, resolver=RESOLVER, refresh="1s"),
        UpstreamLookup(name="a.apps.coltsfoot.internal", port=8000, resolver="dns.example:53", refresh="1s"),
        UpstreamLookup(name="a.apps.coltsfoot.internal", port=8000, resolver="127.0.0.1", refresh="1s"),
        UpstreamLookup(name="a.apps.coltsfoot.internal", port=8000, resolver=RESOLVER, refresh="0s"),
        UpstreamLookup(name="a.apps.coltsfoot.internal", port=8000, resolver=RESOLVER, refresh="1 s"),
        UpstreamLookup(name="a.apps.coltsfoot.internal", port=8000, resolver=RESOLVER, refresh=""),
    ],
)
def test_app_route_rejects_bad_lookups(lookup: UpstreamLookup) -> None:
    with pytest.raises(ValueError, match=r"hostname|port|upstream|refresh"):
        app_route(APP, ["hello-acme.localhost"], lookup)


def test_app_route_needs_hostnames() -> None:
    with pytest.raises(ValueError, match="hostname"):
        app_route(APP, [], up(["10.0.0.1:8000"]))
    with pytest.raises(ValueError, match="list"):
        app_route(APP, "hello-acme.localhost", up(["10.0.0.1:8000"]))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("build", "status", "words"),
    [(unavailable_route, 503, "not running"), (suspended_route, 403, "suspended")],
)
def test_page_routes_answer_a_page_under_the_apps_own_id(build: Any, status: int, words: str) -> None:
    app_id = uuid.uuid4()
    route = build(app_id, ["Shop-Acme.localhost"])
    assert route["@id"] == app_route(app_id, ["shop-acme.localhost"], up(["10.0.0.2:8000"]))["@id"]
    assert route["match"] == [{"host": ["shop-acme.localhost"]}]
    (handler,) = route["handle"]
    assert (handler["handler"], handler["status_code"]) == ("static_response", status)
    assert words in handler["body"]
    assert handler["headers"]["Cache-Control"] == ["no-store"]  # reactivating must show at once
    with pytest.raises(ValueError, match="hostname"):
        build(app_id, ["bad_host"])


def test_edge_server_shape() -> None:
    server = edge_server("127.0.0.1:8080")

    assert server["listen"] == ["127.0.0.1:8080"]
    assert server["automatic_https"] == {"disable": True}
    [catchall] = server["routes"]
    assert catchall["@id"] == CATCHALL_ROUTE_ID
    assert "match" not in catchall  # matches every request
    [handler] = catchall["handle"]
    assert handler["handler"] == "static_response"
    assert handler["status_code"] == 404
    assert handler["headers"] == {"Content-Type": ["application/json"]}
    body = json.loads(handler["body"])
    assert body["error"]["code"] == "app.not_found"
    assert body["error"]["message"]
    assert body["error"]["details"] is None


# -- edge_ensure ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [None, {"admin": {"listen": "caddy.test:2019"}}, {"apps": {"http": {"servers": {"other": {"listen": [":9"]}}}}}],
)
def test_edge_ensure_creates_server_and_keeps_the_rest(client: CaddyClient, fake: Any, config: Any) -> None:
    caddy = fake(copy.deepcopy(config))

    client.edge_ensure()

    assert caddy.config["apps"]["http"]["servers"][EDGE_SERVER_NAME] == edge_server(EDGE_LISTEN)
    if config and "admin" in config:
        assert caddy.config["admin"] == config["admin"]
    if config and "apps" in config:
        assert caddy.config["apps"]["http"]["servers"]["other"] == {"listen": [":9"]}


def test_edge_ensure_is_idempotent_and_keeps_app_routes(client: CaddyClient, fake: Any) -> None:
    caddy = fake({"admin": {"listen": "caddy.test:2019"}})
    client.edge_ensure()
    client.route_upsert(APP, ["hello-acme.localhost"], up(["10.0.0.1:8000"]))
    before = copy.deepcopy(caddy.config)
    caddy.requests.clear()

    client.edge_ensure()
    client.edge_ensure()

    assert caddy.config == before
    assert caddy.writes() == []


def test_edge_ensure_restores_missing_catchall_after_app_routes(client: CaddyClient, fake: Any) -> None:
    config = edge_config(app_route(APP, ["hello-acme.localhost"], up(["10.0.0.1:8000"])))
    config["apps"]["http"]["servers"][EDGE_SERVER_NAME]["routes"].pop()  # someone deleted the catch-all
    config["apps"]["http"]["servers"][EDGE_SERVER_NAME]["listen"] = [":1234"]
    caddy = fake(config)

    client.edge_ensure()

    assert caddy.route_ids() == [route_id(APP), CATCHALL_ROUTE_ID]
    assert caddy.config["apps"]["http"]["servers"][EDGE_SERVER_NAME]["listen"] == [EDGE_LISTEN]


def test_edge_ensure_lost_creation_race_is_success(client: CaddyClient, fake: Any) -> None:
    caddy = fake({"admin": {"listen": "caddy.test:2019"}})

    def other_worker_creates_it(fake_caddy: FakeCaddy) -> None:
        fake_caddy.config["apps"] = {"http": {"servers": {EDGE_SERVER_NAME: edge_server(EDGE_LISTEN)}}}

    caddy.before_write = other_worker_creates_it

    client.edge_ensure()

    assert caddy.route_ids() == [CATCHALL_ROUTE_ID]


# -- route_upsert / route_get / route_delete -----------------------------------------------


def test_upsert_new_route_inserts_before_catchall(client: CaddyClient, fake: Any) -> None:
    other = app_route(OTHER_APP, ["other-acme.localhost"], up(["10.0.0.9:8000"]))
    caddy = fake(edge_config(other))

    client.route_upsert(APP, ["hello-acme.localhost"], up(["10.0.0.1:8000"]))

    assert caddy.route_ids() == [route_id(APP), route_id(OTHER_APP), CATCHALL_ROUTE_ID]
    assert caddy.routes()[0] == app_route(APP, ["hello-acme.localhost"], up(["10.0.0.1:8000"]))
    assert caddy.routes()[1] == other
    assert client.route_get(APP) == caddy.routes()[0]


def test_upsert_existing_route_is_exactly_one_patch(client: CaddyClient, fake: Any) -> None:
    other = app_route(OTHER_APP, ["other-acme.localhost"], up(["10.0.0.9:8000"]))
    caddy = fake(edge_config(other, app_route(APP, ["hello-acme.localhost"], up(["10.0.0.1:8000"]))))

    client.route_upsert(APP, ["hello-acme.localhost"], up(["10.0.0.2:8000", "10.0.0.3:8000"]))

    assert caddy.requests == [("PATCH", f"/id/{route_id(APP)}")]
    assert caddy.route_ids() == [route_id(OTHER_APP), route_id(APP), CATCHALL_ROUTE_ID]
    assert route_upstream_name(caddy.routes()[1]) == up(["10.0.0.2:8000"]).name
    assert caddy.routes()[0] == other


def test_upsert_creates_edge_when_missing(client: CaddyClient, fake: Any) -> None:
    caddy = fake({"admin": {"listen": "caddy.test:2019"}})

    client.route_upsert(APP, ["hello-acme.localhost"], up(["10.0.0.1:8000"]))

    assert caddy.route_ids() == [route_id(APP), CATCHALL_ROUTE_ID]
    assert caddy.config["apps"]["http"]["servers"][EDGE_SERVER_NAME]["listen"] == [EDGE_LISTEN]


def test_upsert_racing_insert_of_same_route_leaves_one_copy(client: CaddyClient, fake: Any) -> None:
    caddy = fake(edge_config())

    def other_worker_inserts_first(fake_caddy: FakeCaddy) -> None:
        fake_caddy.routes().insert(0, app_route(APP, ["hello-acme.localhost"], up(["10.0.0.1:8000"])))

    caddy.before_write = other_worker_inserts_first

    client.route_upsert(APP, ["hello-acme.localhost"], up(["10.0.0.7:8000"]))

    assert caddy.route_ids() == [route_id(APP), CATCHALL_ROUTE_ID]
    assert route_upstream_name(caddy.routes()[0]) == up(["10.0.0.7:8000"]).name


def test_upsert_with_bad_input_sends_nothing(client: CaddyClient, fake: Any) -> None:
    caddy = fake(edge_config())

    with pytest.raises(ValueError, match="hostname"):
        client.route_upsert(APP, ["evil.localhost;rm"], up(["10.0.0.1:8000"]))

    assert caddy.requests == []


def test_delete_removes_only_that_route(client: CaddyClient, fake: Any) -> None:
    caddy = fake(
        edge_config(
            app_route(APP, ["hello-acme.localhost"], up(["10.0.0.1:8000"])),
            app_route(OTHER_APP, ["other-acme.localhost"], up(["10.0.0.9:8000"])),
        )
    )

    client.route_delete(APP)

    assert caddy.route_ids() == [route_id(OTHER_APP), CATCHALL_ROUTE_ID]
    assert client.route_get(APP) is None


def test_delete_of_missing_route_succeeds(client: CaddyClient, fake: Any) -> None:
    caddy = fake(edge_config())

    client.route_delete(APP)

    assert caddy.requests == [("DELETE", f"/id/{route_id(APP)}")]
    assert caddy.route_ids() == [CATCHALL_ROUTE_ID]


def test_delete_also_removes_duplicates(client: CaddyClient, fake: Any) -> None:
    route = app_route(APP, ["hello-acme.localhost"], up(["10.0.0.1:8000"]))
    caddy = fake(edge_config(route, copy.deepcopy(route)))  # Caddy 2.6 accepts duplicate ids

    client.route_delete(APP)

    assert caddy.route_ids() == [CATCHALL_ROUTE_ID]


def test_route_get_missing_is_none(client: CaddyClient, fake: Any) -> None:
    fake(edge_config())

    assert client.route_get(APP) is None


# -- errors and retries --------------------------------------------------------------------


def test_5xx_is_retried_then_raises_transient(
    client: CaddyClient, respx_mock: respx.MockRouter, sleeps: list[float]
) -> None:
    route = respx_mock.patch(f"{ADMIN}/id/{route_id(APP)}").respond(502, text="bad gateway")

    with pytest.raises(CaddyError) as excinfo:
        client.route_upsert(APP, ["hello-acme.localhost"], up(["10.0.0.1:8000"]))

    assert excinfo.value.transient is True
    assert excinfo.value.status_code == 502
    assert route.call_count == 3
    assert len(sleeps) == 2
    # Exponential with jitter: 0.2 s then 0.4 s, each times a factor between 0.5 and 1.5.
    assert 0.1 <= sleeps[0] <= 0.3
    assert 0.2 <= sleeps[1] <= 0.6


def test_connection_errors_are_retried_then_raise_transient(
    client: CaddyClient, respx_mock: respx.MockRouter, sleeps: list[float]
) -> None:
    route = respx_mock.delete(f"{ADMIN}/id/{route_id(APP)}").mock(side_effect=httpx.ConnectError("refused"))

    with pytest.raises(CaddyError) as excinfo:
        client.route_delete(APP)

    assert excinfo.value.transient is True
    assert excinfo.value.status_code is None
    assert route.call_count == 3
    assert len(sleeps) == 2


def test_timeout_then_success_recovers(client: CaddyClient, respx_mock: respx.MockRouter) -> None:
    route = respx_mock.patch(f"{ADMIN}/id/{route_id(APP)}").mock(
        side_effect=[httpx.ReadTimeout("slow"), httpx.Response(503), httpx.Response(200)]
    )

    client.route_upsert(APP, ["hello-acme.localhost"], up(["10.0.0.1:8000"]))

    assert route.call_count == 3


def test_400_is_permanent_and_not_retried(
    client: CaddyClient, respx_mock: respx.MockRouter, sleeps: list[float]
) -> None:
    route = respx_mock.patch(f"{ADMIN}/id/{route_id(APP)}").respond(400, json={"error": "decoding request body"})

    with pytest.raises(CaddyError) as excinfo:
        client.route_upsert(APP, ["hello-acme.localhost"], up(["10.0.0.1:8000"]))

    assert excinfo.value.transient is False
    assert excinfo.value.status_code == 400
    assert excinfo.value.detail == "decoding request body"
    assert route.call_count == 1
    assert sleeps == []


def test_rejected_config_500_is_permanent(client: CaddyClient, respx_mock: respx.MockRouter) -> None:
    # Caddy 2.6.2 answers a config it cannot load with 500; retrying the same config is pointless.
    message = "loading new config: http app module: start: listening on 127.0.0.1:8080: address already in use"
    route = respx_mock.patch(f"{ADMIN}/id/{route_id(APP)}").respond(500, json={"error": message})

    with pytest.raises(CaddyError) as excinfo:
        client.route_upsert(APP, ["hello-acme.localhost"], up(["10.0.0.1:8000"]))

    assert excinfo.value.transient is False
    assert route.call_count == 1


def test_host_not_allowed_is_permanent(respx_mock: respx.MockRouter) -> None:
    caddy = FakeCaddy(edge_config())
    respx_mock.route(host="caddy.other").mock(side_effect=caddy.handle)
    client = CaddyClient("http://caddy.other:2019", timeout=1.0, edge_listen=EDGE_LISTEN, sleep=lambda _: None)

    with pytest.raises(CaddyError) as excinfo:
        client.route_get(APP)

    assert excinfo.value.status_code == 403
    assert excinfo.value.transient is False
    assert client.ping() is False


def test_requests_carry_origin_and_timeout(client: CaddyClient, respx_mock: respx.MockRouter) -> None:
    route = respx_mock.get(f"{ADMIN}/id/{route_id(APP)}").respond(404, json={"error": "unknown object ID"})

    client.route_get(APP)

    request = route.calls.last.request
    assert request.headers["origin"] == ADMIN
    assert request.extensions["timeout"]["read"] == 2.0


def test_ping(client: CaddyClient, respx_mock: respx.MockRouter) -> None:
    route = respx_mock.get(f"{ADMIN}/id/{CATCHALL_ROUTE_ID}")

    route.respond(200, json=catchall_route())
    assert client.ping() is True
    route.respond(404, json={"error": "unknown object ID"})
    assert client.ping() is True
    route.mock(side_effect=httpx.ConnectError("refused"))
    assert client.ping() is False
    assert route.call_count == 3  # never retried: /ready must answer quickly


def test_etag_matches_caddy_262() -> None:
    # Taken from a real Caddy 2.6.2: GET .../listen answered this body with this ETag trailer.
    body = b'["127.0.0.1:56115"]\n'
    response = httpx.Response(200, content=body)
    from caddy.client import _etag

    assert _etag("/config/apps/http/servers/coltsfoot_edge/listen", response) == ETAG_FROM_CADDY


ETAG_FROM_CADDY = '"/config/apps/http/servers/coltsfoot_edge/listen f6954b14"'


def test_from_settings(settings: Any) -> None:
    settings.CADDY_ADMIN_URL = "http://127.0.0.1:2999"
    settings.CADDY_TIMEOUT_SECONDS = 1.5
    settings.EDGE_LISTEN = "127.0.0.1:9999"

    client = CaddyClient.from_settings()

    assert str(client._http.base_url) == "http://127.0.0.1:2999"
    assert client._http.timeout.connect == 1.5
    assert client._edge_listen == "127.0.0.1:9999"


def test_edge_server_times_out_slow_and_idle_clients_but_not_streams() -> None:
    server = edge_server("127.0.0.1:8080")
    # Headers within 10 s (slowloris), idle keep-alive connections closed after 2 min, a whole
    # request (a trickled body) within 10 min; no write timeout, so a response may stream.
    assert server["read_header_timeout"] == "10s"
    assert server["idle_timeout"] == "2m"
    assert server["read_timeout"] == "10m"
    assert "write_timeout" not in server
    json.dumps(server)  # what goes to Caddy's admin API


def test_edge_ensure_adds_the_timeouts_to_an_edge_from_before_them(client: CaddyClient, fake: Any) -> None:
    config = edge_config(app_route(APP, ["hello-acme.localhost"], up(["10.0.0.1:8000"])))
    server = config["apps"]["http"]["servers"][EDGE_SERVER_NAME]
    for key in ("read_header_timeout", "read_timeout", "idle_timeout"):
        server.pop(key, None)  # a Caddy configured by the previous version
    caddy = fake(config)

    client.edge_ensure()

    ensured = caddy.config["apps"]["http"]["servers"][EDGE_SERVER_NAME]
    assert ensured["read_header_timeout"] == "10s"
    assert ensured["idle_timeout"] == "2m"
    assert caddy.route_ids() == [route_id(APP), CATCHALL_ROUTE_ID]  # app routes untouched
