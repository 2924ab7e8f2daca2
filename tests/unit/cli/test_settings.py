"""The stored login (mode 0600, atomic), the environment overrides, and the API URL's normal form."""

from __future__ import annotations

import json
import os
import stat

import pytest

from coltsfoot_cli.api import CliError
from coltsfoot_cli.settings import load_login
from coltsfoot_cli.settings import normalize_api
from coltsfoot_cli.settings import save_login
from tests.unit.cli.conftest import API


def test_the_credentials_file_is_0600_whatever_the_umask_and_an_old_file(workdir, monkeypatch):
    path = workdir.parent / "config" / "credentials.json"
    path.parent.mkdir()
    path.write_text("{}")
    path.chmod(0o644)
    old = os.umask(0)
    try:
        save_login(API, "cf_a.b")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["token"] == "cf_a.b"
    assert [p.name for p in path.parent.iterdir()] == ["credentials.json"]  # no temp file left


def test_environment_overrides_the_stored_login(workdir, monkeypatch):
    monkeypatch.delenv("COLTSFOOT_API")
    monkeypatch.delenv("COLTSFOOT_TOKEN")
    save_login(API, "cf_stored.x")
    assert (load_login().api, load_login().token, load_login().source) == (API, "cf_stored.x", "file")
    monkeypatch.setenv("COLTSFOOT_TOKEN", "cf_env.y")
    assert (load_login().token, load_login().source) == ("cf_env.y", "env")
    monkeypatch.setenv("COLTSFOOT_API", "https://other.example/api/v1")
    assert load_login().api == "https://other.example/api/v1"
    monkeypatch.delenv("COLTSFOOT_TOKEN")
    assert load_login().token is None  # the stored token belongs to the stored API only


@pytest.mark.parametrize(
    ("given", "normal"),
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000/api/v1"),
        ("http://127.0.0.1:8000/api/v1/", "http://127.0.0.1:8000/api/v1"),
        ("https://paas.example/prefix/api/v1", "https://paas.example/prefix/api/v1"),
    ],
)
def test_api_urls(given, normal):
    assert normalize_api(given) == normal


def test_a_non_http_api_url_is_refused():
    with pytest.raises(CliError):
        normalize_api("file:///etc/passwd")


def test_no_colour_codes_when_not_a_terminal(cli, hello):
    hello(status="running")
    result = cli("apps")
    assert "\x1b[" not in result.stdout
    assert "\x1b[" not in result.stderr
