"""The tenant the fuzzer calls the API as: an app with a live deployment, its add-on (with a backup)
and webhook secret, and a spare token to revoke."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core import crypto
from platform_apps.models import Addon
from platform_apps.models import AddonBackup
from platform_apps.models import App
from platform_apps.models import Deployment
from tenants.services import tenant_create
from tenants.services import token_create_initial


@dataclass(frozen=True)
class Seed:
    token: str
    ids: dict[str, str]  # path parameter -> the seeded object's id

    def aim(self, case: Any) -> None:
        """Point the generated request's path ids at the seeded objects, so it gets past the
        lookup; the generated bodies and queries stay as they are."""
        for name, value in self.ids.items():
            if case.path_parameters and name in case.path_parameters:
                case.path_parameters[name] = value


def seed_tenant() -> Seed:
    tenant = tenant_create(slug="fuzz")
    _, plaintext = token_create_initial(tenant=tenant, name="fuzzer")
    spare, _ = token_create_initial(tenant=tenant, name="spare")
    app = App.objects.create(tenant=tenant, name="web", hostname=App.hostname_for("web", tenant.slug))
    deployment = Deployment.objects.create(
        app=app,
        number=1,
        source_kind=Deployment.SourceKind.IMAGE,
        source_url="docker.io/library/python:3.13",
        state=Deployment.State.LIVE,
        image_ref="localhost/coltsfoot-app:fuzz",
        image_id="sha256:" + "a" * 64,
        web_command="gunicorn app:app",
    )
    App.objects.filter(pk=app.pk).update(
        live_deployment=deployment, webhook_secret_encrypted=crypto.encrypt("whsec_fuzz")
    )
    addon = Addon.objects.create(
        app=app, role_name="t_fuzz", database_name="t_fuzz", password_encrypted=crypto.encrypt("pw"), state="ready"
    )
    # A finished backup whose file is not there: a download is then the documented 409.
    backup = AddonBackup.objects.create(
        app=app, addon=addon, state=AddonBackup.State.SUCCEEDED, key_encrypted=crypto.encrypt("k")
    )
    return Seed(
        token=plaintext,
        ids={
            "app_id": str(app.public_id),
            "deployment_id": str(deployment.public_id),
            "token_id": str(spare.public_id),
            "backup_id": str(backup.public_id),
        },
    )
