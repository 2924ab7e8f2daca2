"""DNS lookups for the ownership checks of custom domains, through dnspython.

The resolver is `COLTSFOOT_DNS_RESOLVER` (`host:port`; empty: the system's resolvers from
/etc/resolv.conf), so tests point it at a local authoritative server and production at whatever the
machine uses. Every lookup has a hard time bound: a slow or dead resolver is a transient error, never
a hung worker.
"""

from __future__ import annotations

import ipaddress
import logging

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from core.faults import InfrastructureError

logger = logging.getLogger(__name__)

# A TXT answer larger than this is not a challenge record: look at no more of it.
MAX_TXT_VALUES = 20
MAX_TXT_VALUE_LENGTH = 255


class DnsLookupError(InfrastructureError):
    """The resolver could not answer (timed out, unreachable, SERVFAIL): asking again later may work."""

    transient = True


def parse_resolver(address: str) -> tuple[str, int]:
    """`host:port` (IPv6 as `[addr]:port`; the port defaults to 53) as an IP address and a port.

    Raises ValueError for anything else: the resolver is dialled by address, never by name."""
    text = address.strip()
    host, port = text, "53"
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"invalid DNS resolver {address!r}: expected host:port")
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"invalid DNS resolver {address!r}: expected an IP address and a port") from None
    if not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"invalid DNS resolver {address!r}: bad port")
    return str(ip), int(port)


def make_resolver(address: str, *, timeout: float) -> dns.resolver.Resolver:
    """A resolver for `address` (see `parse_resolver`), or the system's when it is empty."""
    if address:
        host, port = parse_resolver(address)
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [host]
        resolver.port = port
    else:
        resolver = dns.resolver.Resolver()
    resolver.timeout = timeout
    resolver.lifetime = timeout
    return resolver


def txt_lookup(name: str, *, resolver: str, timeout: float) -> list[str]:
    """The TXT values published at `name` (each record's strings joined, as RFC 7208 reads them), or []
    when the name or the record does not exist. Raises DnsLookupError when no answer could be had."""
    try:
        qname = dns.name.from_text(name)
    except dns.exception.DNSException as exc:
        raise ValueError(f"not a DNS name: {name!r}") from exc
    try:
        answer = make_resolver(resolver, timeout=timeout).resolve(
            qname, dns.rdatatype.TXT, search=False, raise_on_no_answer=False, lifetime=timeout
        )
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.resolver.LifetimeTimeout as exc:
        raise DnsLookupError(f"DNS lookup of {name} timed out after {timeout:g}s") from exc
    except dns.resolver.NoNameservers as exc:
        raise DnsLookupError(f"no DNS server answered for {name}") from exc
    except dns.exception.DNSException as exc:
        raise DnsLookupError(f"DNS lookup of {name} failed: {type(exc).__name__}") from exc
    values: list[str] = []
    for record in list(answer.rrset or [])[:MAX_TXT_VALUES]:
        strings = getattr(record, "strings", ())
        value = b"".join(strings).decode("utf-8", errors="replace")
        values.append(value[:MAX_TXT_VALUE_LENGTH])
    return values
