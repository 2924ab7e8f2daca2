from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from audit.admin import AuditedAdmin
from platform_apps.models import Addon
from platform_apps.models import App
from platform_apps.models import ConfigVar
from platform_apps.models import Deployment
from platform_apps.models import Replica
from platform_apps.models import WebhookDelivery


@admin.register(App)
class AppAdmin(AuditedAdmin[App]):
    list_display = ["name", "tenant", "hostname", "state", "replicas", "memory_mb", "live_deployment", "created_at"]
    list_filter = ["state", "created_at"]
    search_fields = ["name", "hostname", "public_id", "tenant__slug"]
    list_select_related = ["tenant", "live_deployment", "live_deployment__app"]
    readonly_fields = ["public_id", "hostname", "live_deployment", "created_at", "updated_at"]
    raw_id_fields = ["tenant"]
    exclude = ["webhook_secret_encrypted"]


class ReplicaInline(admin.TabularInline[Replica, Deployment]):
    model = Replica
    extra = 0
    can_delete = False
    readonly_fields = ["index", "name", "address", "created_at"]


@admin.register(Deployment)
class DeploymentAdmin(AuditedAdmin[Deployment]):
    list_display = ["__str__", "app", "number", "state", "source_kind", "error_code", "created_at", "finished_at"]
    list_filter = ["state", "source_kind", "created_at"]
    search_fields = ["public_id", "app__name", "app__tenant__slug", "error_code"]
    list_select_related = ["app", "app__tenant"]
    readonly_fields = [
        "public_id",
        "app",
        "number",
        "source_kind",
        "source_url",
        "source_ref",
        "source_commit",
        "source_deployment",
        "image_ref",
        "image_id",
        "web_command",
        "release_command",
        "error_code",
        "error_message",
        "log",
        "attempts",
        "created_at",
        "started_at",
        "finished_at",
    ]
    inlines = [ReplicaInline]


@admin.register(ConfigVar)
class ConfigVarAdmin(AuditedAdmin[ConfigVar]):
    """Keys and kinds only: values are encrypted, and secret ones are write-only everywhere."""

    list_display = ["key", "app", "secret", "updated_at"]
    list_filter = ["secret", "updated_at"]
    search_fields = ["key", "app__name", "app__tenant__slug"]
    list_select_related = ["app", "app__tenant"]
    fields = ["app", "key", "secret", "created_at", "updated_at"]
    readonly_fields = ["app", "key", "secret", "created_at", "updated_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(Addon)
class AddonAdmin(AuditedAdmin[Addon]):
    list_display = ["database_name", "app", "state", "error_code", "created_at", "updated_at"]
    list_filter = ["state", "created_at"]
    search_fields = ["public_id", "database_name", "role_name", "app__name", "app__tenant__slug"]
    list_select_related = ["app", "app__tenant"]
    fields = ("public_id", "app", "state", "role_name", "database_name", "error_code", "error_message", "created_at")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(AuditedAdmin[WebhookDelivery]):
    list_display = ["delivery_id", "app", "deployment", "created_at"]
    list_filter = ["created_at"]
    search_fields = ["delivery_id", "app__name", "app__tenant__slug"]
    list_select_related = ["app", "app__tenant", "deployment", "deployment__app"]
    readonly_fields = ["app", "delivery_id", "signature_digest", "deployment", "created_at"]
