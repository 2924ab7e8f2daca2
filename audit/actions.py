"""The audit trail's action names. They are an interface (tenants filter on them with `?action=`):
add new ones, never rename one."""

from __future__ import annotations

APP_CREATE = "app.create"
APP_UPDATE = "app.update"
APP_DELETE = "app.delete"
DEPLOYMENT_CREATE = "deployment.create"
DEPLOYMENT_ROLLBACK = "deployment.rollback"
CONFIG_UPDATE = "config.update"
ADDON_CREATE = "addon.create"
ADDON_DELETE = "addon.delete"
ADDON_UPDATE = "addon.update"
BACKUP_CREATE = "backup.create"
BACKUP_RESTORE = "backup.restore"
WEBHOOK_SECRET_ROTATE = "webhook_secret.rotate"
WEBHOOK_DEPLOY = "webhook.deploy"
DOMAIN_CREATE = "domain.create"
DOMAIN_VERIFY = "domain.verify"
DOMAIN_DELETE = "domain.delete"
TOKEN_CREATE = "token.create"
TOKEN_REVOKE = "token.revoke"
TENANT_CREATE = "tenant.create"
TENANT_SUSPEND = "tenant.suspend"
TENANT_REACTIVATE = "tenant.reactivate"
# An operator's changes of a host's state (`manage.py host`, the console): no tenant, `object_id` is the host's.
HOST_DRAIN = "host.drain"
HOST_UNDRAIN = "host.undrain"
# Edits and deletions through the Django admin's forms (the admin's own actions have names above).
ADMIN_CHANGE = "admin.change"
ADMIN_DELETE = "admin.delete"

ACTIONS: frozenset[str] = frozenset(
    {
        APP_CREATE,
        APP_UPDATE,
        APP_DELETE,
        DEPLOYMENT_CREATE,
        DEPLOYMENT_ROLLBACK,
        CONFIG_UPDATE,
        ADDON_CREATE,
        ADDON_DELETE,
        ADDON_UPDATE,
        BACKUP_CREATE,
        BACKUP_RESTORE,
        WEBHOOK_SECRET_ROTATE,
        WEBHOOK_DEPLOY,
        DOMAIN_CREATE,
        DOMAIN_VERIFY,
        DOMAIN_DELETE,
        TOKEN_CREATE,
        TOKEN_REVOKE,
        TENANT_CREATE,
        TENANT_SUSPEND,
        TENANT_REACTIVATE,
        HOST_DRAIN,
        HOST_UNDRAIN,
        ADMIN_CHANGE,
        ADMIN_DELETE,
    }
)
