"""The `coltsfoot` command: every subcommand, on the REST API under /api/v1."""

from __future__ import annotations

import sys
import webbrowser
from typing import Annotated
from typing import Any

import typer
from rich.markup import escape
from typer.core import TyperGroup

from coltsfoot_cli import __version__
from coltsfoot_cli import output
from coltsfoot_cli.api import Client
from coltsfoot_cli.api import CliError
from coltsfoot_cli.api import Exit
from coltsfoot_cli.api import usage
from coltsfoot_cli.context import AppOption
from coltsfoot_cli.context import AppRef
from coltsfoot_cli.context import JsonOption
from coltsfoot_cli.context import client
from coltsfoot_cli.context import handled
from coltsfoot_cli.context import pick
from coltsfoot_cli.context import resolve_app
from coltsfoot_cli.deploy import deploy
from coltsfoot_cli.deploy import watch_to_end
from coltsfoot_cli.logs import logs
from coltsfoot_cli.settings import DEFAULT_API
from coltsfoot_cli.settings import credentials_path
from coltsfoot_cli.settings import forget_login
from coltsfoot_cli.settings import load_login
from coltsfoot_cli.settings import normalize_api
from coltsfoot_cli.settings import save_login

HELP = f"""Deploy and run apps on a Coltsfoot platform.

Log in once with an API token (`coltsfoot login`), then `coltsfoot deploy` a directory. Commands about
one app take `--app NAME`, or use the `.coltsfoot` file the first deploy writes into the directory.
COLTSFOOT_API and COLTSFOOT_TOKEN override the stored login (default API: {DEFAULT_API}).

\b
Exit codes:
  0  success (a deploy: the deployment is live)
  1  the API refused the request (its error code and message are printed)
  2  usage error (a wrong option, no app given, a confirmation that does not match)
  3  the deployment failed (its error code is printed)
  4  not logged in, the token was refused, or it lacks the scope
  5  the API could not be reached, or failed (5xx)
"""

app = typer.Typer(
    help=HELP, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None
)


def _version(value: bool) -> None:
    if value:
        output.out().print(f"coltsfoot {__version__}")
        raise typer.Exit


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    pass


app.command(name="deploy")(deploy)
app.command(name="logs")(logs)


# --- login ----------------------------------------------------------------------------------------


def _read_token() -> str:
    token = str(typer.prompt("API token", hide_input=True)) if sys.stdin.isatty() else sys.stdin.readline()
    token = token.strip()
    if not token:
        raise usage("No token given (pipe it in, or type it at the prompt).")
    return token


@app.command()
@handled
def login(
    api: Annotated[
        str | None, typer.Option("--api", help="The API URL, e.g. https://coltsfoot.example.com/api/v1.")
    ] = None,
) -> None:
    """Store an API token (read from stdin or a hidden prompt) after checking it against the API. It is
    kept in your user config dir, readable only by you."""
    url = normalize_api(api) if api else load_login().api
    token = _read_token()
    with Client(url, token) as probe:
        try:
            probe.get("apps", params={"limit": 1})
        except CliError as exc:
            if exc.code != "auth.insufficient_scope":  # a deploy-only token is a fine login too
                raise
    path = save_login(url, token)
    output.success(f"Logged in to {url} with token {token.split('.', 1)[0]} (kept in {path}).")


@app.command()
@handled
def logout() -> None:
    """Forget the stored token."""
    if forget_login():
        output.info(f"Removed {credentials_path()}.")
    else:
        output.info("Not logged in.")


@app.command()
@handled
def whoami(json_: JsonOption = False) -> None:
    """Which API and token you use, and what the token may do. The API has no "who am I" endpoint: this
    finds the token in GET /tokens (which needs apps:write) and lists the apps it can see."""
    login = load_login()
    result: dict[str, Any] = {
        "api": login.api,
        "token_prefix": login.token_prefix,
        "token_from": {"env": "COLTSFOOT_TOKEN", "file": str(credentials_path())}.get(login.source),
        "name": None,
        "scopes": None,
        "app_id": None,
        "apps": None,
    }
    with client(login) as api:
        try:
            mine = [t for t in api.get_all("tokens") if t.get("prefix") == login.token_prefix]
        except CliError as exc:
            if exc.code != "auth.insufficient_scope":
                raise
            mine = []
        if mine:
            result.update(name=mine[0].get("name"), scopes=mine[0].get("scopes"), app_id=mine[0].get("app_id"))
        try:
            result["apps"] = [a["name"] for a in api.get_all("apps")]
        except CliError as exc:
            if exc.code != "auth.insufficient_scope":
                raise
    if json_:
        output.emit_json(result)
        return
    console = output.out()
    console.print(f"API      {escape(login.api)}")
    console.print(f"token    {escape(str(login.token_prefix))} (from {escape(str(result['token_from']))})")
    if result["name"] is not None:
        console.print(f"name     {escape(str(result['name']))}")
        console.print(f"scopes   {escape(' '.join(result['scopes'] or []))}")
    else:
        console.print("scopes   not apps:write (GET /tokens is refused, so the token's own details are hidden)")
    if result["app_id"]:
        console.print(f"app      restricted to {escape(str(result['app_id']))}")
    if result["apps"] is None:
        console.print("apps     cannot list apps (no apps:read: a deploy-only token?)")
    else:
        console.print(f"apps     {escape(', '.join(result['apps'])) or '(none yet)'}")


# --- apps -----------------------------------------------------------------------------------------

apps_app = typer.Typer(help="List, create and delete apps.", invoke_without_command=True)
app.add_typer(apps_app, name="apps")


@apps_app.callback()
@handled
def apps_list(ctx: typer.Context, json_: JsonOption = False) -> None:
    """List your apps (`coltsfoot apps`), or create or delete one."""
    if ctx.invoked_subcommand is not None:
        return
    with client() as api:
        items = api.get_all("apps")
    if json_:
        output.emit_json(items)
        return
    if not items:
        output.info("No apps yet: `coltsfoot apps create NAME`, or just `coltsfoot deploy DIR`.")
        return
    grid = output.table("NAME", "STATUS", "REPLICAS", "MEMORY", "URL")
    for item in items:
        grid.add_row(
            item["name"], item.get("status", ""), str(item["replicas"]), f"{item['memory_mb']} MB", item["url"]
        )
    output.out().print(grid)


@apps_app.command("create")
@handled
def apps_create(
    name: Annotated[str, typer.Argument(help="A DNS label: a-z, 0-9 and -, at most 30 characters.")],
    replicas: Annotated[int | None, typer.Option(min=1, help="Replicas (default 1).")] = None,
    memory: Annotated[int | None, typer.Option("--memory", help="Memory per replica in MB (default 256).")] = None,
    json_: JsonOption = False,
) -> None:
    """Create an app."""
    body: dict[str, Any] = {"name": name}
    if replicas is not None:
        body["replicas"] = replicas
    if memory is not None:
        body["memory_mb"] = memory
    with client() as api:
        created = api.post("apps", json=body)
    if json_:
        output.emit_json(created)
    else:
        output.success(f"Created {created['name']}: {created['url']}")


@apps_app.command("delete")
@handled
def apps_delete(
    name: Annotated[str, typer.Argument(help="The app to delete.")],
    confirm: Annotated[str, typer.Option("--confirm", help="The app's name again, to confirm.")] = "",
) -> None:
    """Delete an app: its route, containers, images and database go (in the background)."""
    if confirm != name:
        raise usage(f"Deleting {name} removes it and its database for good: repeat its name with --confirm {name}.")
    login = load_login()
    with client(login) as api:
        target = resolve_app(api, login, name)
        api.delete(f"apps/{target.id}")
    output.success(f"Deleting {name} (it goes in the background).")


# --- status, releases, rollback, scale, url -------------------------------------------------------


def _target(api: Client, app_arg: str | None = None, app_opt: str | None = None) -> AppRef:
    return resolve_app(api, load_login(), pick(app_arg, app_opt))


@app.command()
@handled
def status(
    app_arg: Annotated[str | None, typer.Argument(metavar="[APP]", help="The app (or --app).")] = None,
    app_opt: AppOption = None,
    json_: JsonOption = False,
) -> None:
    """The app's status, URL and replicas (state, restarts, last exit)."""
    with client() as api:
        target = _target(api, app_arg, app_opt)
        detail = api.get(f"apps/{target.id}")
        replicas = api.get_all(f"apps/{target.id}/replicas")
    if json_:
        output.emit_json({"app": detail, "replicas": replicas})
        return
    console = output.out()
    colour = {"running": "green", "degraded": "yellow", "crashed": "red", "deploying": "cyan"}.get(detail["status"], "")
    console.print(f"[bold]{escape(detail['name'])}[/]  [{colour or 'default'}]{detail['status']}[/]")
    console.print(f"url       {escape(detail['url'])}")
    console.print(f"size      {detail['replicas']} x {detail['memory_mb']} MB, {detail['cpus']} CPU")
    console.print(f"live      {detail.get('live_deployment_id') or '(nothing deployed yet)'}")
    if replicas:
        grid = output.table("REPLICA", "STATE", "RESTARTS", "LAST EXIT", "STARTED")
        for replica in replicas:
            last = ""
            if replica.get("last_exit_reason") or replica.get("last_exit_code") is not None:
                code = replica.get("last_exit_code")
                last = f"{replica.get('last_exit_reason') or ''}" + (f" ({code})" if code is not None else "")
            grid.add_row(
                replica["name"], replica["state"], str(replica["restarts"]), last, str(replica.get("started_at") or "")
            )
        console.print(grid)


@app.command()
@handled
def releases(
    app_opt: AppOption = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=1000, help="How many, newest first.")] = 20,
    json_: JsonOption = False,
) -> None:
    """The app's deployments, newest first."""
    with client() as api:
        target = _target(api, None, app_opt)
        items = api.get_all(f"apps/{target.id}/deployments", most=limit)
    if json_:
        output.emit_json(items)
        return
    grid = output.table("#", "STATE", "SOURCE", "CREATED", "ERROR")
    for item in items:
        source = item.get("source") or {}
        kind = str(source.get("kind", ""))
        if source.get("ref"):
            kind += f" {source['ref']}"
        error = item.get("error") or {}
        grid.add_row(str(item["number"]), item["state"], kind, str(item["created_at"]), error.get("code", ""))
    output.out().print(grid)


def rollback_target(deployments: list[dict[str, Any]], live_id: str | None, number: int | None) -> dict[str, Any]:
    """The deployment numbered `number`; by default the one that was live before the live one."""
    if number is not None:
        for item in deployments:
            if item["number"] == number:
                return item
        raise CliError("not_found", f"There is no deployment #{number}.")
    live = next((d for d in deployments if d["id"] == live_id), None)
    below = live["number"] if live else None
    for item in sorted(deployments, key=lambda d: d["number"], reverse=True):
        if item["state"] == "superseded" and item.get("image") and (below is None or item["number"] < below):
            return item
    raise CliError("rollback.nothing_earlier", "No earlier deployment went live: nothing to roll back to.")


@app.command()
@handled
def rollback(
    number: Annotated[
        int | None, typer.Argument(help="The deployment number (default: the previous live one).")
    ] = None,
    app_opt: AppOption = None,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Return once it is queued.")] = False,
) -> None:
    """Roll back to an earlier deployment's image (with today's config), and watch it go live."""
    with client() as api:
        target = _target(api, None, app_opt)
        detail = target.data or api.get(f"apps/{target.id}")
        deployments = api.get_all(f"apps/{target.id}/deployments", most=1000)
        chosen = rollback_target(deployments, detail.get("live_deployment_id"), number)
        output.info(f"Rolling back {escape(target.name)} to #{chosen['number']}")
        deployment = api.post(f"apps/{target.id}/rollback", json={"deployment_id": chosen["id"]})
        watch_to_end(api, target, deployment, detach=detach)


@app.command()
@handled
def scale(
    replicas: Annotated[int | None, typer.Argument(min=1, help="How many replicas.")] = None,
    memory: Annotated[int | None, typer.Option("--memory", "-m", help="Memory per replica in MB.")] = None,
    app_opt: AppOption = None,
) -> None:
    """Change the number of replicas and/or their memory (the live image is released again, no downtime)."""
    body: dict[str, Any] = {}
    if replicas is not None:
        body["replicas"] = replicas
    if memory is not None:
        body["memory_mb"] = memory
    if not body:
        raise usage("Give a number of replicas and/or --memory MB.")
    with client() as api:
        target = _target(api, None, app_opt)
        changed = api.patch(f"apps/{target.id}", json=body)
    output.success(f"{changed['name']}: {changed['replicas']} x {changed['memory_mb']} MB")


@app.command()
@handled
def url(app_opt: AppOption = None) -> None:
    """Print the app's URL."""
    with client() as api:
        target = _target(api, None, app_opt)
        output.out().print(target.url or api.get(f"apps/{target.id}")["url"])


@app.command(name="open")
@handled
def open_(app_opt: AppOption = None) -> None:
    """Open the app in a browser."""
    with client() as api:
        target = _target(api, None, app_opt)
        address = str(target.url or api.get(f"apps/{target.id}")["url"])
    output.out().print(address)
    webbrowser.open(address)


# --- config ---------------------------------------------------------------------------------------


class AppFirstGroup(TyperGroup):
    """`coltsfoot config [APP]` next to `config set` / `config unset`: a first argument that is not a
    subcommand is the app's name."""

    # `ctx` is the click Context that typer vendors privately, hence Any.
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["--app", args[0], *args[1:]]
        return super().parse_args(ctx, args)


config_app = typer.Typer(
    cls=AppFirstGroup, help="Show and change config vars and secrets.", invoke_without_command=True
)
app.add_typer(config_app, name="config")


@config_app.callback()
@handled
def config_show(ctx: typer.Context, app_opt: AppOption = None, json_: JsonOption = False) -> None:
    """Show the app's config vars and the names of its secrets (`coltsfoot config [APP]`)."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = app_opt
        return
    with client() as api:
        target = _target(api, None, app_opt)
        config = api.get(f"apps/{target.id}/config")
    if json_:
        output.emit_json(config)
        return
    grid = output.table("KEY", "VALUE")
    for key, value in sorted(config.get("vars", {}).items()):
        grid.add_row(escape(key), escape(value))
    for key in sorted(config.get("secrets", [])):
        grid.add_row(escape(key), "[dim](secret)[/]")
    if grid.row_count:
        output.out().print(grid)
    else:
        output.info("No config vars.")


def _app_from(ctx: typer.Context, app_opt: str | None) -> str | None:
    parent = ctx.obj if isinstance(ctx.obj, str) else None
    return pick(parent, app_opt)


def _report_release(changed: dict[str, Any]) -> None:
    if changed.get("deployment_id"):
        output.info(f"Releasing the change (deployment {changed['deployment_id']}).")


@config_app.command("set")
@handled
def config_set(
    ctx: typer.Context,
    pairs: Annotated[list[str], typer.Argument(metavar="KEY=VALUE...", help="One or more KEY=VALUE.")],
    secret: Annotated[bool, typer.Option("--secret", help="Store them as secrets (write-only).")] = False,
    app_opt: AppOption = None,
) -> None:
    """Set config vars (or, with --secret, secrets); the app is released again with them."""
    values: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise usage(f"{pair!r} is not KEY=VALUE.")
        values[key] = value
    body = {"secrets": values} if secret else {"vars": values}
    with client() as api:
        target = _target(api, None, _app_from(ctx, app_opt))
        changed = api.patch(f"apps/{target.id}/config", json=body)
    output.success(f"Set {', '.join(values)} on {target.name}.")
    _report_release(changed)


@config_app.command("unset")
@handled
def config_unset(
    ctx: typer.Context,
    keys: Annotated[list[str], typer.Argument(metavar="KEY...", help="The vars or secrets to remove.")],
    app_opt: AppOption = None,
) -> None:
    """Remove config vars or secrets."""
    with client() as api:
        target = _target(api, None, _app_from(ctx, app_opt))
        current = api.get(f"apps/{target.id}/config")
        secrets = set(current.get("secrets", []))
        plain = set(current.get("vars", {}))
        missing = [k for k in keys if k not in secrets and k not in plain]
        for key in missing:
            output.warn(f"{key} is not set on {target.name}.")
        body = {
            "vars": {k: None for k in keys if k in plain},
            "secrets": {k: None for k in keys if k in secrets},
        }
        if not body["vars"] and not body["secrets"]:
            return
        changed = api.patch(f"apps/{target.id}/config", json=body)
    output.success(f"Removed {', '.join(k for k in keys if k not in missing)} from {target.name}.")
    _report_release(changed)


# --- db, webhook secret, tokens -------------------------------------------------------------------

db_app = typer.Typer(help="The app's PostgreSQL database (DATABASE_URL).", no_args_is_help=True)
app.add_typer(db_app, name="db")


def _show_addon(addon: dict[str, Any], *, json_: bool) -> None:
    if json_:
        output.emit_json(addon)
        return
    console = output.out()
    console.print(f"state     {addon['state']}")
    console.print(f"database  {addon['database']}")
    console.print(f"user      {addon['user']}")
    error = addon.get("error")
    if error:
        console.print(f"error     {escape(error['message'])} ({escape(error['code'])})")


@db_app.command("create")
@handled
def db_create(app_opt: AppOption = None, json_: JsonOption = False) -> None:
    """Give the app a database: DATABASE_URL is set and the app released again once it is ready."""
    with client() as api:
        target = _target(api, None, app_opt)
        _show_addon(api.post(f"apps/{target.id}/addons/postgres"), json_=json_)


@db_app.command("info")
@handled
def db_info(app_opt: AppOption = None, json_: JsonOption = False) -> None:
    """The database's state and names (never its password)."""
    with client() as api:
        target = _target(api, None, app_opt)
        _show_addon(api.get(f"apps/{target.id}/addons/postgres"), json_=json_)


@db_app.command("destroy")
@handled
def db_destroy(
    app_opt: AppOption = None,
    confirm: Annotated[str, typer.Option("--confirm", help="The app's name, to confirm.")] = "",
) -> None:
    """Drop the app's database and its data."""
    with client() as api:
        target = _target(api, None, app_opt)
        if confirm != target.name:
            raise usage(
                f"This drops {target.name}'s data for good: repeat the app's name with --confirm {target.name}."
            )
        api.delete(f"apps/{target.id}/addons/postgres")
    output.success(f"Dropping the database of {target.name}.")


@app.command(name="webhook-secret")
@handled
def webhook_secret(app_opt: AppOption = None, json_: JsonOption = False) -> None:
    """Create (or rotate) the app's webhook secret, shown only now, and its webhook URL."""
    with client() as api:
        target = _target(api, None, app_opt)
        answer = api.post(f"apps/{target.id}/webhook-secret")
    if json_:
        output.emit_json(answer)
        return
    output.out().print(f"secret       {answer['secret']}")
    output.out().print(f"webhook URL  {answer['webhook_url']}")
    output.info("The secret is shown only this once; the previous one (if any) no longer works.")


tokens_app = typer.Typer(help="API tokens.", no_args_is_help=True)
app.add_typer(tokens_app, name="tokens")


@tokens_app.command("create")
@handled
def tokens_create(
    deploy_only: Annotated[bool, typer.Option("--deploy", help="A token that can only deploy this app (CI).")] = False,
    name: Annotated[str | None, typer.Option("--name", help="A name to recognise it by.")] = None,
    app_opt: AppOption = None,
    json_: JsonOption = False,
) -> None:
    """Mint a token that can deploy one app and nothing else (for CI); it is shown only once."""
    if not deploy_only:
        raise usage("Only deploy tokens are made here: `coltsfoot tokens create --deploy [--app NAME]`.")
    with client() as api:
        target = _target(api, None, app_opt)
        minted = api.post(
            "tokens", json={"name": name or f"deploy {target.name}", "scopes": ["deploy"], "app_id": target.id}
        )
    if json_:
        output.emit_json(minted)
        return
    output.out().print(minted["token"])
    output.info(f"A deploy token for {escape(target.name)} ({minted['prefix']}); it is shown only this once.")


def run() -> None:
    try:
        app()
    except CliError as exc:  # pragma: no cover - every command is @handled; this is the last resort
        output.error(exc)
        sys.exit(int(exc.exit_code))


__all__ = ["Exit", "app", "run"]
