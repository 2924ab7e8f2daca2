"""What a tenant may name as a custom domain, in the one form the platform stores, routes and certifies.

Hostile input by definition: the name ends up in Caddy's config, in a DNS query and in a certificate
request. It is normalised first (Unicode through IDNA 2008 with UTS 46 mapping to punycode, so that
`BÜCHER.de`, `bücher.de` and `xn--bcher-kva.de` are one name; lower case; no trailing dot), then
checked as a plain DNS name: no wildcard, no IP address, no port, at least two labels, not the
platform's own apps domain or a name under it.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata

import dns.exception
import dns.name
from django.conf import settings

MAX_HOSTNAME_LENGTH = 253
# What every label must be once in ASCII (the edge's route builder checks the same again).
_LABEL_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
# A label that mixes these scripts is the classic homograph (a Cyrillic "a", U+0430, in "example"): refused.
_CONFUSABLE_SCRIPTS = frozenset({"LATIN", "CYRILLIC", "GREEK"})


class HostnameRejected(ValueError):
    """Why a name cannot be a custom domain; `code` is the API's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _scripts(label: str) -> set[str]:
    scripts = set()
    for char in label:
        if char.isalpha() and not char.isascii():
            scripts.add(unicodedata.name(char, "UNKNOWN").split(" ")[0])
        elif char.isalpha():
            scripts.add("LATIN")
    return scripts


def hostname_normalise(raw: str) -> str:
    """The stored form of `raw` (punycode, lower case, no trailing dot), or HostnameRejected."""
    text = unicodedata.normalize("NFC", raw.strip())
    if not text:
        raise HostnameRejected("domain.invalid_hostname", "Give a hostname, e.g. www.example.com.")
    if "*" in text:
        raise HostnameRejected("domain.wildcard", "Wildcard names are not supported; add each hostname.")
    if ":" in text or "/" in text or "@" in text:
        raise HostnameRejected("domain.invalid_hostname", "Give only a hostname: no scheme, port, path or user.")
    try:
        ipaddress.ip_address(text.rstrip(".").strip("[]"))
    except ValueError:
        pass
    else:
        raise HostnameRejected("domain.ip_address", "An IP address is not a domain name.")
    for label in text.replace("\u3002", ".").replace("\uff0e", ".").split("."):
        if len(_scripts(label) & _CONFUSABLE_SCRIPTS) > 1:
            raise HostnameRejected(
                "domain.confusable", f"The label {label!r} mixes Latin, Cyrillic or Greek letters (a look-alike)."
            )
    try:
        name = dns.name.from_unicode(text, idna_codec=dns.name.IDNA_2008_Practical)
        ascii_name = name.to_text(omit_final_dot=True).lower()
        # An xn-- label must be valid punycode of a valid IDNA name (else it could never be typed).
        dns.name.from_text(ascii_name).to_unicode(idna_codec=dns.name.IDNA_2008_Strict)
    except (dns.exception.DNSException, UnicodeError) as exc:
        raise HostnameRejected("domain.invalid_hostname", f"Not a valid domain name: {exc}") from None
    if len(ascii_name) > MAX_HOSTNAME_LENGTH:
        raise HostnameRejected("domain.invalid_hostname", f"A hostname is at most {MAX_HOSTNAME_LENGTH} characters.")
    labels = ascii_name.split(".")
    if not all(_LABEL_RE.match(label) for label in labels):
        raise HostnameRejected(
            "domain.invalid_hostname", "Only letters, digits and hyphens in labels separated by dots."
        )
    if labels[-1].isdigit():
        raise HostnameRejected("domain.ip_address", "An IP address is not a domain name.")
    if "." not in ascii_name:
        raise HostnameRejected("domain.invalid_hostname", "Give a fully qualified name, e.g. www.example.com.")
    apps_domain = str(settings.APPS_DOMAIN).lower().rstrip(".")
    if ascii_name == apps_domain or ascii_name.endswith(f".{apps_domain}"):
        raise HostnameRejected(
            "domain.platform_hostname", f"Names under {apps_domain} are the platform's own; the app already has one."
        )
    return ascii_name
