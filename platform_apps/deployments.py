"""Writes to deployments: record the intent, queue the pipeline on commit, answer at once.

Archive intake happens here, before the row exists: the archive is streamed to disk and
unpacked into the deployment's own build dir with every check in `drivers.archive`, so a
refusal is an immediate 413/422 and leaves nothing behind.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from pathlib import Path

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import Max

from core.errors import ApiError
from core.errors import Conflict
from core.errors import Unprocessable
from core.faults import DeployError
from core.faults import SourceRejected
from core.faults import UserError
from drivers.archive import check_upload_size
from drivers.archive import extract_source
from platform_apps.models import App
from platform_apps.models import Deployment
from platform_apps.schemas import SourceDeployIn

logger = logging.getLogger(__name__)

SOURCE_DIR = "src"


def _enqueue(deployment: Deployment) -> None:
    from provisioning import tasks

    deployment_id = str(deployment.public_id)
    transaction.on_commit(lambda: tasks.deployment_run.delay(deployment_id))


def _next_number(app: App) -> int:
    current = Deployment.objects.filter(app=app).aggregate(top=Max("number"))["top"]
    return int(current or 0) + 1


def _ensure_deployable(app: App) -> None:
    if app.state != App.State.ACTIVE:
        raise Conflict("app.deleting", "This app is being deleted.")


def _log_created(deployment: Deployment, app: App) -> None:
    logger.info(
        "deployment queued",
        extra={
            "tenant_id": str(app.tenant.public_id),
            "app_id": str(app.public_id),
            "deployment_id": str(deployment.public_id),
            "number": deployment.number,
            "source": deployment.source_kind,
        },
    )


@transaction.atomic
def _insert(app: App, **fields: object) -> Deployment:
    # IMMEDIATE transactions on SQLite make max+1 safe; the unique constraint backs it elsewhere.
    deployment = Deployment.objects.create(app=app, number=_next_number(app), **fields)
    _enqueue(deployment)
    _log_created(deployment, app)
    return deployment


def deployment_create_from_archive(*, app: App, upload: UploadedFile[bytes]) -> Deployment:
    _ensure_deployable(app)
    public_id = uuid.uuid4()
    build_dir = Path(settings.BUILD_ROOT) / str(public_id)
    src = build_dir / SOURCE_DIR
    try:
        check_upload_size(upload.size or 0, int(settings.SOURCE_MAX_UPLOAD_BYTES))
        src.mkdir(parents=True)
        archive = build_dir / "source.tar.gz"
        with archive.open("wb") as out:
            for chunk in upload.chunks():
                out.write(chunk)
        extract_source(
            archive,
            src,
            max_unpacked_bytes=int(settings.SOURCE_MAX_UNPACKED_BYTES),
            max_files=int(settings.SOURCE_MAX_FILES),
        )
        archive.unlink()
        return _insert(app, public_id=public_id, source_kind=Deployment.SourceKind.ARCHIVE)
    except SourceRejected as exc:
        shutil.rmtree(build_dir, ignore_errors=True)
        raise ApiError(exc.code, exc.message, status=exc.http_status) from exc
    except DeployError as exc:
        shutil.rmtree(build_dir, ignore_errors=True)
        logger.warning("source intake failed", extra={"app_id": str(app.public_id), "code": exc.code})
        raise ApiError(exc.code, exc.message, status=503) from exc
    except BaseException:
        shutil.rmtree(build_dir, ignore_errors=True)
        raise


def _registry_of(image: str) -> str:
    first, _, rest = image.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def deployment_create_from_payload(*, app: App, payload: SourceDeployIn) -> Deployment:
    """An image or git deploy. Both are checked against the platform's allow-lists here, so a
    tenant cannot make the platform fetch from an internal address."""
    _ensure_deployable(app)
    if payload.image is not None:
        registry = _registry_of(payload.image)
        if registry not in settings.IMAGE_ALLOWED_REGISTRIES:
            raise Unprocessable(
                "source.registry_not_allowed",
                f"Images can be pulled from {', '.join(settings.IMAGE_ALLOWED_REGISTRIES)} only.",
            )
        return _insert(app, source_kind=Deployment.SourceKind.IMAGE, source_url=payload.image, own_image=True)
    git = payload.git
    if git is None:  # the schema already refuses a body with neither
        raise Unprocessable("request.invalid", "Give exactly one of `image` or `git`.")
    from provisioning.pipeline import git_validate

    try:
        url = git_validate(git.url, git.ref)
    except UserError as exc:
        raise Unprocessable(exc.code, exc.message) from exc
    return _insert(app, source_kind=Deployment.SourceKind.GIT, source_url=url, source_ref=git.ref)


def deployment_create_rollback(*, app: App, target: Deployment) -> Deployment:
    _ensure_deployable(app)
    if target.app_id != app.pk:
        raise Unprocessable("rollback.wrong_app", "That deployment belongs to another app.")
    if not target.image_ref or target.state not in (Deployment.State.LIVE, Deployment.State.SUPERSEDED):
        raise Unprocessable(
            "rollback.not_deployable",
            "Only a deployment that went live (its image was built and served) can be rolled back to.",
        )
    return _insert_reusing_image(app, target, Deployment.SourceKind.ROLLBACK)


def deployment_create_release(*, app: App, source: Deployment) -> Deployment:
    """Re-release `source`'s image (config change, scaling, add-on attached or removed)."""
    _ensure_deployable(app)
    return _insert_reusing_image(app, source, Deployment.SourceKind.RELEASE)


def _insert_reusing_image(app: App, source: Deployment, kind: str) -> Deployment:
    """A deployment that skips the build: it runs `source`'s image and commands again."""
    return _insert(
        app,
        source_kind=kind,
        source_deployment=source,
        image_ref=source.image_ref,
        image_id=source.image_id,
        own_image=source.own_image,
        web_command=source.web_command,
        release_command=source.release_command,
    )
