"""What every command needs: the logged-in client, the app a command is about (named, never a UUID the
user has to copy), and one place that turns a `CliError` into a message and an exit code."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated
from typing import Any

import typer

from coltsfoot_cli import output
from coltsfoot_cli.api import Client
from coltsfoot_cli.api import CliError
from coltsfoot_cli.api import Exit
from coltsfoot_cli.api import usage
from coltsfoot_cli.settings import Login
from coltsfoot_cli.settings import Project
from coltsfoot_cli.settings import find_project
from coltsfoot_cli.settings import load_login

AppOption = Annotated[
    str | None,
    typer.Option("--app", "-a", help="The app's name (default: the .coltsfoot file of this directory or a parent)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def handled[**P, R](command: Callable[P, R]) -> Callable[P, R]:
    """Print a `CliError` as `Error: <message> (<code>)` on stderr and exit with its code."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except CliError as exc:
            output.error(exc)
            raise typer.Exit(int(exc.exit_code)) from None

    return wrapper


def client(login: Login | None = None) -> Client:
    login = login or load_login()
    return Client(login.api, login.require_token())


@dataclass(frozen=True)
class AppRef:
    id: str
    name: str
    data: dict[str, Any] | None  # the app as GET /apps gives it, when the token may read apps

    @property
    def url(self) -> str | None:
        return self.data.get("url") if self.data else None


def project_for(login: Login, directory: Path | None = None) -> Project | None:
    """The `.coltsfoot` file that applies, if it belongs to the API the user is logged in to."""
    project = find_project(directory or Path.cwd())
    if project is not None and project.api is not None and project.api != login.api:
        output.warn(f"{project.path} is for {project.api}, not {login.api}: ignoring it.")
        return None
    return project


def pick(argument: str | None, option: str | None) -> str | None:
    if argument and option and argument != option:
        raise usage(f"Two different apps given: {argument!r} and --app {option!r}.")
    return option or argument


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def find_app(api: Client, name: str) -> dict[str, Any] | None:
    """The app called `name` (or with that id), or None. There is no lookup by name in the API, so
    this lists the apps the token can see (one request for up to 100 apps)."""
    if _is_uuid(name):
        try:
            found: dict[str, Any] = api.get(f"apps/{name}")
        except CliError as exc:
            if exc.code == "not_found":
                return None
            raise
        return found
    for item in api.get_all("apps"):
        if item.get("name") == name:
            return dict(item)
    return None


def resolve_app(api: Client, login: Login, name: str | None, *, directory: Path | None = None) -> AppRef:
    project = project_for(login, directory)
    name = name or (project.app if project else None)
    if not name:
        raise usage(
            "Which app? Pass --app NAME, or run this in a directory deployed before (it has a .coltsfoot file)."
        )
    try:
        app = find_app(api, name)
    except CliError as exc:
        # A deploy-only token (CI) may not list apps; the .coltsfoot file knows the id.
        if exc.code == "auth.insufficient_scope" and project and project.app == name and project.app_id:
            return AppRef(id=project.app_id, name=name, data=None)
        raise
    if app is None:
        raise CliError("not_found", f"No app named {name!r} on {login.api} (see `coltsfoot apps`).")
    return AppRef(id=str(app["id"]), name=str(app["name"]), data=app)


def fail_usage(message: str) -> None:
    raise CliError("usage", message, exit_code=Exit.USAGE)
