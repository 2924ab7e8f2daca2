"""The collector: removes what this installation no longer needs from podman and the build root,
and measures what each tenant's images and build dirs take (the storage quota's numbers).

`decide()` is pure: given the DB's deployments, one `podman images` listing (this installation's
label), the podman secrets, the containers and the build dirs, it says what to remove. `collect()`
gathers those inputs (one podman call each), carries the decision out and records the usage.

What stays:
- the image of every deployment in flight or live, and of the last KEEP_RELEASES deployments of
  each app that went live (rollback targets);
- everything of an app being deleted (its teardown removes it);
- a dependency image an image that stays was built FROM (label `coltsfoot.deps`), every dependency
  image of a tenant with a build in flight, and anything younger than COLLECT_GRACE_SECONDS (a
  build may have made it and not recorded it yet).
What goes: failed builds' images, superseded ones beyond the last KEEP_RELEASES, images whose app
(or whole tenant) is gone, and then the dependency images nothing uses; podman secrets of finished
deployments no container uses; build dirs of finished or unknown deployments. Podman refuses to
remove an image a container or a child image still uses: that is "in use", and it stays.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from drivers import podman
from platform_apps.models import App
from platform_apps.models import Deployment
from platform_apps.models import StorageUsage
from provisioning import pipeline
from tenants.models import Tenant

logger = logging.getLogger(__name__)

APP_IMAGE_PREFIX = "localhost/coltsfoot-app:"
DEPS_IMAGE_PREFIX = "localhost/coltsfoot-deps:"
DEPS_LABEL = "coltsfoot.deps"
_SECRET_RE = re.compile(r"^cf-(?P<hex>[0-9a-f]{32})-")

State = Deployment.State
FINISHED = (State.FAILED, State.SUPERSEDED)


@dataclasses.dataclass(frozen=True)
class DeploymentRow:
    """What the collector needs of one deployment."""

    id: str  # public UUID
    app_id: str
    tenant_id: str
    app_active: bool
    number: int
    state: str
    image_ref: str
    went_live_at: float | None  # unix seconds
    source_url: str = ""
    own_image: bool = False


@dataclasses.dataclass(frozen=True)
class BuildDir:
    name: str  # the deployment's public UUID, if it is one of ours
    size: int
    modified_at: float


@dataclasses.dataclass(frozen=True)
class Plan:
    remove_images: tuple[str, ...]  # refs: app images first, then dependency images
    remove_secrets: tuple[str, ...]
    remove_build_dirs: tuple[str, ...]
    image_bytes: Mapping[str, int]  # tenant public id -> bytes of its images that stay
    build_bytes: Mapping[str, int]  # tenant public id -> bytes of its build dirs that stay


def _kept_refs(rows: Iterable[DeploymentRow], keep_releases: int) -> set[str]:
    by_app: dict[str, list[DeploymentRow]] = defaultdict(list)
    for row in rows:
        by_app[row.app_id].append(row)
    kept: set[str] = set()
    for app_rows in by_app.values():
        for row in app_rows:
            if not row.image_ref:
                continue
            if not row.app_active or row.state not in FINISHED:
                kept.add(row.image_ref)  # in flight or live; or the app's teardown owns it
        went_live = sorted(
            (row for row in app_rows if row.went_live_at is not None and row.image_ref),
            key=lambda row: (row.went_live_at or 0.0, row.number),
            reverse=True,
        )
        releases: list[str] = []
        for row in went_live:
            if row.image_ref not in releases:
                releases.append(row.image_ref)
            if len(releases) >= keep_releases:
                break
        kept.update(releases)
    return kept


def decide(
    *,
    rows: list[DeploymentRow],
    images: list[podman.ObservedImage],
    secrets: list[str],
    busy_deployments: set[str],
    build_dirs: list[BuildDir],
    base_size: int,
    now: float,
    keep_releases: int,
    grace_seconds: float,
) -> Plan:
    """What to remove, and what each tenant's remaining images and build dirs take. `busy_deployments`
    are the deployments that still have a container (running or not)."""
    by_id = {row.id: row for row in rows}
    kept = _kept_refs(rows, keep_releases)
    referenced = {row.image_ref for row in rows if row.image_ref}
    building_tenants = {row.tenant_id for row in rows if row.state in Deployment.ACTIVE_STATES}
    kept_sources = {row.source_url for row in rows if row.own_image and row.image_ref in kept}

    def young(image: podman.ObservedImage) -> bool:
        return now - image.created_at < grace_seconds

    remove: list[str] = []
    # App images the rows know: those no kept deployment needs.
    for ref in sorted(referenced - kept):
        remove.append(ref)
    # An image deploy also left the pulled reference behind: it goes with the last deployment using it.
    for row in rows:
        pulled = row.source_url
        if row.own_image and pulled and row.image_ref in remove and pulled not in kept_sources | set(remove):
            remove.append(pulled)
    # App images of this installation the rows do not reference (their app or tenant was deleted,
    # or a build failed after making the image and before recording it).
    for image in images:
        if image.labels.get("coltsfoot.role") != "image" or image.ref in referenced or young(image):
            continue
        maker = by_id.get(image.labels.get("coltsfoot.deployment", ""))
        if maker is not None and (maker.state in Deployment.ACTIVE_STATES or not maker.app_active):
            continue
        remove.append(image.ref)
    removed = set(remove)
    staying = [image for image in images if image.ref not in removed]
    used_deps = {image.labels[DEPS_LABEL] for image in staying if DEPS_LABEL in image.labels}
    for image in images:
        is_deps = image.labels.get("coltsfoot.role") == "deps" or image.ref.startswith(DEPS_IMAGE_PREFIX)
        if not is_deps or young(image) or image.containers:
            continue
        if image.ref in used_deps or set(image.names) & used_deps:
            continue
        if image.labels.get("coltsfoot.tenant", "") in building_tenants:
            continue
        remove.append(image.ref)
        removed.add(image.ref)

    image_bytes: dict[str, int] = defaultdict(int)
    sizes = {name: image.size for image in images for name in image.names}
    for image in images:
        tenant = image.labels.get("coltsfoot.tenant")
        if tenant is None or image.ref in removed:
            continue
        parent = sizes.get(image.labels.get(DEPS_LABEL, ""), base_size)
        image_bytes[tenant] += max(0, image.size - parent)

    # Secrets are per deployment (`cf-<hex>-<key>`): a finished deployment with no container left
    # needs none. Secrets of deployments this DB does not know may be another installation's.
    by_hex = {uuid.UUID(row.id).hex: row for row in rows}
    remove_secrets = []
    for name in secrets:
        match = _SECRET_RE.match(name)
        owner = by_hex.get(match["hex"]) if match else None
        if owner is not None and owner.state in FINISHED and owner.id not in busy_deployments:
            remove_secrets.append(name)

    remove_dirs = []
    build_bytes: dict[str, int] = defaultdict(int)
    for entry in build_dirs:
        building = by_id.get(entry.name)
        if building is None:
            if now - entry.modified_at >= grace_seconds:
                remove_dirs.append(entry.name)  # an intake that died, or a deleted deployment's
            continue
        if building.state in Deployment.FINAL_STATES:
            remove_dirs.append(entry.name)
            continue
        build_bytes[building.tenant_id] += entry.size
    return Plan(
        remove_images=tuple(remove),
        remove_secrets=tuple(remove_secrets),
        remove_build_dirs=tuple(remove_dirs),
        image_bytes=dict(image_bytes),
        build_bytes=dict(build_bytes),
    )


# --- Gathering and carrying out ------------------------------------------------------------------


def _unix(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _rows() -> list[DeploymentRow]:
    values = Deployment.objects.values_list(
        "public_id",
        "app__public_id",
        "app__tenant__public_id",
        "app__state",
        "number",
        "state",
        "image_ref",
        "went_live_at",
        "source_url",
        "own_image",
        "source_kind",
    )
    return [
        DeploymentRow(
            id=str(public_id),
            app_id=str(app_id),
            tenant_id=str(tenant_id),
            app_active=app_state == App.State.ACTIVE,
            number=int(number),
            state=str(state),
            image_ref=str(image_ref),
            went_live_at=_unix(went_live_at),
            # Only image deploys pulled something; rollbacks and releases reuse that pull's tag.
            source_url=str(source_url) if kind == Deployment.SourceKind.IMAGE else "",
            own_image=bool(own_image) and kind == Deployment.SourceKind.IMAGE,
        )
        for (
            public_id,
            app_id,
            tenant_id,
            app_state,
            number,
            state,
            image_ref,
            went_live_at,
            source_url,
            own_image,
            kind,
        ) in values
    ]


def _build_dirs(root: Path) -> list[BuildDir]:
    if not root.is_dir():
        return []
    entries = []
    for child in root.iterdir():
        try:
            entries.append(
                BuildDir(name=child.name, size=pipeline.tree_size(child), modified_at=child.lstat().st_mtime)
            )
        except OSError:
            continue
    return entries


def _still_needed(ref: str) -> bool:
    """Checked again right before removing: a rollback may have picked the image meanwhile."""
    return Deployment.objects.filter(image_ref=ref).filter(state__in=(*Deployment.ACTIVE_STATES, State.LIVE)).exists()


def _remove_image(ref: str) -> bool:
    try:
        podman.image_remove(ref)
    except podman.PodmanError as exc:
        logger.info("image kept: %s", exc.stderr.strip()[-200:] or exc, extra={"image": ref})
        return False
    return True


def collect(now: float | None = None) -> dict[str, int]:
    """One collector run. Returns counts of what it removed."""
    now = time.time() if now is None else now
    instance = str(settings.INSTANCE_ID)
    rows = _rows()
    images = podman.images_observe("coltsfoot.instance", instance)
    busy = {c.labels.get("coltsfoot.deployment", "") for c in podman.containers_observe("coltsfoot.instance", instance)}
    build_root = Path(settings.BUILD_ROOT)
    plan = decide(
        rows=rows,
        images=images,
        secrets=podman.secret_list(),
        busy_deployments=busy,
        build_dirs=_build_dirs(build_root),
        base_size=podman.image_size(str(settings.BASE_IMAGE)),
        now=now,
        keep_releases=int(settings.KEEP_RELEASES),
        grace_seconds=float(settings.COLLECT_GRACE_SECONDS),
    )
    removed_images = []
    for ref in plan.remove_images:
        if ref.startswith(APP_IMAGE_PREFIX) and _still_needed(ref):
            continue
        if _remove_image(ref):
            removed_images.append(ref)
            logger.info("image removed by retention", extra={"image": ref})
    if removed_images:
        # Those deployments cannot be rolled back to any more: say so by forgetting the image.
        Deployment.objects.filter(image_ref__in=removed_images, state__in=FINISHED).update(image_ref="", image_id="")
    for name in plan.remove_secrets:
        podman.secret_remove(name)
    for name in plan.remove_build_dirs:
        shutil.rmtree(build_root / name, ignore_errors=True)
    _record_usage(plan)
    counts = {
        "images": len(removed_images),
        "secrets": len(plan.remove_secrets),
        "build_dirs": len(plan.remove_build_dirs),
    }
    logger.info("collector run", extra=counts)
    return counts


def _record_usage(plan: Plan) -> None:
    measured_at = timezone.now()
    for tenant_pk, public_id in Tenant.objects.values_list("pk", "public_id"):
        key = str(public_id)
        StorageUsage.objects.update_or_create(
            tenant_id=tenant_pk,
            defaults={
                "image_bytes": int(plan.image_bytes.get(key, 0)),
                "build_bytes": int(plan.build_bytes.get(key, 0)),
                "measured_at": measured_at,
            },
        )
