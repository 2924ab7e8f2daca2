from __future__ import annotations

from django.contrib import admin
from django.contrib import messages
from django.db.models import Count
from django.db.models import QuerySet
from django.http import HttpRequest

from audit.admin import AuditedAdmin
from audit.admin import admin_actor
from tenants import services
from tenants.models import ApiToken
from tenants.models import Tenant


@admin.register(Tenant)
class TenantAdmin(AuditedAdmin[Tenant]):
    list_display = [
        "slug",
        "public_id",
        "status",
        "app_count",
        "max_apps",
        "max_replicas",
        "max_memory_mb",
        "created_at",
    ]
    list_filter = ["status", "created_at"]
    search_fields = ["slug", "public_id"]
    readonly_fields = ["public_id", "created_at", "updated_at"]
    actions = ["suspend", "reactivate"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Tenant]:
        return super().get_queryset(request).annotate(_app_count=Count("apps"))

    @admin.display(description="apps", ordering="_app_count")
    def app_count(self, obj: Tenant) -> int:
        return int(getattr(obj, "_app_count", 0))

    @admin.action(description="Suspend selected tenants (their tokens get 403)")
    def suspend(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        count = services.tenants_set_status(
            tenants=queryset, status=Tenant.Status.SUSPENDED, actor=admin_actor(request)
        )
        self.message_user(request, f"Suspended {count} tenant(s).", messages.SUCCESS)

    @admin.action(description="Reactivate selected tenants")
    def reactivate(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        actor = admin_actor(request)
        count = services.tenants_set_status(tenants=queryset, status=Tenant.Status.ACTIVE, actor=actor)
        self.message_user(request, f"Reactivated {count} tenant(s).", messages.SUCCESS)


@admin.register(ApiToken)
class ApiTokenAdmin(AuditedAdmin[ApiToken]):
    list_display = ["name", "prefix", "tenant", "app", "scopes", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["revoked_at", "created_at"]
    search_fields = ["name", "prefix", "public_id", "tenant__slug"]
    list_select_related = ["tenant", "app"]
    readonly_fields = ["public_id", "prefix", "token_hash", "created_at", "last_used_at"]
    raw_id_fields = ["tenant", "app"]
    actions = ["revoke"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Tokens are shown once at creation: mint them with the API or `manage.py create_tenant`.
        return False

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        count = services.tokens_revoke(tokens=queryset, actor=admin_actor(request))
        self.message_user(request, f"Revoked {count} token(s).", messages.SUCCESS)
