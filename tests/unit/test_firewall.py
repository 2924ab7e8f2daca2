"""The host firewall's ruleset builder and its nft seam. Hermetic: nft is never run (the listing below was
captured from nft 1.0.6 for the same spec, with the comment line substituted)."""

from __future__ import annotations

import ipaddress
import subprocess
import time
from typing import Any
from unittest import mock

import pytest

from drivers import firewall
from drivers import podman
from provisioning import firewall as workflow

RESOLVER = ipaddress.ip_address("10.255.255.53")
RESOLVER6 = ipaddress.ip_address("fd00::53")
INDEX = ipaddress.ip_address("151.101.0.223")


def spec(egress: str = "public", **overrides: Any) -> firewall.FirewallSpec:
    values: dict[str, Any] = {
        "instance_id": "inst-1",
        "egress": firewall.egress_parse(egress),
        "pgbouncer_port": 6433,
        "resolvers": (RESOLVER,),
        "bridges": ("cni-podman3", "cni-podman1"),
        "index_hosts": ("pypi.org", "files.pythonhosted.org"),
        "index_addresses": (INDEX,),
    }
    values.update(overrides)
    return firewall.FirewallSpec(**values)


def chain(text: str, name: str) -> list[str]:
    """The rule lines of a chain of a rendered ruleset, in order."""
    lines = text.splitlines()
    start = lines.index(f"\tchain {name} {{")
    end = lines.index("\t}", start)
    return [line.strip() for line in lines[start + 2 : end]]


def set_elements(text: str, name: str) -> str:
    lines = text.splitlines()
    start = lines.index(f"\tset {name} {{")
    end = lines.index("\t}", start)
    return " ".join(line.strip() for line in lines[start:end] if "elements" in line)


# --- the policy setting ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "kind"), [("public", "public"), ("", "public"), (" NONE ", "none")])
def test_egress_keywords(value: str, kind: str):
    assert firewall.egress_parse(value).kind == kind


def test_egress_cidr_list_normalises_and_accepts_bare_addresses():
    policy = firewall.egress_parse("198.51.100.0/24, 203.0.113.7 ,2001:db8::/32,198.51.100.9/24")
    assert policy.kind == "cidrs"
    assert [str(n) for n in policy.networks] == ["198.51.100.0/24", "203.0.113.7/32", "2001:db8::/32"]
    assert str(policy) == "198.51.100.0/24,203.0.113.7/32,2001:db8::/32"


@pytest.mark.parametrize("value", ["everything", "10.0.0.0/33", "198.51.100.0/24,nope", ",,"])
def test_egress_rejects_what_is_not_a_policy(value: str):
    with pytest.raises(ValueError, match="COLTSFOOT_TENANT_EGRESS"):
        firewall.egress_parse(value)


# --- the ruleset ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("egress", ["public", "none", "198.51.100.0/24"])
def test_every_policy_drops_private_link_local_loopback_and_host_addresses(egress: str):
    text = firewall.ruleset(spec(egress))
    blocked4 = set_elements(text, "blocked4")
    for network in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16", "127.0.0.0/8"):
        assert network in blocked4
    blocked6 = set_elements(text, "blocked6")
    for network in ("fe80::/10", "fc00::/7", "::/127", "::ffff:0:0/96"):
        assert network in blocked6
    forward = chain(text, "forward")
    assert 'ip daddr @blocked4 counter drop comment "tenant to private range"' in forward
    assert 'ip6 daddr @blocked6 counter drop comment "tenant to private range"' in forward
    assert any(rule.startswith("fib daddr type { local, broadcast, multicast }") and "drop" in rule for rule in forward)


def test_documentation_ranges_are_public_for_the_tests():
    blocked = [ipaddress.ip_network(n) for n in firewall.BLOCKED_V4]
    for address in ("198.51.100.7", "203.0.113.7"):
        assert not any(ipaddress.ip_address(address) in network for network in blocked)


def test_public_policy_accepts_what_is_left():
    forward = chain(firewall.ruleset(spec("public")), "forward")
    assert forward[-1] == 'ip6 daddr @blocked6 counter drop comment "tenant to private range"'
    assert not any("egress policy" in rule for rule in forward)


def test_none_policy_drops_all_other_forwarded_traffic():
    text = firewall.ruleset(spec("none"))
    forward = chain(text, "forward")
    assert forward[-1] == 'counter drop comment "tenant egress policy"'
    assert "set allowed4" not in text


def test_cidr_policy_accepts_only_its_networks_after_the_private_drops():
    text = firewall.ruleset(spec("198.51.100.0/24,2001:db8::/32"))
    forward = chain(text, "forward")
    assert "198.51.100.0/24" in set_elements(text, "allowed4")
    assert "2001:db8::/32" in set_elements(text, "allowed6")
    allowed = forward.index("ip daddr @allowed4 accept")
    # An allow-list entry can never reopen a private range: those drops come first.
    assert forward.index('ip daddr @blocked4 counter drop comment "tenant to private range"') < allowed
    assert forward[-1] == 'counter drop comment "tenant egress policy"'


@pytest.mark.parametrize("egress", ["public", "none", "198.51.100.0/24"])
def test_dns_to_the_hosts_resolvers_is_accepted_before_any_drop(egress: str):
    text = firewall.ruleset(spec(egress, resolvers=(RESOLVER, RESOLVER6)))
    assert "10.255.255.53" in set_elements(text, "resolvers4")
    assert "fd00::53" in set_elements(text, "resolvers6")
    for name in ("input", "forward"):
        rules = chain(text, name)
        dns = rules.index("meta l4proto { tcp, udp } th dport 53 ip daddr @resolvers4 accept")
        first_drop = next(i for i, rule in enumerate(rules) if "drop" in rule)
        assert dns < first_drop


@pytest.mark.parametrize("egress", ["none", "198.51.100.0/24"])
def test_the_package_index_stays_reachable_on_80_and_443(egress: str):
    text = firewall.ruleset(spec(egress))
    assert "151.101.0.223" in set_elements(text, "index4")
    forward = chain(text, "forward")
    index = forward.index("tcp dport { 80, 443 } ip daddr @index4 accept")
    assert index < forward.index('counter drop comment "tenant egress policy"')


def test_to_the_host_only_pgbouncer_dns_and_replies():
    rules = chain(firewall.ruleset(spec(pgbouncer_port=7777)), "input")
    assert rules[0] == "iifname != @tenant_bridges accept"
    assert "ct state established,related accept" in rules
    # A connection attempt that conntrack finds invalid is dropped like any other.
    assert "ct state invalid tcp flags & (syn | ack) != syn accept" in rules
    assert "tcp dport 7777 accept" in rules
    assert not any("dport 6433" in rule for rule in rules)
    assert rules[-1] == 'counter drop comment "tenant to host"'
    accepted_ports = [rule for rule in rules if "dport" in rule]
    assert accepted_ports == [
        "tcp dport 7777 accept",
        "meta l4proto { tcp, udp } th dport 53 ip daddr @resolvers4 accept",
        "meta l4proto { tcp, udp } th dport 53 ip6 daddr @resolvers6 accept",
    ]


def test_only_this_installations_bridges_are_filtered():
    text = firewall.ruleset(spec(bridges=("cni-podman3", "cni-podman1", "cni-podman3")))
    assert set_elements(text, "tenant_bridges") == 'elements = { "cni-podman1", "cni-podman3" }'
    assert chain(text, "forward")[0] == "iifname != @tenant_bridges accept"
    empty = firewall.ruleset(spec(bridges=()))
    assert set_elements(empty, "tenant_bridges") == ""  # no elements: nft rejects an empty element list


def test_the_ruleset_recreates_only_its_own_table_in_one_text():
    text = firewall.ruleset(spec())
    statements = [line for line in text.splitlines() if line and not line.startswith(("#", "\t", "}"))]
    assert statements == [
        "table inet coltsfoot-inst-1",
        "delete table inet coltsfoot-inst-1",
        "table inet coltsfoot-inst-1 {",
    ]
    assert "flush" not in text
    assert firewall.removal("coltsfoot-inst-1") == "table inet coltsfoot-inst-1\ndelete table inet coltsfoot-inst-1\n"


def test_the_same_spec_renders_the_same_text():
    first = spec(bridges=("cni-podman1", "cni-podman3"), index_addresses=(INDEX, RESOLVER))
    again = spec(bridges=("cni-podman3", "cni-podman1"), index_addresses=(RESOLVER, INDEX))
    assert firewall.ruleset(first) == firewall.ruleset(again)
    assert firewall.ruleset(spec("none")) != firewall.ruleset(spec("public"))


def test_the_comment_fingerprints_configuration_and_content_separately():
    base = spec()
    more_bridges = spec(bridges=("cni-podman1", "cni-podman3", "cni-podman9"))
    assert firewall.config_fingerprint(base) == firewall.config_fingerprint(more_bridges)
    assert firewall.content_hash(base) != firewall.content_hash(more_bridges)
    assert firewall.config_fingerprint(base) != firewall.config_fingerprint(spec(pgbouncer_port=7000))
    assert firewall.config_fingerprint(base) != firewall.config_fingerprint(spec("none"))


def test_table_names_per_instance():
    assert firewall.table_name("it-gw0-a1977d4c") == "coltsfoot-it-gw0-a1977d4c"
    assert (
        firewall.table_name("3f2a7a4e-2b9a-4c1e-9d0f-5a2b8c7d6e1f") == "coltsfoot-3f2a7a4e-2b9a-4c1e-9d0f-5a2b8c7d6e1f"
    )
    odd = firewall.table_name('x"; flush ruleset')
    assert odd.startswith("coltsfoot-")
    assert '"' not in odd
    assert " " not in odd
    assert firewall.table_name("a") != firewall.table_name("b")


@pytest.mark.parametrize("bridge", ['cni"; drop', "x" * 16, ""])
def test_interface_names_are_checked(bridge: str):
    with pytest.raises(ValueError, match="interface"):
        spec(bridges=(bridge,))


def test_resolvers_from_resolv_conf_skip_loopback_and_comments():
    text = (
        "# comment\nnameserver 127.0.0.53\nnameserver 10.255.255.53 # site\nsearch example\nnameserver fe80::1%eth0\n"
    )
    assert firewall.resolvers_parse(text) == (RESOLVER, ipaddress.ip_address("fe80::1"))


# --- what is installed -----------------------------------------------------------------------------------

CAPTURED = """table inet coltsfoot-fwtry-1 {
\tcomment "COMMENT"
\tset tenant_bridges {
\t\ttype ifname
\t\telements = { "cni-podman7" }
\t}

\tset same_bridge {
\t\ttype ifname . ifname
\t\telements = { "cni-podman7" . "cni-podman7" }
\t}

\tset blocked4 {
\t\ttype ipv4_addr
\t\tflags interval
\t\tauto-merge
\t\telements = { 0.0.0.0/8, 10.0.0.0/8,
\t\t\t     100.64.0.0/10, 127.0.0.0/8 }
\t}

\tchain input {
\t\ttype filter hook input priority filter - 10; policy accept;
\t\tiifname != @tenant_bridges accept
\t\tct state established,related accept
\t\tct state invalid tcp flags != syn / syn,ack accept
\t\ttcp dport 6433 accept
\t\tmeta l4proto { tcp, udp } th dport 53 ip daddr @resolvers4 accept
\t\tmeta l4proto { tcp, udp } th dport 53 ip6 daddr @resolvers6 accept
\t\ticmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } accept
\t\tcounter packets 0 bytes 0 drop comment "tenant to host"
\t}

\tchain forward {
\t\ttype filter hook forward priority filter - 10; policy accept;
\t\tiifname != @tenant_bridges accept
\t\tiifname . oifname @same_bridge accept
\t\tmeta l4proto { tcp, udp } th dport 53 ip daddr @resolvers4 accept
\t\tmeta l4proto { tcp, udp } th dport 53 ip6 daddr @resolvers6 accept
\t\ttcp dport { 80, 443 } ip daddr @index4 accept
\t\ttcp dport { 80, 443 } ip6 daddr @index6 accept
\t\tfib daddr type { local, broadcast, multicast } counter packets 0 bytes 0 drop comment "tenant to host address"
\t\tip daddr @blocked4 counter packets 0 bytes 0 drop comment "tenant to private range"
\t\tip6 daddr @blocked6 counter packets 0 bytes 0 drop comment "tenant to private range"
\t\tcounter packets 0 bytes 0 drop comment "tenant egress policy"
\t}
}
"""


def captured_spec(**overrides: Any) -> firewall.FirewallSpec:
    values: dict[str, Any] = {
        "instance_id": "fwtry-1",
        "egress": firewall.egress_parse("none"),
        "pgbouncer_port": 6433,
        "bridges": ("cni-podman7",),
        "resolvers": (RESOLVER,),
    }
    values.update(overrides)
    return firewall.FirewallSpec(**values)


def captured(for_spec: firewall.FirewallSpec) -> str:
    return CAPTURED.replace("COMMENT", firewall.comment(for_spec))


def test_an_installed_table_that_matches_is_current():
    wanted = captured_spec()
    found = firewall.installed_parse(captured(wanted))
    assert found is not None
    assert found.rules == {"input": 8, "forward": 10} == firewall.expected_rules(wanted)
    assert firewall.problem(wanted, found, exact=True) is None


def test_stale_tampered_or_missing_tables_are_named():
    wanted = captured_spec()
    assert "missing" in str(firewall.problem(wanted, None))
    other_policy = firewall.installed_parse(captured(captured_spec(egress=firewall.egress_parse("public"))))
    assert "another configuration" in str(firewall.problem(wanted, other_policy))
    flushed = firewall.installed_parse(captured(wanted).replace("\t\ttcp dport 6433 accept\n", ""))
    assert "expected" in str(firewall.problem(wanted, flushed))
    new_bridge = captured_spec(bridges=("cni-podman7", "cni-podman8"))
    found = firewall.installed_parse(captured(wanted))
    assert firewall.problem(new_bridge, found) is None  # the configuration is the same ...
    assert "out of date" in str(firewall.problem(new_bridge, found, exact=True))  # ... the content is not


# --- the nft seam ------------------------------------------------------------------------------------------


def test_apply_feeds_the_ruleset_to_nft_on_stdin():
    with mock.patch.object(subprocess, "run", autospec=True) as run:
        run.return_value = subprocess.CompletedProcess([], 0, "", "")
        firewall.apply(spec("none"), nft="/usr/sbin/nft")
    run.assert_called_once_with(
        ["/usr/sbin/nft", "-f", "-"],
        check=True,
        capture_output=True,
        text=True,
        timeout=firewall.NFT_TIMEOUT_SECONDS,
        input=firewall.ruleset(spec("none")),
    )


def test_remove_refuses_tables_that_are_not_ours():
    with mock.patch.object(subprocess, "run", autospec=True) as run:
        with pytest.raises(ValueError, match="not a Coltsfoot table"):
            firewall.remove("filter")
        run.return_value = subprocess.CompletedProcess([], 0, "", "")
        firewall.remove("coltsfoot-inst-1")
    assert run.call_args.kwargs["input"] == firewall.removal("coltsfoot-inst-1")


def test_nft_failures_are_firewall_errors():
    failure = subprocess.CalledProcessError(1, ["nft"], "", "Error: Could not process rule: Operation not permitted\n")
    with (
        mock.patch.object(subprocess, "run", autospec=True, side_effect=failure),
        pytest.raises(firewall.FirewallError, match="Operation not permitted") as caught,
    ):
        firewall.apply(spec())
    assert caught.value.transient is False
    with (
        mock.patch.object(subprocess, "run", autospec=True, side_effect=FileNotFoundError("nft")),
        pytest.raises(firewall.FirewallError, match="nftables"),
    ):
        firewall.apply(spec())


def test_a_missing_table_is_none_not_an_error():
    missing = subprocess.CalledProcessError(1, ["nft"], "", "Error: No such file or directory\nlist table inet x\n")
    with mock.patch.object(subprocess, "run", autospec=True, side_effect=missing):
        assert firewall.installed("coltsfoot-inst-1") is None


# --- the workflow side -----------------------------------------------------------------------------------


def test_index_hosts_follow_the_pip_index_setting(settings: Any):
    settings.BUILD_EGRESS_HOSTS = []
    settings.BUILD_PIP_INDEX_URL = ""
    assert workflow.index_hosts() == ("pypi.org", "files.pythonhosted.org")
    settings.BUILD_PIP_INDEX_URL = "https://user:secret@mirror.example.com:8443/simple/"
    settings.BUILD_EGRESS_HOSTS = ["files.example.com"]
    assert workflow.index_hosts() == ("mirror.example.com", "files.example.com")


def test_ready_reports_the_firewall_when_the_platform_manages_it(db: None, client: Any, settings: Any):
    settings.FIREWALL = True
    with (
        mock.patch("config.api._check_broker", autospec=True, return_value=True),
        mock.patch("caddy.client.CaddyClient.ping", autospec=True, return_value=True),
        mock.patch.object(firewall, "installed", autospec=True, return_value=None),
    ):
        response = client.get("/api/v1/ready")
    assert response.status_code == 503
    assert response.json()["checks"] == {"database": True, "broker": True, "caddy": True, "firewall": False}


def test_network_ensure_does_not_touch_nft_when_unmanaged(settings: Any):
    settings.FIREWALL = False
    with mock.patch.object(firewall, "apply", autospec=True) as apply:
        workflow.firewall_ensure_for_network()
        assert workflow.firewall_sync(force=True) is None
    apply.assert_not_called()


def test_reconcile_syncs_at_most_every_interval_unless_a_network_was_recreated(settings: Any):
    settings.FIREWALL = True
    settings.FIREWALL_SYNC_SECONDS = 30
    workflow._last_sync.clear()
    with mock.patch.object(workflow, "firewall_apply", autospec=True) as apply:
        assert workflow.firewall_sync() is True
        assert workflow.firewall_sync() is None  # synced a moment ago
        assert workflow.firewall_sync(force=True) is True  # the pass recreated a network
        apply.side_effect = firewall.FirewallError("nft -f - failed")
        assert workflow.firewall_sync(force=True) is False  # logged, never raised
    assert apply.call_count == 3


def test_apply_lists_this_instances_bridges_and_skips_a_current_table(settings: Any, tmp_path: Any):
    settings.FIREWALL = True
    settings.INSTANCE_ID = "inst-1"
    settings.DATA_DIR = tmp_path
    settings.TENANT_EGRESS = "none"
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 10.255.255.53\n")
    settings.FIREWALL_RESOLV_CONF = str(resolv)
    with (
        mock.patch.object(
            podman, "network_interfaces_with_label", autospec=True, return_value={"cf-t-1": "cni-podman4"}
        ) as networks,
        mock.patch.object(workflow, "resolve_cached", autospec=True, return_value=(INDEX,)),
        mock.patch.object(firewall, "installed", autospec=True, return_value=None) as installed,
        mock.patch.object(firewall, "apply", autospec=True) as apply,
    ):
        applied = workflow.firewall_apply()
        networks.assert_called_once_with("coltsfoot.instance", "inst-1")
        assert applied.bridges == ("cni-podman4",)
        assert applied.egress.kind == "none"
        assert applied.resolvers == (RESOLVER,)
        apply.assert_called_once_with(applied, nft=settings.NFT_BIN)
        # Installed exactly as wanted: nothing to do.
        installed.return_value = firewall.Installed(firewall.comment(applied), firewall.expected_rules(applied))
        workflow.firewall_apply()
        assert apply.call_count == 1


def test_index_addresses_are_looked_up_once_a_minute():
    workflow._resolved.clear()
    with mock.patch.object(workflow, "resolve", autospec=True, return_value=(INDEX,)) as resolve:
        assert workflow.resolve_cached(("pypi.org",)) == (INDEX,)
        assert workflow.resolve_cached(("pypi.org",)) == (INDEX,)
        resolve.assert_called_once_with(("pypi.org",))
        with mock.patch.object(time, "monotonic", autospec=True, return_value=time.monotonic() + 61):
            workflow.resolve_cached(("pypi.org",))
    assert resolve.call_count == 2
