"""The one access rule for operations on an app or a deployment, in one order:

1. the request's token (Ninja's `TokenAuth` already refused a missing, unknown or revoked one, and a
   suspended tenant's);
2. the object, looked up through the token's tenant (and its app, for a token restricted to one):
   a missing object and someone else's are the same 404, so ids cannot be probed;
3. the token's scope: 403 only once the caller has proven it may see the object.

The ids of what the request is about are then bound to the log context, so no log call repeats
them. Tenant-wide operations (list or create apps, tokens) use `tenants.auth.caller` instead, and
list what `visible_apps` gives them. Every lookup of a tenant-owned app or deployment goes through
here; the feature packages build on this module, never the other way round.
"""

from __future__ import annotations

import uuid

from django.db.models import QuerySet
from django.http import HttpRequest

from core.errors import NotFound
from core.logging import bind
from platform_apps.models import App
from platform_apps.models import Deployment
from tenants.auth import Scopes
from tenants.auth import request_token
from tenants.auth import require_scope
from tenants.models import ApiToken


def visible_apps(*, token: ApiToken, apps: QuerySet[App] | None = None) -> QuerySet[App]:
    """The apps this token may know exist: its tenant's, or only its own app if restricted to one. `apps` is
    what to narrow (a list's prepared, annotated queryset); by default all apps, with tenant and live deployment."""
    base = App.objects.select_related("tenant", "live_deployment") if apps is None else apps
    qs = base.filter(tenant_id=token.tenant_id)
    if token.app_id is not None:
        qs = qs.filter(pk=token.app_id)
    return qs


def visible_deployments(*, token: ApiToken) -> QuerySet[Deployment]:
    qs = Deployment.objects.filter(app__tenant_id=token.tenant_id).select_related(
        "app", "app__tenant", "source_deployment"
    )
    if token.app_id is not None:
        qs = qs.filter(app_id=token.app_id)
    return qs


def bind_app(app: App) -> None:
    bind(tenant_id=app.tenant.public_id, app_id=app.public_id)


def app_for(request: HttpRequest, app_id: uuid.UUID, *, scope: Scopes) -> App:
    token = request_token(request)
    app: App | None = visible_apps(token=token).filter(public_id=app_id).first()
    if app is None:
        raise NotFound("app")
    require_scope(token, scope)
    bind_app(app)
    return app


def deployment_for(request: HttpRequest, deployment_id: uuid.UUID, *, scope: Scopes) -> Deployment:
    token = request_token(request)
    deployment: Deployment | None = visible_deployments(token=token).filter(public_id=deployment_id).first()
    if deployment is None:
        raise NotFound("deployment")
    require_scope(token, scope)
    bind(tenant_id=deployment.app.tenant.public_id, app_id=deployment.app.public_id, deployment_id=deployment.public_id)
    return deployment
