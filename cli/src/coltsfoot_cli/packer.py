"""Pack an app directory as the `.tar.gz` the platform takes, leaving out what `.gitignore` and
`.coltsfootignore` files exclude, and always `.git` and the CLI's own `.coltsfoot`.

The ignore rules are git's (gitignore(5)), implemented here rather than taken from a library, for the
four dependencies the CLI is allowed: blank lines and `#` comments, `\\` escapes, trailing spaces, `!`
negation, a trailing `/` for directories only, a `/` at the start or in the middle anchoring a pattern
to its file's directory, `*`, `?`, `[...]` and `**` (leading, trailing and between slashes). Every
directory's `.gitignore` and `.coltsfootignore` apply below it; a later rule beats an earlier one, a
deeper file beats a shallower one, and `.coltsfootignore` beats `.gitignore` in the same directory (so
it can re-include with `!`). As in git, nothing inside an excluded directory can be re-included: the
walk does not enter it.

The platform refuses links and special files in an archive, so those are skipped (and reported).
"""

from __future__ import annotations

import os
import re
import stat
import tarfile
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import BinaryIO

IGNORE_FILES = (".gitignore", ".coltsfootignore")
ALWAYS_EXCLUDED = frozenset({".git", ".coltsfoot"})


@dataclass(frozen=True)
class Rule:
    base: str  # the directory of the file that holds the rule, relative to the root ("" for the root)
    regex: re.Pattern[str]
    negated: bool
    dir_only: bool

    def matches(self, path: str, *, is_dir: bool) -> bool:
        if self.dir_only and not is_dir:
            return False
        if self.base:
            if not path.startswith(self.base + "/"):
                return False
            path = path[len(self.base) + 1 :]
        return self.regex.fullmatch(path) is not None


def _translate(body: str) -> str:
    """A gitignore glob (no leading `!`, no trailing `/`) as a regex over a relative posix path."""
    out: list[str] = []
    i, n = 0, len(body)
    while i < n:
        char = body[i]
        if char == "*" and body.startswith("**", i):
            at_start = i == 0
            at_segment = at_start or body[i - 1] == "/"
            after = body[i + 2 : i + 3]
            if at_segment and after == "/":  # `**/`: zero or more directories
                out.append("(?:.*/)?")
                i += 3
                continue
            if at_segment and i + 2 == n and not at_start:  # trailing `/**`: everything inside
                out.append(".+")
                i += 2
                continue
            if at_start and i + 2 == n:  # `**` alone: everything
                out.append(".*")
                i += 2
                continue
            out.append("[^/]*")  # any other run of asterisks is a plain `*`
            while i < n and body[i] == "*":
                i += 1
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(body[i]))
        elif char == "[":
            end = i + 1
            if end < n and body[end] in "!^":
                end += 1
            if end < n and body[end] == "]":
                end += 1
            while end < n and body[end] != "]":
                end += 1
            if end >= n:  # no closing bracket: a literal `[`
                out.append(re.escape(char))
            else:
                inner = body[i + 1 : end]
                negate = inner[:1] in ("!", "^")
                if negate:
                    inner = inner[1:]
                inner = inner.replace("\\", "\\\\").replace("[", "\\[")
                out.append(f"[^/{inner}]" if negate else f"[{inner}]")
                i = end
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)


def parse_rules(text: str, base: str = "") -> list[Rule]:
    rules: list[Rule] = []
    for raw in text.splitlines():
        line = raw
        # Trailing spaces are dropped unless the last one is escaped with a backslash.
        stripped = line.rstrip(" ")
        if stripped.endswith("\\") and len(stripped) < len(line):
            stripped += " "
        line = stripped
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        if negated:
            line = line[1:]
        dir_only = line.endswith("/") and not line.endswith("\\/")
        line = line.rstrip("/") if dir_only else line
        if not line:
            continue
        anchored = "/" in line
        line = line.removeprefix("/")
        regex = _translate(line)
        if not anchored:
            regex = f"(?:.*/)?{regex}"
        rules.append(Rule(base=base, regex=re.compile(regex, re.DOTALL), negated=negated, dir_only=dir_only))
    return rules


@dataclass
class Ignore:
    """The rules in force in one directory of the walk (those of its ancestors, then its own)."""

    rules: list[Rule] = field(default_factory=list)

    def excluded(self, path: str, *, is_dir: bool) -> bool:
        if path.rsplit("/", 1)[-1] in ALWAYS_EXCLUDED:
            return True
        verdict = False
        for rule in self.rules:
            if rule.matches(path, is_dir=is_dir):
                verdict = not rule.negated
        return verdict

    def below(self, root: Path, rel: str) -> Ignore:
        """These rules plus those of the ignore files in directory `rel`."""
        added: list[Rule] = []
        for name in IGNORE_FILES:
            candidate = root / rel / name if rel else root / name
            if candidate.is_file() and not candidate.is_symlink():
                added += parse_rules(candidate.read_text(encoding="utf-8", errors="replace"), base=rel)
        return Ignore(self.rules + added) if added else self


@dataclass(frozen=True)
class Entry:
    path: str  # relative, posix
    is_dir: bool
    size: int


def walk(root: Path, *, skipped: Callable[[str, str], None] | None = None) -> Iterator[Entry]:
    """The directories and regular files of `root` that go into the archive, in a stable order."""

    def visit(rel: str, ignore: Ignore) -> Iterator[Entry]:
        ignore = ignore.below(root, rel)
        directory = root / rel if rel else root
        with os.scandir(directory) as entries:
            items = sorted(entries, key=lambda e: e.name)
        for item in items:
            path = f"{rel}/{item.name}" if rel else item.name
            info = item.stat(follow_symlinks=False)
            is_dir = stat.S_ISDIR(info.st_mode)
            if ignore.excluded(path, is_dir=is_dir):
                continue
            if is_dir:
                yield Entry(path, True, 0)
                yield from visit(path, ignore)
            elif stat.S_ISREG(info.st_mode):
                yield Entry(path, False, info.st_size)
            elif skipped is not None:
                skipped(path, "a symlink" if stat.S_ISLNK(info.st_mode) else "not a regular file")

    yield from visit("", Ignore())


def pack(root: Path, out: BinaryIO, *, skipped: Callable[[str, str], None] | None = None) -> list[Entry]:
    """Write the `.tar.gz` of `root` to `out`; return what went in. Owners are dropped and modes
    normalised, as the platform does anyway."""
    entries: list[Entry] = []
    with tarfile.open(fileobj=out, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for entry in walk(root, skipped=skipped):
            source = root / entry.path
            info = tar.gettarinfo(str(source), arcname=entry.path)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if entry.is_dir:
                info.mode = 0o755
                tar.addfile(info)
            else:
                info.mode = 0o755 if info.mode & 0o111 else 0o644
                with source.open("rb") as handle:
                    tar.addfile(info, handle)
            entries.append(entry)
    return entries
