"""The log collector: copies every line the web replicas of this installation print into their app's log stream
(`drivers.logstore`), with its timestamp and source (`web.1`, `web.2`, ...). It runs as a process of its own
(`manage.py collect_logs`, supervised by devstack like the worker), never inside a request.

How it reads: podman (conmon) already writes each container's output to a k8s-file log (`<RFC 3339 time>
<stream> <P|F> <text>`, one record per line or per piece of a long line), so the collector tails those files
directly: no process per container (a `podman logs --follow` per replica would cost a podman process, ~30 MB,
each), one `podman ps` per `LOG_DISCOVER_SECONDS` to find containers and one `podman inspect` per new one for
its log's path. What it has read of each file (inode and byte offset) is stored in Redis in the same script call
that appends the lines, so a collector that is killed and restarted resumes exactly there: nothing lost, nothing
twice. A container replaced under the same name has a new id and a new file, read from its start. When conmon
replaces a file that reached `--log-opt=max-size` (a new inode at the same path), the old one is read to its end
through the descriptor still open before the new one is opened; a container that is removed is read to the end
the same way, so a crashed replica's last lines are kept after the reconciler replaces it.

Each line is normalised (`logstore.normalise`: last `\\r` state, NUL escaped, the app's secrets and API tokens
redacted, cut to LOG_MAX_LINE_BYTES). A line longer than that is cut as it is read: at most one line's worth is
ever held in memory per container, whatever a tenant prints, and at most READ_BYTES are read per container per
round, so one flooding replica cannot starve the others.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import signal
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from types import FrameType
from typing import BinaryIO

from django.conf import settings

from drivers import logstore
from drivers import podman
from platform_apps.models import App
from provisioning.runtime import resolve_for_runtime

logger = logging.getLogger(__name__)

INSTANCE_LABEL = "coltsfoot.instance"
READ_BYTES = 256 * 1024
SECRETS_TTL_SECONDS = 30.0
SECRET_MARGIN = 1024
_REPLICA_RE = re.compile(r"-([0-9]{1,4})$")
_TS_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")


def parse_timestamp(value: str) -> str:
    """conmon's RFC 3339 time with nanoseconds and an offset -> the store's UTC timestamp ("" if unparsable)."""
    match = _TS_RE.match(value)
    if match is None:
        return ""
    whole, fraction, zone = match.groups()
    micros = (fraction or "0")[:6].ljust(6, "0")
    moment = datetime.fromisoformat(f"{whole}.{micros}{'+00:00' if zone == 'Z' else zone}")
    return logstore.timestamp(moment)


def source_of(container: podman.ObservedContainer) -> str | None:
    """`web.<n>` for replica n-1 of a deployment (containers `tsl-<deployment>-<index>`); None for anything else
    (release and dependency sandboxes: the pipeline writes their output itself, redacted with their secrets)."""
    if container.labels.get("coltsfoot.role") != "web":
        return None
    match = _REPLICA_RE.search(container.name)
    return f"web.{int(match.group(1)) + 1}" if match else None


@dataclasses.dataclass(frozen=True)
class Record:
    ts: str
    text: str
    cut: int = 0  # bytes of the line never read into memory


class K8sFileReader:
    """Reads complete lines out of one k8s-file log. P records are joined until their F record; a carriage return
    restarts the line (a progress bar keeps only its last state, as a terminal shows it), and a line is cut at
    `max_line_bytes` as it grows, so memory stays bounded whatever a tenant prints without a newline. `feed`
    says how far the committed offset may move: only past whole lines (a partial one is read again after a
    restart)."""

    def __init__(self, max_line_bytes: int) -> None:
        self.max_line_bytes = max_line_bytes
        self.pending = bytearray()  # bytes read, not yet a whole record
        self.line = bytearray()  # the line in progress since its last carriage return (bounded)
        self.dropped = 0  # bytes of it beyond max_line_bytes, never held
        self.previous = bytearray()  # the last non-empty state before a carriage return
        self.previous_dropped = 0
        self.line_ts = ""

    def _extend(self, text: bytes) -> None:
        # A margin past the cut, so a secret straddling it is still whole when it is redacted.
        room = max(self.max_line_bytes + SECRET_MARGIN - len(self.line), 0)
        self.line += text[:room]
        self.dropped += max(len(text) - room, 0)

    def _add(self, text: bytes) -> None:
        first, *redraws = text.split(b"\r")
        self._extend(first)
        for part in redraws:
            if self.line or self.dropped:  # a trailing or doubled \r redraws nothing
                self.previous, self.previous_dropped = self.line, self.dropped
            self.line, self.dropped = bytearray(), 0
            self._extend(part)

    def feed(self, data: bytes) -> tuple[list[tuple[str, str, int]], int]:
        """Take bytes read from the file; returns the complete lines as (timestamp, text, bytes cut off) and how
        many bytes they advance the committed offset by."""
        self.pending += data
        lines: list[tuple[str, str, int]] = []
        advanced = 0
        consumed = 0
        while (end := self.pending.find(b"\n", consumed)) >= 0:
            raw = bytes(self.pending[consumed:end])
            consumed = end + 1
            ts, _, rest = raw.partition(b" ")
            _stream, _, rest = rest.partition(b" ")
            tag, _, text = rest.partition(b" ")
            if not self.line_ts:
                self.line_ts = ts.decode("ascii", errors="replace")
            self._add(text)
            if tag == b"P":
                continue
            line, dropped = self.line, self.dropped
            if not line and not dropped:
                line, dropped = self.previous, self.previous_dropped
            lines.append((self.line_ts, line.decode("utf-8", errors="replace"), dropped))
            self.line, self.dropped, self.previous, self.previous_dropped = bytearray(), 0, bytearray(), 0
            self.line_ts = ""
            advanced = consumed
        del self.pending[:consumed]
        return lines, advanced


class Tail:
    """One container's log being followed."""

    def __init__(
        self, container: podman.ObservedContainer, source: str, path: str, *, offset: str, max_line_bytes: int
    ) -> None:
        self.container_id = container.id
        self.name = container.name
        self.app_id = container.labels.get("coltsfoot.app", "")
        self.deployment_id = container.labels.get("coltsfoot.deployment", "")
        self.source = source
        self.path = path
        self.reader = K8sFileReader(max_line_bytes)
        self.file: BinaryIO | None = None
        self.inode = 0
        self.offset = 0  # committed: the byte after the last complete line handed out
        self.position = 0  # read up to here (offset + what the reader holds)
        self.gone = False  # podman no longer lists the container: read to the end, then forget it
        self.committed = ""  # the offset last stored
        saved_inode, _, saved_offset = offset.partition(":")
        self._open(resume=(int(saved_inode or 0), int(saved_offset or 0)))

    @property
    def offset_value(self) -> str:
        return f"{self.inode}:{self.offset}"

    def _open(self, resume: tuple[int, int] = (0, 0)) -> bool:
        try:
            handle = open(self.path, "rb")  # noqa: SIM115 - held open across rounds on purpose
        except OSError:
            return False
        self.file = handle
        self.inode = os.fstat(handle.fileno()).st_ino
        self.reader = K8sFileReader(self.reader.max_line_bytes)
        start = resume[1] if resume[0] == self.inode else 0
        if start > os.fstat(handle.fileno()).st_size:
            start = 0
        handle.seek(start)
        self.offset = self.position = start
        return True

    def read(self) -> tuple[list[Record], bool]:
        """The complete lines written since the last read (at most READ_BYTES of file), and whether there is more
        to read right away."""
        if self.file is None and not self._open():
            return [], False
        handle = self.file
        if handle is None:
            return [], False
        data = handle.read(READ_BYTES)
        records: list[Record] = []
        if data:
            self.position += len(data)
            lines, advanced = self.reader.feed(data)
            records = [Record(ts, text, cut) for ts, text, cut in lines]
            self.offset += advanced
            if len(data) == READ_BYTES:
                return records, True
        return records, self._moved_on(handle)

    def _moved_on(self, handle: BinaryIO) -> bool:
        """At the end of what this descriptor sees: has conmon moved on to a new file at the path (then open it),
        or truncated this one (then read it again from the start)? True if there is something new to read."""
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            return False  # the container is being removed: what was left has been read
        if current.st_ino != self.inode:
            handle.close()
            self.file = None
            self._open()
            return True
        if current.st_size < self.position:
            handle.seek(0)
            self.reader = K8sFileReader(self.reader.max_line_bytes)
            self.offset = self.position = 0
            return True
        return False

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class Collector:
    """One collector process's state: the tails it follows and the secrets it redacts per app."""

    def __init__(
        self,
        store: logstore.LogStore,
        *,
        instance_id: str,
        max_line_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.instance_id = instance_id
        self.max_line_bytes = max_line_bytes
        self.clock = clock
        self.tails: dict[str, Tail] = {}
        self._secrets: dict[str, tuple[float, tuple[str, ...]]] = {}
        self.lines_collected = 0

    def secrets_of(self, app_id: str) -> tuple[str, ...]:
        cached = self._secrets.get(app_id)
        now = self.clock()
        if cached is not None and now - cached[0] < SECRETS_TTL_SECONDS:
            return cached[1]
        try:
            public_id = uuid.UUID(app_id)
        except ValueError:
            return ()
        app = App.objects.select_related("tenant").filter(public_id=public_id).first()
        values = tuple(resolve_for_runtime(app).secrets.values()) if app is not None else ()
        self._secrets[app_id] = (now, values)
        return values

    def discover(self) -> None:
        """Start following new containers of this installation; mark the ones podman no longer lists."""
        observed = podman.containers_observe(INSTANCE_LABEL, self.instance_id)
        listed = {c.id for c in observed if c.id}
        for tail in self.tails.values():
            tail.gone = tail.container_id not in listed
        new = [c for c in observed if c.id and c.id not in self.tails and source_of(c) is not None]
        if not new:
            return
        paths = podman.container_log_paths([c.id for c in new])
        saved = self.store.offsets()
        for container in new:
            path = paths.get(container.id)
            source = source_of(container)
            if not path or source is None or not container.labels.get("coltsfoot.app"):
                continue
            tail = Tail(container, source, path, offset=saved.get(container.id, ""), max_line_bytes=self.max_line_bytes)
            self.tails[container.id] = tail
            logger.info(
                "following container output",
                extra={"container": container.name, "app_id": tail.app_id, "source": source, "from": tail.offset},
            )

    def collect(self) -> bool:
        """One round over every tail; returns whether any has more to read right away."""
        more = False
        for container_id, tail in list(self.tails.items()):
            records, again = tail.read()
            more = more or again
            self._append(tail, records)
            if tail.gone and not again:
                tail.close()
                del self.tails[container_id]
                self.store.offset_forget([container_id])
                logger.info("container gone; its output is collected", extra={"container": tail.name})
        return more

    def _append(self, tail: Tail, records: list[Record]) -> None:
        secrets = self.secrets_of(tail.app_id) if records else ()
        lines = [
            logstore.Line(
                parse_timestamp(record.ts) or logstore.timestamp(),
                tail.source,
                logstore.normalise(record.text, secrets=secrets, max_bytes=self.max_line_bytes, already_cut=record.cut),
                tail.deployment_id,
            )
            for record in records
        ]
        if not lines and tail.committed == tail.offset_value:
            return
        self.store.append(tail.app_id, lines, offset=(tail.container_id, tail.offset_value))
        tail.committed = tail.offset_value
        self.lines_collected += len(lines)

    def close(self) -> None:
        for tail in self.tails.values():
            tail.close()
        self.tails.clear()


def run_forever(collector: Collector, *, discover_seconds: float, poll_seconds: float) -> None:
    """Discover and collect until SIGTERM or SIGINT; a podman or Redis failure is logged and retried."""
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    next_discover = 0.0
    ready = False
    while not stopping:
        more = False
        try:
            if time.monotonic() >= next_discover:
                next_discover = time.monotonic() + discover_seconds
                collector.discover()
                if not ready:
                    logger.info("log collector ready", extra={"instance": collector.instance_id})
                    ready = True
            more = collector.collect()
        except (podman.PodmanError, logstore.LogStoreError) as exc:
            logger.warning("log collection failed; retrying: %s", exc)
            time.sleep(min(discover_seconds, 2.0))
        if not more:
            time.sleep(poll_seconds)
    collector.close()
    logger.info("log collector stopped", extra={"lines": collector.lines_collected})


def collector_from_settings() -> Collector:
    return Collector(
        logstore.store(), instance_id=str(settings.INSTANCE_ID), max_line_bytes=int(settings.LOG_MAX_LINE_BYTES)
    )
