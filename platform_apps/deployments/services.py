"""Writes to deployments: record the intent, queue the pipeline on commit, answer at once.

Archive intake happens here, before the row exists: the archive is streamed to disk and
unpacked into the deployment's own build dir with every check in `drivers.archive`, so a
refusal is an immediate 413/422 and leaves nothing behind.
"""

from __future__ import annotations

import logging
import math
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from audit import actions
from audit.services import ACCEPTED
from audit.services import Detail
from audit.services import audit_record
from core.errors import ApiError
from core.errors import Conflict
from core.errors import RateLimited
from core.errors import Unprocessable
from core.faults import DeployError
from core.faults import SourceRejected
from core.faults import UserError
from core.locks import row_lock
from core.queue import enqueue_on_commit
from drivers import git
from drivers.archive import check_upload_size
from drivers.archive import extract_source
from platform_apps.deployments.schemas import SourceDeployIn
from platform_apps.models import App
from platform_apps.models import Deployment
from platform_apps.models import StorageUsage
from tenants.models import Tenant

logger = logging.getLogger(__name__)

SOURCE_DIR = "src"


def _next_number(app: App) -> int:
    current = Deployment.objects.filter(app=app).aggregate(top=Max("number"))["top"]
    return int(current or 0) + 1


def _ensure_deployable(app: App) -> None:
    if app.state != App.State.ACTIVE:
        raise Conflict("app.deleting", "This app is being deleted.")


# What a tenant asks for counts against its deploy rate; the platform's own re-releases (config
# changes, scaling, add-ons attached) do not, since the tenant's deploy did not make them.
TENANT_DEPLOY_KINDS = (
    Deployment.SourceKind.ARCHIVE,
    Deployment.SourceKind.GIT,
    Deployment.SourceKind.IMAGE,
    Deployment.SourceKind.ROLLBACK,
)
DEPLOY_RATE_WINDOW = timedelta(hours=1)


def _check_deploy_rate(app: App) -> None:
    """At most DEPLOY_RATE_PER_HOUR deploys per tenant in any sliding hour, counted from the rows
    themselves (so it holds without the cache, and across API processes)."""
    limit = int(settings.DEPLOY_RATE_PER_HOUR)
    since = timezone.now() - DEPLOY_RATE_WINDOW
    recent = (
        Deployment.objects.filter(app__tenant_id=app.tenant_id, source_kind__in=TENANT_DEPLOY_KINDS)
        .filter(created_at__gte=since)
        .order_by("-created_at")
        .values_list("created_at", flat=True)
    )
    # Only the `limit`-th newest deploy of the window matters (one row read, however high the limit): the window
    # has room again once it leaves. A limit of 0 turns the tenants' deploys off.
    nth = list(recent[limit - 1 : limit]) if limit > 0 else [timezone.now()]
    if not nth:
        return
    retry_after = math.ceil((nth[0] + DEPLOY_RATE_WINDOW - timezone.now()).total_seconds())
    raise RateLimited(
        f"This tenant may deploy at most {limit} times per hour; try again in {max(1, retry_after)} s.",
        retry_after=retry_after,
        details={"limit_per_hour": limit},
    )


def _check_storage(app: App) -> None:
    """Refuse new deploys while the tenant's images and build dirs are over its storage quota, as
    the collector last measured them (the API never asks podman). Removing old apps, or the
    collector removing images retention no longer keeps, brings it back under."""
    limit_mb = int(settings.TENANT_STORAGE_MB)
    usage: StorageUsage | None = StorageUsage.objects.filter(tenant_id=app.tenant_id).first()
    if usage is None or limit_mb <= 0:
        return
    used_mb = usage.total_bytes / (1024 * 1024)
    if used_mb >= limit_mb:
        raise Conflict(
            "quota.storage_exceeded",
            f"This tenant's images and builds use {used_mb:.0f} MiB of its {limit_mb} MiB; delete apps or wait "
            "until superseded images are collected, then deploy again.",
            details={"used_mb": round(used_mb), "limit_mb": limit_mb, "measured_at": usage.measured_at.isoformat()},
        )


def _ensure_may_deploy(app: App) -> None:
    """Everything a tenant's deploy must pass before any work (an upload's intake included)."""
    _ensure_deployable(app)
    _check_deploy_rate(app)
    _check_storage(app)


def _log_created(deployment: Deployment) -> None:
    logger.info(
        "deployment queued",
        extra={
            "deployment_id": str(deployment.public_id),
            "number": deployment.number,
            "source": deployment.source_kind,
        },
    )


@dataclass(frozen=True)
class Audit:
    """How a new deployment appears in the audit trail: a deploy by token (the default), a rollback,
    or a signed webhook's deploy (with its delivery id). Re-releases have none of their own: the
    config or app change that caused one names it."""

    action: str = actions.DEPLOYMENT_CREATE
    details: Mapping[str, Detail] = field(default_factory=dict)


DEPLOY = Audit()


@transaction.atomic
def _insert(app: App, *, audit: Audit | None, **fields: object) -> Deployment:
    # max+1 and the deploy rate are check-then-insert: serialised per tenant (IMMEDIATE on SQLite, the
    # tenant's row lock on PostgreSQL), so two deploys never get one number or both take the hour's last
    # slot. The rate was checked before the intake already (to refuse early); this is the exact check.
    row_lock(Tenant, app.tenant_id)
    if fields.get("source_kind") in TENANT_DEPLOY_KINDS:
        _check_deploy_rate(app)
    deployment = Deployment.objects.create(app=app, number=_next_number(app), **fields)
    enqueue_on_commit("coltsfoot.deployment_run", str(deployment.public_id))
    _log_created(deployment)
    if audit is not None:
        audit_record(
            action=audit.action,
            tenant_id=app.tenant_id,
            object_type="deployment",
            object_id=deployment.public_id,
            outcome=ACCEPTED,
            app_id=app.public_id,
            details={"source": deployment.source_kind, "number": deployment.number, **audit.details},
        )
    return deployment


def deployment_create_from_archive(*, app: App, upload: UploadedFile[bytes], audit: Audit = DEPLOY) -> Deployment:
    _ensure_may_deploy(app)
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
        return _insert(app, audit=audit, public_id=public_id, source_kind=Deployment.SourceKind.ARCHIVE)
    except SourceRejected as exc:
        shutil.rmtree(build_dir, ignore_errors=True)
        raise ApiError(exc.code, exc.message, status=exc.http_status) from exc
    except DeployError as exc:
        shutil.rmtree(build_dir, ignore_errors=True)
        logger.warning("source intake failed", extra={"code": exc.code})
        raise ApiError(exc.code, exc.message, status=503) from exc
    except BaseException:
        shutil.rmtree(build_dir, ignore_errors=True)
        raise


def _registry_of(image: str) -> str | None:
    """The registry a fully qualified reference names (`ghcr.io/you/app:1`, `localhost:5000/x`),
    or None for a short name (`fedora`, `library/python`): podman resolves those through its
    registries.conf aliases and search list, which may pull from somewhere the allow-list never
    named, so they are refused rather than guessed."""
    first, _, rest = image.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first
    return None


def deployment_create_from_payload(*, app: App, payload: SourceDeployIn, audit: Audit = DEPLOY) -> Deployment:
    """An image or git deploy. Both are checked against the platform's allow-lists here, so a
    tenant cannot make the platform fetch from an internal address."""
    _ensure_may_deploy(app)
    if payload.image is not None:
        registry = _registry_of(payload.image)
        if registry is None:
            raise Unprocessable(
                "source.image_not_qualified",
                "Name the image with its registry, e.g. docker.io/library/python:3.13 rather than python:3.13.",
                details={"allowed_registries": list(settings.IMAGE_ALLOWED_REGISTRIES)},
            )
        if registry not in settings.IMAGE_ALLOWED_REGISTRIES:
            raise Unprocessable(
                "source.registry_not_allowed",
                f"Images can be pulled from {', '.join(settings.IMAGE_ALLOWED_REGISTRIES)} only.",
            )
        return _insert(
            app, audit=audit, source_kind=Deployment.SourceKind.IMAGE, source_url=payload.image, own_image=True
        )
    git = payload.git
    if git is None:  # the schema already refuses a body with neither
        raise Unprocessable("request.invalid", "Give exactly one of `image` or `git`.")
    try:
        url = git_validate(git.url, git.ref)
    except UserError as exc:
        raise Unprocessable(exc.code, exc.message) from exc
    return _insert(app, audit=audit, source_kind=Deployment.SourceKind.GIT, source_url=url, source_ref=git.ref)


def git_validate(url: str, ref: str) -> str:
    """Check a git URL and ref against the platform's allow-list; returns the URL to clone. The
    workflow checks again right before cloning, so DNS cannot change the answer in between."""
    try:
        git.validate_git_ref(ref)
        return git.validate_git_url(
            url,
            allowed_schemes=tuple(settings.GIT_ALLOWED_SCHEMES),
            allowed_hosts=tuple(settings.GIT_ALLOWED_HOSTS),
            allow_local=bool(settings.GIT_ALLOW_LOCAL),
        )
    except (git.GitUrlRejected, git.GitRefRejected) as exc:
        raise UserError(exc.code, exc.message) from exc


def deployment_create_rollback(*, app: App, target: Deployment) -> Deployment:
    _ensure_may_deploy(app)
    if target.app_id != app.pk:
        raise Unprocessable("rollback.wrong_app", "That deployment belongs to another app.")
    # Not the state alone: a deployment superseded while it was still starting is `superseded`
    # too, but it never served, so its image was never proven to work; only `went_live_at` tells
    # them apart. An empty image_ref means image retention has removed the image.
    went_live = target.state == Deployment.State.LIVE or (
        target.state == Deployment.State.SUPERSEDED and target.went_live_at is not None
    )
    if not target.image_ref or not went_live:
        raise Unprocessable(
            "rollback.not_deployable",
            "Only a deployment that went live (its image was built and served) can be rolled back to.",
        )
    rollback = Audit(actions.DEPLOYMENT_ROLLBACK, {"target_deployment_id": str(target.public_id)})
    return _insert_reusing_image(app, target, Deployment.SourceKind.ROLLBACK, audit=rollback)


def deployment_create_release(*, app: App, source: Deployment) -> Deployment:
    """Re-release `source`'s image (config change, scaling, add-on attached or removed)."""
    _ensure_deployable(app)
    return _insert_reusing_image(app, source, Deployment.SourceKind.RELEASE, audit=None)


def release_current(app: App) -> Deployment | None:
    """Make a change of config, size or add-ons take effect with zero downtime, without undoing
    a deploy in flight. Returns the deployment that will carry it, or None (nothing deployed yet).

    A deploy that has not started its containers yet reads the config when it does, so it is
    the answer. One that is starting may have read the old config: release its (built) image
    again; newest intent wins, so the release replaces it. Otherwise re-release the live image.
    """
    in_flight: Deployment | None = (
        Deployment.objects.filter(app=app, state__in=Deployment.ACTIVE_STATES).order_by("-number").first()
    )
    if in_flight is not None and in_flight.state in (Deployment.State.QUEUED, Deployment.State.BUILDING):
        return in_flight
    if in_flight is not None and in_flight.image_ref:
        return deployment_create_release(app=app, source=in_flight)
    live = Deployment.objects.filter(pk=app.live_deployment_id).first() if app.live_deployment_id else None
    if live is None:
        return None
    return deployment_create_release(app=app, source=live)


def _insert_reusing_image(app: App, source: Deployment, kind: str, *, audit: Audit | None) -> Deployment:
    """A deployment that skips the build: it runs `source`'s image and commands again."""
    return _insert(
        app,
        audit=audit,
        source_kind=kind,
        source_deployment=source,
        image_ref=source.image_ref,
        image_id=source.image_id,
        own_image=source.own_image,
        web_command=source.web_command,
        release_command=source.release_command,
    )
