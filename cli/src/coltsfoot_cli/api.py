"""The one HTTP wrapper: a bearer token, a mandatory timeout, and every failure turned into a
`CliError` that carries the API's error code and the process exit code it maps to."""

from __future__ import annotations

import enum
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from typing import Self

import httpx

from coltsfoot_cli import __version__

TIMEOUT = httpx.Timeout(30.0, connect=10.0)
# Uploads and streams: the body may take a while to send, and a follow stream is quiet between
# heartbeats (~15 s); a read that waits longer than this means the stream is dead.
UPLOAD_TIMEOUT = httpx.Timeout(30.0, connect=10.0, write=300.0)
STREAM_TIMEOUT = httpx.Timeout(10.0, read=45.0)
PAGE_LIMIT = 100


class Exit(enum.IntEnum):
    """The process exit codes (documented in `coltsfoot --help` and the README)."""

    OK = 0
    API_ERROR = 1
    USAGE = 2
    DEPLOY_FAILED = 3
    AUTH = 4
    UNREACHABLE = 5


class CliError(Exception):
    """Something the user should read, with a stable code and an exit status."""

    def __init__(self, code: str, message: str, *, exit_code: Exit = Exit.API_ERROR, details: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.exit_code = exit_code
        self.details = details


def usage(message: str) -> CliError:
    return CliError("usage", message, exit_code=Exit.USAGE)


def _exit_for(status: int, code: str) -> Exit:
    if status == 401 or code.startswith("auth.") or code == "tenant.suspended":
        return Exit.AUTH
    if status >= 500:
        return Exit.UNREACHABLE
    return Exit.API_ERROR


def error_from_response(response: httpx.Response) -> CliError:
    """The API's `{"error": {"code", "message", "details"}}`, or a stand-in for an answer that is not
    one (a proxy's HTML page, say): never the raw body in full."""
    code, message, details = f"http.{response.status_code}", "", None
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        code = error["code"]
        message = str(error.get("message") or "")
        details = error.get("details")
    else:
        text = response.text.strip().replace("\n", " ")
        message = f"The API answered {response.status_code} {response.reason_phrase}" + (
            f": {text[:200]}" if text else "."
        )
    return CliError(code, message, exit_code=_exit_for(response.status_code, code), details=details)


def unreachable(api: str, exc: httpx.HTTPError) -> CliError:
    return CliError(
        "network.unreachable",
        f"Could not reach the API at {api}: {exc or type(exc).__name__}",
        exit_code=Exit.UNREACHABLE,
    )


class Client:
    """A thin client of `/api/v1`: paths are relative to the API URL the user logged in to."""

    def __init__(self, api: str, token: str | None, *, transport: httpx.BaseTransport | None = None) -> None:
        self.api = api.rstrip("/")
        headers = {"User-Agent": f"coltsfoot-cli/{__version__}", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(base_url=self.api + "/", headers=headers, timeout=TIMEOUT, transport=transport)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path.lstrip("/"), **kwargs)
        except httpx.HTTPError as exc:
            raise unreachable(self.api, exc) from exc
        if response.is_error:
            raise error_from_response(response)
        return response

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs).json()

    def post(self, path: str, **kwargs: Any) -> Any:
        response = self.request("POST", path, **kwargs)
        return response.json() if response.content else None

    def patch(self, path: str, **kwargs: Any) -> Any:
        return self.request("PATCH", path, **kwargs).json()

    def delete(self, path: str, **kwargs: Any) -> Any:
        response = self.request("DELETE", path, **kwargs)
        return response.json() if response.content else None

    def get_all(self, path: str, *, params: dict[str, Any] | None = None, most: int = 10_000) -> list[Any]:
        """Every item of a paginated list (`{"items", "count"}`), up to `most`."""
        items: list[Any] = []
        while len(items) < most:
            page = self.get(path, params={**(params or {}), "limit": PAGE_LIMIT, "offset": len(items)})
            batch = page.get("items", [])
            items += batch
            if not batch or len(items) >= int(page.get("count", 0)):
                break
        return items[:most]

    @contextmanager
    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """An open streaming response; an error answer is raised (its body read) before anything is
        yielded. Network failures are left to the caller, which may want to reconnect."""
        with self._http.stream(method, path.lstrip("/"), **kwargs) as response:
            if response.is_error:
                response.read()
                raise error_from_response(response)
            yield response
