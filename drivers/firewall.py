"""The host firewall: one nftables table per installation that filters what tenant containers reach.

Without it, tenant bridges have only CNI's bridge-to-bridge drops: the host's INPUT accepts everything and
FORWARD masquerades everything else, so an app could reach the host's LAN, link-local metadata services and
any service bound on 0.0.0.0. This module is the one place that talks to `nft`.

Design:
- **One table of our own**, `table inet coltsfoot-<instance id>`, so several installations on one machine (a
  developer's `make up`, an integration session, isolated chaos stacks) never clobber each other, and
  removing it (`make down`, test teardown) touches nothing else. `ruleset` renders it as text for `nft -f -`:
  `table ...` + `delete table ...` + the full table, which nft runs as **one atomic transaction**, so a rerun
  replaces the table in place (never a duplicate rule, never a moment without rules) and other tables (CNI's
  iptables-nft `ip filter`/`ip nat`, an operator's own) are never read or written.
- **It works alongside CNI's rules**: our base chains hook input and forward at priority `filter - 10`, before
  iptables-nft's. A `drop` here is final whatever later tables accept; an `accept` here only lets the packet
  go on to the other tables (whose drops, e.g. CNI's isolation between bridges, still apply).
- **Only this installation's tenant bridges are filtered**: the set `tenant_bridges` holds the CNI interface
  names (`cni-podmanN`) of the podman networks labelled with this instance id. Matching every `cni-podman*`
  bridge would be simpler, but nftables applies every table's drops to every packet, so one installation's
  table would then impose its PgBouncer port and its egress policy on the others' tenants. The workflow
  re-applies the table whenever it creates a tenant network (before any container starts on it), after a
  reconcile pass that recreated one, and every COLTSFOOT_FIREWALL_SYNC_SECONDS otherwise (a bridge name freed
  by a removed network, the index host's addresses, a table someone deleted).
- **From a tenant bridge to the host** (input): replies of connections the host opened (Caddy dialing a
  replica) and PgBouncer's port are accepted, plus DNS to a resolver that is one of the host's own addresses;
  everything else is dropped.
- **Forwarded from a tenant bridge**: DNS (udp/tcp 53) to the host's resolvers is always accepted, even
  when they are private addresses (containers get the host's resolv.conf); so are ports 80/443 of the package
  index's addresses (builds install dependencies on the tenant network). Then private ranges (RFC 1918, CGNAT
  100.64/10), link-local (169.254/16, fe80::/10), loopback, the other special-purpose ranges below, and the
  host's own addresses (`fib daddr type local`) are dropped under every policy. What is left is public egress:
  accepted (`public`), dropped (`none`), or accepted only to a list of CIDRs.
- **Current or not**: the table's comment carries a fingerprint of the configuration (policy, port, resolvers,
  index hosts) and a hash of the whole rendered text, so `/ready` can tell a stale or tampered table without
  rendering (no podman call, no DNS), and a re-apply can skip `nft -f` when nothing changed.

Everything here is a pure function except `apply`, `remove` and `installed`, which run
`nft` through `subprocess.run` with argument lists, input on stdin and a timeout.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterable
from typing import Literal

from core.faults import InfrastructureError

logger = logging.getLogger(__name__)

TABLE_PREFIX = "coltsfoot-"
FAMILY = "inet"
# Before iptables-nft's chains (priority filter = 0), so our drops win whatever CNI accepts.
PRIORITY = "filter - 10"
NFT_TIMEOUT_SECONDS = 20.0
DNS_PORT = 53
INDEX_PORTS = (80, 443)
# Bumped when the shape of the rules changes, so an older table reads as stale.
RULESET_VERSION = 2

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Never reachable from a tenant container, whatever the egress policy (IANA special-purpose registries).
# Not blocked on purpose: the documentation ranges (192.0.2/24, 198.51.100/24, 203.0.113/24), which are not
# routed on the internet anyway and which the integration tests use as "public" addresses.
BLOCKED_V4: tuple[str, ...] = (
    "0.0.0.0/8",  # "this network"
    "10.0.0.0/8",  # RFC 1918
    "100.64.0.0/10",  # CGNAT, RFC 6598
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local: cloud metadata services live here
    "172.16.0.0/12",  # RFC 1918
    "192.0.0.0/24",  # IETF protocol assignments
    "192.168.0.0/16",  # RFC 1918
    "198.18.0.0/15",  # benchmarking
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, and the limited broadcast address
)
BLOCKED_V6: tuple[str, ...] = (
    "::/127",  # unspecified and loopback
    "::ffff:0:0/96",  # IPv4-mapped: would reach the IPv4 ranges above
    "64:ff9b:1::/48",  # local-use NAT64
    "100::/64",  # discard-only
    "fc00::/7",  # unique local
    "fe80::/10",  # link-local
    "ff00::/8",  # multicast
)

_INSTANCE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,47}$")
# Linux interface names: at most 15 bytes (IFNAMSIZ - 1); CNI's are cni-podmanN.
_IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")


class FirewallError(InfrastructureError):
    """`nft` failed or is missing. Not transient: a ruleset nft refuses is refused again."""

    def __init__(self, message: str, *, stderr: str = "") -> None:
        super().__init__(message)
        self.stderr = stderr[-2000:]


# --- configuration (pure) ---------------------------------------------------------------------------------


def managed_by_default() -> bool:
    """Whether the platform manages the firewall when COLTSFOOT_FIREWALL is not set: on Linux as root."""
    return sys.platform == "linux" and os.geteuid() == 0


def managed(value: str | None) -> bool:
    """COLTSFOOT_FIREWALL as the settings read it (1/true/yes/on; unset or empty: `managed_by_default`)."""
    if value is None or not value.strip():
        return managed_by_default()
    return value.strip().lower() in {"1", "true", "yes", "on"}


@dataclasses.dataclass(frozen=True)
class EgressPolicy:
    """Where tenant containers may connect on the public internet: everywhere, nowhere, or `networks`."""

    kind: Literal["public", "none", "cidrs"]
    networks: tuple[IPNetwork, ...] = ()

    def __str__(self) -> str:
        if self.kind == "cidrs":
            return ",".join(str(network) for network in self.networks)
        return self.kind


def egress_parse(value: str) -> EgressPolicy:
    """`COLTSFOOT_TENANT_EGRESS`: "public" (also the empty string), "none", or a comma list of CIDRs (a bare
    address is a /32 or /128). Raises ValueError with a message naming the bad item."""
    text = value.strip().lower()
    if text in {"", "public"}:
        return EgressPolicy("public")
    if text == "none":
        return EgressPolicy("none")
    networks: list[IPNetwork] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(
                f"COLTSFOOT_TENANT_EGRESS: {item!r} is not a CIDR (expected public, none, or a comma list of CIDRs)"
            ) from None
    if not networks:
        raise ValueError("COLTSFOOT_TENANT_EGRESS: empty CIDR list (use none to allow no public egress)")
    return EgressPolicy("cidrs", tuple(sorted(set(networks), key=_network_key)))


def resolvers_parse(resolv_conf: str) -> tuple[IPAddress, ...]:
    """The `nameserver` addresses of a resolv.conf, loopback ones left out (podman does not give those to
    containers: they would point into the container itself)."""
    found: list[IPAddress] = []
    for line in resolv_conf.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                address = ipaddress.ip_address(words[1].split("%", 1)[0])
            except ValueError:
                continue
            if not address.is_loopback and address not in found:
                found.append(address)
    return tuple(found)


def table_name(instance_id: str) -> str:
    """`coltsfoot-<instance id>`; an id that is not a plain word gets a hash instead (nft identifiers)."""
    if _INSTANCE_RE.match(instance_id):
        return TABLE_PREFIX + instance_id
    return TABLE_PREFIX + hashlib.sha256(instance_id.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class FirewallSpec:
    """Everything the table depends on. `bridges` and `index_addresses` change at run time (a new tenant
    network, the index host's DNS); the rest is configuration."""

    instance_id: str
    egress: EgressPolicy
    pgbouncer_port: int
    resolvers: tuple[IPAddress, ...] = ()
    bridges: tuple[str, ...] = ()
    index_hosts: tuple[str, ...] = ()
    index_addresses: tuple[IPAddress, ...] = ()

    def __post_init__(self) -> None:
        if not 0 < self.pgbouncer_port < 65536:
            raise ValueError(f"not a port: {self.pgbouncer_port}")
        for bridge in self.bridges:
            if not _IFNAME_RE.match(bridge):
                raise ValueError(f"not an interface name: {bridge!r}")
        for host in self.index_hosts:
            if not re.match(r"^[A-Za-z0-9.:-]{1,253}$", host):
                raise ValueError(f"not a host name: {host!r}")

    @property
    def table(self) -> str:
        return table_name(self.instance_id)


def config_fingerprint(spec: FirewallSpec) -> str:
    """What the configuration (not the run-time sets) of the table is: /ready compares it without rendering."""
    payload = {
        "version": RULESET_VERSION,
        "instance": spec.instance_id,
        "egress": str(spec.egress),
        "pgbouncer_port": spec.pgbouncer_port,
        "resolvers": [str(address) for address in spec.resolvers],
        "index_hosts": sorted(spec.index_hosts),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


# --- the ruleset (pure) -----------------------------------------------------------------------------------


def _network_key(network: IPNetwork) -> tuple[int, int, int]:
    return (network.version, int(network.network_address), network.prefixlen)


def _address_key(address: IPAddress) -> tuple[int, int]:
    return (address.version, int(address))


def _elements(items: Iterable[object]) -> str:
    return ", ".join(str(item) for item in items)


def _set(name: str, kind: str, items: list[str], *, interval: bool = False) -> list[str]:
    lines = [f"\tset {name} {{", f"\t\ttype {kind}"]
    if interval:
        lines.append("\t\tflags interval")
        lines.append("\t\tauto-merge")
    if items:
        lines.append(f"\t\telements = {{ {_elements(items)} }}")
    lines.append("\t}")
    return lines


def _split(items: Iterable[IPAddress]) -> tuple[list[str], list[str]]:
    ordered = sorted(set(items), key=_address_key)
    return [str(a) for a in ordered if a.version == 4], [str(a) for a in ordered if a.version == 6]


def _body(spec: FirewallSpec) -> list[str]:
    """The table's sets and chains (everything but the comment)."""
    resolvers4, resolvers6 = _split(spec.resolvers)
    index4, index6 = _split(spec.index_addresses)
    allowed4 = [str(n) for n in spec.egress.networks if n.version == 4]
    allowed6 = [str(n) for n in spec.egress.networks if n.version == 6]
    bridges = [f'"{bridge}"' for bridge in sorted(set(spec.bridges))]
    lines: list[str] = []
    lines += _set("tenant_bridges", "ifname", bridges)
    lines += _set("same_bridge", "ifname . ifname", [f"{bridge} . {bridge}" for bridge in bridges])
    lines += _set("resolvers4", "ipv4_addr", resolvers4)
    lines += _set("resolvers6", "ipv6_addr", resolvers6)
    lines += _set("index4", "ipv4_addr", index4)
    lines += _set("index6", "ipv6_addr", index6)
    lines += _set("blocked4", "ipv4_addr", list(BLOCKED_V4), interval=True)
    lines += _set("blocked6", "ipv6_addr", list(BLOCKED_V6), interval=True)
    if spec.egress.kind == "cidrs":
        lines += _set("allowed4", "ipv4_addr", allowed4, interval=True)
        lines += _set("allowed6", "ipv6_addr", allowed6, interval=True)
    return lines + [line for name, rules in _chains(spec).items() for line in _chain(name, rules)]


def _chain(name: str, rules: list[str]) -> list[str]:
    hook = "input" if name == "input" else "forward"
    return [
        f"\tchain {name} {{",
        f"\t\ttype filter hook {hook} priority {PRIORITY}; policy accept;",
        *(f"\t\t{rule}" for rule in rules),
        "\t}",
    ]


def _chains(spec: FirewallSpec) -> dict[str, list[str]]:
    """The rules of each base chain, in order."""
    dns = f"meta l4proto {{ tcp, udp }} th dport {DNS_PORT}"
    index = f"tcp dport {{ {_elements(INDEX_PORTS)} }}"
    input_rules = [
        "iifname != @tenant_bridges accept",
        # Replies of connections the host opened: Caddy dialing a replica, the health checks.
        "ct state established,related accept",
        # Packets conntrack calls invalid (a late segment of a connection it already forgot, a reply it
        # could not match) are not dropped here unless they open a connection (a SYN without ACK): dropping
        # a stray SYN-ACK or RST of a host-initiated connection would stall the edge's dial; without a SYN
        # no connection to a host service can be made.
        "ct state invalid tcp flags & (syn | ack) != syn accept",
        f"tcp dport {spec.pgbouncer_port} accept",
        f"{dns} ip daddr @resolvers4 accept",
        f"{dns} ip6 daddr @resolvers6 accept",
        # IPv6 neighbour discovery with the host (harmless when the network has no IPv6).
        "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } accept",
        'counter drop comment "tenant to host"',
    ]
    forward_rules = [
        "iifname != @tenant_bridges accept",
        # Between two containers of one tenant network (an app and its Redis): with br_netfilter on, bridged
        # traffic passes this hook too, and the private-range drop below would cut it. Another tenant's
        # bridge is another interface, so this never lets one tenant reach another.
        "iifname . oifname @same_bridge accept",
        f"{dns} ip daddr @resolvers4 accept",
        f"{dns} ip6 daddr @resolvers6 accept",
        f"{index} ip daddr @index4 accept",
        f"{index} ip6 daddr @index6 accept",
        'fib daddr type { local, broadcast, multicast } counter drop comment "tenant to host address"',
        'ip daddr @blocked4 counter drop comment "tenant to private range"',
        'ip6 daddr @blocked6 counter drop comment "tenant to private range"',
    ]
    if spec.egress.kind == "cidrs":
        forward_rules += ["ip daddr @allowed4 accept", "ip6 daddr @allowed6 accept"]
    if spec.egress.kind != "public":
        forward_rules.append('counter drop comment "tenant egress policy"')
    return {"input": input_rules, "forward": forward_rules}


def content_hash(spec: FirewallSpec) -> str:
    return hashlib.sha256("\n".join(_body(spec)).encode()).hexdigest()[:16]


def comment(spec: FirewallSpec) -> str:
    return f"coltsfoot {spec.instance_id} config={config_fingerprint(spec)} content={content_hash(spec)}"


def ruleset(spec: FirewallSpec) -> str:
    """The text for `nft -f -`: (re)create this installation's table, in one transaction, and nothing else."""
    name = f"{FAMILY} {spec.table}"
    lines = [
        f"# Coltsfoot host firewall for instance {spec.instance_id} (egress: {spec.egress}).",
        "# Generated by drivers/firewall.py; re-applying replaces the table atomically.",
        f"table {name}",
        f"delete table {name}",
        f"table {name} {{",
        f'\tcomment "{comment(spec)}"',
        *_body(spec),
        "}",
    ]
    return "\n".join(lines) + "\n"


def removal(table: str) -> str:
    """The text for `nft -f -` that removes the table if it exists (and only it)."""
    return f"table {FAMILY} {table}\ndelete table {FAMILY} {table}\n"


def expected_rules(spec: FirewallSpec) -> dict[str, int]:
    """How many rules each chain of the rendered table has."""
    return {name: len(rules) for name, rules in _chains(spec).items()}


# --- what is installed -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Installed:
    """The table as nft lists it: its comment and the number of rules per chain."""

    comment: str
    rules: dict[str, int]

    def field(self, key: str) -> str:
        for word in self.comment.split():
            if word.startswith(f"{key}="):
                return word.partition("=")[2]
        return ""


def installed_parse(listing: str) -> Installed | None:
    """`nft list table inet NAME` output -> Installed. Text, not `-j`: nft 1.0.6's JSON leaves out comments.
    A rule is any line of a chain block but its `type ... hook` line."""
    table_comment: str | None = None
    rules: dict[str, int] = {}
    chain = ""
    for raw in listing.splitlines():
        line = raw.strip()
        if line.startswith("table "):
            table_comment = ""
        elif table_comment == "" and not rules and line.startswith('comment "') and raw.startswith("\tcomment"):
            table_comment = line.removeprefix('comment "').removesuffix('"')
        elif line.startswith("chain ") and line.endswith("{"):
            chain = line.split()[1]
            rules[chain] = 0
        elif chain and line == "}":
            chain = ""
        elif chain and line and not line.startswith("type "):
            rules[chain] += 1
    if table_comment is None:
        return None
    return Installed(comment=table_comment, rules=rules)


def problem(spec: FirewallSpec, found: Installed | None, *, exact: bool = False) -> str | None:
    """Why the installed table is not the one `spec` describes (None: it is). Without `exact`, only the
    configuration and the rules are compared (not the run-time sets), which needs no podman or DNS."""
    if found is None:
        return f"table {FAMILY} {spec.table} is missing"
    if found.field("config") != config_fingerprint(spec):
        return f"table {FAMILY} {spec.table} was made for another configuration"
    if found.rules != expected_rules(spec):
        return f"table {FAMILY} {spec.table} has rules {found.rules}, expected {expected_rules(spec)}"
    if exact and found.field("content") != content_hash(spec):
        return f"table {FAMILY} {spec.table} is out of date (tenant networks or index addresses changed)"
    return None


# --- nft ---------------------------------------------------------------------------------------------------


def _nft(nft: str, args: list[str], *, stdin: str | None = None, timeout: float = NFT_TIMEOUT_SECONDS) -> str:
    argv = [nft, *args]
    try:
        completed = subprocess.run(
            argv, check=True, capture_output=True, text=True, timeout=timeout, input=stdin if stdin else ""
        )
    except FileNotFoundError:
        raise FirewallError(f"{nft} not found: install Debian's nftables package (scripts/bootstrap.sh)") from None
    except subprocess.TimeoutExpired:
        raise FirewallError(f"nft {' '.join(args)} did not finish within {timeout:.0f}s") from None
    except subprocess.CalledProcessError as exc:
        stderr = exc.stderr or ""
        last = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit status {exc.returncode}"
        raise FirewallError(f"nft {' '.join(args)} failed: {last[:500]}", stderr=stderr) from None
    return completed.stdout


def apply(spec: FirewallSpec, *, nft: str = "nft", timeout: float = NFT_TIMEOUT_SECONDS) -> None:
    """Install or replace this installation's table (one transaction)."""
    _nft(nft, ["-f", "-"], stdin=ruleset(spec), timeout=timeout)
    logger.info(
        "firewall table applied",
        extra={"table": spec.table, "egress": str(spec.egress), "bridges": ",".join(sorted(spec.bridges))},
    )


def remove(table: str, *, nft: str = "nft", timeout: float = NFT_TIMEOUT_SECONDS) -> None:
    """Remove the table if it exists; nothing else is touched."""
    if not table.startswith(TABLE_PREFIX) or not _INSTANCE_RE.match(table.removeprefix(TABLE_PREFIX)):
        raise ValueError(f"not a Coltsfoot table: {table!r}")
    _nft(nft, ["-f", "-"], stdin=removal(table), timeout=timeout)
    logger.info("firewall table removed", extra={"table": table})


def installed(table: str, *, nft: str = "nft", timeout: float = NFT_TIMEOUT_SECONDS) -> Installed | None:
    """The installed table, or None if there is none. Raises FirewallError if nft cannot be asked."""
    try:
        listing = _nft(nft, ["list", "table", FAMILY, table], timeout=timeout)
    except FirewallError as exc:
        if "No such file or directory" in exc.stderr:
            return None
        raise
    return installed_parse(listing)


def table_names(*, nft: str = "nft", timeout: float = NFT_TIMEOUT_SECONDS) -> list[str]:
    """Every `family name` nft lists (for tests and diagnostics)."""
    listing = _nft(nft, ["list", "tables"], timeout=timeout)
    return [line.removeprefix("table ").strip() for line in listing.splitlines() if line.startswith("table ")]
