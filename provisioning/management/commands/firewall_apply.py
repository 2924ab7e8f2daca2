"""`manage.py firewall_apply [--egress POLICY] [--force] [--remove]`: install this installation's firewall table.

Idempotent: the table is replaced in one nft transaction (never a duplicate rule, no other table touched), and
left alone when it already is what it should be. `make up` and the test stacks run it before the worker
starts; in production run it at boot (see README, "Network isolation / firewall"). Without
COLTSFOOT_FIREWALL (default: on under Linux as root) it only says the platform does not manage the firewall.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand
from django.core.management.base import CommandError
from django.core.management.base import CommandParser

from drivers import firewall
from drivers import podman
from provisioning.firewall import enabled
from provisioning.firewall import firewall_apply
from provisioning.firewall import firewall_remove


class Command(BaseCommand):
    help = "Install (or replace) this installation's nftables table that filters tenant networks."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--egress",
            default=None,
            help="public | none | CIDR,CIDR... for this apply (default: COLTSFOOT_TENANT_EGRESS); the next "
            "periodic sync (COLTSFOOT_FIREWALL_SYNC_SECONDS) goes back to the setting",
        )
        parser.add_argument("--force", action="store_true", help="apply even if the installed table is current")
        parser.add_argument("--remove", action="store_true", help="remove the table instead (and nothing else)")

    def handle(self, *args: Any, **options: Any) -> None:
        if not enabled():
            self.stdout.write(json.dumps({"managed": False}))
            return
        try:
            if options["remove"]:
                firewall_remove()
                self.stdout.write(json.dumps({"managed": True, "removed": True}))
                return
            spec = firewall_apply(egress=options["egress"], force=options["force"])
        except (firewall.FirewallError, podman.PodmanError, ValueError) as exc:
            raise CommandError(f"cannot apply the firewall table: {exc}") from exc
        summary = {
            "managed": True,
            "table": f"{firewall.FAMILY} {spec.table}",
            "egress": str(spec.egress),
            "pgbouncer_port": spec.pgbouncer_port,
            "bridges": list(spec.bridges),
            "resolvers": [str(address) for address in spec.resolvers],
            "index_addresses": [str(address) for address in spec.index_addresses],
        }
        self.stdout.write(json.dumps(summary))
