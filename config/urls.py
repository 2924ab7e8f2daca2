from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest
from django.http import HttpResponse
from django.urls import path

from config.api import api
from core.errors import error_response
from platform_apps.domains.views import tls_ask

admin.site.site_header = "Coltsfoot administration"
admin.site.site_title = "Coltsfoot"
admin.site.index_title = "Operator's console"
# The changelists are wide (status, replicas, problem, URL): the page's width is theirs.
admin.site.enable_nav_sidebar = False

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls),
    # Caddy's on-demand TLS guard (a shared secret in the query; not part of the tenant API).
    path("internal/tls/ask", tls_ask),
]


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return error_response(404, "not_found", "Not found.")


def server_error(request: HttpRequest) -> HttpResponse:
    return error_response(500, "internal", "Something went wrong on our side; it has been logged.")


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return error_response(400, "request.malformed", "The request is malformed.")


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return error_response(403, "auth.forbidden", "Forbidden.")


handler400 = bad_request
handler403 = permission_denied
handler404 = not_found
handler500 = server_error
