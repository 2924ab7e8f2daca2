"""`manage.py host list [--json]`, `manage.py host drain NAME`, `manage.py host undrain NAME`: the hosts an
operator runs, and taking one out of placement.

`list` prints one line per host: its name, state, address, the memory placed on it out of its capacity (MiB),
its CPUs, how many replicas are placed there and how long ago its worker last heartbeated; `--json` prints the
same as one JSON list (public ids, never a pk). `drain` makes an active host draining: it takes no new
replicas or builds, and what runs there keeps running until the workflow moves it. `undrain` makes it active
again. A down host can be neither: the reconciler marks it down and its worker's next heartbeat brings it back.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand
from django.core.management.base import CommandError
from django.core.management.base import CommandParser
from django.utils import timezone

from core.errors import ApiError
from platform_apps.hosts import selectors
from platform_apps.hosts import services
from platform_apps.models import Host


def heartbeat_age(last: datetime | None, now: datetime) -> float | None:
    """Seconds since the last heartbeat (never negative, for a clock a little ahead), None if there was none."""
    return None if last is None else max(0.0, round((now - last).total_seconds(), 1))


def host_summary(host: Host, now: datetime) -> dict[str, Any]:
    return {
        "id": str(host.public_id),
        "name": host.name,
        "state": host.state,
        "address": host.address,
        "memory_placed_mb": int(getattr(host, "placed_memory_mb", 0)),
        "memory_mb": int(host.memory_mb),
        "cpus": float(host.cpus),
        "can_build": bool(host.can_build),
        "replicas": int(getattr(host, "replicas_placed", 0)),
        "last_heartbeat": host.last_heartbeat.isoformat() if host.last_heartbeat else None,
        "heartbeat_age_seconds": heartbeat_age(host.last_heartbeat, now),
    }


def host_line(summary: dict[str, Any]) -> str:
    age = summary["heartbeat_age_seconds"]
    heartbeat = "never" if age is None else f"{age:g} s ago"
    memory = f"{summary['memory_placed_mb']}/{summary['memory_mb']} MB"
    return (
        f"{summary['name']:<20} {summary['state']:<9} {summary['address']:<24} {memory:>17} "
        f"{summary['cpus']:>6g} cpus {summary['replicas']:>5} replicas  heartbeat {heartbeat}"
    )


class Command(BaseCommand):
    help = "List the hosts, or drain / undrain one (a draining host takes no new placements)."

    def add_arguments(self, parser: CommandParser) -> None:
        commands = parser.add_subparsers(dest="command", required=True, metavar="{list,drain,undrain}")
        listing = commands.add_parser("list", help="every host, its state, room and heartbeat")
        listing.add_argument("--json", action="store_true", help="one JSON list instead of lines")
        for name, text in (("drain", "stop placing on an active host"), ("undrain", "place on a drained host again")):
            command = commands.add_parser(name, help=text)
            command.add_argument("name", help="the host's name (as `host list` shows it)")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["command"] == "list":
            self._list(as_json=bool(options["json"]))
            return
        change = services.host_drain if options["command"] == "drain" else services.host_undrain
        try:
            result = change(name=options["name"])
        except ApiError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(result.message)

    def _list(self, *, as_json: bool) -> None:
        now = timezone.now()
        summaries = [host_summary(host, now) for host in selectors.host_list()]
        if as_json:
            self.stdout.write(json.dumps(summaries, indent=2))
            return
        if not summaries:
            self.stdout.write("No host has registered yet (a worker registers its host when it starts).")
            return
        for summary in summaries:
            self.stdout.write(host_line(summary))
