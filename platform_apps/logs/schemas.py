"""Log lines as the API returns them."""

from __future__ import annotations

from ninja import Schema


class LogLineOut(Schema):
    id: str  # the line's cursor: pass it as `since` (or Last-Event-ID) to get what follows it
    ts: str  # when it was written, ISO 8601 UTC
    source: str  # web.1, web.2, ..., release, build, platform
    line: str


class LogPageOut(Schema):
    items: list[LogLineOut]
    next: str  # `since` for the next call: every line after the ones returned, none twice
