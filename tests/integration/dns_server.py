"""A small authoritative DNS server for the integration tests (dnslib), on a free UDP port on loopback.

Tests publish records by name (`server.publish_txt(name, value)`), as a tenant would at their DNS host;
every other question gets NXDOMAIN. The platform asks it because the stack's COLTSFOOT_DNS_RESOLVER points
here."""

from __future__ import annotations

import socket
import threading
from typing import Any

from dnslib import QTYPE
from dnslib import RCODE
from dnslib import RR
from dnslib import TXT
from dnslib.server import BaseResolver
from dnslib.server import DNSLogger
from dnslib.server import DNSServer


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Zone(BaseResolver):  # type: ignore[misc]
    def __init__(self) -> None:
        self.txt: dict[str, list[str]] = {}
        self.lock = threading.Lock()
        self.questions: list[str] = []

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        qname = str(request.q.qname).rstrip(".").lower()
        with self.lock:
            self.questions.append(qname)
            values = list(self.txt.get(qname, []))
        if not values:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        if request.q.qtype in (QTYPE.TXT, QTYPE.ANY):
            for value in values:
                reply.add_answer(RR(request.q.qname, QTYPE.TXT, rdata=TXT(value), ttl=1))
        return reply


class LocalDnsServer:
    """Start with `start()`, stop with `stop()`; `address` is the `host:port` for COLTSFOOT_DNS_RESOLVER."""

    def __init__(self) -> None:
        self.zone = _Zone()
        self.port = _free_udp_port()
        self.address = f"127.0.0.1:{self.port}"
        self._server = DNSServer(
            self.zone, address="127.0.0.1", port=self.port, logger=DNSLogger(log="-request,-reply,-truncated")
        )

    def start(self) -> None:
        self._server.start_thread()

    def stop(self) -> None:
        self._server.stop()

    def publish_txt(self, name: str, value: str) -> None:
        with self.zone.lock:
            self.zone.txt.setdefault(name.rstrip(".").lower(), []).append(value)

    def remove(self, name: str) -> None:
        with self.zone.lock:
            self.zone.txt.pop(name.rstrip(".").lower(), None)
