"""The console's tenants and tokens. Every change goes through `tenants.services` (or a validated form), and
every action is logged with the admin user (`core.console`)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin
from django.contrib import messages
from django.db.models import Count
from django.db.models import DecimalField
from django.db.models import ExpressionWrapper
from django.db.models import F
from django.db.models import Max
from django.db.models import QuerySet
from django.db.models import Sum
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.safestring import SafeString

from audit.admin import AuditedAdmin
from audit.admin import admin_actor
from core.console import console_action_logged
from tenants import services
from tenants.models import ApiToken
from tenants.models import Tenant

# Upper bounds an operator can set without editing code: far above any sane quota on one host, low enough
# that a typo (an extra zero or three) is caught.
QUOTA_LIMITS = {"max_apps": 1000, "max_replicas": 64, "max_memory_mb": 65536, "max_cpus": 1024}
QUOTA_LABELS = {
    "max_apps": "apps",
    "max_replicas": "replicas per app",
    "max_memory_mb": "MiB per replica",
    "max_cpus": "CPUs (replicas x cpus over its apps)",
}


class TenantForm(forms.ModelForm[Tenant]):
    """Quotas between 1 and QUOTA_LIMITS, and never below what the tenant already uses: a quota its existing
    apps break would make every later change of theirs fail."""

    class Meta:
        model = Tenant
        fields = ["max_apps", "max_replicas", "max_memory_mb", "max_cpus"]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        usage: dict[str, int | Decimal] = {}
        if self.instance.pk is not None:
            apps = self.instance.apps.all()
            usage = {
                "max_apps": apps.count(),
                "max_replicas": int(apps.aggregate(top=Max("replicas"))["top"] or 0),
                "max_memory_mb": int(apps.aggregate(top=Max("memory_mb"))["top"] or 0),
                # Exact decimals (SQLite would multiply in floats); at most max_apps rows.
                "max_cpus": sum((int(r) * Decimal(c) for r, c in apps.values_list("replicas", "cpus")), Decimal(0)),
            }
        for field, limit in QUOTA_LIMITS.items():
            value = data.get(field)
            if value is None:
                continue
            if not 1 <= value <= limit:
                self.add_error(field, f"Between 1 and {limit}.")
            elif value < usage.get(field, 0):
                self.add_error(
                    field,
                    f"The tenant already uses {usage[field]} {QUOTA_LABELS[field]}; "
                    "shrink or remove its apps first, or choose at least that.",
                )
        return data


@admin.register(Tenant)
class TenantAdmin(AuditedAdmin[Tenant]):
    form = TenantForm
    list_display = ["slug", "status_badge", "apps_used", "replicas_used", "memory_used", "cpus_used", "created_at"]
    list_filter = ["status", "created_at"]
    search_fields = ["slug", "public_id"]
    # The status changes only through the suspend/reactivate actions, which also move the edge.
    readonly_fields = ["slug", "public_id", "status", "created_at", "updated_at"]
    fields = [
        "slug",
        "public_id",
        "status",
        "max_apps",
        "max_replicas",
        "max_memory_mb",
        "max_cpus",
        "created_at",
        "updated_at",
    ]
    actions = ["suspend", "reactivate"]

    class Media:
        css = {"all": ("coltsfoot/console.css",)}

    def has_add_permission(self, request: HttpRequest) -> bool:
        # A tenant is useless without its first token, which is shown once: `manage.py create_tenant SLUG`.
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Tenant | None = None) -> bool:
        # Deleting the row would leave its containers, routes and databases behind.
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Tenant]:
        return (
            super()
            .get_queryset(request)
            .annotate(
                _app_count=Count("apps", distinct=True),
                _top_replicas=Max("apps__replicas"),
                _top_memory=Max("apps__memory_mb"),
                _cpus_in_use=Sum(
                    ExpressionWrapper(F("apps__replicas") * F("apps__cpus"), output_field=DecimalField()),
                ),
            )
        )

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: Tenant) -> SafeString:
        return format_html('<span class="cf-badge cf-badge-{}">{}</span>', obj.status, obj.get_status_display())

    @admin.display(description="apps / quota", ordering="_app_count")
    def apps_used(self, obj: Tenant) -> str:
        return f"{int(getattr(obj, '_app_count', 0))} / {obj.max_apps}"

    @admin.display(description="replicas per app (top / quota)", ordering="_top_replicas")
    def replicas_used(self, obj: Tenant) -> str:
        return f"{int(getattr(obj, '_top_replicas', None) or 0)} / {obj.max_replicas}"

    @admin.display(description="MiB per replica (top / quota)", ordering="_top_memory")
    def memory_used(self, obj: Tenant) -> str:
        return f"{int(getattr(obj, '_top_memory', None) or 0)} / {obj.max_memory_mb}"

    @admin.display(description="CPUs in use / quota", ordering="_cpus_in_use")
    def cpus_used(self, obj: Tenant) -> str:
        """replicas x cpus over the tenant's apps, the figure `max_cpus` limits."""
        return f"{float(getattr(obj, '_cpus_in_use', None) or 0):.2f} / {obj.max_cpus}"

    def save_model(self, request: HttpRequest, obj: Tenant, form: forms.ModelForm[Tenant], change: bool) -> None:
        super().save_model(request, obj, form, change)
        changes = {field: form.cleaned_data[field] for field in form.changed_data}
        if changes:
            console_action_logged(self, request, "quotas changed", [obj], changes=changes)

    @admin.action(description="Suspend selected tenants (tokens and deploys refused, apps answer a 'suspended' page)")
    def suspend(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        tenants, actor = list(queryset), admin_actor(request)
        changed = [tenant for tenant in tenants if services.tenant_suspend(tenant=tenant, actor=actor)]
        console_action_logged(self, request, "suspend", tenants)
        self.message_user(request, f"Suspended {len(changed)} tenant(s).", messages.SUCCESS)

    @admin.action(description="Reactivate selected tenants")
    def reactivate(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        tenants = list(queryset)
        changed = [
            tenant for tenant in tenants if services.tenant_reactivate(tenant=tenant, actor=admin_actor(request))
        ]
        console_action_logged(self, request, "reactivate", tenants)
        self.message_user(request, f"Reactivated {len(changed)} tenant(s).", messages.SUCCESS)


@admin.register(ApiToken)
class ApiTokenAdmin(AuditedAdmin[ApiToken]):
    list_display = ["name", "prefix", "tenant", "app", "scopes", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["revoked_at", "created_at"]
    search_fields = ["name", "prefix", "public_id", "tenant__slug"]
    list_select_related = ["tenant", "app"]
    # Only the name is the operator's to edit: scopes and the app restriction are what the minting token
    # could grant, the hash is the token, revoking is the action below.
    readonly_fields = [
        "public_id",
        "tenant",
        "app",
        "prefix",
        "token_hash",
        "scopes",
        "created_at",
        "last_used_at",
        "revoked_at",
    ]
    actions = ["revoke"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Tokens are shown once at creation: mint them with the API or `manage.py create_tenant`.
        return False

    def has_delete_permission(self, request: HttpRequest, obj: ApiToken | None = None) -> bool:
        return False  # revoke instead: the row is what says who could do what, and when

    def save_model(self, request: HttpRequest, obj: ApiToken, form: forms.ModelForm[ApiToken], change: bool) -> None:
        super().save_model(request, obj, form, change)
        if form.changed_data:
            console_action_logged(self, request, "token renamed", [obj])

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        tokens = list(queryset.filter(revoked_at__isnull=True))
        for token in tokens:
            services.token_revoke(token=token, actor=admin_actor(request))
        console_action_logged(self, request, "revoke token", tokens)
        self.message_user(request, f"Revoked {len(tokens)} token(s).", messages.SUCCESS)
