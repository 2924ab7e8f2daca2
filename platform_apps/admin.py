"""The console's apps, deployments and their parts: what an operator scans (status, replicas, the live
deployment, what went wrong) and acts on. Actions call the same services as the API, so every change is an
intent the workflow carries out (never a raw edit behind a task's back), and each is logged with the admin user
(`core.console`). Nothing here shows a secret value or a ciphertext."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django import forms
from django.contrib import admin
from django.contrib import messages
from django.db.models import F
from django.db.models import OuterRef
from django.db.models import Q
from django.db.models import QuerySet
from django.db.models import Subquery
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.html import format_html_join
from django.utils.safestring import SafeString

from audit.admin import AuditedAdmin
from audit.admin import admin_actor
from core.console import console_action_logged
from core.errors import ApiError
from core.queue import enqueue_on_commit
from platform_apps.apps import selectors as app_selectors
from platform_apps.apps import services as app_services
from platform_apps.deployments import services as deployment_services
from platform_apps.hosts import selectors as host_selectors
from platform_apps.hosts import services as host_services
from platform_apps.hosts.services import HostStateChange
from platform_apps.models import Addon
from platform_apps.models import AddonBackup
from platform_apps.models import App
from platform_apps.models import AppStatus
from platform_apps.models import ConfigVar
from platform_apps.models import Deployment
from platform_apps.models import Domain
from platform_apps.models import Host
from platform_apps.models import RedisAddon
from platform_apps.models import Replica
from platform_apps.models import WebhookDelivery
from tenants.models import Tenant

CONSOLE_CSS = {"all": ("coltsfoot/console.css",)}
CONSOLE_JS = ("coltsfoot/console.js",)


def _badge(value: str, label: str) -> SafeString:
    return format_html('<span class="cf-badge cf-badge-{}">{}</span>', value, label)


def _change_link(obj: Deployment, text: str) -> SafeString:
    return format_html('<a href="{}">{}</a>', reverse("admin:platform_apps_deployment_change", args=[obj.pk]), text)


# --- Apps -----------------------------------------------------------------------------------------


class AppStatusFilter(admin.SimpleListFilter):
    """`App.status` as a filter, on the same annotations (`with_status`) the column reads."""

    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]) -> list[tuple[str, str]]:
        return [(str(value), str(label)) for value, label in AppStatus.choices]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        live = Q(status_deploying=False, live_deployment__isnull=False, status_replicas__gt=0)
        conditions = {
            AppStatus.DEPLOYING: Q(status_deploying=True),
            AppStatus.STOPPED: Q(status_deploying=False) & (Q(live_deployment__isnull=True) | Q(status_replicas=0)),
            AppStatus.RUNNING: live & Q(status_running=F("status_replicas")),
            AppStatus.DEGRADED: live & Q(status_running__gt=0, status_running__lt=F("status_replicas")),
            AppStatus.CRASHED: live & Q(status_running=0),
        }
        condition = conditions.get(self.value() or "")  # type: ignore[call-overload]
        return queryset if condition is None else queryset.filter(condition)


class TenantStatusFilter(admin.SimpleListFilter):
    title = "tenant status"
    parameter_name = "tenant_status"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]) -> list[tuple[str, str]]:
        return [(str(value), str(label)) for value, label in Tenant.Status.choices]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(tenant__status=self.value()) if self.value() else queryset


class AppForm(forms.ModelForm[App]):
    """Scaling goes through `app_update` (which re-releases the live image); these checks say up front what it
    would refuse, as form errors rather than a failed save."""

    class Meta:
        model = App
        fields = ["replicas", "memory_mb", "cpus", "deploy_branch"]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        app = self.instance
        tenant = app.tenant
        if app.state != App.State.ACTIVE:
            raise forms.ValidationError("This app is being deleted.")
        if not tenant.is_active and {"replicas", "memory_mb", "cpus"} & set(self.changed_data):
            raise forms.ValidationError("Its tenant is suspended: reactivate the tenant before scaling its apps.")
        replicas, memory = data.get("replicas"), data.get("memory_mb")
        if replicas is not None and not 1 <= replicas <= tenant.max_replicas:
            self.add_error("replicas", f"Between 1 and the tenant's quota of {tenant.max_replicas}.")
        if memory is not None and not 64 <= memory <= tenant.max_memory_mb:
            self.add_error("memory_mb", f"Between 64 and the tenant's quota of {tenant.max_memory_mb} MiB.")
        cpus = data.get("cpus")
        if cpus is not None and not 0.1 <= float(cpus) <= 16:
            self.add_error("cpus", "Between 0.1 and 16.")
        return data


def _latest_deployment(field: str) -> Subquery:
    return Subquery(Deployment.objects.filter(app=OuterRef("pk")).order_by("-number").values(field)[:1])


def _crashed_replica(field: str) -> Subquery:
    crashed = Replica.objects.filter(deployment=OuterRef("live_deployment"), state=Replica.State.CRASHED)
    return Subquery(crashed.order_by("index").values(field)[:1])


@admin.register(App)
class AppAdmin(AuditedAdmin[App]):
    form = AppForm
    list_display = [
        "name",
        "tenant",
        "status_badge",
        "replicas_running",
        "problem",
        "live_deployment_link",
        "url_link",
    ]
    list_filter = [AppStatusFilter, TenantStatusFilter, "state", "created_at"]
    search_fields = ["name", "hostname", "public_id", "tenant__slug"]
    list_select_related = ["tenant", "live_deployment"]
    fields = [
        "public_id",
        "tenant",
        "name",
        "url_link",
        "state",
        "status_badge",
        "replicas_running",
        "replica_table",
        "live_deployment_link",
        "replicas",
        "memory_mb",
        "cpus",
        "deploy_branch",
        "created_at",
        "updated_at",
    ]
    # Everything but what AppForm edits (through `app_update`).
    readonly_fields = [f for f in fields if isinstance(f, str) and f not in AppForm.Meta.fields]
    actions = ["redeploy", "rollback", "force_reconcile", "delete_apps"]

    class Media:
        css = CONSOLE_CSS
        js = CONSOLE_JS

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # tenants create apps through the API

    def has_delete_permission(self, request: HttpRequest, obj: App | None = None) -> bool:
        return False  # deleting the row would leave its containers and route: use "Delete and tear down"

    def get_queryset(self, request: HttpRequest) -> QuerySet[App]:
        return app_selectors.with_status(super().get_queryset(request)).annotate(
            latest_state=_latest_deployment("state"),
            latest_error=_latest_deployment("error_code"),
            crashed_reason=_crashed_replica("last_exit_reason"),
            crashed_index=_crashed_replica("index"),
        )

    @admin.display(description="status")
    def status_badge(self, obj: App) -> SafeString:
        status = obj.status
        return _badge(status, AppStatus(status).label)

    @admin.display(description="replicas running / desired")
    def replicas_running(self, obj: App) -> str:
        running = getattr(obj, "status_running", None)
        if obj.live_deployment_id is None:
            running = 0
        elif running is None:
            running = Replica.objects.filter(deployment_id=obj.live_deployment_id, state=Replica.State.RUNNING).count()
        return f"{int(running)} / {obj.replicas}"

    @admin.display(description="problem")
    def problem(self, obj: App) -> str:
        """Why it is unhealthy, at a glance: a crashed replica's last exit, or the latest deployment's error."""
        parts = []
        if getattr(obj, "crashed_reason", None):
            parts.append(f"web.{int(getattr(obj, 'crashed_index', 0)) + 1} {obj.crashed_reason}")  # type: ignore[attr-defined]
        if getattr(obj, "latest_state", None) == Deployment.State.FAILED:
            parts.append(f"last deploy failed: {getattr(obj, 'latest_error', '') or 'unknown'}")
        if not obj.tenant.is_active:
            parts.append("tenant suspended")
        return "; ".join(parts) or "-"

    @admin.display(description="live deployment", ordering="live_deployment__number")
    def live_deployment_link(self, obj: App) -> SafeString | str:
        live = obj.live_deployment
        return "-" if live is None else _change_link(live, f"#{live.number} ({live.source_kind})")

    @admin.display(description="URL")
    def url_link(self, obj: App) -> SafeString:
        return format_html('<a href="{0}" rel="noopener noreferrer">{0}</a>', obj.url)

    @admin.display(description="replicas of the live deployment")
    def replica_table(self, obj: App) -> SafeString | str:
        replicas = list(app_selectors.replica_list(app=obj).select_related("host"))
        if not replicas:
            return "-"
        rows = format_html_join(
            "",
            "<tr><td>web.{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    r.index + 1,
                    "-" if r.host is None else r.host.name,
                    _badge(r.state, r.get_state_display()),
                    r.restarts,
                    r.last_exit_reason or "-",
                    "-" if r.last_exit_code is None else r.last_exit_code,
                )
                for r in replicas
            ),
        )
        head = (
            "<tr><th>replica</th><th>host</th><th>state</th><th>restarts</th><th>last exit</th><th>exit code</th></tr>"
        )
        return format_html('<table class="cf-replicas">{}{}</table>', SafeString(head), rows)

    def save_model(self, request: HttpRequest, obj: App, form: forms.ModelForm[App], change: bool) -> None:
        changes = {field: form.cleaned_data[field] for field in form.changed_data}
        if not changes:
            return
        try:
            app_services.app_update(app=obj, changes=changes)
        except ApiError as exc:  # a race the form could not see (a quota lowered meanwhile, a deletion)
            self.message_user(request, f"{obj.name}: not changed: {exc.message}", messages.ERROR)
            return
        console_action_logged(self, request, "app changed", [obj], changes={k: str(v) for k, v in changes.items()})

    def _deployable(self, request: HttpRequest, app: App) -> bool:
        if not app.tenant.is_active:
            self.message_user(request, f"{app.name}: its tenant is suspended; reactivate it first.", messages.WARNING)
            return False
        return True

    @admin.action(description="Redeploy selected apps (release the live image again)")
    def redeploy(self, request: HttpRequest, queryset: QuerySet[App]) -> None:
        done = []
        for app in queryset:
            if not self._deployable(request, app):
                continue
            try:
                deployment = deployment_services.release_current(app)
            except ApiError as exc:
                self.message_user(request, f"{app.name}: {exc.message}", messages.ERROR)
                continue
            if deployment is None:
                self.message_user(request, f"{app.name}: nothing deployed yet.", messages.WARNING)
                continue
            done.append(app)
            self.message_user(request, f"{app.name}: deployment #{deployment.number} queued.", messages.SUCCESS)
        console_action_logged(self, request, "redeploy", done)

    @admin.action(description="Roll back selected apps to their previous live deployment")
    def rollback(self, request: HttpRequest, queryset: QuerySet[App]) -> None:
        done = []
        for app in queryset:
            if not self._deployable(request, app):
                continue
            live_number = app.live_deployment.number if app.live_deployment is not None else None
            earlier = Deployment.objects.filter(app=app, state=Deployment.State.SUPERSEDED).exclude(image_ref="")
            if live_number is not None:
                earlier = earlier.filter(number__lt=live_number)
            target = earlier.order_by("-number").first()
            if target is None:
                self.message_user(request, f"{app.name}: no earlier deployment to roll back to.", messages.WARNING)
                continue
            try:
                deployment = deployment_services.deployment_create_rollback(app=app, target=target)
            except ApiError as exc:
                self.message_user(request, f"{app.name}: {exc.message}", messages.ERROR)
                continue
            done.append(app)
            self.message_user(
                request,
                f"{app.name}: rolling back to #{target.number} as deployment #{deployment.number}.",
                messages.SUCCESS,
            )
        console_action_logged(self, request, "rollback", done)

    @admin.action(description="Reconcile now (repair replicas and routes without waiting for the next pass)")
    def force_reconcile(self, request: HttpRequest, queryset: QuerySet[App]) -> None:
        apps = list(queryset)
        # One pass covers every app; it repairs only what differs.
        enqueue_on_commit("coltsfoot.reconcile")
        console_action_logged(self, request, "force reconcile", apps)
        self.message_user(request, "A reconcile pass is queued.", messages.SUCCESS)

    @admin.action(description="Delete selected apps and tear down their containers, route and database")
    def delete_apps(self, request: HttpRequest, queryset: QuerySet[App]) -> None:
        apps = list(queryset)
        for app in apps:
            app_services.app_delete(app=app)
        console_action_logged(self, request, "delete app", apps)
        self.message_user(request, f"Deleting {len(apps)} app(s) in the background.", messages.SUCCESS)


# --- Deployments ----------------------------------------------------------------------------------


class ReplicaInline(admin.TabularInline[Replica, Deployment]):
    model = Replica
    extra = 0
    can_delete = False
    fields = (
        "index",
        "name",
        "host",
        "state",
        "address",
        "restarts",
        "last_exit_code",
        "last_exit_reason",
        "started_at",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Deployment | None = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Replica]:
        return super().get_queryset(request).select_related("host")


def _seconds(delta: timedelta) -> str:
    total = delta.total_seconds()
    return f"{total:.1f} s" if total < 120 else f"{int(total // 60)} min {int(total % 60)} s"


# A deployment's page: what happened first (the log included), where it came from below.
DEPLOYMENT_SUMMARY = ("public_id", "app", "number", "state_badge", "error_summary", "duration", "log_view")
DEPLOYMENT_DETAILS = (
    "source_kind",
    "source_url",
    "source_ref",
    "source_commit",
    "source_deployment",
    "image_ref",
    "image_id",
    "web_command",
    "release_command",
    "attempts",
    "created_at",
    "started_at",
    "finished_at",
)


@admin.register(Deployment)
class DeploymentAdmin(AuditedAdmin[Deployment]):
    """Read-only: every field of a deployment belongs to the pipeline. The log is shown as a terminal would."""

    list_display = [
        "__str__",
        "tenant",
        "state_badge",
        "error_code",
        "duration",
        "source_kind",
        "created_at",
    ]
    list_filter = ["state", "source_kind", "error_code", "created_at"]
    search_fields = ["public_id", "app__name", "app__tenant__slug", "error_code"]
    list_select_related = ["app", "app__tenant"]
    fieldsets = (
        (None, {"fields": DEPLOYMENT_SUMMARY}),
        ("Source and image", {"classes": ("collapse",), "fields": DEPLOYMENT_DETAILS}),
    )
    readonly_fields = DEPLOYMENT_SUMMARY + DEPLOYMENT_DETAILS
    inlines = [ReplicaInline]
    actions = ["rollback_to"]

    class Media:
        css = CONSOLE_CSS
        js = CONSOLE_JS

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Deployment | None = None) -> bool:
        return False  # view only: the pipeline owns every field

    def has_delete_permission(self, request: HttpRequest, obj: Deployment | None = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Deployment]:
        return super().get_queryset(request).select_related("app", "app__tenant")

    @admin.display(description="tenant", ordering="app__tenant__slug")
    def tenant(self, obj: Deployment) -> str:
        return str(obj.app.tenant.slug)

    @admin.display(description="state", ordering="state")
    def state_badge(self, obj: Deployment) -> SafeString:
        return _badge(obj.state, obj.get_state_display())

    @admin.display(description="duration")
    def duration(self, obj: Deployment) -> str:
        start = obj.started_at or obj.created_at
        if obj.finished_at is not None:
            return _seconds(obj.finished_at - start)
        if obj.state in Deployment.ACTIVE_STATES:
            return f"{_seconds(timezone.now() - start)} so far"
        return "-"

    @admin.display(description="error")
    def error_summary(self, obj: Deployment) -> SafeString | str:
        if not obj.error_code:
            return "-"
        return format_html("<strong>{}</strong>: {}", obj.error_code, obj.error_message)

    @admin.display(description="build and release log")
    def log_view(self, obj: Deployment) -> SafeString:
        # Secrets are redacted when the pipeline writes the log; the console scrolls it to its end (console.js).
        return format_html('<div class="cf-log" data-cf-log><pre>{}</pre></div>', obj.log or "(empty)")

    @admin.action(description="Roll the app back to the selected deployment (one)")
    def rollback_to(self, request: HttpRequest, queryset: QuerySet[Deployment]) -> None:
        targets = list(queryset[:2])
        if len(targets) != 1:
            self.message_user(request, "Select exactly one deployment to roll back to.", messages.WARNING)
            return
        target = targets[0]
        app = target.app
        if not app.tenant.is_active:
            self.message_user(request, f"{app.name}: its tenant is suspended; reactivate it first.", messages.WARNING)
            return
        try:
            deployment = deployment_services.deployment_create_rollback(app=app, target=target)
        except ApiError as exc:
            self.message_user(request, f"{app.name}: {exc.message}", messages.ERROR)
            return
        console_action_logged(self, request, "rollback", [target], app_id=str(app.public_id))
        message = f"{app.name}: rolling back to #{target.number} as deployment #{deployment.number}."
        self.message_user(request, message, messages.SUCCESS)


# --- Hosts ----------------------------------------------------------------------------------------


class HostReplicaInline(admin.TabularInline[Replica, Host]):
    """What runs on a host: each replica placed there, with its app and deployment."""

    model = Replica
    fk_name = "host"
    extra = 0
    can_delete = False
    verbose_name = "replica placed here"
    verbose_name_plural = "replicas placed here"
    fields = ("name", "app", "deployment_number", "state", "address", "started_at")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Host | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Host | None = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Replica]:
        return (
            super()
            .get_queryset(request)
            .select_related("deployment", "deployment__app", "deployment__app__tenant")
            .order_by("deployment__app__hostname", "deployment__number", "index")
        )

    @admin.display(description="app")
    def app(self, obj: Replica) -> str:
        return str(obj.deployment.app.hostname)

    @admin.display(description="deployment")
    def deployment_number(self, obj: Replica) -> SafeString:
        return _change_link(obj.deployment, f"#{obj.deployment.number} ({obj.deployment.state})")


HOST_FIELDS = (
    "public_id",
    "name",
    "state_badge",
    "address",
    "memory",
    "replicas_placed",
    "cpus",
    "can_build",
    "heartbeat",
    "last_heartbeat",
    "registered_at",
)


@admin.register(Host)
class HostAdmin(AuditedAdmin[Host]):
    """Read-only but for drain and undrain (`platform_apps.hosts.services`, as `manage.py host` does): a worker
    registers and heartbeats its host, and the reconciler marks it down."""

    list_display = ["name", "state_badge", "address", "memory", "replicas_placed", "cpus", "heartbeat"]
    list_filter = ["state", "can_build"]
    search_fields = ["name", "address", "public_id"]
    fields = HOST_FIELDS
    readonly_fields = HOST_FIELDS
    inlines = [HostReplicaInline]
    actions = ["drain", "undrain"]

    class Media:
        css = CONSOLE_CSS
        js = CONSOLE_JS

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # a worker registers its host when it starts

    def has_change_permission(self, request: HttpRequest, obj: Host | None = None) -> bool:
        return False  # view only: the worker owns its fields, drain/undrain are actions

    def has_delete_permission(self, request: HttpRequest, obj: Host | None = None) -> bool:
        # Never in bulk (no "delete selected"); one host, only once nothing is placed on it (replicas PROTECT it).
        return obj is not None and not Replica.objects.filter(host=obj).exists()

    def get_queryset(self, request: HttpRequest) -> QuerySet[Host]:
        return host_selectors.host_list()

    @admin.display(description="state", ordering="state")
    def state_badge(self, obj: Host) -> SafeString:
        return _badge(obj.state, obj.get_state_display())

    @admin.display(description="memory placed / capacity", ordering="placed_memory_mb")
    def memory(self, obj: Host) -> str:
        return f"{int(getattr(obj, 'placed_memory_mb', 0))} / {obj.memory_mb} MiB"

    @admin.display(description="replicas placed", ordering="replicas_placed")
    def replicas_placed(self, obj: Host) -> int:
        return int(getattr(obj, "replicas_placed", 0))

    @admin.display(description="last heartbeat", ordering="last_heartbeat")
    def heartbeat(self, obj: Host) -> str:
        if obj.last_heartbeat is None:
            return "never"
        return f"{_seconds(max(timedelta(0), timezone.now() - obj.last_heartbeat))} ago"

    def _change_state(self, request: HttpRequest, queryset: QuerySet[Host], verb: str) -> None:
        change = host_services.host_drain if verb == "drain" else host_services.host_undrain
        done: list[Host] = []
        for name in queryset.values_list("name", flat=True):
            try:
                result: HostStateChange = change(name=name, actor=admin_actor(request))
            except ApiError as exc:
                self.message_user(request, exc.message, messages.ERROR)
                continue
            if result.changed:
                done.append(result.host)
            self.message_user(request, result.message, messages.SUCCESS if result.changed else messages.INFO)
        console_action_logged(self, request, verb, done, hosts=[host.name for host in done])

    @admin.action(description="Drain selected hosts (no new replicas or builds go there)")
    def drain(self, request: HttpRequest, queryset: QuerySet[Host]) -> None:
        self._change_state(request, queryset, "drain")

    @admin.action(description="Undrain selected hosts (place on them again)")
    def undrain(self, request: HttpRequest, queryset: QuerySet[Host]) -> None:
        self._change_state(request, queryset, "undrain")


# --- Config, add-ons, webhook deliveries -----------------------------------------------------------


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

    def has_delete_permission(self, request: HttpRequest, obj: ConfigVar | None = None) -> bool:
        return False  # a config change is a release: tenants make it through the API


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

    def has_delete_permission(self, request: HttpRequest, obj: Addon | None = None) -> bool:
        return False  # the database and role would stay behind: deprovisioning is a task


@admin.register(RedisAddon)
class RedisAddonAdmin(AuditedAdmin[RedisAddon]):
    list_display = ["public_id", "app", "state", "maxmemory_mb", "policy", "persistence", "restarts", "updated_at"]
    list_filter = ["state", "policy", "persistence", "created_at"]
    search_fields = ["public_id", "app__name", "app__tenant__slug"]
    list_select_related = ["app", "app__tenant"]
    fields = (
        "public_id",
        "app",
        "state",
        "maxmemory_mb",
        "policy",
        "persistence",
        "address",
        "restarts",
        "error_code",
        "error_message",
        "created_at",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: RedisAddon | None = None) -> bool:
        return False  # its container and data would stay behind: deprovisioning is a task


@admin.register(AddonBackup)
class AddonBackupAdmin(AuditedAdmin[AddonBackup]):
    """Read-only: a backup is taken and restored through the API (its key never shows)."""

    list_display = ["public_id", "app", "kind", "state", "size", "restore_state", "created_at"]
    list_filter = ["state", "kind", "restore_state", "created_at"]
    search_fields = ["public_id", "app__name", "app__tenant__slug"]
    list_select_related = ["app", "app__tenant"]
    fields = (
        "public_id",
        "app",
        "kind",
        "state",
        "size",
        "error_code",
        "error_message",
        "restore_state",
        "restore_error_code",
        "restore_requested_at",
        "restored_at",
        "created_at",
        "started_at",
        "finished_at",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: AddonBackup | None = None) -> bool:
        return False  # its file would stay behind: retention removes both


@admin.register(Domain)
class DomainAdmin(AuditedAdmin[Domain]):
    """Read-only: domains are added, checked and removed through the API (a removal must refresh the
    app's route, which only the service does)."""

    list_display = ["hostname", "app", "status", "certificate_status", "certificate_expires_at", "created_at"]
    list_filter = ["status", "certificate_status", "created_at"]
    search_fields = ["hostname", "public_id", "app__name", "tenant__slug"]
    list_select_related = ["app", "app__tenant", "tenant"]
    fields = (
        "public_id",
        "hostname",
        "app",
        "tenant",
        "status",
        "verified_at",
        "checked_at",
        "check_found",
        "check_error",
        "check_count",
        "next_check_at",
        "check_until",
        "certificate_status",
        "certificate_expires_at",
        "certificate_issuer",
        "certificate_checked_at",
        "created_at",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Domain | None = None) -> bool:
        return False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(AuditedAdmin[WebhookDelivery]):
    list_display = ["delivery_id", "app", "deployment", "created_at"]
    list_filter = ["created_at"]
    search_fields = ["delivery_id", "app__name", "app__tenant__slug"]
    list_select_related = ["app", "app__tenant", "deployment", "deployment__app"]
    readonly_fields = ["app", "delivery_id", "signature_digest", "deployment", "created_at"]
