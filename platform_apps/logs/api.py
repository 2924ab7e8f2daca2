"""Runtime logs of an app: the last lines, pages after a cursor, or a follow stream (SSE)."""

from __future__ import annotations

import uuid
from typing import Annotated

from django.http import HttpRequest
from django.http import StreamingHttpResponse
from ninja import Router
from pydantic import Field

from core.errors import error_responses
from drivers import logstore
from platform_apps.access import app_for
from platform_apps.access import deployment_for
from platform_apps.logs import selectors
from platform_apps.logs import streams
from platform_apps.logs.schemas import LogPageOut
from platform_apps.models import Deployment

router = Router(tags=["logs"])

ERRORS = error_responses(401, 403, 404, 422, 503)
Lines = Annotated[int, Field(ge=1, le=selectors.MAX_LINES)]

LOGS_DESCRIPTION = """\
Without `since`: the last `lines` lines (oldest first). With `since`: the first `lines` lines after that cursor.
`next` is the `since` of the next call. With `Accept: text/event-stream` (or `follow=1`), the same lines and
then every new one as it arrives, as Server-Sent Events: `id:` is the line's cursor, `data:` the line as JSON; a
reconnect with `Last-Event-ID` resumes after that line. `: keepalive` comments come every 15 s without a line;
the server ends a stream with `event: end` after its maximum duration (reconnect to go on)."""


SSE_EVENT_SCHEMA = {
    "type": "object",
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}, "id": {"type": "string"}},
    "required": ["data"],
}


@router.get(
    "/apps/{app_id}/logs",
    response={200: LogPageOut, **ERRORS},
    summary="The app's runtime logs (JSON, or a follow stream with Accept: text/event-stream)",
    description=LOGS_DESCRIPTION,
    operation_id="platform_apps_logs_api_app_logs",
    # The follow mode answers the same 200 as a server-sent event stream: each event's `data` is one
    # line as JSON (`id`, `ts`, `source`, `line`), its `id` the cursor; `event: end` closes it.
    openapi_extra={"responses": {200: {"content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}}}}},
)
def app_logs(
    request: HttpRequest,
    app_id: uuid.UUID,
    lines: Lines = 100,
    source: str | None = None,
    since: str | None = None,
    follow: bool = False,
) -> logstore.Page | StreamingHttpResponse:
    app = app_for(request, app_id, scope="apps:read")
    source = selectors.check_source(source)
    since = selectors.check_cursor(since)
    if not streams.wants_stream(request, follow):
        return selectors.log_page(app=app, lines=lines, source=source, since=since)
    resume = selectors.check_cursor(streams.last_event_id(request), "Last-Event-ID")
    match = logstore.Matcher(source=source)
    if resume is not None:
        # A reconnect: everything after the last line the client saw, however much that is.
        page = selectors.log_page(app=app, lines=selectors.MAX_LINES, source=source, since=resume)
    else:
        page = selectors.log_page(app=app, lines=lines, source=source, since=since)
    content = streams.events(str(app.public_id), history=page.items, cursor=page.next, match=match)
    return streams.sse_response(content)


def deployment_follow(request: HttpRequest, deployment_id: uuid.UUID) -> StreamingHttpResponse:
    """`GET /deployments/{id}/log` with Accept: text/event-stream: the deployment's build and release output
    and its platform events as they happen, ending once it is live, failed or superseded."""
    deployment = deployment_for(request, deployment_id, scope=("apps:read", "deploy"))
    resume = selectors.check_cursor(streams.last_event_id(request), "Last-Event-ID")
    final = deployment.state in Deployment.FINAL_STATES
    page = selectors.deployment_lines(deployment=deployment, since=resume)
    content = streams.events(
        str(deployment.app.public_id),
        history=page.items,
        cursor=page.next,
        match=logstore.Matcher(deployment_id=str(deployment.public_id)),
        until_end_state=True,
        final_state=deployment.state if final and not any(e.end_state for e in page.items) else "",
    )
    return streams.sse_response(content)


__all__ = ["deployment_follow", "router"]
