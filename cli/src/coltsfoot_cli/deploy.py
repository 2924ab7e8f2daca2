"""`coltsfoot deploy` and `coltsfoot rollback`: send the source (a packed directory, an image or a git
ref), then watch the build and release until the deployment is live or failed."""

from __future__ import annotations

import io
import os
import re
import tempfile
from pathlib import Path
from typing import IO
from typing import Annotated
from typing import Any

import typer
from rich.markup import escape
from rich.progress import BarColumn
from rich.progress import DownloadColumn
from rich.progress import Progress
from rich.progress import TransferSpeedColumn

from coltsfoot_cli import output
from coltsfoot_cli.api import UPLOAD_TIMEOUT
from coltsfoot_cli.api import Client
from coltsfoot_cli.api import CliError
from coltsfoot_cli.api import Exit
from coltsfoot_cli.api import usage
from coltsfoot_cli.context import AppOption
from coltsfoot_cli.context import AppRef
from coltsfoot_cli.context import client
from coltsfoot_cli.context import find_app
from coltsfoot_cli.context import handled
from coltsfoot_cli.context import project_for
from coltsfoot_cli.context import resolve_app
from coltsfoot_cli.packer import pack
from coltsfoot_cli.settings import Login
from coltsfoot_cli.settings import load_login
from coltsfoot_cli.settings import write_project
from coltsfoot_cli.watch import Watcher

NAME_MAX = 30


class ProgressReader(io.RawIOBase):
    """A seekable file that reports every read (httpx reads the upload in chunks)."""

    def __init__(self, handle: IO[bytes], on_read: Any) -> None:
        self._handle = handle
        self._on_read = on_read

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._handle.seek(offset, whence)

    def tell(self) -> int:
        return self._handle.tell()

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self._on_read(len(data))
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def app_name_for(directory: Path) -> str:
    """A directory's name as an app name (a DNS label): `My_App` becomes `my-app`."""
    name = re.sub(r"[^a-z0-9-]+", "-", directory.resolve().name.lower()).strip("-")[:NAME_MAX].strip("-")
    if not name:
        raise usage(f"Cannot make an app name out of {directory.resolve().name!r}: pass --app NAME.")
    return name


def _app_for_deploy(api: Client, login: Login, directory: Path, name: str | None) -> tuple[AppRef, bool]:
    """The app to deploy to, and whether this is the directory's first deploy (no .coltsfoot yet).
    The first deploy creates the app when it does not exist."""
    project = project_for(login, directory)
    if project is not None:
        return resolve_app(api, login, name, directory=directory), False
    name = name or app_name_for(directory)
    app = find_app(api, name)
    if app is None:
        app = api.post("apps", json={"name": name})
        output.info(f"Created app [bold]{escape(name)}[/] ({escape(str(app.get('url', '')))})")
    return AppRef(id=str(app["id"]), name=str(app["name"]), data=app), True


def _upload(api: Client, app: AppRef, directory: Path) -> dict[str, Any]:
    def skipped(path: str, why: str) -> None:
        output.warn(f"skipping {path}: {why} (the platform accepts only regular files and directories)")

    with tempfile.TemporaryFile(prefix="coltsfoot-", suffix=".tar.gz") as archive:
        entries = pack(directory, archive, skipped=skipped)
        size = archive.tell()
        archive.seek(0)
        files = sum(1 for entry in entries if not entry.is_dir)
        output.info(f"Packed {files} files from {escape(str(directory))} ({size / 1024:.1f} KiB)")
        progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=output.err(),
            transient=True,
        )
        with progress:
            task = progress.add_task("Uploading", total=size)
            reader = ProgressReader(archive, lambda n: progress.advance(task, n))
            deployment: dict[str, Any] = api.post(
                f"apps/{app.id}/deployments",
                files={"source": ("source.tar.gz", reader, "application/gzip")},
                timeout=UPLOAD_TIMEOUT,
            )
    return deployment


def watch_to_end(api: Client, app: AppRef, deployment: dict[str, Any], *, detach: bool) -> None:
    """Watch a deployment that was just created, then exit 0 if live, 3 with its error if failed."""
    number = deployment.get("number")
    output.info(f"Deployment [bold]#{number}[/] of {escape(app.name)} queued ({deployment['id']})")
    if detach:
        output.info(f"Not waiting (--detach). Follow it with: coltsfoot releases --app {app.name}")
        output.out().print(deployment["id"])
        return
    try:
        final = Watcher(api, str(deployment["id"])).run()
    except KeyboardInterrupt:
        output.info("Stopped watching; the deployment goes on (`coltsfoot releases`).")
        raise typer.Exit(130) from None
    state = final.get("state")
    if state == "live":
        url = app.url or _url(api, app)
        output.success(f"Deployment #{number} is live" + (f": {url}" if url else "."))
        if url:
            output.out().print(url)
        return
    error = final.get("error") or {}
    if state == "superseded":
        raise CliError(
            "deploy.superseded",
            f"Deployment #{number} was replaced by a newer one before it went live.",
            exit_code=Exit.DEPLOY_FAILED,
        )
    raise CliError(
        str(error.get("code") or "deploy.failed"),
        f"Deployment #{number} failed: {error.get('message') or 'see the log above'}",
        exit_code=Exit.DEPLOY_FAILED,
    )


def _url(api: Client, app: AppRef) -> str | None:
    try:
        return str(api.get(f"apps/{app.id}")["url"])
    except CliError:
        return None  # a deploy-only token may not read the app


@handled
def deploy(
    directory: Annotated[Path, typer.Argument(help="The app's directory (default: this one).")] = Path(),
    app: AppOption = None,
    image: Annotated[str | None, typer.Option("--image", help="Deploy this image instead of a directory.")] = None,
    git: Annotated[str | None, typer.Option("--git", help="Deploy this git repository (https URL).")] = None,
    ref: Annotated[str, typer.Option("--ref", help="With --git: the branch, tag or commit.")] = "main",
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Return once the deployment is queued.")] = False,
) -> None:
    """Deploy a directory (packed as .tar.gz, respecting .gitignore and .coltsfootignore, never .git),
    an image or a git ref, and stream the build and release output until the app is live.

    The first deploy of a directory creates the app if needed (named --app, or after the directory) and
    writes a .coltsfoot file there, so later commands in that directory know the app."""
    if image and git:
        raise usage("Give --image or --git, not both.")
    login = load_login()
    with client(login) as api:
        if image or git:
            target = resolve_app(api, login, app, directory=directory)
            body: dict[str, Any] = {"image": image} if image else {"git": {"url": git, "ref": ref}}
            deployment = api.post(f"apps/{target.id}/deployments", json=body)
        else:
            if not directory.is_dir():
                raise usage(f"{directory} is not a directory.")
            target, first = _app_for_deploy(api, login, directory, app)
            deployment = _upload(api, target, directory)
            if first:
                path = write_project(directory, app=target.name, app_id=target.id, api=login.api)
                output.info(f"Wrote {escape(str(path))}: commands run in {escape(str(directory))} now mean this app.")
        watch_to_end(api, target, deployment, detach=detach)
