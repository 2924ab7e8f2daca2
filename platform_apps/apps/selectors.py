"""Reads of apps. Which apps a token may see at all is `platform_apps.access`'s rule."""

from __future__ import annotations

from django.db.models import Count
from django.db.models import Exists
from django.db.models import F
from django.db.models import OuterRef
from django.db.models import Q
from django.db.models import QuerySet

from platform_apps.models import App
from platform_apps.models import Deployment
from platform_apps.models import Replica


def app_detail(*, app: App) -> App:
    """The app re-read with what its API representation needs, after a write."""
    fresh: App = App.objects.select_related("tenant", "live_deployment").get(pk=app.pk)
    return fresh


def with_status(apps: QuerySet[App]) -> QuerySet[App]:
    """Annotate what `App.status` needs, so a list of apps costs the same queries as one."""
    return apps.annotate(
        status_replicas=Count("live_deployment__replicas", distinct=True),
        status_running=Count(
            "live_deployment__replicas",
            filter=Q(live_deployment__replicas__state=Replica.State.RUNNING),
            distinct=True,
        ),
        status_deploying=Exists(Deployment.objects.filter(app=OuterRef("pk"), state__in=Deployment.ACTIVE_STATES)),
    )


def list_rows(apps: QuerySet[App]) -> QuerySet[App]:
    """What `GET /apps` serialises, in one query: the status counts, and of the live deployment only its
    public id (its row holds the build log), without the tenant's row (ordered by name, which is what
    the default order is within one tenant)."""
    return (
        with_status(apps.select_related(None))
        .annotate(live_public_id=F("live_deployment__public_id"))
        .order_by("name", "pk")
    )


def replica_list(*, app: App) -> QuerySet[Replica]:
    """The replicas of the app's live deployment, as the platform last observed them."""
    if app.live_deployment_id is None:
        return Replica.objects.none()
    return Replica.objects.filter(deployment_id=app.live_deployment_id).select_related("deployment")
