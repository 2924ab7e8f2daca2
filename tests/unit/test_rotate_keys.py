"""`manage.py rotate_keys`: every encrypted column ends up under the first key, resumably."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
from django.apps import apps as django_apps
from django.core.management import CommandError
from django.core.management import call_command
from django.db import models
from django.test import override_settings

from conftest import Actor
from core import crypto
from platform_apps import keyrotation
from platform_apps.models import Addon
from platform_apps.models import App
from platform_apps.models import ConfigVar
from platform_apps.models import IdempotencyRecord
from platform_apps.models import RedisAddon
from tenants.models import ApiToken

OLD = crypto.generate_key()
NEW = crypto.generate_key()


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    crypto.reset_cache()
    yield
    crypto.reset_cache()


@pytest.fixture
def seeded(owner: Actor) -> Callable[[], dict[str, dict[int, str]]]:
    """Rows in every encrypted column, written under OLD; returns {column: {pk: plaintext}}."""

    def seed() -> dict[str, dict[int, str]]:
        plain: dict[str, dict[int, str]] = {}
        with override_settings(FERNET_KEYS=[OLD]):
            for index in range(3):
                app = App.objects.create(
                    tenant=owner.tenant,
                    name=f"app{index}",
                    hostname=f"app{index}-acme.localhost",
                    webhook_secret_encrypted=crypto.encrypt(f"whsec_{index}"),
                )
                plain.setdefault("apps.webhook", {})[app.pk] = f"whsec_{index}"
                for key in ("A", "B"):
                    var = ConfigVar.objects.create(
                        app=app, key=key, value_encrypted=crypto.encrypt(f"{key}-{index}"), secret=key == "B"
                    )
                    plain.setdefault("vars", {})[var.pk] = f"{key}-{index}"
                addon = Addon.objects.create(
                    app=app,
                    role_name=f"t_{index:016x}",
                    database_name=f"d_{index:016x}",
                    password_encrypted=crypto.encrypt(f"pw-{index}"),
                )
                plain.setdefault("addons", {})[addon.pk] = f"pw-{index}"
                redis = RedisAddon.objects.create(app=app, password_encrypted=crypto.encrypt(f"rpw-{index}"))
                plain.setdefault("redis", {})[redis.pk] = f"rpw-{index}"
            token = ApiToken.objects.filter(tenant=owner.tenant).first()
            assert token is not None
            record = IdempotencyRecord.objects.create(
                token=token, key="k1", fingerprint="f" * 64, status_code=201, body_encrypted=crypto.encrypt("{}")
            )
            plain["idempotency"] = {record.pk: "{}"}
            # An app without a webhook secret: "" is no value and stays "".
            App.objects.create(tenant=owner.tenant, name="bare", hostname="bare-acme.localhost")
        return plain

    return seed


def _values(keys: list[str]) -> dict[str, dict[int, str]]:
    with override_settings(FERNET_KEYS=keys):
        return {
            "apps.webhook": {
                pk: crypto.decrypt(token)
                for pk, token in App.objects.exclude(webhook_secret_encrypted="").values_list(
                    "pk", "webhook_secret_encrypted"
                )
            },
            "vars": {pk: crypto.decrypt(t) for pk, t in ConfigVar.objects.values_list("pk", "value_encrypted")},
            "addons": {pk: crypto.decrypt(t) for pk, t in Addon.objects.values_list("pk", "password_encrypted")},
            "redis": {pk: crypto.decrypt(t) for pk, t in RedisAddon.objects.values_list("pk", "password_encrypted")},
            "idempotency": {
                pk: crypto.decrypt(t) for pk, t in IdempotencyRecord.objects.values_list("pk", "body_encrypted")
            },
        }


def _run(*args: str) -> list[dict[str, Any]]:
    out = io.StringIO()
    call_command("rotate_keys", *args, stdout=out)
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_every_value_decrypts_with_the_new_key_alone_after_rotation(seeded: Any) -> None:
    plain = seeded()
    with override_settings(FERNET_KEYS=[NEW, OLD]):
        lines = _run("--batch-size", "2")
    assert _values([NEW]) == plain
    summary = lines[-1]
    assert summary["old_key"] == 0
    assert summary["undecryptable"] == 0
    by_column = {line["column"]: line for line in lines[:-1]}
    assert by_column["platform_apps_configvar.value_encrypted"]["rotated"] == 6
    assert by_column["platform_apps_app.webhook_secret_encrypted"] == {
        "column": "platform_apps_app.webhook_secret_encrypted",
        "rows": 3,
        "rotated": 3,
        "old_key": 0,
        "undecryptable": 0,
    }
    # Nothing is left for the old key: dropping it loses nothing.
    with pytest.raises(crypto.SecretDecryptError), override_settings(FERNET_KEYS=[OLD]):
        crypto.decrypt(ConfigVar.objects.values_list("value_encrypted", flat=True).first() or "")


def test_check_reports_per_column_and_fails_while_old_keys_are_in_use(seeded: Any) -> None:
    seeded()
    with override_settings(FERNET_KEYS=[NEW, OLD]):
        out = io.StringIO()
        with pytest.raises(CommandError, match="16 value"):
            call_command("rotate_keys", "--check", stdout=out)
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        assert {line["column"]: line["old_key"] for line in lines[:-1]} == {
            "platform_apps_configvar.value_encrypted": 6,
            "platform_apps_app.webhook_secret_encrypted": 3,
            "platform_apps_addon.password_encrypted": 3,
            "platform_apps_redisaddon.password_encrypted": 3,
            "platform_apps_idempotencyrecord.body_encrypted": 1,
            "platform_apps_addonbackup.key_encrypted": 0,
        }
        # --check wrote nothing
        assert _values([OLD])["vars"]
        _run()
        assert _run("--check")[-1]["old_key"] == 0


def test_an_interrupted_run_finishes_when_rerun_without_double_encrypting(seeded: Any) -> None:
    plain = seeded()
    real_rotate = crypto.rotate
    calls = {"n": 0}

    def failing_after_first_batch(token: str) -> str:
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt  # the operator's ^C, or a crash, mid-run
        return real_rotate(token)

    with override_settings(FERNET_KEYS=[NEW, OLD]):
        with (
            mock.patch.object(crypto, "rotate", side_effect=failing_after_first_batch),
            pytest.raises(KeyboardInterrupt),
        ):
            _run("--batch-size", "2")
        # The first batch was committed, the rest not.
        assert sum(crypto.uses_primary_key(t) for t in ConfigVar.objects.values_list("value_encrypted", flat=True)) == 2
        with mock.patch.object(crypto, "rotate", wraps=real_rotate) as rotate:
            lines = _run("--batch-size", "2")
        # The rerun only rotated what was left (16 values in all, 2 done by the first run).
        assert rotate.call_count == 14
    assert lines[-1]["old_key"] == 0
    # Each value is the plaintext itself under NEW, not a token of a token.
    assert _values([NEW]) == plain


def test_a_value_rewritten_during_rotation_is_not_overwritten(seeded: Any) -> None:
    seeded()
    var = ConfigVar.objects.order_by("pk").first()
    assert var is not None
    real_rotate = crypto.rotate

    def racing(token: str) -> str:
        rotated = real_rotate(token)
        if token == var.value_encrypted:
            # the API writes a new value between the read and the write of this batch
            ConfigVar.objects.filter(pk=var.pk).update(value_encrypted=crypto.encrypt("fresh"))
        return rotated

    with override_settings(FERNET_KEYS=[NEW, OLD]):
        with mock.patch.object(crypto, "rotate", side_effect=racing):
            _run()
        var.refresh_from_db()
        assert crypto.decrypt(var.value_encrypted) == "fresh"


def test_values_under_a_dropped_key_are_reported_not_lost(seeded: Any) -> None:
    seeded()
    with override_settings(FERNET_KEYS=[NEW]):
        out = io.StringIO()
        with pytest.raises(CommandError, match="decrypt with none"):
            call_command("rotate_keys", stdout=out)
        summary = json.loads(out.getvalue().splitlines()[-1])
    assert summary["undecryptable"] == 16
    # Untouched: with OLD back, everything still decrypts.
    assert _values([OLD])["addons"]


def test_every_encrypted_column_is_registered() -> None:
    registered = {(column.model, column.field) for column in keyrotation.encrypted_columns()}
    declared = {
        (model, field.name)
        for model in django_apps.get_models()
        for field in model._meta.get_fields()
        if isinstance(field, models.TextField) and field.name.endswith("_encrypted")
    }
    assert declared <= registered
