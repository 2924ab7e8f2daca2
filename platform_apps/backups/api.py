"""Backups of an app's PostgreSQL database: take one, list them, restore one, download one.

Listing backups and reading one's state need `apps:read` (like the add-on itself); taking one,
restoring one and downloading one need `apps:write` (a dump holds all of the app's data). Another
tenant's app or backup is a 404 like a missing one. Taking and restoring answer 202 with the backup row; a worker
does the work. A download streams the dump, decrypted on the fly, as `pg_dump` wrote it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from collections.abc import Generator

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.db.models import QuerySet
from django.http import HttpRequest
from django.http import StreamingHttpResponse
from django.http.response import HttpResponseBase
from ninja import Router
from ninja import Status

from core import crypto
from core import sealed
from core.errors import Conflict
from core.errors import error_responses
from core.pagination import paginated
from platform_apps.access import app_for
from platform_apps.backups import selectors
from platform_apps.backups import services
from platform_apps.backups.schemas import BackupOut
from platform_apps.models import AddonBackup

router = Router(tags=["config and add-ons"])

ERRORS = error_responses(401, 403, 404, 409, 422)
SCOPE = "apps:write"
READ = "apps:read"
BASE = "/apps/{app_id}/addons/postgres/backups"


@router.post(
    BASE,
    response={202: BackupOut, **ERRORS},
    summary="Back the database up",
    operation_id="platform_apps_backups_api_backup_create",
)
def backup_create(request: HttpRequest, app_id: uuid.UUID) -> Status[AddonBackup]:
    app = app_for(request, app_id, scope=SCOPE)
    return Status(202, services.backup_create(app=app))


@router.get(
    BASE,
    response={200: list[BackupOut], **ERRORS},
    summary="List the database's backups",
    operation_id="platform_apps_backups_api_backup_list",
)
@paginated
def backup_list(request: HttpRequest, app_id: uuid.UUID) -> QuerySet[AddonBackup]:
    return selectors.backup_list(app=app_for(request, app_id, scope=READ))


@router.get(
    BASE + "/{backup_id}",
    response={200: BackupOut, **ERRORS},
    summary="Get a backup",
    operation_id="platform_apps_backups_api_backup_get",
)
def backup_get(request: HttpRequest, app_id: uuid.UUID, backup_id: uuid.UUID) -> AddonBackup:
    return selectors.backup_get(app=app_for(request, app_id, scope=READ), backup_id=backup_id)


@router.post(
    BASE + "/{backup_id}/restore",
    response={202: BackupOut, **ERRORS},
    summary="Restore the database from a backup (the app is re-released afterwards)",
    operation_id="platform_apps_backups_api_backup_restore",
)
def backup_restore(request: HttpRequest, app_id: uuid.UUID, backup_id: uuid.UUID) -> Status[AddonBackup]:
    app = app_for(request, app_id, scope=SCOPE)
    backup = selectors.backup_get(app=app, backup_id=backup_id)
    return Status(202, services.backup_restore(app=app, backup=backup))


@router.get(
    BASE + "/{backup_id}/download",
    response=ERRORS,
    openapi_extra={
        "responses": {
            200: {
                "description": "The pg_dump custom-format file (`pg_restore` reads it)",
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            }
        }
    },
    summary="Download a backup (pg_dump custom format)",
    operation_id="platform_apps_backups_api_backup_download",
)
def backup_download(request: HttpRequest, app_id: uuid.UUID, backup_id: uuid.UUID) -> HttpResponseBase:
    app = app_for(request, app_id, scope=SCOPE)
    backup = selectors.backup_get(app=app, backup_id=backup_id)
    if backup.state != AddonBackup.State.SUCCEEDED or not backup.path.is_file():
        raise Conflict(
            "backup.not_downloadable", f"This backup is {backup.state}; only a finished one can be downloaded."
        )
    key = crypto.decrypt(backup.key_encrypted)
    content = plaintext_async(backup, key) if isinstance(request, ASGIRequest) else plaintext(backup, key)
    response = StreamingHttpResponse(content, content_type="application/octet-stream")
    response["Content-Length"] = str(backup.size)
    stamp = backup.created_at.strftime("%Y%m%dT%H%M%SZ")
    response["Content-Disposition"] = f'attachment; filename="{app.name}-{stamp}.dump"'
    response["Cache-Control"] = "no-store"
    return response


def plaintext(backup: AddonBackup, key: str) -> Generator[bytes]:
    """The dump, chunk by chunk. A damaged file raises mid-stream: the response is cut short (its
    Content-Length unmet), never completed with bytes that were not sealed."""
    with backup.path.open("rb") as handle:
        yield from sealed.unseal(handle, key)


async def plaintext_async(backup: AddonBackup, key: str) -> AsyncIterator[bytes]:
    """`plaintext` for the API under ASGI (granian): Django would read a sync iterator into a list
    first, a whole dump in memory; this reads and decrypts one chunk at a time in a worker thread."""
    chunks = plaintext(backup, key)
    step = sync_to_async(lambda: next(chunks, None), thread_sensitive=False)
    try:
        while (chunk := await step()) is not None:
            yield chunk
    finally:
        chunks.close()
