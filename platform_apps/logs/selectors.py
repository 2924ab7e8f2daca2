"""Reads of an app's log stream. Which app a token may read is `platform_apps.access`'s rule; these take the app
it gave."""

from __future__ import annotations

from core.errors import ApiError
from core.errors import Unprocessable
from drivers import logstore
from platform_apps.models import App
from platform_apps.models import Deployment

MAX_LINES = 10_000


def check_source(source: str | None) -> str | None:
    if source is not None and not logstore.is_source(source):
        raise Unprocessable(
            "logs.bad_source", "source is web.<n>, release, build or platform.", details={"source": source}
        )
    return source


def check_cursor(cursor: str | None, what: str = "since") -> str | None:
    if cursor is not None and not logstore.is_cursor(cursor):
        raise Unprocessable("logs.bad_cursor", f"{what} is a cursor from an earlier answer (`<ms>-<n>`).")
    return cursor


def _read(app_id: str, *, lines: int, since: str | None, match: logstore.Matcher) -> logstore.Page:
    try:
        return logstore.store().read(app_id, lines=lines, since=since, match=match)
    except logstore.LogStoreError as exc:
        raise ApiError(
            "logs.unavailable", "The log store cannot be reached right now; try again shortly.", status=503
        ) from exc


def log_page(*, app: App, lines: int, source: str | None, since: str | None) -> logstore.Page:
    """The last `lines` lines (of one source), or the first `lines` after the cursor `since`."""
    return _read(str(app.public_id), lines=lines, since=since, match=logstore.Matcher(source=source))


def deployment_lines(*, deployment: Deployment, since: str | None) -> logstore.Page:
    """What the app's stream still holds of one deployment (its build, release and platform events), after
    `since` if given."""
    match = logstore.Matcher(deployment_id=str(deployment.public_id))
    return _read(str(deployment.app.public_id), lines=MAX_LINES, since=since, match=match)
