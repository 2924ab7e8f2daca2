"""Unpack a tenant's source archive (`.tar.gz`) into a build directory, treating it as hostile.

The archive is read in one streaming pass and every entry is checked before anything is written
for it; files are written by this module (never `extractall`), relative to an open descriptor
of `dest`, with `O_NOFOLLOW`/`O_EXCL`, so nothing can land outside `dest` or replace something
already written. On any refusal `dest` is emptied again, so a half-unpacked tree is never built.

Decisions (the platform's contract with tenants):
- Only gzip-compressed tar is accepted. A plain `.tar` (or bzip2/xz/zip) is refused as
  `source.not_an_archive`: one format means one parser, and the upload cap keeps a meaning.
- Only regular files and directories. Symlinks, hardlinks, devices, fifos, sparse files and
  anything else are `source.unsupported_entry`: a link is how archives usually escape, and the
  app can ship a copy of the target instead.
- Modes are normalised, never refused: files become 0644, or 0755 when any execute bit was set;
  directories 0755. setuid/setgid/sticky bits and the archive's owners are dropped.
- Names must be relative UTF-8 paths with `/` separators. Absolute paths, `..` components, NUL,
  backslashes and control characters are `source.unsafe_path`, as are paths deeper than
  `MAX_DEPTH`, longer than `MAX_PATH_BYTES`, or with a component over `MAX_NAME_BYTES`. `./`
  and empty components are dropped (so `tar -C app -czf x.tgz .` works).
- Every path may appear once. A directory entry for a directory that already exists is fine;
  any other repeat (file over file, file over directory, directory over file, a file used as a
  parent) is `source.unsafe_path`: tar's "last one wins" is how overwrite tricks work.
- One wrapping directory is flattened: when every entry sits under a single top-level directory
  (as in GitHub's `repo-<sha>/...` tarballs), its contents become the root, so the Procfile is
  found. Only one level is stripped, and never when there is any other top-level entry.
- An archive without a single regular file is `source.empty`.
- Limits: `max_files` counts the files and directories created (implicit parents included);
  `max_unpacked_bytes` is the total of file contents. Both the declared sizes (before writing)
  and the bytes actually written are checked. The decompressed stream as a whole, and each
  pax/GNU metadata header, are bounded too, so a gzip bomb costs neither disk nor memory.
- tarfile's lenient reading is made strict: a damaged header in the middle of an archive, a
  missing end-of-archive marker, a bad gzip CRC or a truncated stream is `source.not_an_archive`
  instead of a silently shortened tree.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import logging
import os
import secrets
import shutil
import stat
import tarfile
import zlib
from pathlib import Path
from typing import BinaryIO
from typing import Literal
from typing import Self

from core.faults import PlatformError
from core.faults import SourceRejected

logger = logging.getLogger(__name__)

MAX_PATH_BYTES = 1024
MAX_NAME_BYTES = 255
MAX_DEPTH = 32
# Data of one pax extended header or GNU long-name header: real ones are a few hundred bytes.
MAX_HEADER_BYTES = 1024 * 1024
# Decompressed bytes allowed per entry on top of file contents (headers, pax records, padding).
PER_ENTRY_OVERHEAD_BYTES = 16 * 1024
# Bytes allowed after the end-of-archive marker (tar pads to 10 KiB records).
MAX_TRAILING_BYTES = 1024 * 1024
CHUNK_BYTES = 1024 * 1024

FILE_MODE = 0o644
EXECUTABLE_MODE = 0o755
DIR_MODE = 0o755

_GZIP_MAGIC = b"\x1f\x8b"
_USTAR_MAGIC_OFFSET = 257
_REGULAR_TYPES = frozenset({tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE})
_METADATA_TYPES = frozenset(
    {tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK}
)
_ENTRY_KINDS = {
    tarfile.SYMTYPE: "is a symlink",
    tarfile.LNKTYPE: "is a hardlink",
    tarfile.CHRTYPE: "is a character device",
    tarfile.BLKTYPE: "is a block device",
    tarfile.FIFOTYPE: "is a fifo",
    tarfile.GNUTYPE_SPARSE: "is a sparse file",
}
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

_Kind = Literal["file", "dir"]


@dataclasses.dataclass(frozen=True)
class ExtractResult:
    files: int
    directories: int
    total_bytes: int
    # The wrapping top-level directory that was flattened away, if any.
    stripped_prefix: str | None = None


def check_upload_size(size: int, max_bytes: int) -> None:
    """Refuse an upload by its size alone, before it is unpacked."""
    if size > max_bytes:
        raise SourceRejected(
            "source.too_large",
            f"The archive is {_human(size)}; the limit is {_human(max_bytes)}.",
            http_status=413,
        )
    if size <= 0:
        raise _not_an_archive("the upload is empty")


def extract_source(archive_path: Path, dest: Path, *, max_unpacked_bytes: int, max_files: int) -> ExtractResult:
    """Unpack `archive_path` into the empty directory `dest`, or raise `SourceRejected`.

    Raises `PlatformError` (transient) when our side fails, e.g. the disk is full; `dest` is
    emptied in both cases. `dest` must be an existing, empty directory the caller owns.
    """
    dest_fd = _open_empty_dir(dest)
    try:
        try:
            result = _Extraction(dest_fd, max_unpacked_bytes=max_unpacked_bytes, max_files=max_files).run(archive_path)
        except BaseException as exc:
            _empty_dir(dest_fd)
            if isinstance(exc, SourceRejected):
                logger.warning("source archive refused", extra={"code": exc.code, "reason": exc.message})
            raise
    finally:
        os.close(dest_fd)
    logger.info(
        "source archive unpacked",
        extra={
            "files": result.files,
            "directories": result.directories,
            "total_bytes": result.total_bytes,
            "flattened": result.stripped_prefix is not None,
        },
    )
    return result


class _Extraction:
    def __init__(self, dest_fd: int, *, max_unpacked_bytes: int, max_files: int) -> None:
        self.dest_fd = dest_fd
        self.max_unpacked_bytes = max_unpacked_bytes
        self.max_files = max_files
        # Entries seen, even ones that create nothing (`./`, a repeated directory): bounds the work
        # an archive of empty headers can cause.
        self.max_members = 2 * max_files + 16
        self.members = 0
        self.total_bytes = 0
        self.created: dict[tuple[str, ...], _Kind] = {}
        # One open directory, reused while consecutive entries share a parent (the usual order).
        self._cached_directory: tuple[tuple[str, ...], int] | None = None

    def run(self, archive_path: Path) -> ExtractResult:
        stream_limit = self.max_unpacked_bytes + (self.max_members + 1) * PER_ENTRY_OVERHEAD_BYTES + MAX_TRAILING_BYTES
        try:
            with archive_path.open("rb") as raw:
                _check_gzip_magic(raw)
                with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
                    stream = _BoundedReader(unzipped, stream_limit)
                    with tarfile.open(
                        fileobj=stream,
                        mode="r|",
                        tarinfo=_StrictTarInfo,
                        encoding="utf-8",
                        errors="surrogateescape",
                    ) as tar:
                        while (member := tar.next()) is not None:
                            self.add(tar, member)
                    _drain(stream)
        except _StreamTooLarge:
            raise SourceRejected(
                "source.too_large",
                f"The archive unpacks to more than the {_human(self.max_unpacked_bytes)} limit.",
                http_status=413,
            ) from None
        except (gzip.BadGzipFile, EOFError, zlib.error, tarfile.TarError, RecursionError) as exc:
            logger.info("source archive unreadable", extra={"error": type(exc).__name__})
            raise _not_an_archive(_describe_read_error(exc)) from None
        except OSError as exc:
            raise _unpack_failed(exc) from exc
        finally:
            self._release_directory()

        files = sum(1 for kind in self.created.values() if kind == "file")
        if files == 0:
            raise SourceRejected("source.empty", "The archive contains no files.", http_status=422)
        directories = len(self.created) - files
        prefix = self._wrapping_directory()
        if prefix is not None:
            try:
                _flatten(self.dest_fd, prefix)
            except OSError as exc:
                raise _unpack_failed(exc) from exc
            directories -= 1
        return ExtractResult(files=files, directories=directories, total_bytes=self.total_bytes, stripped_prefix=prefix)

    def add(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        self.members += 1
        if self.members > self.max_members:
            raise _too_many_files(self.max_files)
        parts = _safe_parts(member.name)
        if member.type not in _REGULAR_TYPES and member.type != tarfile.DIRTYPE:
            raise _unsupported(member)
        if not parts:
            if member.isdir():
                return  # `./`: the archive's root, which is `dest`
            raise _unsafe(member.name, "is not a file name")
        if member.isdir():
            self._ensure_directories(parts)
        else:
            self._write_file(tar, member, parts)

    def _ensure_directories(self, parts: tuple[str, ...]) -> None:
        for depth in range(1, len(parts) + 1):
            path = parts[:depth]
            kind = self.created.get(path)
            if kind == "dir":
                continue
            if kind == "file":
                raise _unsafe("/".join(path), "is a file, and cannot also be a directory")
            self._count_new_entry()
            parent_fd = self._directory(path[:-1])
            os.mkdir(path[-1], DIR_MODE, dir_fd=parent_fd)
            self.created[path] = "dir"
            fd = os.open(path[-1], _DIR_FLAGS, dir_fd=parent_fd)
            try:
                os.fchmod(fd, DIR_MODE)  # mkdir's mode is filtered by the umask
            finally:
                os.close(fd)

    def _write_file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        self._ensure_directories(parts[:-1])
        existing = self.created.get(parts)
        if existing == "dir":
            raise _unsafe(member.name, "would replace a directory with a file")
        if existing == "file":
            raise _unsafe(member.name, "appears more than once")
        self._count_new_entry()
        if member.size < 0:
            raise _not_an_archive("an entry has a negative size")
        remaining = self.max_unpacked_bytes - self.total_bytes
        if member.size > remaining:
            raise SourceRejected(
                "source.too_large",
                f"The archive unpacks to more than the {_human(self.max_unpacked_bytes)} limit "
                f"(at {_shown(member.name)}).",
                http_status=413,
            )
        source = tar.extractfile(member)
        if source is None:
            raise _not_an_archive("a file entry has no data")
        mode = EXECUTABLE_MODE if member.mode & 0o111 else FILE_MODE
        fd = os.open(parts[-1], _NEW_FILE_FLAGS, 0o600, dir_fd=self._directory(parts[:-1]))
        self.created[parts] = "file"
        written = 0
        with os.fdopen(fd, "wb") as out:
            # Count what arrives, not what the header promised.
            while chunk := source.read(CHUNK_BYTES):
                written += len(chunk)
                if written > remaining:
                    raise SourceRejected(
                        "source.too_large",
                        f"The archive unpacks to more than the {_human(self.max_unpacked_bytes)} limit.",
                        http_status=413,
                    )
                out.write(chunk)
            if written != member.size:
                raise _not_an_archive("it is truncated")
            os.fchmod(out.fileno(), mode)
        self.total_bytes += written

    def _count_new_entry(self) -> None:
        if len(self.created) >= self.max_files:
            raise _too_many_files(self.max_files)

    def _directory(self, parts: tuple[str, ...]) -> int:
        """A borrowed fd for `dest/parts`, walked one component at a time without following links."""
        if not parts:
            return self.dest_fd
        if self._cached_directory is not None and self._cached_directory[0] == parts:
            return self._cached_directory[1]
        fd = os.open(parts[0], _DIR_FLAGS, dir_fd=self.dest_fd)
        try:
            for part in parts[1:]:
                next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = next_fd
        except BaseException:
            os.close(fd)
            raise
        self._release_directory()
        self._cached_directory = (parts, fd)
        return fd

    def _release_directory(self) -> None:
        if self._cached_directory is not None:
            os.close(self._cached_directory[1])
            self._cached_directory = None

    def _wrapping_directory(self) -> str | None:
        top_level = [path for path in self.created if len(path) == 1]
        if len(top_level) == 1 and self.created[top_level[0]] == "dir" and len(self.created) > 1:
            return top_level[0][0]
        return None


class _StreamTooLarge(Exception):
    """The decompressed stream went past its budget."""


class _BoundedReader:
    """The decompressed tar stream, which refuses to yield more than `limit` bytes in total.

    Every read is capped before it reaches the decompressor, so memory stays bounded too.
    """

    def __init__(self, inner: gzip.GzipFile, limit: int) -> None:
        self._inner = inner
        self._limit = limit
        self._count = 0

    def read(self, size: int = -1, /) -> bytes:
        room = self._limit - self._count
        if size < 0 or size > room + 1:
            size = room + 1
        data = self._inner.read(size)
        self._count += len(data)
        if self._count > self._limit:
            raise _StreamTooLarge
        return data

    def write(self, b: bytes, /) -> int:
        raise io.UnsupportedOperation("read-only stream")

    def tell(self) -> int:
        return self._count

    def seek(self, pos: int, /) -> int:
        raise io.UnsupportedOperation("unseekable stream")

    def close(self) -> None:
        """The gzip file belongs to the caller."""


class _StrictTarInfo(tarfile.TarInfo):
    """TarInfo that refuses what tarfile would quietly tolerate.

    tarfile ends the archive without a word at a damaged, short or missing header anywhere
    after the first one, so a corrupted upload would deploy a shortened tree. It also reads a
    pax or GNU long-name header's data whole into memory, whatever size the header claims.
    """

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        if len(buf) == tarfile.BLOCKSIZE and not any(buf):
            # The end-of-archive marker: tarfile signals it with its own HeaderError subclass.
            return super().frombuf(buf, encoding, errors)
        try:
            info = super().frombuf(buf, encoding, errors)
        except tarfile.HeaderError as exc:
            raise tarfile.ReadError(f"damaged archive: {exc}") from None
        if info.type in _METADATA_TYPES and info.size > MAX_HEADER_BYTES:
            raise SourceRejected(
                "source.too_large",
                f"The archive has a metadata header of {_human(info.size)}; the limit is {_human(MAX_HEADER_BYTES)}.",
                http_status=413,
            )
        if info.type == tarfile.GNUTYPE_SPARSE:
            raise _unsupported(info)
        return info


def _safe_parts(name: str) -> tuple[str, ...]:
    """The path components of an entry name, or `SourceRejected("source.unsafe_path")`."""
    if "\x00" in name:
        raise _unsafe(name, "contains a NUL byte")
    if "\\" in name:
        raise _unsafe(name, "contains a backslash; create the archive on a system that uses `/`")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in name):
        raise _unsafe(name, "contains a control character")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise _unsafe(name, "is not valid UTF-8") from None
    if len(encoded) > MAX_PATH_BYTES:
        raise _unsafe(name, f"is longer than {MAX_PATH_BYTES} bytes")
    if name.startswith("/"):
        raise _unsafe(name, "is an absolute path")
    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    if ".." in parts:
        raise _unsafe(name, "contains `..`")
    if len(parts) > MAX_DEPTH:
        raise _unsafe(name, f"is nested more than {MAX_DEPTH} directories deep")
    if any(len(part.encode("utf-8")) > MAX_NAME_BYTES for part in parts):
        raise _unsafe(name, f"has a component longer than {MAX_NAME_BYTES} bytes")
    return parts


def _check_gzip_magic(raw: BinaryIO) -> None:
    head = raw.read(_USTAR_MAGIC_OFFSET + 5)
    raw.seek(0)
    if head[:2] == _GZIP_MAGIC:
        return
    if head[_USTAR_MAGIC_OFFSET : _USTAR_MAGIC_OFFSET + 5] == b"ustar":
        raise _not_an_archive("it is an uncompressed tar; compress it with gzip (`tar -czf app.tar.gz ...`)")
    raise _not_an_archive("it is not gzip-compressed")


def _drain(stream: _BoundedReader) -> None:
    """Read to the end of the gzip stream, so a bad CRC or a truncated upload is noticed."""
    trailing = 0
    while chunk := stream.read(64 * 1024):
        trailing += len(chunk)
        if trailing > MAX_TRAILING_BYTES:
            raise _not_an_archive("it has unexpected data after the end of the archive")


def _flatten(dest_fd: int, wrapper: str) -> None:
    """Move the contents of `dest/wrapper` up into `dest`, then remove the wrapper."""
    wrapper_fd = os.open(wrapper, _DIR_FLAGS, dir_fd=dest_fd)
    try:
        children = set(os.listdir(wrapper_fd))
        # The wrapper may contain an entry named like itself: move it aside first.
        parking = wrapper
        while parking == wrapper or parking in children:
            parking = f".coltsfoot-unwrap-{secrets.token_hex(8)}"
        os.rename(wrapper, parking, src_dir_fd=dest_fd, dst_dir_fd=dest_fd)
        for child in sorted(children):
            os.rename(child, child, src_dir_fd=wrapper_fd, dst_dir_fd=dest_fd)
        os.rmdir(parking, dir_fd=dest_fd)
    finally:
        os.close(wrapper_fd)


def _open_empty_dir(dest: Path) -> int:
    try:
        fd = os.open(dest, _DIR_FLAGS)
    except OSError as exc:
        raise ValueError("extract_source needs an existing directory (not a symlink) as dest") from exc
    if os.listdir(fd):
        os.close(fd)
        raise ValueError("extract_source needs an empty dest directory")
    return fd


def _empty_dir(dir_fd: int) -> None:
    """Remove everything inside `dir_fd`, leaving the directory itself."""
    try:
        for name in os.listdir(dir_fd):
            if stat.S_ISDIR(os.lstat(name, dir_fd=dir_fd).st_mode):
                shutil.rmtree(name, dir_fd=dir_fd)
            else:
                os.unlink(name, dir_fd=dir_fd)
    except OSError:
        logger.exception("could not clean up a refused source archive")


def _describe_read_error(exc: BaseException) -> str:
    if isinstance(exc, gzip.BadGzipFile | zlib.error):
        return "its gzip data is corrupted"
    if isinstance(exc, EOFError):
        return "it is truncated"
    if isinstance(exc, RecursionError):
        return "its headers are malformed"
    return "its tar data is damaged or truncated"


def _not_an_archive(detail: str) -> SourceRejected:
    return SourceRejected(
        "source.not_an_archive", f"The upload is not a usable .tar.gz archive: {detail}.", http_status=422
    )


def _unsafe(name: str, reason: str) -> SourceRejected:
    return SourceRejected("source.unsafe_path", f"The archive entry {_shown(name)} {reason}.", http_status=422)


def _unsupported(member: tarfile.TarInfo) -> SourceRejected:
    kind = _ENTRY_KINDS.get(member.type, "has an unsupported type")
    return SourceRejected(
        "source.unsupported_entry",
        f"The archive entry {_shown(member.name)} {kind}; only regular files and directories are supported.",
        http_status=422,
    )


def _unpack_failed(exc: OSError) -> PlatformError:
    logger.error("source archive could not be unpacked", exc_info=exc)
    return PlatformError(
        "platform.unpack_failed", "The platform could not unpack the archive (a fault on our side).", transient=True
    )


def _too_many_files(max_files: int) -> SourceRejected:
    return SourceRejected(
        "source.too_many_files",
        f"The archive has more than {max_files} files and directories.",
        http_status=413,
    )


def _shown(name: str) -> str:
    """An entry name fit for a message: escaped, and cut short."""
    if len(name) > 120:
        return repr(name[:120]) + "…"
    return repr(name)


def _human(size: int) -> str:
    if size >= 1024 * 1024 and size % (1024 * 1024) == 0:
        return f"{size // (1024 * 1024)} MiB"
    if size >= 1024 * 1024:
        return f"{size / (1024 * 1024):.1f} MiB"
    return f"{size} bytes"
