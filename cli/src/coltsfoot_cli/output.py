"""What the CLI prints: people's output through rich (colour only on a terminal, never with NO_COLOR),
machine output (`--json`) as plain JSON on stdout, errors on stderr."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from coltsfoot_cli.api import CliError

# Created on first use, so a test that swaps sys.stdout (typer's CliRunner) gets what is printed.
_consoles: dict[str, Console] = {}


def out() -> Console:
    return _console("out", sys.stdout)


def err() -> Console:
    return _console("err", sys.stderr)


def _console(name: str, stream: Any) -> Console:
    console = _consoles.get(name)
    if console is None or console.file is not stream:
        # Not a terminal (a pipe, a file, a test): no colour (rich decides) and no wrapping at 80 columns,
        # so a URL or an id is never cut.
        width = None if stream.isatty() else 10_000
        console = Console(file=stream, highlight=False, soft_wrap=True, width=width)
        _consoles[name] = console
    return console


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def emit_json_line(value: Any) -> None:
    sys.stdout.write(json.dumps(value, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def raw(text: str) -> None:
    """Text from the platform or the tenant's app (log lines): written as it is, never read as markup."""
    sys.stdout.write(text)
    sys.stdout.flush()


def info(message: str) -> None:
    err().print(message)


def warn(message: str) -> None:
    err().print(f"[yellow]warning:[/] {message}")


def success(message: str) -> None:
    out().print(f"[green]{message}[/]")


def error(exc: CliError) -> None:
    console = err()
    console.print(f"[bold red]Error:[/] {escape(exc.message)} [dim]({escape(exc.code)})[/]")
    details = exc.details
    if isinstance(details, list):
        for item in details:
            if isinstance(item, dict) and "message" in item:
                where = item.get("field") or ""
                console.print(f"  - {escape(str(where))}: {escape(str(item['message']))}" if where else f"  - {item}")
    elif isinstance(details, dict) and details:
        console.print(f"  {escape(json.dumps(details, sort_keys=True))}")


def table(*columns: str) -> Table:
    grid = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for column in columns:
        grid.add_column(column)
    return grid
