"""Where the CLI keeps what it knows: the login (API URL + token) in the user's config dir, mode 0600,
overridden by `COLTSFOOT_API` / `COLTSFOOT_TOKEN`; and the `.coltsfoot` file a first deploy writes into
the app's directory (the app's name and id, and the API it lives on)."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.parse import urlunsplit

import platformdirs

from coltsfoot_cli.api import CliError
from coltsfoot_cli.api import Exit
from coltsfoot_cli.api import usage

DEFAULT_API = "http://127.0.0.1:8000/api/v1"
CREDENTIALS_FILE = "credentials.json"
PROJECT_FILE = ".coltsfoot"


def normalize_api(url: str) -> str:
    """`http://host:8000` and `http://host:8000/api/v1/` both mean `http://host:8000/api/v1`."""
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise usage(f"Not an http(s) URL: {url!r} (e.g. https://coltsfoot.example.com/api/v1).")
    path = parts.path.rstrip("/")
    if not path:
        path = "/api/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def config_dir() -> Path:
    override = os.environ.get("COLTSFOOT_CONFIG_DIR")
    return Path(override) if override else Path(platformdirs.user_config_dir("coltsfoot", appauthor=False))


def credentials_path() -> Path:
    return config_dir() / CREDENTIALS_FILE


@dataclass(frozen=True)
class Login:
    api: str
    token: str | None
    source: str  # where the token came from: "env", "file" or "none"

    @property
    def token_prefix(self) -> str | None:
        # Tokens are `<prefix>.<secret>`; the prefix is what the API lists, so it is safe to show.
        return self.token.split(".", 1)[0] if self.token else None

    def require_token(self) -> str:
        if not self.token:
            raise CliError(
                "auth.not_logged_in",
                f"Not logged in to {self.api}: run `coltsfoot login` (or set COLTSFOOT_TOKEN).",
                exit_code=Exit.AUTH,
            )
        return self.token


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise CliError("config.unreadable", f"Cannot read {path}: {exc}", exit_code=Exit.USAGE) from exc
    return data if isinstance(data, dict) else {}


def load_login() -> Login:
    """The environment wins over the stored login. A stored token is only sent to the API it was
    stored for: pointing COLTSFOOT_API at another server must not hand it the token."""
    stored = _read_json(credentials_path())
    stored_api = normalize_api(stored["api"]) if isinstance(stored.get("api"), str) else None
    env_api = os.environ.get("COLTSFOOT_API")
    api = normalize_api(env_api) if env_api else (stored_api or DEFAULT_API)
    env_token = os.environ.get("COLTSFOOT_TOKEN")
    if env_token:
        return Login(api=api, token=env_token.strip(), source="env")
    token = stored.get("token")
    if isinstance(token, str) and token and stored_api == api:
        return Login(api=api, token=token, source="file")
    return Login(api=api, token=None, source="none")


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by the owner only, from the first byte on (no window in which
    a umask-default file holds a token), replacing the old file atomically."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode is filtered by the umask, and an old tmp keeps its mode
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    tmp.replace(path)


def save_login(api: str, token: str) -> Path:
    path = credentials_path()
    _write_private(path, json.dumps({"api": api, "token": token}, indent=2) + "\n")
    return path


def forget_login() -> bool:
    try:
        credentials_path().unlink()
    except FileNotFoundError:
        return False
    return True


@dataclass(frozen=True)
class Project:
    """A `.coltsfoot` file: which app a directory deploys to."""

    path: Path
    app: str
    app_id: str | None
    api: str | None


def find_project(start: Path) -> Project | None:
    """The `.coltsfoot` file in `start` or the nearest parent directory that has one."""
    start = start.resolve()
    for directory in (start, *start.parents):
        path = directory / PROJECT_FILE
        if path.is_file():
            data = _read_json(path)
            app = data.get("app")
            if not isinstance(app, str) or not app:
                raise CliError("config.bad_project_file", f"{path} names no app.", exit_code=Exit.USAGE)
            app_id, api = data.get("app_id"), data.get("api")
            return Project(
                path=path,
                app=app,
                app_id=app_id if isinstance(app_id, str) else None,
                api=normalize_api(api) if isinstance(api, str) else None,
            )
    return None


def write_project(directory: Path, *, app: str, app_id: str, api: str) -> Path:
    path = directory / PROJECT_FILE
    path.write_text(json.dumps({"app": app, "app_id": app_id, "api": api}, indent=2) + "\n", encoding="utf-8")
    return path
