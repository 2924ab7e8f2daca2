"""The app log store: one Redis stream per app, the only module that reads or writes it.

Why a Redis stream: Redis is already the broker, so there is nothing new to run; a stream is an append-only
log whose ids (`<ms>-<seq>`, strictly increasing) are exactly the cursors the API hands out, so resuming
after a cursor (`XRANGE (id`, `XREAD id`) can neither skip nor repeat a line; `XREAD BLOCK` wakes a follower
the moment a line arrives; and trimming the oldest entries is one command. Redis's memory is then the bound
of what tenants print: every app's stream is kept within `max_lines` entries and `max_bytes` bytes of log
text, trimmed exactly, in the same Lua script that appends (so the bound holds after every write, whatever
a tenant prints and however many writers there are).

Keys, all under `prefix` (`coltsfoot:<instance id>:logs`, so two installations sharing one Redis never mix):
- `<prefix>:app:<app uuid>`: the stream; each entry has `t` (ISO 8601 UTC timestamp), `s` (source: `web.1`,
  `release`, `build`, `platform`), `l` (the line, already normalised), `d` (the deployment uuid, or "") and
  `e` (a deployment's final state on the platform event that ends it, else "");
- `<prefix>:bytes:<app uuid>`: the bytes of log text the stream holds (the sum of its entries' field values);
- `<prefix>:offsets`: the collector's read position per container log (a hash), written by the same script
  call that appends those lines, so a collector restart neither loses nor repeats a line.

The line normalisation (`normalise`) lives here too, so the pipeline and the collector cut, redact and escape
in one way. This module imports no models: callers pass app and deployment UUIDs as strings.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from collections.abc import Sequence
from datetime import UTC
from datetime import datetime
from typing import Any
from typing import cast

import redis
import redis.asyncio as aioredis

from core.faults import InfrastructureError

SOURCES_FIXED = ("release", "build", "platform")
_SOURCE_RE = re.compile(r"^(web\.[1-9][0-9]{0,3}|release|build|platform)$")
_CURSOR_RE = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")
REDACTED = "[redacted]"
CUT_MARKER = " … [line cut: {n} more bytes]"
# Secrets shorter than this are not searched for: redacting "1" or "ab" would shred every line.
SECRET_MIN_LENGTH = 4
# A Coltsfoot API token (`cf_<prefix>.<secret>`) is never a tenant's business to print, whoever's it is.
_TOKEN_RE = re.compile(r"\bcf_[0-9a-f]{6,16}\.[A-Za-z0-9_\-]{16,}")
READ_CHUNK = 512

# What redis-py (decode_responses=True) returns for XRANGE/XREVRANGE and XREAD.
RawEntries = list[tuple[str, dict[str, str]]]


class LogStoreError(InfrastructureError):
    """Redis could not be reached or refused a command; always transient from the caller's point of view."""

    transient = True


@dataclasses.dataclass(frozen=True)
class Entry:
    id: str
    ts: str
    source: str
    line: str
    deployment_id: str = ""
    end_state: str = ""

    def as_item(self) -> dict[str, str]:
        return {"id": self.id, "ts": self.ts, "source": self.source, "line": self.line}


@dataclasses.dataclass(frozen=True)
class Line:
    """One line to append: already normalised (see `normalise`)."""

    ts: str
    source: str
    line: str
    deployment_id: str = ""
    end_state: str = ""


@dataclasses.dataclass(frozen=True)
class Page:
    items: list[Entry]
    next: str


# --- normalisation ------------------------------------------------------------------------------


def is_source(value: str) -> bool:
    return bool(_SOURCE_RE.match(value))


def is_cursor(value: str) -> bool:
    return bool(_CURSOR_RE.match(value))


def timestamp(moment: datetime | None = None) -> str:
    """ISO 8601 in UTC with microseconds and a Z, the one timestamp format of the store."""
    moment = (moment or datetime.now(UTC)).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in sorted({s for s in secrets if len(s) >= SECRET_MIN_LENGTH}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return _TOKEN_RE.sub(REDACTED, text)


def last_state(text: str) -> str:
    """What a terminal shows of a line with carriage returns: a progress bar redrawn with `\\r` keeps only its
    last state. A trailing `\\r` (CRLF line ends) redraws nothing and is dropped first."""
    text = text.rstrip("\r")
    return text.rsplit("\r", 1)[-1]


def cut(text: str, max_bytes: int, *, already_cut: int = 0) -> str:
    """At most `max_bytes` of UTF-8 (never splitting a character), plus a marker saying how much was cut;
    `already_cut` bytes of the line were dropped before it got here (the collector never holds more)."""
    encoded = text.encode("utf-8", errors="replace")
    if len(encoded) <= max_bytes and not already_cut:
        return text
    kept = encoded[:max_bytes].decode("utf-8", errors="ignore")
    return kept + CUT_MARKER.format(n=len(encoded) - len(kept.encode("utf-8")) + already_cut)


def normalise(raw: str, *, secrets: Iterable[str] = (), max_bytes: int = 8192, already_cut: int = 0) -> str:
    """One line of output as the store keeps it: the last `\\r` state, NUL bytes escaped (`\\0`), secrets and
    API tokens redacted, cut to `max_bytes` with a marker. Redaction runs before the cut, so a secret that
    straddles the cut is not half left."""
    text = last_state(raw.rstrip("\n"))
    text = text.replace("\x00", "\\0")
    return cut(redact(text, secrets), max_bytes, already_cut=already_cut)


def split_lines(text: str) -> list[str]:
    """A chunk of output (a build step's, a release's) as lines; a final newline opens no empty line."""
    return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")


# --- the append script ------------------------------------------------------------------------------

# KEYS: stream, bytes counter, offsets hash. ARGV: max_lines, max_bytes, offset field ("" for none), offset
# value, then five values per entry (t, s, l, d, e). Returns [last id, entries trimmed].
_APPEND = """
local stream, counter, offsets = KEYS[1], KEYS[2], KEYS[3]
local max_lines, max_bytes = tonumber(ARGV[1]), tonumber(ARGV[2])
local added, last = 0, ''
for i = 5, #ARGV, 5 do
  last = redis.call('XADD', stream, '*', 't', ARGV[i], 's', ARGV[i+1], 'l', ARGV[i+2], 'd', ARGV[i+3], 'e', ARGV[i+4])
  added = added + #ARGV[i] + #ARGV[i+1] + #ARGV[i+2] + #ARGV[i+3] + #ARGV[i+4]
end
local bytes = redis.call('INCRBY', counter, added)
local len = redis.call('XLEN', stream)
local trimmed = 0
if len > max_lines or bytes > max_bytes then
  local start, keep = '-', nil
  while keep == nil do
    local batch = redis.call('XRANGE', stream, start, '+', 'COUNT', 256)
    if #batch == 0 then break end
    for _, entry in ipairs(batch) do
      if len <= max_lines and bytes <= max_bytes then keep = entry[1]; break end
      local fields = entry[2]
      for j = 2, #fields, 2 do bytes = bytes - #fields[j] end
      len = len - 1
      trimmed = trimmed + 1
      start = '(' .. entry[1]
    end
  end
  if keep == nil then
    redis.call('XTRIM', stream, 'MAXLEN', 0)
    bytes = 0
  else
    redis.call('XTRIM', stream, 'MINID', keep)
  end
  redis.call('SET', counter, bytes)
end
if ARGV[3] ~= '' then redis.call('HSET', offsets, ARGV[3], ARGV[4]) end
return {last, trimmed}
"""


def entry_from_raw(raw_id: str, fields: dict[str, str]) -> Entry:
    return Entry(
        id=raw_id,
        ts=fields.get("t", ""),
        source=fields.get("s", ""),
        line=fields.get("l", ""),
        deployment_id=fields.get("d", ""),
        end_state=fields.get("e", ""),
    )


def _after(cursor: str) -> str:
    return f"({cursor}"


class LogStore:
    """The store's operations on one Redis (sync; `follow` has an asyncio twin in `AsyncFollower`)."""

    def __init__(self, client: redis.Redis, *, prefix: str, max_lines: int, max_bytes: int) -> None:
        self.client = client
        self.prefix = prefix
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self._append = client.register_script(_APPEND)

    @classmethod
    def from_url(cls, url: str, *, prefix: str, max_lines: int, max_bytes: int) -> LogStore:
        client = redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=2, socket_timeout=5)
        return cls(client, prefix=prefix, max_lines=max_lines, max_bytes=max_bytes)

    # keys
    def stream_key(self, app_id: str) -> str:
        return f"{self.prefix}:app:{app_id}"

    def bytes_key(self, app_id: str) -> str:
        return f"{self.prefix}:bytes:{app_id}"

    @property
    def offsets_key(self) -> str:
        return f"{self.prefix}:offsets"

    # writes
    def append(self, app_id: str, lines: Sequence[Line], *, offset: tuple[str, str] | None = None) -> str:
        """Append lines (and, atomically with them, a collector's read position); returns the last id ("" if
        nothing was appended). Trims the app's stream back within its bounds in the same call."""
        if not lines and offset is None:
            return ""
        argv: list[str | int] = [self.max_lines, self.max_bytes, *(offset or ("", ""))]
        for line in lines:
            argv += [line.ts, line.source, line.line, line.deployment_id, line.end_state]
        keys = [self.stream_key(app_id), self.bytes_key(app_id), self.offsets_key]
        try:
            result = cast(list[Any], self._append(keys=keys, args=argv))
        except redis.RedisError as exc:
            raise LogStoreError(f"appending to the log of app {app_id} failed: {exc}") from exc
        return str(result[0])

    def delete(self, app_id: str) -> None:
        try:
            self.client.delete(self.stream_key(app_id), self.bytes_key(app_id))
        except redis.RedisError as exc:
            raise LogStoreError(f"deleting the log of app {app_id} failed: {exc}") from exc

    # offsets
    def offsets(self) -> dict[str, str]:
        try:
            return cast(dict[str, str], self.client.hgetall(self.offsets_key))
        except redis.RedisError as exc:
            raise LogStoreError(f"reading the collector's offsets failed: {exc}") from exc

    def offset_forget(self, fields: Iterable[str]) -> None:
        names = list(fields)
        if names:
            try:
                self.client.hdel(self.offsets_key, *names)
            except redis.RedisError as exc:
                raise LogStoreError(f"forgetting offsets failed: {exc}") from exc

    # reads
    def usage(self, app_id: str) -> tuple[int, int]:
        """(lines, bytes) the app's stream holds now."""
        try:
            length = int(self.client.xlen(self.stream_key(app_id)))
            size = int(cast(str | None, self.client.get(self.bytes_key(app_id))) or 0)
        except redis.RedisError as exc:
            raise LogStoreError(f"reading the log size of app {app_id} failed: {exc}") from exc
        return length, size

    def read(
        self,
        app_id: str,
        *,
        lines: int,
        since: str | None = None,
        match: Matcher | None = None,
    ) -> Page:
        """Without `since`: the last `lines` matching entries, oldest first. With it: the first `lines` matching
        entries after that cursor. `next` is the cursor to pass as `since` to get what follows (it never
        skips an entry that was not returned, and never repeats one that was)."""
        key = self.stream_key(app_id)
        match = match or Matcher()
        found: list[Entry] = []
        try:
            if since is None:
                newest = ""
                upper = "+"
                while len(found) < lines:
                    batch = cast(RawEntries, self.client.xrevrange(key, upper, "-", count=READ_CHUNK))
                    if not batch:
                        break
                    newest = newest or batch[0][0]
                    for raw_id, fields in batch:
                        entry = entry_from_raw(raw_id, fields)
                        if match(entry):
                            found.append(entry)
                            if len(found) == lines:
                                break
                    upper = _after(batch[-1][0])
                found.reverse()
                return Page(found, newest or "0-0")
            cursor = since
            scanned = since
            while len(found) < lines:
                batch = cast(RawEntries, self.client.xrange(key, _after(cursor), "+", count=READ_CHUNK))
                if not batch:
                    break
                for raw_id, fields in batch:
                    scanned = raw_id
                    entry = entry_from_raw(raw_id, fields)
                    if match(entry):
                        found.append(entry)
                        if len(found) == lines:
                            break
                cursor = batch[-1][0]
            return Page(found, scanned)
        except redis.RedisError as exc:
            raise LogStoreError(f"reading the log of app {app_id} failed: {exc}") from exc


@dataclasses.dataclass(frozen=True)
class Matcher:
    """Which entries a reader wants: one source, and/or one deployment's build output."""

    source: str | None = None
    deployment_id: str | None = None

    def __call__(self, entry: Entry) -> bool:
        if self.source is not None and entry.source != self.source:
            return False
        return self.deployment_id is None or entry.deployment_id == self.deployment_id


class AsyncFollower:
    """Blocking reads of one app's stream for a follow hub's tail, on an asyncio Redis connection of its own (a
    blocked XREAD holds its connection, so followers cannot share one)."""

    def __init__(self, url: str, key: str) -> None:
        self.client = aioredis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=10)
        self.key = key

    async def after(self, cursor: str, *, block_ms: int, count: int = READ_CHUNK) -> list[Entry]:
        """The entries after `cursor`, waiting up to `block_ms` for the first one; [] on timeout."""
        try:
            reply = cast(
                list[tuple[str, RawEntries]], await self.client.xread({self.key: cursor}, count=count, block=block_ms)
            )
        except redis.RedisError as exc:
            raise LogStoreError(f"following {self.key} failed: {exc}") from exc
        entries: list[Entry] = []
        for _stream, batch in reply or []:
            entries += [entry_from_raw(raw_id, fields) for raw_id, fields in batch]
        return entries

    async def close(self) -> None:
        await self.client.aclose()


# --- the platform's store -------------------------------------------------------------------------------

_stores: dict[tuple[str, str, int, int], LogStore] = {}


def store() -> LogStore:
    """The store configured by the settings (one client per process and configuration)."""
    from django.conf import settings

    config = (str(settings.LOG_REDIS_URL), str(settings.LOG_KEY_PREFIX), settings.LOG_MAX_LINES, settings.LOG_MAX_BYTES)
    if config not in _stores:
        url, prefix, max_lines, max_bytes = config
        _stores[config] = LogStore.from_url(url, prefix=prefix, max_lines=max_lines, max_bytes=max_bytes)
    return _stores[config]


def follower(app_id: str) -> AsyncFollower:
    from django.conf import settings

    return AsyncFollower(str(settings.LOG_REDIS_URL), store().stream_key(app_id))
