"""The TLS `ask` endpoint: Caddy asks it, before getting a certificate for a name on demand, whether it
may (`GET /internal/tls/ask?domain=<name>&key=<secret>`; 200 yes, 404 no).

Not part of the tenant API: the URL carries a shared secret that only Caddy's config holds (the admin
API that holds it listens on loopback only), a wrong or missing one is the same 404 as an unknown name,
and the questions per minute are bounded, so nobody can use it to probe which names the platform serves
or to make it work for them. Without its `ask`, on-demand TLS would get a certificate for any name a
client sends as SNI, until the CA's rate limits shut the platform out.
"""

from __future__ import annotations

import hmac
import logging

from django.conf import settings
from django.http import HttpRequest
from django.http import HttpResponse
from django.views.decorators.http import require_GET

from core import ratelimit
from platform_apps.domains.selectors import tls_name_allowed

logger = logging.getLogger(__name__)


@require_GET
def tls_ask(request: HttpRequest) -> HttpResponse:
    key = request.GET.get("key", "")
    if not hmac.compare_digest(key.encode(), str(settings.TLS_ASK_SECRET).encode()):
        return HttpResponse(status=404)
    retry_after = ratelimit.hit("tls-ask", limit=int(settings.TLS_ASK_PER_MINUTE), window_seconds=60)
    if retry_after is not None:
        logger.warning("tls ask: rate limit reached")
        response = HttpResponse(status=429)
        response["Retry-After"] = str(retry_after)
        return response
    name = request.GET.get("domain", "")[:300]
    if tls_name_allowed(name):
        return HttpResponse("ok", status=200, content_type="text/plain")
    logger.info("tls ask refused", extra={"hostname": name[:253]})
    return HttpResponse(status=404)
