"""Django settings for the Coltsfoot control plane. Everything environment-specific comes from
environment variables documented in .env.example."""

from __future__ import annotations

import hashlib
import hmac
import os
import sys
from pathlib import Path
from urllib.parse import unquote
from urllib.parse import urlsplit

import django_stubs_ext

from config.settings_utils import data_dir
from config.settings_utils import env_bool
from config.settings_utils import env_float
from config.settings_utils import env_host_name
from config.settings_utils import env_int
from config.settings_utils import env_list
from config.settings_utils import env_str
from config.settings_utils import host_cpu_count
from config.settings_utils import host_memory_mb
from config.settings_utils import require_secret_key
from drivers import firewall

# Lets admin.ModelAdmin[Model] and friends be subscripted at runtime, as the type hints do.
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = require_secret_key()
DEBUG = env_bool("DJANGO_DEBUG", default=False)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])

DATA_DIR = data_dir()

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "ninja",
    "config",
    "tenants",
    "audit",
    "platform_apps",
    "provisioning",
]

MIDDLEWARE = [
    "core.logging.RequestIdMiddleware",
    "core.actor.RequestContextMiddleware",
    "config.middleware.ApiErrorShapeMiddleware",
    "config.middleware.ApiRateLimitMiddleware",
    "config.middleware.UploadLimitMiddleware",
    "platform_apps.idempotency.IdempotencyMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Serves /static/ from STATIC_ROOT (filled by `collectstatic`) in every way the API runs, gunicorn
    # included: compressed, with hashed names cached for a year. Nothing comes from a CDN.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last: under ASGI (granian) the whole chain then runs in one thread (see its docstring).
    "config.middleware.SyncChainMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


def _database_from_url(url: str) -> dict[str, object]:
    parts = urlsplit(url)
    if parts.scheme not in {"postgres", "postgresql"}:
        raise SystemExit(f"coltsfoot: DATABASE_URL must be a postgres:// URL, got scheme {parts.scheme!r}.")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
        # Behind PgBouncer in transaction mode a server connection is ours for one transaction only, so
        # nothing may outlive one: no server-side cursors (named cursors span transactions), no prepared
        # statements (psycopg would prepare a query run 5 times and find it missing on the next server
        # connection; Django's default, stated here so it stays so), no kept connections.
        "DISABLE_SERVER_SIDE_CURSORS": True,
        "CONN_MAX_AGE": 0,
        "OPTIONS": {"prepare_threshold": None},
    }


_database_url = env_str("DATABASE_URL", "")
if _database_url:
    DATABASES = {"default": _database_from_url(_database_url)}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": env_str("COLTSFOOT_DB_PATH", str(DATA_DIR / "coltsfoot.sqlite3")),
            "OPTIONS": {
                # IMMEDIATE takes the write lock at BEGIN, so two writers queue on the busy timeout
                # instead of one failing with "database is locked" halfway through a transaction.
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;",
            },
        }
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# `manage.py collectstatic` fills it: `make up` and the test fixtures run it before the API starts.
STATIC_ROOT = DATA_DIR / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Content-hashed names (cache-busting) and gzip'd copies, served by WhiteNoise.
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

# Request bodies: source archives are streamed to disk by the deploy endpoint, so the in-memory
# cap only guards JSON and form bodies.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("COLTSFOOT_MAX_JSON_BYTES", 1024 * 1024)
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
FILE_UPLOAD_TEMP_DIR = str(DATA_DIR / "uploads")
Path(FILE_UPLOAD_TEMP_DIR).mkdir(parents=True, exist_ok=True)

SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# --- Coltsfoot ---------------------------------------------------------------------------------
API_BIND = env_str("COLTSFOOT_API_BIND", "127.0.0.1:8000")
# How clients reach the API (for URLs the API hands out, e.g. an app's webhook URL).
API_PUBLIC_URL = env_str("COLTSFOOT_API_PUBLIC_URL", f"http://{API_BIND}").rstrip("/")
APPS_DOMAIN = env_str("COLTSFOOT_APPS_DOMAIN", "localhost")
EDGE_LISTEN = env_str("COLTSFOOT_EDGE_LISTEN", "127.0.0.1:8080")
EDGE_PUBLIC_URL_TEMPLATE = env_str("COLTSFOOT_EDGE_URL_TEMPLATE", "http://{host}:8080/")
CADDY_ADMIN_URL = env_str("COLTSFOOT_CADDY_ADMIN_URL", "http://127.0.0.1:2019")
CADDY_TIMEOUT_SECONDS = float(env_str("COLTSFOOT_CADDY_TIMEOUT", "5"))

# Custom domains and HTTPS on the edge (platform_apps/domains, README: Custom domains).
# The edge's HTTPS listener ("" turns it off); certificates are issued on demand, guarded by the ask endpoint.
EDGE_TLS_LISTEN = os.environ.get("COLTSFOOT_EDGE_TLS_LISTEN", "127.0.0.1:8443").strip()
# `internal`: Caddy's own CA (development and tests); `acme`: a public CA (production).
TLS_ISSUER = env_str("COLTSFOOT_TLS_ISSUER", "internal")
if TLS_ISSUER not in ("internal", "acme"):
    sys.stderr.write(f"coltsfoot: COLTSFOOT_TLS_ISSUER must be internal or acme, got {TLS_ISSUER!r}.\n")
    raise SystemExit(1)
ACME_EMAIL = env_str("COLTSFOOT_ACME_EMAIL", "")
ACME_DIRECTORY_URL = env_str("COLTSFOOT_ACME_DIRECTORY_URL", "https://acme-v02.api.letsencrypt.org/directory")
# Where Caddy asks whether it may get a certificate for a name, and the shared secret in that URL (by
# default derived from DJANGO_SECRET_KEY, so every process of one installation agrees on it).
TLS_ASK_URL = env_str("COLTSFOOT_TLS_ASK_URL", f"http://{API_BIND.replace('0.0.0.0:', '127.0.0.1:')}/internal/tls/ask")
TLS_ASK_SECRET = env_str(
    "COLTSFOOT_TLS_ASK_SECRET", hmac.new(SECRET_KEY.encode(), b"coltsfoot.tls-ask", hashlib.sha256).hexdigest()[:40]
)
# Questions the ask endpoint answers per minute (more: 429), and certificates Caddy may start per minute.
TLS_ASK_PER_MINUTE = env_int("COLTSFOOT_TLS_ASK_PER_MINUTE", 300)
TLS_ISSUE_PER_MINUTE = env_int("COLTSFOOT_TLS_ISSUE_PER_MINUTE", 20)
MAX_DOMAINS_PER_APP = env_int("COLTSFOOT_MAX_DOMAINS_PER_APP", 5)
# The DNS server that ownership checks ask, as host:port ("" = the system's resolvers).
DNS_RESOLVER = env_str("COLTSFOOT_DNS_RESOLVER", "")
DNS_TIMEOUT_SECONDS = env_float("COLTSFOOT_DNS_TIMEOUT", 3.0)
# Pending domains are checked again by beat every DOMAIN_CHECK_SECONDS, each with a growing interval, for at
# most DOMAIN_VERIFY_WINDOW_SECONDS after it was added (or verify was last asked for); then it is `failed`.
DOMAIN_CHECK_SECONDS = env_int("COLTSFOOT_DOMAIN_CHECK_SECONDS", 30)
DOMAIN_VERIFY_WINDOW_SECONDS = env_int("COLTSFOOT_DOMAIN_VERIFY_WINDOW", 72 * 3600)

# The edge finds an app's replicas by a DNS name (caddy.routes.UpstreamLookup) that the platform's own DNS
# server answers from one hosts file per app (drivers/upstream_hosts.py): dnsmasq, a process of the stack, on
# loopback only (tenants must never reach it). A deploy's switch rewrites the app's file and waits
# UPSTREAM_SWITCH_WAIT_SECONDS (Caddy's lookup refresh and a margin) before the old replicas are retired.
UPSTREAM_DNS = env_str("COLTSFOOT_UPSTREAM_DNS", "127.0.0.1:5354")
if not UPSTREAM_DNS.startswith("127."):
    sys.stderr.write(f"coltsfoot: COLTSFOOT_UPSTREAM_DNS must be a loopback ip:port, got {UPSTREAM_DNS!r}.\n")
    raise SystemExit(1)
UPSTREAM_HOSTS_DIR = Path(env_str("COLTSFOOT_UPSTREAM_HOSTS_DIR", str(DATA_DIR / "upstreams")))
UPSTREAM_REFRESH_MS = env_int("COLTSFOOT_UPSTREAM_REFRESH_MS", 1000)
UPSTREAM_SWITCH_WAIT_SECONDS = env_float("COLTSFOOT_UPSTREAM_SWITCH_WAIT", UPSTREAM_REFRESH_MS / 1000 + 0.5)

REDIS_URL = env_str("COLTSFOOT_REDIS_URL", "redis://127.0.0.1:6379/0")

# Runtime (podman + gVisor)
PODMAN_BIN = env_str("COLTSFOOT_PODMAN", "podman")
RUNSC_PATH = env_str("COLTSFOOT_RUNSC", "/usr/bin/runsc")
RUNSC_FLAGS = env_list("COLTSFOOT_RUNSC_FLAGS", ["network=host"])
PODMAN_TIMEOUT_SECONDS = env_int("COLTSFOOT_PODMAN_TIMEOUT", 120)
BUILD_TIMEOUT_SECONDS = env_int("COLTSFOOT_BUILD_TIMEOUT", 900)
BASE_IMAGE = env_str("COLTSFOOT_BASE_IMAGE", "localhost/coltsfoot-base:bookworm")
BASE_IMAGE_MIRROR = env_str("COLTSFOOT_BASE_IMAGE_MIRROR", "")  # Debian mirror for debootstrap; "" = apt's
BUILD_CA_BUNDLE = env_str("COLTSFOOT_BUILD_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
BUILD_PIP_INDEX_URL = env_str("COLTSFOOT_PIP_INDEX_URL", "")
# uv installs dependencies in the build sandbox: this binary (by default the one pinned in the platform's own
# uv.lock, next to this Python), mounted read-only. Each tenant has a uv cache of its own under
# BUILD_UV_CACHE_ROOT, emptied when a build leaves it over BUILD_UV_CACHE_MAX_MB (0: no cache at all).
BUILD_UV = env_str("COLTSFOOT_BUILD_UV", str(Path(sys.executable).with_name("uv")))
BUILD_UV_CACHE_ROOT = Path(env_str("COLTSFOOT_BUILD_UV_CACHE_ROOT", str(DATA_DIR / "uv-cache")))
BUILD_UV_CACHE_MAX_MB = env_int("COLTSFOOT_BUILD_UV_CACHE_MAX_MB", 2048)
BUILD_ROOT = DATA_DIR / "builds"
START_DEADLINE_SECONDS = env_int("COLTSFOOT_START_DEADLINE", 30)
RELEASE_TIMEOUT_SECONDS = env_int("COLTSFOOT_RELEASE_TIMEOUT", 600)
# After the route switch, how long the old replicas keep running before their graceful stop, so
# requests the edge routed just before the switch still reach a live process.
RETIRE_DRAIN_SECONDS = env_int("COLTSFOOT_RETIRE_DRAIN_SECONDS", 2)
# Labels every container, network and image this platform instance creates, so that several
# instances (a developer's `make up`, parallel test sessions) never touch each other's.
INSTANCE_ID = env_str("COLTSFOOT_INSTANCE_ID", "default")
# The host this process runs on (README "Several hosts"): its worker registers it under this name, consumes the
# queue `host.<name>` besides the shared one, and labels every container it creates `coltsfoot.host=<name>`.
HOST_NAME = env_host_name("COLTSFOOT_HOST_NAME", "host-1")
HOST_ADDRESS = env_str("COLTSFOOT_HOST_ADDRESS", "127.0.0.1")
HOST_MEMORY_MB = env_int("COLTSFOOT_HOST_MEMORY_MB", host_memory_mb())
HOST_CPUS = env_float("COLTSFOOT_HOST_CPUS", float(host_cpu_count()))
HOST_CAN_BUILD = env_bool("COLTSFOOT_HOST_CAN_BUILD", default=True)
# A worker heartbeats its host this often; a host without one for HOST_DEAD_SECONDS is marked down.
HOST_HEARTBEAT_SECONDS = env_float("COLTSFOOT_HOST_HEARTBEAT_SECONDS", 5.0)
HOST_DEAD_SECONDS = env_int("COLTSFOOT_HOST_DEAD_SECONDS", 30)
IMAGE_PULL_TLS_VERIFY = env_bool("COLTSFOOT_IMAGE_PULL_TLS_VERIFY", default=True)
# A running task refreshes its deployment's lease this often; a lease older than LEASE_SECONDS
# means its worker died, and the reconciler queues the deployment again.
LEASE_SECONDS = env_int("COLTSFOOT_LEASE_SECONDS", 60)
HEARTBEAT_SECONDS = max(1, LEASE_SECONDS // 6)
_cgroup_parent = env_str("COLTSFOOT_TENANT_CGROUP_PARENT", "/coltsfoot-tenants")
TENANT_UID_BASE = env_int("COLTSFOOT_TENANT_UID_BASE", 200000)

# Resource fairness (README "Resource limits"). Every tenant container runs in a cgroup of its tenant under
# TENANT_CGROUP_PARENT ("none": podman's default parent, no CPU weight), whose CPU weight (cgroup v2 units,
# 1-10000; the platform's own processes have the default 100; on cgroup v1 it becomes cpu.shares =
# weight x 1024 / 100) keeps the API and the edge responsive while tenants burn CPU. TENANT_PIDS_MAX caps the
# host pids (threads) of all tenant containers together; 0 means half the host's kernel.pid_max.
TENANT_CGROUP_PARENT = "" if _cgroup_parent.lower() == "none" else _cgroup_parent
TENANT_CPU_WEIGHT = env_int("COLTSFOOT_TENANT_CPU_WEIGHT", 10)
TENANT_PIDS_MAX = env_int("COLTSFOOT_TENANT_PIDS_MAX", 0)
CGROUP_ROOT = Path(env_str("COLTSFOOT_CGROUP_ROOT", "/sys/fs/cgroup"))
# One replica may not ask for more CPUs than the host has.
MAX_CPUS_PER_REPLICA = env_float("COLTSFOOT_MAX_CPUS_PER_REPLICA", float(host_cpu_count()))

# Source archive limits (tenant input is hostile).
SOURCE_MAX_UPLOAD_BYTES = env_int("COLTSFOOT_SOURCE_MAX_UPLOAD_BYTES", 50 * 1024 * 1024)
SOURCE_MAX_UNPACKED_BYTES = env_int("COLTSFOOT_SOURCE_MAX_UNPACKED_BYTES", 200 * 1024 * 1024)
SOURCE_MAX_FILES = env_int("COLTSFOOT_SOURCE_MAX_FILES", 5000)

# Celery
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = env_int("COLTSFOOT_TASK_TIME_LIMIT", 1800)
CELERY_TASK_SOFT_TIME_LIMIT = CELERY_TASK_TIME_LIMIT - 60
# Redis redelivers an unacknowledged task after the visibility timeout: keep it above the task
# time limit, or a long build would run twice at once.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_TASK_TIME_LIMIT + 600}
CELERY_TASK_ALWAYS_EAGER = False
# The reconciler compares what runs with what should run this often (and at worker start).
CELERY_BEAT_RECONCILE_SECONDS = env_int("COLTSFOOT_RECONCILE_SECONDS", 10)
# The worker restarts itself when it has received nothing for this long while the broker answers (a known
# Celery/Redis failure mode; provisioning/watchdog.py); it sends itself a probe every WORKER_PROBE_SECONDS. 0: off.
WORKER_STALL_SECONDS = env_int("COLTSFOOT_WORKER_STALL_SECONDS", 120)
WORKER_PROBE_SECONDS = env_int("COLTSFOOT_WORKER_PROBE_SECONDS", 15)
RECONCILE_LEASE_SECONDS = env_int("COLTSFOOT_RECONCILE_LEASE_SECONDS", 120)
# Crash-loop backoff of a replica: base, 2 base, 4 base, ... up to the cap; a replica that has run
# healthily for RESTART_RESET_SECONDS starts over from the base.
RESTART_BACKOFF_BASE_SECONDS = env_int("COLTSFOOT_RESTART_BACKOFF_BASE", 1)
RESTART_BACKOFF_CAP_SECONDS = env_int("COLTSFOOT_RESTART_BACKOFF_CAP", 300)
RESTART_RESET_SECONDS = env_int("COLTSFOOT_RESTART_RESET_SECONDS", 60)
# Containers of this installation that the DB does not want are removed once this old.
ORPHAN_GRACE_SECONDS = env_int("COLTSFOOT_ORPHAN_GRACE_SECONDS", 60)
# A queued deployment no task has claimed for this long (its message was lost, e.g. the broker was
# down when it was enqueued) is queued again by the reconciler.
OUTBOX_SECONDS = env_int("COLTSFOOT_OUTBOX_SECONDS", 5)

# Tenant app logs (drivers/logstore.py): one Redis stream per app, kept within both bounds.
LOG_REDIS_URL = env_str("COLTSFOOT_LOG_REDIS_URL", REDIS_URL)
LOG_KEY_PREFIX = f"coltsfoot:{INSTANCE_ID}:logs"
LOG_MAX_LINES = env_int("COLTSFOOT_LOG_MAX_LINES", 10_000)
LOG_MAX_BYTES = env_int("COLTSFOOT_LOG_MAX_BYTES", 10 * 1024 * 1024)
LOG_MAX_LINE_BYTES = env_int("COLTSFOOT_LOG_MAX_LINE_BYTES", 8192)
# The collector looks for new containers this often and reads their output this often.
LOG_DISCOVER_SECONDS = float(env_str("COLTSFOOT_LOG_DISCOVER_SECONDS", "1"))
LOG_POLL_SECONDS = float(env_str("COLTSFOOT_LOG_POLL_SECONDS", "0.2"))
# Follow streams (SSE): a comment line this often, and closed by the server after this long (the client
# reconnects with Last-Event-ID and loses nothing).
LOG_HEARTBEAT_SECONDS = env_int("COLTSFOOT_LOG_HEARTBEAT_SECONDS", 15)
LOG_STREAM_MAX_SECONDS = env_int("COLTSFOOT_LOG_STREAM_MAX_SECONDS", 3600)

LOG_LEVEL = env_str("COLTSFOOT_LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "core.logging.ContextFilter"}},
    "formatters": {"structured": {"()": "core.logging.StructuredFormatter"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "filters": ["context"], "formatter": "structured"},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.server": {"level": "WARNING"},
        "django.request": {"level": "ERROR"},
    },
}

# Managed PostgreSQL for tenants (issue: add-ons). The admin DSN is the platform's superuser
# connection to the tenant cluster; apps only ever reach PgBouncer.
TENANT_PG_ADMIN_DSN = env_str("COLTSFOOT_TENANT_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5433/postgres")
PGBOUNCER_HOST = env_str("COLTSFOOT_PGBOUNCER_HOST", "")  # address tenant containers dial; "" = tenant gateway
PGBOUNCER_PORT = env_int("COLTSFOOT_PGBOUNCER_PORT", 6433)
PGBOUNCER_ADMIN_DSN = env_str("COLTSFOOT_PGBOUNCER_ADMIN_DSN", "postgresql://pgbouncer@127.0.0.1:6433/pgbouncer")
PGBOUNCER_AUTH_FILE = env_str("COLTSFOOT_PGBOUNCER_AUTH_FILE", str(DATA_DIR / "pgbouncer" / "userlist.txt"))

# The host firewall (drivers/firewall.py): one nftables table per installation filtering what tenant
# containers reach. Managed by default on Linux as root (where nft can work).
FIREWALL = env_bool("COLTSFOOT_FIREWALL", default=firewall.managed_by_default())
NFT_BIN = env_str("COLTSFOOT_NFT", "nft")
TENANT_EGRESS = env_str("COLTSFOOT_TENANT_EGRESS", "public")
try:
    firewall.egress_parse(TENANT_EGRESS)
except ValueError as _exc:
    sys.stderr.write(f"coltsfoot: {_exc}.\n")
    raise SystemExit(1) from None
# Containers get the host's resolvers: DNS to them is allowed under every egress policy.
FIREWALL_RESOLV_CONF = env_str("COLTSFOOT_RESOLV_CONF", "/etc/resolv.conf")
# Hosts (besides the pip index's) that builds reach on ports 80/443 under `none` or a CIDR list.
BUILD_EGRESS_HOSTS = env_list("COLTSFOOT_BUILD_EGRESS_HOSTS", [])
# Reconcile passes re-apply the table (when it changed) at most this often, and at once after they
# recreated a tenant network.
FIREWALL_SYNC_SECONDS = env_int("COLTSFOOT_FIREWALL_SYNC_SECONDS", 30)
TENANT_PG_CONNECTION_LIMIT = env_int("COLTSFOOT_TENANT_PG_CONNECTION_LIMIT", 10)
TENANT_PG_STATEMENT_TIMEOUT_MS = env_int("COLTSFOOT_TENANT_PG_STATEMENT_TIMEOUT_MS", 30000)
TENANT_PG_IDLE_TX_TIMEOUT_MS = env_int("COLTSFOOT_TENANT_PG_IDLE_TX_TIMEOUT_MS", 60000)

# Secrets at rest: comma-separated Fernet keys, newest first (MultiFernet). Unset in development
# means a key derived from DJANGO_SECRET_KEY.
FERNET_KEYS = env_list("COLTSFOOT_FERNET_KEYS", [])

# Backups (README "Disaster recovery"). The platform DB: a consistent online copy every
# PLATFORM_BACKUP_SECONDS (beat; 0 = off) into PLATFORM_BACKUP_DIR, the newest PLATFORM_BACKUP_KEEP kept.
PLATFORM_BACKUP_DIR = env_str("COLTSFOOT_PLATFORM_BACKUP_DIR", str(DATA_DIR / "backups" / "platform"))
PLATFORM_BACKUP_KEEP = env_int("COLTSFOOT_PLATFORM_BACKUP_KEEP", 7)
PLATFORM_BACKUP_SECONDS = env_int("COLTSFOOT_PLATFORM_BACKUP_SECONDS", 24 * 3600)
# Tenant database backups (the PostgreSQL add-on): sealed pg_dump files under BACKUP_DIR (a mounted
# volume in production), one per add-on every TENANT_BACKUP_SECONDS (beat; 0 = off), the newest
# TENANT_BACKUP_KEEP daily ones kept per app; pg_dump / pg_restore are killed after TENANT_BACKUP_TIMEOUT s.
BACKUP_DIR = env_str("COLTSFOOT_BACKUP_DIR", str(DATA_DIR / "backups" / "tenants"))
TENANT_BACKUP_KEEP = env_int("COLTSFOOT_TENANT_BACKUP_KEEP", 7)
TENANT_BACKUP_SECONDS = env_int("COLTSFOOT_TENANT_BACKUP_SECONDS", 24 * 3600)
TENANT_BACKUP_TIMEOUT = env_int("COLTSFOOT_TENANT_BACKUP_TIMEOUT", 1800)
PG_DUMP_BIN = env_str("COLTSFOOT_PG_DUMP", "pg_dump")
PG_RESTORE_BIN = env_str("COLTSFOOT_PG_RESTORE", "pg_restore")

# CI sources (issue: webhooks).
GIT_ALLOWED_HOSTS = env_list("COLTSFOOT_GIT_ALLOWED_HOSTS", ["github.com", "gitlab.com", "codeberg.org"])
GIT_ALLOWED_SCHEMES = env_list("COLTSFOOT_GIT_ALLOWED_SCHEMES", ["https"])
GIT_ALLOW_LOCAL = env_bool("COLTSFOOT_GIT_ALLOW_LOCAL", default=False)  # tests only: file:// repositories
WEBHOOK_TOLERANCE_SECONDS = 300
WEBHOOK_RATE_LIMIT_PER_MINUTE = env_int("COLTSFOOT_WEBHOOK_RATE_LIMIT", 30)
# Proxies whose X-Forwarded-For the audit trail believes (addresses, e.g. "127.0.0.1" behind a
# local reverse proxy). Empty: the source address of every request is its REMOTE_ADDR.
TRUSTED_PROXIES = env_list("COLTSFOOT_TRUSTED_PROXIES", [])
# Abuse limits (issue 11). Deploys a tenant may start per sliding hour (the platform's own config
# re-releases do not count); builds of one tenant that run at once (more wait queued); disk a
# tenant's images and build dirs may use (MiB, as the collector last measured; 0 = no limit).
DEPLOY_RATE_PER_HOUR = env_int("COLTSFOOT_DEPLOY_RATE_PER_HOUR", 30)
MAX_CONCURRENT_BUILDS = env_int("COLTSFOOT_MAX_CONCURRENT_BUILDS", 2)
TENANT_STORAGE_MB = env_int("COLTSFOOT_TENANT_STORAGE_MB", 5120)
# Image retention: the images of the last KEEP_RELEASES deployments of an app that went live stay
# (rollback targets); the collector removes the rest at most every COLLECT_SECONDS. Anything
# younger than COLLECT_GRACE_SECONDS is left alone (a build may be about to record it).
KEEP_RELEASES = env_int("COLTSFOOT_KEEP_RELEASES", 5)
COLLECT_SECONDS = env_int("COLTSFOOT_COLLECT_SECONDS", 300)
COLLECT_GRACE_SECONDS = env_int("COLTSFOOT_COLLECT_GRACE_SECONDS", 600)
# API requests per minute per token, and per client address for calls without a token (webhooks,
# the OpenAPI document). /health and /ready are never limited.
API_RATE_LIMIT_PER_TOKEN = env_int("COLTSFOOT_API_RATE_LIMIT_PER_TOKEN", 1200)
API_RATE_LIMIT_PER_ADDRESS = env_int("COLTSFOOT_API_RATE_LIMIT_PER_ADDRESS", 1200)
# Registries image deploys may pull from (host[:port]); anything else is refused up front.
IMAGE_ALLOWED_REGISTRIES = env_list("COLTSFOOT_IMAGE_ALLOWED_REGISTRIES", ["docker.io", "ghcr.io", "quay.io"])

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": f"coltsfoot-{INSTANCE_ID}",
        # One pool per process (core.redispool): under ASGI Django makes a cache backend per request.
        "OPTIONS": {
            "socket_connect_timeout": 2,
            "socket_timeout": 2,
            "pool_class": "core.redispool.SharedConnectionPool",
        },
    }
}
