"""The upstream hosts files (drivers/upstream_hosts.py) and the DNS server that answers the edge from them
(devstack's dnsmasq, the real binary): what the edge would resolve an app's name to."""

from __future__ import annotations

import secrets
import socket
import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest

from devstack.services import UpstreamDnsServer
from drivers.upstream_hosts import UpstreamHosts
from drivers.upstream_hosts import upstream_name

APP = uuid.UUID("9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d")


@pytest.fixture
def hosts(tmp_path: Path) -> UpstreamHosts:
    return UpstreamHosts(tmp_path / "upstreams")


def test_a_write_resolves_the_apps_name_to_the_addresses(hosts: UpstreamHosts) -> None:
    hosts.write(APP, ["10.89.0.2", "10.89.0.3", "10.89.0.2"])

    assert hosts.path(APP).read_text() == (
        f"10.89.0.2 {APP}.apps.coltsfoot.internal\n10.89.0.3 {APP}.apps.coltsfoot.internal\n"
    )
    assert hosts.read(APP) == ["10.89.0.2", "10.89.0.3"]
    assert upstream_name(APP) == f"{APP}.apps.coltsfoot.internal"
    # dnsmasq may run as another user: it can read the file, nobody else can write it.
    assert stat.S_IMODE(hosts.path(APP).stat().st_mode) == 0o644


def test_a_rewrite_replaces_the_file_in_one_step_and_leaves_no_temp_file(hosts: UpstreamHosts) -> None:
    hosts.write(APP, ["10.89.0.2"])
    before = hosts.path(APP).stat().st_ino

    hosts.write(APP, ["10.89.0.4"])

    # A new file renamed over the old one (never the old one truncated and rewritten in place).
    assert hosts.path(APP).stat().st_ino != before
    assert hosts.read(APP) == ["10.89.0.4"]
    assert [p.name for p in hosts.dir.iterdir()] == [str(APP)]


def test_a_write_that_fails_halfway_leaves_the_old_file_and_no_temp_file(hosts: UpstreamHosts) -> None:
    hosts.write(APP, ["10.89.0.2"])

    failing = mock.patch("drivers.upstream_hosts.os.replace", autospec=True, side_effect=OSError("disk full"))
    with failing, pytest.raises(OSError, match="disk full"):
        hosts.write(APP, ["10.89.0.4"])

    assert hosts.read(APP) == ["10.89.0.2"]
    assert [p.name for p in hosts.dir.iterdir()] == [str(APP)]


@pytest.mark.parametrize(
    "bad",
    [["10.89.0.2:8000"], ["app.internal"], [""], ["10.89.0.2\n10.0.0.1 evil"], ["10.89.0.256"], "10.89.0.2"],
)
def test_only_ip_addresses_are_written(hosts: UpstreamHosts, bad: list[str]) -> None:
    hosts.write(APP, ["10.89.0.2"])

    with pytest.raises(ValueError, match=r"address|list"):
        hosts.write(APP, bad)

    assert hosts.read(APP) == ["10.89.0.2"]


def test_no_address_leaves_an_empty_file_and_removal_forgets_the_name(hosts: UpstreamHosts) -> None:
    hosts.write(APP, [])
    assert hosts.read(APP) == []

    hosts.remove(APP)
    hosts.remove(APP)  # already gone: fine

    assert hosts.read(APP) is None
    assert hosts.observe() == {}


def test_observe_lists_every_apps_file_and_nothing_else(hosts: UpstreamHosts) -> None:
    other = uuid.uuid4()
    hosts.write(APP, ["10.89.0.2"])
    hosts.write(other, ["fd00::5", "10.89.1.9"])
    (hosts.dir / ".tmp-leftover").write_text("10.0.0.1 x\n")
    (hosts.dir / "README").write_text("not an app's\n")
    (hosts.dir / str(APP).replace("-", "")).write_text("10.0.0.1 y\n")  # a UUID, but not a name we write

    assert hosts.observe() == {APP: ["10.89.0.2"], other: ["fd00::5", "10.89.1.9"]}
    assert UpstreamHosts(hosts.dir / "missing").observe() == {}


# --- the real DNS server ------------------------------------------------------------------------------


def lookup(port: int, name: str) -> tuple[int, list[str]]:
    """(rcode, A record addresses) of a UDP query to 127.0.0.1:port."""
    query_id = secrets.randbelow(0x10000)
    labels = b"".join(len(part).to_bytes(1, "big") + part.encode() for part in name.split("."))
    packet = query_id.to_bytes(2, "big") + b"\x01\x00\x00\x01" + b"\x00" * 6 + labels + b"\x00\x00\x01\x00\x01"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        sock.sendto(packet, ("127.0.0.1", port))
        reply = sock.recv(4096)
    assert reply[:2] == query_id.to_bytes(2, "big")
    rcode, answers = reply[3] & 0x0F, int.from_bytes(reply[6:8], "big")
    offset = len(packet)
    addresses = []
    for _ in range(answers):
        offset += 2  # a compressed name pointer to the question
        rtype, length = (
            int.from_bytes(reply[offset : offset + 2], "big"),
            int.from_bytes(reply[offset + 8 : offset + 10], "big"),
        )
        offset += 10
        if rtype == 1:
            addresses.append(socket.inet_ntoa(reply[offset : offset + length]))
        offset += length
    return rcode, sorted(addresses)


@pytest.fixture
def dns(tmp_path: Path) -> Iterator[UpstreamDnsServer]:
    server = UpstreamDnsServer(tmp_path / "dns", tmp_path / "upstreams")
    with server:
        yield server


def eventually(check: object, timeout: float = 2.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the DNS server did not follow the hosts file"
        time.sleep(0.01)


def test_the_dns_server_answers_from_the_files_as_they_change(dns: UpstreamDnsServer) -> None:
    hosts = UpstreamHosts(dns.hosts_dir)
    name = upstream_name(APP)
    assert lookup(dns.port, name) == (3, [])  # NXDOMAIN: no file yet

    hosts.write(APP, ["10.89.0.2", "10.89.0.3"])
    eventually(lambda: lookup(dns.port, name) == (0, ["10.89.0.2", "10.89.0.3"]))

    hosts.write(APP, ["10.89.0.4"])  # a deploy's switch
    eventually(lambda: lookup(dns.port, name) == (0, ["10.89.0.4"]))

    hosts.remove(APP)  # the app was deleted
    eventually(lambda: lookup(dns.port, name) == (3, []))


def test_the_dns_server_answers_only_platform_names_and_only_on_loopback(dns: UpstreamDnsServer) -> None:
    rcode, addresses = lookup(dns.port, "example.com")
    assert (rcode, addresses) == (5, [])  # REFUSED: never forwarded anywhere
    argv = dns.argv()
    assert "--listen-address=127.0.0.1" in argv
    assert "--bind-interfaces" in argv
    assert {"--no-resolv", "--no-hosts", "--keep-in-foreground"} <= set(argv)
    with open(f"/proc/{dns.pid}/net/udp") as table:
        local = [line.split()[1] for line in table.readlines()[1:]]
    port_hex = f"{dns.port:04X}"
    bound = [address for address in local if address.endswith(f":{port_hex}")]
    assert bound == ["0100007F:" + port_hex]  # 127.0.0.1 only, not 0.0.0.0
