"""Look at the certificate the edge presents for a name: the domains' certificate status and expiry.

The probe is an ordinary TLS handshake with the edge's HTTPS listener and that SNI. With on-demand
issuance it is also what makes Caddy get the certificate as soon as a domain is verified, instead of at
the first visitor's handshake. It does not verify the chain (the issuer may be Caddy's internal CA); it
reports what was presented and whether it covers the name.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.x509.oid import NameOID

from core.faults import InfrastructureError


class CertificateProbeError(InfrastructureError):
    """No certificate could be had for the name now (refused handshake, edge unreachable)."""

    transient = True


@dataclass(frozen=True)
class Certificate:
    not_after: datetime
    issuer: str
    names: tuple[str, ...]

    def covers(self, hostname: str) -> bool:
        return hostname.lower() in self.names


def parse_certificate(der: bytes) -> Certificate:
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(name.lower() for name in san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = ()
    issuer = ", ".join(str(attr.value) for attr in cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME))
    return Certificate(not_after=cert.not_valid_after_utc, issuer=issuer[:300], names=names)


def certificate_probe(address: str, hostname: str, *, timeout: float) -> Certificate:
    """Handshake with `address` (`host:port`) sending `hostname` as SNI; the certificate presented."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if host in ("0.0.0.0", "::"):  # noqa: S104 - a wildcard listen address is dialled on loopback
        host = "127.0.0.1"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # what is presented is the question, not who signed it
    try:
        with (
            socket.create_connection((host, int(port)), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=hostname) as conn,
        ):
            der = conn.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        raise CertificateProbeError(f"no certificate for {hostname} at {address}: {type(exc).__name__}") from exc
    if not der:
        raise CertificateProbeError(f"no certificate for {hostname} at {address}")
    return parse_certificate(der)
