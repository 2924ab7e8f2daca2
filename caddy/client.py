"""The one seam between Coltsfoot and Caddy: a small client for Caddy's JSON admin API.

Everything Coltsfoot changes in Caddy lives under one HTTP server, `coltsfoot_edge`, whose
routes are one route per app (`@id` `app-<app uuid>`) followed by a catch-all 404 route.

Notes on Caddy 2.6.2 that shaped this module (checked against the real binary):

- Config-path errors ("key already exists", "key does not exist", "array index out of bounds")
  and rejected configs ("loading new config: ...") are answered with **500**, not 4xx. Retrying
  those cannot help, so they are classified permanent by their message.
- Caddy does **not** reject duplicate `@id`s. Two racing inserts of the same new route would
  leave two copies, and `PATCH /id/...` then edits only one of them (the shadowed one). Inserts
  are therefore conditional on the routes array being unchanged since it was read (`If-Match`
  with the array's ETag); a 412 means someone else wrote first, and we start over.
- Caddy 2.6 sends the ETag of a GET as an HTTP *trailer*, which httpx does not expose. The ETag
  is `"<path> <fnv-1a 32 of the response body>"`, so when no `ETag` header is present we
  compute the same value from the body.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any
from typing import Self
from urllib.parse import urlencode
from urllib.parse import urlsplit
from uuid import UUID

import httpx
from django.conf import settings

from caddy.routes import CATCHALL_ROUTE_ID
from caddy.routes import EDGE_SERVER_NAME
from caddy.routes import JsonObject
from caddy.routes import UpstreamLookup
from caddy.routes import app_route
from caddy.routes import catchall_route
from caddy.routes import edge_server
from caddy.routes import http_ports
from caddy.routes import pki_app
from caddy.routes import route_id
from caddy.routes import route_upstream_name
from caddy.routes import tls_automation
from core.faults import InfrastructureError

logger = logging.getLogger(__name__)

SERVER_PATH = f"/config/apps/http/servers/{EDGE_SERVER_NAME}"
ROUTES_PATH = f"{SERVER_PATH}/routes"
# Keys from the config root down to the edge server.
_SERVER_KEYS = ("apps", "http", "servers", EDGE_SERVER_NAME)

# Caddy 2.6 answers these with a 500; they describe the request or the config, not a hiccup.
_PERMANENT_5XX_MARKERS = (
    "loading new config",
    "key already exists",
    "key does not exist",
    "array index out of bounds",
    "invalid traversal path",
    "unknown object ID",
    "decoding request body",
)

# How many times a read-then-conditional-write restarts after losing a race to another writer.
_MAX_CONFLICT_ROUNDS = 5

_TRANSIENT_TRANSPORT_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


class CaddyError(InfrastructureError):
    """A Caddy admin API call failed.

    `transient` says whether trying again later may succeed (Caddy unreachable, timed out,
    5xx); a permanent error means the request or the config itself was refused.
    """

    def __init__(self, message: str, *, transient: bool, status_code: int | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.transient = transient
        self.status_code = status_code
        # Caddy's own error text (`{"error": "..."}`), empty when there was no response.
        self.detail = detail


class CaddyClient:
    """Typed operations on the `coltsfoot_edge` server through Caddy's admin API."""

    def __init__(
        self,
        admin_url: str,
        *,
        timeout: float,
        edge_listen: str,
        tls_listen: str = "",
        tls_app: JsonObject | None = None,
        attempts: int = 3,
        backoff_seconds: float = 0.2,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        parts = urlsplit(admin_url)
        # Caddy checks the Host header against the admin listen address (httpx derives it from
        # base_url) and, when `enforce_origin` is on, requires a matching Origin header too.
        self._http = httpx.Client(
            base_url=admin_url,
            timeout=timeout,
            headers={"Origin": f"{parts.scheme}://{parts.netloc}"},
            # Caddy 2.6 restarts its admin server on every config change, so a pooled idle
            # connection is usually dead by the next request ("connection reset"): don't pool.
            limits=httpx.Limits(max_keepalive_connections=0),
            # The admin API is plain HTTP on loopback: loading a CA bundle would be wasted work.
            verify=parts.scheme == "https",
        )
        self._edge_listen = edge_listen
        # The HTTPS listener and the TLS app that certifies its names; "" and None: plain HTTP only.
        self._tls_listen = tls_listen
        self._tls_app = tls_app if tls_listen else None
        self._attempts = attempts
        self._backoff_seconds = backoff_seconds
        self._sleep = sleep

    @classmethod
    def from_settings(cls) -> CaddyClient:
        tls_listen = str(settings.EDGE_TLS_LISTEN)
        tls_app = None
        if tls_listen:
            ask = urlsplit(str(settings.TLS_ASK_URL))
            query = urlencode({"key": settings.TLS_ASK_SECRET})
            tls_app = tls_automation(
                issuer=settings.TLS_ISSUER,
                ask_url=ask._replace(query=f"{ask.query}&{query}" if ask.query else query).geturl(),
                issue_per_minute=settings.TLS_ISSUE_PER_MINUTE,
                acme_email=settings.ACME_EMAIL,
                acme_directory_url=settings.ACME_DIRECTORY_URL,
            )
        return cls(
            settings.CADDY_ADMIN_URL,
            timeout=settings.CADDY_TIMEOUT_SECONDS,
            edge_listen=settings.EDGE_LISTEN,
            tls_listen=tls_listen,
            tls_app=tls_app,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- public operations ---------------------------------------------------------------

    def ping(self) -> bool:
        """True if the admin API answers and accepts our requests (for /ready). Never retries."""
        try:
            # Tiny either way: 200 with the catch-all route, or 404 before edge_ensure ran.
            response = self._http.get(f"/id/{CATCHALL_ROUTE_ID}")
        except httpx.HTTPError:
            return False
        return response.status_code in (200, 404)

    def edge_ensure(self) -> None:
        """Create the edge server and its catch-all route if missing, and the HTTP ports and TLS
        apps the edge needs if they differ; leave app routes alone."""
        desired = edge_server(self._edge_listen, tls_listen=self._tls_listen)
        # Certificates are configured before the HTTPS listener exists, so it never serves without them.
        self._tls_ensure(self._request("GET", "/config/").json())
        for _ in range(_MAX_CONFLICT_ROUNDS):
            if self._edge_ensure_once(desired):
                return
        raise CaddyError("caddy edge server kept changing while being ensured", transient=True)

    def route_upsert(self, app_id: UUID, hostnames: list[str], upstream: UpstreamLookup) -> None:
        """Route `hostnames` to the replicas `upstream` names, creating the app's route if it does not exist.
        Raises ValueError for bad hostnames or a bad lookup."""
        self.route_set(app_route(app_id, hostnames, upstream))

    def route_set(self, route: JsonObject) -> None:
        """Replace the route with `route`'s `@id` (one PATCH), or insert it before the catch-all."""
        rid = str(route["@id"])
        for _ in range(_MAX_CONFLICT_ROUNDS):
            try:
                self._request("PATCH", f"/id/{rid}", body=route)
            except CaddyError as exc:
                if exc.status_code != 404:
                    raise
            else:
                logger.info("caddy route switched id=%s %s", rid, _route_summary(route))
                return
            if self._route_insert(rid, route):
                logger.info("caddy route created id=%s %s", rid, _route_summary(route))
                return
        raise CaddyError(f"caddy routes kept changing while setting route {rid}", transient=True)

    def route_delete_id(self, rid: str) -> None:
        """Remove a route by its `@id` (a route of an app the platform no longer has)."""
        for _ in range(_MAX_CONFLICT_ROUNDS * 2):
            try:
                self._request("DELETE", f"/id/{rid}")
            except CaddyError as exc:
                if exc.status_code != 404:
                    raise
                return
        raise CaddyError(f"caddy route {rid} is still present after deleting it", transient=True)

    def route_delete(self, app_id: UUID) -> None:
        """Remove the app's route; a route that is already gone is success."""
        rid = route_id(app_id)
        # Loop until Caddy says the id is unknown: this also removes duplicates that a racing
        # writer without If-Match may have left (Caddy 2.6 allows duplicate ids).
        for deleted in range(_MAX_CONFLICT_ROUNDS * 2):
            try:
                self._request("DELETE", f"/id/{rid}")
            except CaddyError as exc:
                if exc.status_code != 404:
                    raise
                if deleted:
                    logger.info("caddy route deleted app_id=%s", app_id)
                else:
                    logger.info("caddy route already absent app_id=%s", app_id)
                return
        raise CaddyError(f"caddy route for app {app_id} is still present after deleting it", transient=True)

    def route_get(self, app_id: UUID) -> JsonObject | None:
        """The app's route as Caddy holds it, or None if there is none."""
        try:
            response = self._request("GET", f"/id/{route_id(app_id)}")
        except CaddyError as exc:
            if exc.status_code == 404:
                return None
            raise
        route = response.json()
        return route if isinstance(route, dict) else None

    def edge_routes(self) -> list[JsonObject] | None:
        """Every route of the edge server in one read (the reconciler's observation), or None
        when Caddy has no edge server at all (it restarted without its config)."""
        routes, _etag = self._routes_read(with_etag=False)
        return routes

    def edge_load(self, app_routes: list[JsonObject]) -> None:
        """Give a Caddy that lost its config the whole edge back (every app route and the
        catch-all) in one write, leaving any other part of its config alone."""
        desired = edge_server(self._edge_listen, app_routes, tls_listen=self._tls_listen)
        root: Any = self._request("GET", "/config/").json() or {}
        # First the certificates (a failure here leaves the edge missing, so the next pass loads it all
        # again), then the ports (a server with TLS policies serves TLS on every listener but http_port's).
        if self._tls_ensure(root):
            root = self._request("GET", "/config/").json() or {}
        self._http_ports_ensure(root)
        node: Any = root
        path = "/config"
        for depth, key in enumerate(_SERVER_KEYS):
            child = node.get(key) if isinstance(node, dict) else None
            last = depth == len(_SERVER_KEYS) - 1
            if child is None or last:
                value: Any = desired
                for outer in reversed(_SERVER_KEYS[depth + 1 :]):
                    value = {outer: value}
                    if outer == "servers":
                        value = {**http_ports(self._edge_listen, self._tls_listen), **value}
                method = "PATCH" if isinstance(node, dict) and key in node else "PUT"
                self._request(method, f"{path}/{key}", body=value)
                logger.info("caddy edge server loaded name=%s routes=%d", EDGE_SERVER_NAME, len(app_routes))
                return
            node = child
            path = f"{path}/{key}"

    # -- internals -----------------------------------------------------------------------

    def _http_ports_ensure(self, root: Any) -> None:
        """Set the HTTP app's ports when it exists and they differ (a new one gets them with the server)."""
        http = (
            root.get("apps", {}).get("http") if isinstance(root, dict) and isinstance(root.get("apps"), dict) else None
        )
        if not isinstance(http, dict):
            return
        for key, value in http_ports(self._edge_listen, self._tls_listen).items():
            if http.get(key) != value:
                self._request("PATCH" if key in http else "PUT", f"/config/apps/http/{key}", body=value)
                logger.info("caddy http app updated %s=%s", key, value)

    def _tls_ensure(self, root: Any) -> bool:
        """The PKI and TLS apps the HTTPS listener needs, written only when they differ from `root`'s (each
        write makes Caddy 2.6 reload its whole config); True if anything was written.

        The PKI app goes first: the internal issuer otherwise provisions Caddy's local CA with its default,
        which installs the root into the host's trust store (running update-ca-certificates, as root).
        POST sets or replaces an object in Caddy's admin API, so a write retried after a timeout is harmless.
        """
        if self._tls_app is None:
            return False
        apps = root.get("apps") if isinstance(root, dict) else None
        if not isinstance(apps, dict):
            # No apps at all yet (a fresh Caddy): both in one write; the edge server is added after.
            self._request("POST", "/config/apps", body={"pki": pki_app(), "tls": self._tls_app})
            logger.info("caddy pki and tls apps set")
            return True
        wrote = False
        for key, value in (("pki", pki_app()), ("tls", self._tls_app)):
            if apps.get(key) != value:
                self._request("POST", f"/config/apps/{key}", body=value)
                logger.info("caddy %s app set", key)
                wrote = True
        return wrote

    def _edge_ensure_once(self, desired: JsonObject) -> bool:
        """One read-compare-write pass; False when another writer got in first."""
        node: Any = self._request("GET", "/config/").json() or {}
        self._http_ports_ensure(node)
        ports = http_ports(self._edge_listen, self._tls_listen)
        path = "/config"
        for depth, key in enumerate(_SERVER_KEYS):
            child = node.get(key) if isinstance(node, dict) else None
            if child is None:
                value: Any = desired
                for outer in reversed(_SERVER_KEYS[depth + 1 :]):
                    value = {outer: value}
                    if outer == "servers":
                        value = {**ports, **value}  # a new HTTP app gets the edge's ports with it
                # PUT only creates an absent key, so a racing creator makes ours fail instead of
                # overwriting theirs; a key that is present but null has to be PATCHed.
                method = "PATCH" if isinstance(node, dict) and key in node else "PUT"
                if not self._write_if_absent(method, f"{path}/{key}", value):
                    return False
                logger.info("caddy edge server created name=%s listen=%s", EDGE_SERVER_NAME, self._edge_listen)
                return True
            node = child
            path = f"{path}/{key}"

        server: JsonObject = node
        for key in (
            "listen",
            "tls_connection_policies",
            "automatic_https",
            "read_header_timeout",
            "read_timeout",
            "idle_timeout",
        ):
            if key not in desired:
                if key in server:
                    self._request("DELETE", f"{SERVER_PATH}/{key}")
                    logger.info("caddy edge server updated name=%s %s removed", EDGE_SERVER_NAME, key)
                continue
            if server.get(key) != desired[key]:
                method = "PATCH" if key in server else "PUT"
                if not self._write_if_absent(method, f"{SERVER_PATH}/{key}", desired[key]):
                    return False
                logger.info("caddy edge server updated name=%s %s=%s", EDGE_SERVER_NAME, key, desired[key])

        routes = server.get("routes")
        catchall = catchall_route()
        if not isinstance(routes, list):
            method = "PATCH" if "routes" in server else "PUT"
            if not self._write_if_absent(method, ROUTES_PATH, [catchall]):
                return False
            logger.info("caddy edge catch-all created name=%s", EDGE_SERVER_NAME)
            return True
        existing = next((r for r in routes if isinstance(r, dict) and r.get("@id") == CATCHALL_ROUTE_ID), None)
        if existing is None:
            # POST appends, so app routes keep their place before it.
            self._request("POST", ROUTES_PATH, body=catchall)
            logger.info("caddy edge catch-all created name=%s", EDGE_SERVER_NAME)
        elif existing != catchall:
            self._request("PATCH", f"/id/{CATCHALL_ROUTE_ID}", body=catchall)
            logger.info("caddy edge catch-all updated name=%s", EDGE_SERVER_NAME)
        return True

    def _write_if_absent(self, method: str, path: str, value: Any) -> bool:
        try:
            self._request(method, path, body=value)
        except CaddyError as exc:
            if exc.status_code == 409 or "already exists" in exc.detail:
                return False
            raise
        return True

    def _route_insert(self, rid: str, route: JsonObject) -> bool:
        """Insert `route` first in the edge routes; False if the caller should start over."""
        routes, etag = self._routes_read()
        if routes is None or not any(r.get("@id") == CATCHALL_ROUTE_ID for r in routes):
            self.edge_ensure()
            return False
        if any(r.get("@id") == rid for r in routes):
            return False  # created since our PATCH missed it: PATCH again
        try:
            # Index 0 is always before the catch-all. The If-Match makes a racing (or retried)
            # insert of the same route fail with 412 instead of leaving a duplicate.
            self._request("PUT", f"{ROUTES_PATH}/0", body=route, headers={"If-Match": etag})
        except CaddyError as exc:
            if exc.status_code == 412:
                return False
            raise
        return True

    def _routes_read(self, *, with_etag: bool = True) -> tuple[list[JsonObject] | None, str]:
        """The edge routes and their ETag; None when the server (or its routes) is missing."""
        try:
            response = self._request("GET", ROUTES_PATH)
        except CaddyError as exc:
            # 2.6 answers a path through a missing server with 400 "invalid traversal path".
            if exc.transient or exc.status_code not in (400, 404):
                raise
            return None, ""
        routes = response.json()
        if not isinstance(routes, list):
            return None, ""
        etag = _etag(ROUTES_PATH, response) if with_etag else ""
        return [r for r in routes if isinstance(r, dict)], etag

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """Send one admin request, retrying transient failures; raise CaddyError otherwise."""
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._http.request(method, path, json=body, headers=headers)
            except _TRANSIENT_TRANSPORT_ERRORS as exc:
                error = CaddyError(f"caddy admin {method} {path}: {type(exc).__name__}: {exc}", transient=True)
            except httpx.TransportError as exc:
                raise CaddyError(f"caddy admin {method} {path}: {type(exc).__name__}: {exc}", transient=False) from exc
            else:
                if response.is_success:
                    return response
                error = _error_from_response(method, path, response)
                if not error.transient:
                    raise error
            if attempt >= self._attempts:
                raise error
            # Exponential backoff with jitter so several workers don't retry in lockstep.
            delay = self._backoff_seconds * 2 ** (attempt - 1) * random.uniform(0.5, 1.5)  # noqa: S311
            logger.warning("caddy admin %s %s failed (attempt %d), retrying: %s", method, path, attempt, error)
            self._sleep(delay)


def _route_summary(route: JsonObject) -> str:
    hosts = [host for match in route.get("match", []) for host in match.get("host", [])]
    handlers = [h for h in route.get("handle") or [] if isinstance(h, dict)]
    redirect = " force_https" if any(h.get("handler") == "subroute" for h in handlers) else ""
    page = next((h for h in handlers if h.get("handler") == "static_response"), None)
    if page is not None:
        return f"hostnames={hosts} status={page.get('status_code')}{redirect}"
    return f"hostnames={hosts} upstream={route_upstream_name(route)}{redirect}"


def _error_from_response(method: str, path: str, response: httpx.Response) -> CaddyError:
    try:
        payload = response.json()
    except ValueError:
        payload = None
    detail = str(payload.get("error", "")) if isinstance(payload, dict) else response.text[:500]
    status = response.status_code
    transient = status >= 500 and not any(marker in detail for marker in _PERMANENT_5XX_MARKERS)
    return CaddyError(
        f"caddy admin {method} {path}: HTTP {status}: {detail}",
        transient=transient,
        status_code=status,
        detail=detail,
    )


def _etag(path: str, response: httpx.Response) -> str:
    # Newer Caddy versions send it as a header; 2.6 only as a trailer.
    header = response.headers.get("etag")
    if header:
        return str(header)
    return f'"{path} {_fnv1a_32(response.content):08x}"'


def _fnv1a_32(data: bytes) -> int:
    value = 0x811C9DC5
    for byte in data:
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value
