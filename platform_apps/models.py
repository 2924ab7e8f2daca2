from __future__ import annotations

import uuid
from pathlib import Path
from typing import ClassVar

import auto_prefetch
from django.conf import settings
from django.db import models
from django.utils import timezone

from tenants.models import Tenant
from tenants.validators import DNS_LABEL_MAX
from tenants.validators import dns_label_validator


class App(auto_prefetch.Model):
    class State(models.TextChoices):
        ACTIVE = "active", "Active"
        DELETING = "deleting", "Deleting"

    tenant = auto_prefetch.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="apps")
    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=DNS_LABEL_MAX, validators=[dns_label_validator])
    # `<app>-<tenant>` is ambiguous across tenants ("a-b"+"c" vs "a"+"b-c"), so the full
    # hostname is unique on its own.
    hostname = models.CharField(max_length=253, unique=True, editable=False)
    state = models.CharField(max_length=16, choices=State.choices, default=State.ACTIVE)
    replicas = models.PositiveSmallIntegerField(default=1)
    memory_mb = models.PositiveIntegerField(default=256)
    cpus = models.DecimalField(max_digits=4, decimal_places=2, default=1)
    deploy_branch = models.CharField(max_length=255, default="main")
    # Plain HTTP requests to any of the app's hostnames are redirected (308) to HTTPS.
    force_https = models.BooleanField(default=False)
    webhook_secret_encrypted = models.TextField(blank=True, default="", editable=False)
    live_deployment = auto_prefetch.ForeignKey(
        "platform_apps.Deployment",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    objects: ClassVar[auto_prefetch.Manager[App]] = auto_prefetch.Manager()

    class Meta(auto_prefetch.Model.Meta):
        ordering = ["tenant", "name"]
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="app_name_unique_per_tenant")]
        indexes = [models.Index(fields=["tenant", "created_at"]), models.Index(fields=["state"])]

    def __str__(self) -> str:
        return self.hostname

    @staticmethod
    def hostname_for(app_name: str, tenant_slug: str) -> str:
        return f"{app_name}-{tenant_slug}.{settings.APPS_DOMAIN}"

    @property
    def url(self) -> str:
        return str(settings.EDGE_PUBLIC_URL_TEMPLATE).format(host=self.hostname)

    @property
    def webhook_url(self) -> str:
        return f"{settings.API_PUBLIC_URL}/api/v1/hooks/apps/{self.public_id}/deploy"

    @property
    def status(self) -> str:
        """What a tenant wants to know first: `deploying` while a deployment is in flight, else
        `stopped` (nothing live), `running` (every replica serves), `degraded` (some do) or
        `crashed` (none does). Lists annotate the counts (`with_status`); a single app without
        them costs two small queries."""
        deploying = getattr(self, "status_deploying", None)
        if deploying is None:
            deploying = Deployment.objects.filter(app=self, state__in=Deployment.ACTIVE_STATES).exists()
        if deploying:
            return AppStatus.DEPLOYING
        if self.live_deployment_id is None:
            return AppStatus.STOPPED
        total = getattr(self, "status_replicas", None)
        running = getattr(self, "status_running", None)
        if total is None or running is None:
            states = list(Replica.objects.filter(deployment_id=self.live_deployment_id).values_list("state", flat=True))
            total, running = len(states), states.count(Replica.State.RUNNING)
        if total == 0:
            return AppStatus.STOPPED
        if running == total:
            return AppStatus.RUNNING
        return AppStatus.DEGRADED if running else AppStatus.CRASHED


class AppStatus(models.TextChoices):
    RUNNING = "running", "Running"
    DEGRADED = "degraded", "Degraded"
    CRASHED = "crashed", "Crashed"
    STOPPED = "stopped", "Stopped"
    DEPLOYING = "deploying", "Deploying"


class Deployment(auto_prefetch.Model):
    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        BUILDING = "building", "Building"
        STARTING = "starting", "Starting"
        LIVE = "live", "Live"
        FAILED = "failed", "Failed"
        SUPERSEDED = "superseded", "Superseded"

    class SourceKind(models.TextChoices):
        ARCHIVE = "archive", "Source archive"
        GIT = "git", "Git repository"
        IMAGE = "image", "Container image"
        ROLLBACK = "rollback", "Rollback"
        RELEASE = "release", "Config release"

    ACTIVE_STATES: ClassVar[tuple[str, ...]] = (State.QUEUED, State.BUILDING, State.STARTING)
    FINAL_STATES: ClassVar[tuple[str, ...]] = (State.LIVE, State.FAILED, State.SUPERSEDED)

    app = auto_prefetch.ForeignKey(App, on_delete=models.CASCADE, related_name="deployments")
    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    number = models.PositiveIntegerField()
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED)
    source_kind = models.CharField(max_length=16, choices=SourceKind.choices)
    # Git URL + ref or image reference as the tenant gave it; archives live in the build dir.
    source_url = models.CharField(max_length=2048, blank=True, default="")
    source_ref = models.CharField(max_length=255, blank=True, default="")
    source_commit = models.CharField(max_length=64, blank=True, default="")
    # sha256 of the unpacked source tree and what its image is built from (base image, Containerfile),
    # set by the build: a later deployment of the same app with the same digest reuses the image.
    # NULL, not "": no digest at all (a rollback, a release, an image deploy, a build from before digests).
    source_digest = models.CharField(max_length=64, null=True, blank=True, editable=False)  # noqa: DJ001
    source_deployment = auto_prefetch.ForeignKey(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="For rollbacks and config releases: the deployment whose image is reused.",
    )
    image_ref = models.CharField(max_length=512, blank=True, default="")
    image_id = models.CharField(max_length=128, blank=True, default="")
    # The tenant's own image (not one we built): run as is with /bin/sh, not from /app/src.
    own_image = models.BooleanField(default=False)
    web_command = models.TextField(blank=True, default="")
    release_command = models.TextField(blank=True, default="")
    error_code = models.CharField(max_length=64, blank=True, default="")
    error_message = models.TextField(blank=True, default="")
    log = models.TextField(blank=True, default="")
    attempts = models.PositiveSmallIntegerField(default=0)
    released = models.BooleanField(default=False, help_text="The release command has run successfully.")
    # The lease of the task working on this deployment: refreshed while it runs, cleared when it
    # stops. A stale lease means the worker died; the reconciler then queues the task again.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    lease_owner = models.CharField(max_length=64, blank=True, default="")
    delivery_id = models.CharField(max_length=128, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # When it became the app's live deployment (its replicas served and the route switched to
    # them). Only such deployments can be rolled back to, and image retention keeps the last few.
    went_live_at = models.DateTimeField(null=True, blank=True)
    # The host the deployment is placed on: its build, release and replicas run there (NULL until placed).
    host = auto_prefetch.ForeignKey(
        "platform_apps.Host", on_delete=models.PROTECT, null=True, blank=True, related_name="deployments"
    )

    objects: ClassVar[auto_prefetch.Manager[Deployment]] = auto_prefetch.Manager()

    class Meta(auto_prefetch.Model.Meta):
        ordering = ["app", "-number"]
        constraints = [models.UniqueConstraint(fields=["app", "number"], name="deployment_number_unique_per_app")]
        indexes = [
            models.Index(fields=["app", "state"]),
            models.Index(fields=["state", "created_at"]),
            models.Index(fields=["app", "created_at"]),
            models.Index(fields=["app", "source_digest"]),
        ]

    def __str__(self) -> str:
        return f"{self.app.name} #{self.number} ({self.state})"

    @property
    def build_dir(self) -> Path:
        return Path(settings.BUILD_ROOT) / str(self.public_id)

    @property
    def error(self) -> dict[str, str] | None:
        if not self.error_code:
            return None
        return {"code": self.error_code, "message": self.error_message}


class Host(auto_prefetch.Model):
    """A machine that runs tenant containers. Its worker registers it at start and heartbeats it; the
    reconciler marks it down when the heartbeats stop for HOST_DEAD_SECONDS. Container work for it goes
    to its own queue, `host.<name>`; an operator drains a host to move its work elsewhere."""

    class State(models.TextChoices):
        ACTIVE = "active", "Active"
        DRAINING = "draining", "Draining"
        DOWN = "down", "Down"

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=DNS_LABEL_MAX, unique=True, validators=[dns_label_validator])
    address = models.CharField(max_length=255, help_text="Where the platform reaches the host.")
    memory_mb = models.PositiveIntegerField(help_text="Memory tenant containers may be placed in.")
    cpus = models.DecimalField(max_digits=6, decimal_places=2)
    can_build = models.BooleanField(default=True, help_text="Builds may be placed on it.")
    state = models.CharField(max_length=16, choices=State.choices, default=State.ACTIVE)
    last_heartbeat = models.DateTimeField(null=True, blank=True)
    registered_at = models.DateTimeField(default=timezone.now, editable=False)

    objects: ClassVar[auto_prefetch.Manager[Host]] = auto_prefetch.Manager()

    class Meta(auto_prefetch.Model.Meta):
        ordering = ["name"]
        indexes = [models.Index(fields=["state", "last_heartbeat"])]

    def __str__(self) -> str:
        return f"{self.name} ({self.state})"

    @property
    def queue(self) -> str:
        """The Celery queue only this host's worker consumes."""
        return host_queue(self.name)


def host_queue(name: str) -> str:
    return f"host.{name}"


class Replica(auto_prefetch.Model):
    """A replica the platform runs for a deployment: one container at a time under a fixed name.

    The row is desired state (this index of this deployment should run) plus what the platform
    last observed of it; podman's own view is read on every reconcile pass and never trusted
    over the row."""

    class State(models.TextChoices):
        STARTING = "starting", "Starting"
        RUNNING = "running", "Running"
        CRASHED = "crashed", "Crashed"
        RESTARTING = "restarting", "Restarting"

    deployment = auto_prefetch.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="replicas")
    index = models.PositiveSmallIntegerField()
    name = models.CharField(max_length=128, unique=True)
    # Where it is placed (NULL only for rows from before hosts): that host's worker runs its container.
    host = auto_prefetch.ForeignKey(Host, on_delete=models.PROTECT, null=True, blank=True, related_name="replicas")
    address = models.CharField(max_length=64, blank=True, default="")
    state = models.CharField(max_length=16, choices=State.choices, default=State.STARTING)
    restarts = models.PositiveIntegerField(default=0, help_text="Replacements since the deployment started it.")
    # Crashes since it last ran healthily for a while: the exponent of the restart backoff.
    crash_streak = models.PositiveSmallIntegerField(default=0)
    last_exit_code = models.IntegerField(null=True, blank=True)
    last_exit_reason = models.CharField(max_length=32, blank=True, default="")
    started_at = models.DateTimeField(null=True, blank=True, help_text="When its current container started.")
    next_restart_at = models.DateTimeField(null=True, blank=True, help_text="Crash-loop backoff: not before then.")
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    objects: ClassVar[auto_prefetch.Manager[Replica]] = auto_prefetch.Manager()

    class Meta(auto_prefetch.Model.Meta):
        ordering = ["deployment", "index"]
        constraints = [models.UniqueConstraint(fields=["deployment", "index"], name="replica_index_unique")]
        indexes = [models.Index(fields=["state"])]

    def __str__(self) -> str:
        return self.name


class ConfigVar(auto_prefetch.Model):
    """One environment variable of an app. Every value is encrypted at rest; `secret` ones are
    also write-only in the API and reach containers as podman secrets, not as `--env`."""

    app = auto_prefetch.ForeignKey(App, on_delete=models.CASCADE, related_name="config_vars")
    key = models.CharField(max_length=64)
    value_encrypted = models.TextField(editable=False)
    secret = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    objects: ClassVar[auto_prefetch.Manager[ConfigVar]] = auto_prefetch.Manager()

    class Meta(auto_prefetch.Model.Meta):
        ordering = ["app", "key"]
        constraints = [models.UniqueConstraint(fields=["app", "key"], name="config_var_key_unique_per_app")]
        indexes = [models.Index(fields=["app", "secret"])]

    def __str__(self) -> str:
        return f"{self.key} ({'secret' if self.secret else 'var'})"


class Addon(auto_prefetch.Model):
    """A managed PostgreSQL database for one app, reached through PgBouncer."""

    class State(models.TextChoices):
        PROVISIONING = "provisioning", "Provisioning"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"
        DEPROVISIONING = "deprovisioning", "Deprovisioning"

    app = auto_prefetch.OneToOneField(App, on_delete=models.CASCADE, related_name="postgres")
    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PROVISIONING)
    role_name = models.CharField(max_length=63, editable=False)
    database_name = models.CharField(max_length=63, editable=False)
    password_encrypted = models.TextField(editable=False)
    error_code = models.CharField(max_length=64, blank=True, default="")
    error_message = models.TextField(blank=True, default="")
    attempts = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    objects: ClassVar[auto_prefetch.Manager[Addon]] = auto_prefetch.Manager()

    class Meta(auto_prefetch.Model.Meta):
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["state"])]

    def __str__(self) -> str:
        return f"postgres {self.database_name} ({self.state})"


class RedisAddon(auto_prefetch.Model):
    """A managed Redis for one app: a sandboxed container on the tenant's network (never published on the
    host), its password encrypted at rest, its memory bounded by `maxmemory_mb`."""

    class State(models.TextChoices):
        PROVISIONING = "provisioning", "Provisioning"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"
        DEPROVISIONING = "deprovisioning", "Deprovisioning"

    class Policy(models.TextChoices):
        NOEVICTION = "noeviction", "noeviction (writes fail when full)"
        ALLKEYS_LRU = "allkeys-lru", "allkeys-lru"
        ALLKEYS_LFU = "allkeys-lfu", "allkeys-lfu"
        ALLKEYS_RANDOM = "allkeys-random", "allkeys-random"
        VOLATILE_LRU = "volatile-lru", "volatile-lru"
        VOLATILE_LFU = "volatile-lfu", "volatile-lfu"
        VOLATILE_RANDOM = "volatile-random", "volatile-random"
        VOLATILE_TTL = "volatile-ttl", "volatile-ttl"

    app = auto_prefetch.OneToOneField(App, on_delete=models.CASCADE, related_name="redis")
    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PROVISIONING)
    maxmemory_mb = models.PositiveIntegerField(default=64)
    policy = models.CharField(max_length=16, choices=Policy.choices, default=Policy.NOEVICTION)
    persistence = models.BooleanField(default=True, help_text="Append-only file on the add-on's own volume.")
    password_encrypted = models.TextField(editable=False)
    # Its address on the tenant network once it ran: a replacement asks for the same one, so REDIS_URL holds.
    address = models.CharField(max_length=64, blank=True, default="")
    error_code = models.CharField(max_length=64, blank=True, default="")
    error_message = models.TextField(blank=True, default="")
    # Crash-loop bookkeeping of the reconciler (like a replica's).
    restarts = models.PositiveIntegerField(default=0)
    crash_streak = models.PositiveSmallIntegerField(default=0)
    started_at = models.DateTimeField(null=True, blank=True)
    next_restart_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    objects: ClassVar[auto_prefetch.Manager[RedisAddon]] = auto_prefetch.Manager()

    class Meta(auto_prefetch.Model.Meta):
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["state"])]

    def __str__(self) -> str:
        return f"redis {self.public_id} ({self.state})"


class AddonBackup(auto_prefetch.Model):
    """A pg_dump (custom format) of an app's add-on database, stored sealed (`core.sealed`) under a data
    key of its own, which is kept here wrapped by the platform's Fernet keys. The row also carries the
    one restore that may be asked of it at a time (`restore_state`)."""

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    class Kind(models.TextChoices):
        MANUAL = "manual", "Asked for"
        SCHEDULED = "scheduled", "Daily"

    class RestoreState(models.TextChoices):
        NONE = "", "Never restored"
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    ACTIVE_RESTORE_STATES: ClassVar[tuple[str, ...]] = (RestoreState.QUEUED, RestoreState.RUNNING)

    app = auto_prefetch.ForeignKey(App, on_delete=models.CASCADE, related_name="backups")
    # The add-on it was taken of; kept (NULL) when that add-on is removed, and a restore goes into the
    # app's current database, so data outlives a deleted add-on.
    addon = auto_prefetch.ForeignKey(Addon, on_delete=models.SET_NULL, null=True, blank=True, related_name="backups")
    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.MANUAL)
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED)
    size = models.BigIntegerField(default=0, help_text="Bytes of the dump (what a download streams).")
    key_encrypted = models.TextField(editable=False)
    error_code = models.CharField(max_length=64, blank=True, default="")
    error_message = models.TextField(blank=True, default="")
    restore_state = models.CharField(max_length=16, choices=RestoreState.choices, blank=True, default="")
    restore_error_code = models.CharField(max_length=64, blank=True, default="")
    restore_error_message = models.TextField(blank=True, default="")
    restore_requested_at = models.DateTimeField(null=True, blank=True)
    restored_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Touched by every task that works on the row: queued work not touched for a lease lost its
    # message (a broker outage), and the reconciler queues it again.
    updated_at = models.DateTimeField(auto_now=True)

    objects: ClassVar[auto_prefetch.Manager[AddonBackup]] = auto_prefetch.Manager()

    class Meta(auto_prefetch.Model.Meta):
        ordering = ["app", "-created_at"]
        indexes = [
            models.Index(fields=["app", "created_at"]),
            models.Index(fields=["state", "created_at"]),
            models.Index(fields=["restore_state", "updated_at"]),
        ]

    def __str__(self) -> str:
        return f"backup {self.public_id} of {self.app.name} ({self.state})"

    @property
    def path(self) -> Path:
        return Path(settings.BACKUP_DIR) / f"{self.public_id}.dump.sealed"


class WebhookDelivery(auto_prefetch.Model):
    """A webhook call that was accepted. A delivery id, or a signature, seen again for the same
    app returns the original deployment instead of creating another."""

    app = auto_prefetch.ForeignKey(App, on_delete=models.CASCADE, related_name="webhook_deliveries")
    delivery_id = models.CharField(max_length=128)
    signature_digest = models.CharField(max_length=64)
    deployment = auto_prefetch.ForeignKey(
        Deployment, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    objects: ClassVar[auto_prefetch.Manager[WebhookDelivery]] = auto_prefetch.Manager()

    class Meta(auto_prefetch.Model.Meta):
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["app", "delivery_id"], name="webhook_delivery_unique"),
            models.UniqueConstraint(fields=["app", "signature_digest"], name="webhook_signature_unique"),
        ]
        indexes = [models.Index(fields=["created_at"])]

    def __str__(self) -> str:
        return f"{self.app.name} delivery {self.delivery_id}"


class IdempotencyRecord(auto_prefetch.Model):
    """The first response to a creating POST sent with an `Idempotency-Key`, replayed for 24 h to
    the same token only. The body is encrypted: it can hold a freshly minted token or secret."""

    token = auto_prefetch.ForeignKey("tenants.ApiToken", on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64, help_text="sha256 of method, path and body.")
    status_code = models.PositiveSmallIntegerField(default=0, help_text="0 while the first request runs.")
    content_type = models.CharField(max_length=100, blank=True, default="")
    body_encrypted = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    objects: ClassVar[auto_prefetch.Manager[IdempotencyRecord]] = auto_prefetch.Manager()

    class Meta(auto_prefetch.Model.Meta):
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["token", "key"], name="idempotency_key_unique_per_token")]
        indexes = [models.Index(fields=["created_at"])]

    def __str__(self) -> str:
        return f"{self.key} ({self.status_code or 'in progress'})"


class StorageUsage(auto_prefetch.Model):
    """What a tenant's images and build dirs took on disk when the collector last measured them
    (`provisioning.reconciler.collector`). The API reads this row to enforce the storage quota,
    so it never has to ask podman; between two measurements the number is stale by design."""

    tenant = auto_prefetch.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="storage_usage")
    image_bytes = models.BigIntegerField(default=0)
    build_bytes = models.BigIntegerField(default=0)
    measured_at = models.DateTimeField(default=timezone.now)

    objects: ClassVar[auto_prefetch.Manager[StorageUsage]] = auto_prefetch.Manager()

    class Meta(auto_prefetch.Model.Meta):
        ordering = ["tenant"]
        indexes = [models.Index(fields=["measured_at"])]

    def __str__(self) -> str:
        return f"{self.tenant.slug}: {self.total_bytes} bytes"

    @property
    def total_bytes(self) -> int:
        return int(self.image_bytes) + int(self.build_bytes)


class Domain(auto_prefetch.Model):
    """A custom hostname a tenant wants for an app. It is routed and certified only once `verified`: its
    owner published the TXT record the API asked for (`verification_token`, per tenant and hostname).

    A hostname is unique among verified domains; pending claims of one name by several tenants may coexist,
    so a squatter's pending claim never blocks the name's real owner."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        VERIFIED = "verified", "Verified"
        FAILED = "failed", "Failed"

    class CertificateStatus(models.TextChoices):
        NONE = "", "None"
        PENDING = "pending", "Pending"
        ISSUED = "issued", "Issued"

    tenant = auto_prefetch.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="domains")
    app = auto_prefetch.ForeignKey(App, on_delete=models.CASCADE, related_name="domains")
    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    hostname = models.CharField(max_length=253, editable=False)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    verification_token = models.CharField(max_length=64, editable=False)
    verified_at = models.DateTimeField(null=True, blank=True)
    # The last ownership check: when, the TXT values found, and why it could not look (DNS errors).
    checked_at = models.DateTimeField(null=True, blank=True)
    check_found = models.JSONField(default=list, blank=True)
    check_error = models.CharField(max_length=300, blank=True, default="")
    check_count = models.PositiveIntegerField(default=0)
    next_check_at = models.DateTimeField(null=True, blank=True)
    # Pending domains are re-checked until then; afterwards they are `failed` until verify is asked again.
    check_until = models.DateTimeField(null=True, blank=True)
    certificate_status = models.CharField(
        max_length=16, choices=CertificateStatus.choices, default=CertificateStatus.NONE, blank=True
    )
    certificate_expires_at = models.DateTimeField(null=True, blank=True)
    certificate_issuer = models.CharField(max_length=300, blank=True, default="")
    certificate_checked_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    objects: ClassVar[auto_prefetch.Manager[Domain]] = auto_prefetch.Manager()

    class Meta(auto_prefetch.Model.Meta):
        ordering = ["app", "hostname"]
        constraints = [
            models.UniqueConstraint(
                fields=["hostname"], condition=models.Q(status="verified"), name="domain_verified_hostname_unique"
            ),
            models.UniqueConstraint(fields=["tenant", "hostname"], name="domain_hostname_unique_per_tenant"),
        ]
        indexes = [
            models.Index(fields=["hostname", "status"]),
            models.Index(fields=["status", "next_check_at"]),
        ]

    def __str__(self) -> str:
        return self.hostname

    @property
    def verification_name(self) -> str:
        return f"{DOMAIN_CHALLENGE_LABEL}.{self.hostname}"


DOMAIN_CHALLENGE_LABEL = "_coltsfoot-challenge"
