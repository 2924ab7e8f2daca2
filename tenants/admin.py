from __future__ import annotations

from django.contrib import admin
from django.contrib import messages
from django.db.models import Count
from django.db.models import DecimalField
from django.db.models import ExpressionWrapper
from django.db.models import F
from django.db.models import QuerySet
from django.db.models import Sum
from django.http import HttpRequest

from tenants.models import ApiToken
from tenants.models import Tenant


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin[Tenant]):
    list_display = [
        "slug",
        "public_id",
        "status",
        "app_count",
        "max_apps",
        "max_replicas",
        "max_memory_mb",
        "cpus_in_use",
        "max_cpus",
        "created_at",
    ]
    list_filter = ["status", "created_at"]
    search_fields = ["slug", "public_id"]
    readonly_fields = ["public_id", "created_at", "updated_at"]
    actions = ["suspend", "reactivate"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Tenant]:
        # One join, two aggregates over the same rows: no N+1 and no double counting.
        return (
            super()
            .get_queryset(request)
            .annotate(
                _app_count=Count("apps"),
                _cpus_in_use=Sum(
                    ExpressionWrapper(F("apps__replicas") * F("apps__cpus"), output_field=DecimalField()),
                ),
            )
        )

    @admin.display(description="apps", ordering="_app_count")
    def app_count(self, obj: Tenant) -> int:
        return int(getattr(obj, "_app_count", 0))

    @admin.display(description="CPUs in use", ordering="_cpus_in_use")
    def cpus_in_use(self, obj: Tenant) -> str:
        """replicas x cpus over the tenant's apps, the figure `max_cpus` limits."""
        return f"{float(getattr(obj, '_cpus_in_use', None) or 0):.2f}"

    @admin.action(description="Suspend selected tenants (their tokens get 403)")
    def suspend(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        count = queryset.exclude(status=Tenant.Status.SUSPENDED).update(status=Tenant.Status.SUSPENDED)
        self.message_user(request, f"Suspended {count} tenant(s).", messages.SUCCESS)

    @admin.action(description="Reactivate selected tenants")
    def reactivate(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        count = queryset.exclude(status=Tenant.Status.ACTIVE).update(status=Tenant.Status.ACTIVE)
        self.message_user(request, f"Reactivated {count} tenant(s).", messages.SUCCESS)


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin[ApiToken]):
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
        from django.utils import timezone

        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"Revoked {count} token(s).", messages.SUCCESS)
