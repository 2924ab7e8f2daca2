"""Bearer-token authentication and the access rules every endpoint applies."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.http import HttpRequest
from django.utils import timezone
from ninja.security import HttpBearer

from core.actor import Actor
from core.actor import set_actor
from core.errors import Forbidden
from core.logging import bind
from tenants.models import ApiToken

logger = logging.getLogger(__name__)

MAX_TOKEN_LENGTH = 128
# Writing last_used_at on every request would serialise all reads on SQLite's write lock.
LAST_USED_RESOLUTION = timedelta(minutes=1)


# Where a request keeps the token it was authenticated with: the Idempotency-Key middleware
# authenticates before Ninja does, and the second lookup then costs nothing.
_REQUEST_CACHE = "_coltsfoot_token"


class TokenAuth(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str) -> ApiToken | None:
        cached: tuple[str, ApiToken | None] | None = getattr(request, _REQUEST_CACHE, None)
        if cached is not None and cached[0] == token:
            return cached[1]
        api_token = self._lookup(token)
        setattr(request, _REQUEST_CACHE, (token, api_token))
        return api_token

    def _lookup(self, token: str) -> ApiToken | None:
        token = token.strip()
        if not token or len(token) > MAX_TOKEN_LENGTH or "." not in token:
            return None
        prefix = token.split(".", 1)[0]
        # Every request pays this lookup: `get` on the unique prefix, with the tenant only (the few paths that need
        # a restricted token's app row load it then), costs a third less than `first()` over three tables.
        try:
            api_token: ApiToken = ApiToken.objects.select_related("tenant").get(prefix=prefix)
        except ApiToken.DoesNotExist:
            return None
        if not api_token.matches(token) or api_token.is_revoked:
            return None
        bind(tenant_id=api_token.tenant.public_id)
        if not api_token.tenant.is_active:
            raise Forbidden("tenant.suspended", "This tenant is suspended; contact the platform administrators.")
        set_actor(Actor.token(api_token.public_id, api_token.prefix))
        now = timezone.now()
        if api_token.last_used_at is None or now - api_token.last_used_at > LAST_USED_RESOLUTION:
            ApiToken.objects.filter(pk=api_token.pk).update(last_used_at=now)
        return api_token


def request_token(request: HttpRequest) -> ApiToken:
    token = getattr(request, "auth", None)
    if not isinstance(token, ApiToken):  # pragma: no cover - every route is authenticated
        raise Forbidden("auth.forbidden", "Authentication required.")
    return token


Scopes = str | tuple[str, ...]


def require_scope(token: ApiToken, scope: Scopes) -> None:
    """The token needs `scope`, or at least one of a tuple of scopes."""
    scopes = (scope,) if isinstance(scope, str) else scope
    if not any(token.has_scope(one) for one in scopes):
        raise Forbidden(
            "auth.insufficient_scope",
            f"This token lacks the scope this needs ({' or '.join(scopes)}).",
            details={"required": list(scopes)},
        )


def caller(request: HttpRequest, *, scope: Scopes, unrestricted: bool = False) -> ApiToken:
    """The access rule for tenant-wide operations (no one object named): the token, then its scope,
    then, with `unrestricted`, that it is not a token restricted to one app. Operations on one app
    or deployment use `platform_apps.access`, which looks the object up first."""
    token = request_token(request)
    require_scope(token, scope)
    if unrestricted and token.app_id is not None:
        raise Forbidden("auth.insufficient_scope", "This token is restricted to one app and may not do that.")
    return token
