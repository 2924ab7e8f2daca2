"""The source archive unpacker against a corpus of hostile archives, built here with tarfile/gzip.

Every refusal is checked for its exact code and HTTP status, for leaving `dest` empty, and for
leaving nothing anywhere else under tmp_path.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import stat
import tarfile
from pathlib import Path

import pytest

from core.faults import DeployError
from core.faults import PlatformError
from core.faults import SourceRejected
from core.faults import UserError
from drivers.archive import ExtractResult
from drivers.archive import check_upload_size
from drivers.archive import extract_source

MAX_BYTES = 1024 * 1024
MAX_FILES = 50

Entry = tuple[tarfile.TarInfo, bytes | None]


def reg(name: str, data: bytes = b"x", mode: int = 0o644) -> Entry:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    return info, data


def directory(name: str, mode: int = 0o755) -> Entry:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    return info, None


def special(name: str, kind: bytes, linkname: str = "") -> Entry:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def tar_bytes(entries: list[Entry], *, fmt: int = tarfile.PAX_FORMAT, **kwargs) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt, encoding="utf-8", **kwargs) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


@pytest.fixture
def upload(tmp_path: Path) -> Path:
    path = tmp_path / "upload" / "source.tar.gz"
    path.parent.mkdir()
    return path


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    path = tmp_path / "builds" / "dest"
    path.mkdir(parents=True)
    return path


def write_tgz(upload: Path, entries: list[Entry], **kwargs) -> Path:
    upload.write_bytes(gzip.compress(tar_bytes(entries, **kwargs)))
    return upload


def extract(upload: Path, dest: Path, *, max_bytes: int = MAX_BYTES, max_files: int = MAX_FILES) -> ExtractResult:
    return extract_source(upload, dest, max_unpacked_bytes=max_bytes, max_files=max_files)


def tree(root: Path) -> dict[str, int]:
    """Relative path -> permission bits (directories end with /)."""
    found = {}
    for path in sorted(root.rglob("*")):
        mode = path.lstat().st_mode
        name = path.relative_to(root).as_posix() + ("/" if stat.S_ISDIR(mode) else "")
        found[name] = stat.S_IMODE(mode)
    return found


def assert_refused(upload: Path, dest: Path, code: str, status: int, **kwargs) -> SourceRejected:
    with pytest.raises(SourceRejected) as caught:
        extract(upload, dest, **kwargs)
    error = caught.value
    assert (error.code, error.http_status) == (code, status), error.message
    assert error.user_error
    assert list(dest.iterdir()) == []
    root = dest.parent.parent
    assert set(tree(root)) == {"upload/", "upload/source.tar.gz", "builds/", "builds/dest/"}
    # Messages are for tenants: never our own paths (an entry's own name may be echoed).
    assert str(dest) not in error.message
    return error


# -- hostile archives --------------------------------------------------------------------------


def test_absolute_path_is_refused(upload, dest, tmp_path):
    target = tmp_path / "escaped"
    write_tgz(upload, [reg("Procfile"), reg(str(target))])
    assert_refused(upload, dest, "source.unsafe_path", 422)
    assert not target.exists()


@pytest.mark.parametrize("name", ["../escaped", "a/../../escaped", "./../escaped", "a/b/../../../escaped", "a/.."])
def test_dotdot_components_are_refused(upload, dest, name):
    write_tgz(upload, [reg("Procfile"), reg(name)])
    error = assert_refused(upload, dest, "source.unsafe_path", 422)
    assert "`..`" in error.message


def test_symlink_is_refused_before_anything_is_written_through_it(upload, dest, tmp_path):
    write_tgz(upload, [special("link", tarfile.SYMTYPE, str(tmp_path)), reg("link/escaped")])
    error = assert_refused(upload, dest, "source.unsupported_entry", 422)
    assert "symlink" in error.message
    assert not (tmp_path / "escaped").exists()


def test_relative_symlink_is_refused(upload, dest):
    write_tgz(upload, [reg("Procfile"), special("docs", tarfile.SYMTYPE, "../../..")])
    assert_refused(upload, dest, "source.unsupported_entry", 422)


def test_hardlink_is_refused(upload, dest):
    write_tgz(upload, [reg("Procfile"), special("passwd", tarfile.LNKTYPE, "/etc/passwd")])
    error = assert_refused(upload, dest, "source.unsupported_entry", 422)
    assert "hardlink" in error.message


def test_hardlink_to_a_member_is_refused_too(upload, dest):
    write_tgz(upload, [reg("Procfile"), special("copy", tarfile.LNKTYPE, "Procfile")])
    assert_refused(upload, dest, "source.unsupported_entry", 422)


@pytest.mark.parametrize(
    ("kind", "word"),
    [(tarfile.CHRTYPE, "character device"), (tarfile.BLKTYPE, "block device"), (tarfile.FIFOTYPE, "fifo")],
)
def test_devices_and_fifos_are_refused(upload, dest, kind, word):
    write_tgz(upload, [reg("Procfile"), special("dev", kind)])
    error = assert_refused(upload, dest, "source.unsupported_entry", 422)
    assert word in error.message


def test_unknown_entry_type_is_refused(upload, dest):
    write_tgz(upload, [reg("Procfile"), special("volume", b"V")])
    assert_refused(upload, dest, "source.unsupported_entry", 422)


def test_sparse_file_is_refused(upload, dest):
    info, _ = reg("sparse", b"")
    info.type = tarfile.GNUTYPE_SPARSE
    write_tgz(upload, [reg("Procfile"), (info, b"")], fmt=tarfile.GNU_FORMAT)
    assert_refused(upload, dest, "source.unsupported_entry", 422)


def test_file_over_directory_is_refused(upload, dest):
    write_tgz(upload, [directory("app"), reg("app/settings.py", b"SAFE = True\n"), reg("app", b"overwritten")])
    error = assert_refused(upload, dest, "source.unsafe_path", 422)
    assert "replace a directory" in error.message


def test_directory_over_file_is_refused(upload, dest):
    write_tgz(upload, [reg("app"), directory("app")])
    assert_refused(upload, dest, "source.unsafe_path", 422)


def test_file_used_as_a_parent_is_refused(upload, dest):
    write_tgz(upload, [reg("app"), reg("app/settings.py")])
    assert_refused(upload, dest, "source.unsafe_path", 422)


def test_duplicate_file_is_refused(upload, dest):
    write_tgz(upload, [reg("Procfile", b"web: good"), reg("./Procfile", b"web: evil")])
    error = assert_refused(upload, dest, "source.unsafe_path", 422)
    assert "more than once" in error.message


@pytest.mark.parametrize(
    "name",
    [
        "a" * 256,  # one component over NAME_MAX
        "/".join(["d"] * 40) + "/f",  # too deep
        "/".join(["x" * 200] * 6),  # over MAX_PATH_BYTES
    ],
)
def test_over_long_names_are_refused(upload, dest, name):
    write_tgz(upload, [reg("Procfile"), reg(name)])
    error = assert_refused(upload, dest, "source.unsafe_path", 422)
    assert len(error.message) < 400


def test_nul_byte_in_name_is_refused(upload, dest):
    info, data = reg("innocent.py")
    info.pax_headers = {"path": "evil\x00.py"}
    write_tgz(upload, [reg("Procfile"), (info, data)])
    error = assert_refused(upload, dest, "source.unsafe_path", 422)
    assert "NUL" in error.message


@pytest.mark.parametrize(
    ("name", "word"),
    [("app\\settings.py", "backslash"), ("new\nline.py", "control character"), ("esc\x1b[2J.py", "control")],
)
def test_backslashes_and_control_characters_are_refused(upload, dest, name, word):
    write_tgz(upload, [reg("Procfile"), reg(name)])
    error = assert_refused(upload, dest, "source.unsafe_path", 422)
    assert word in error.message


def test_non_utf8_name_is_refused(upload, dest):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT, errors="surrogateescape") as tar:
        info, _ = reg("caf\udce9.py", b"x")  # latin-1 bytes, not UTF-8
        tar.addfile(info, io.BytesIO(b"x"))
    upload.write_bytes(gzip.compress(buffer.getvalue()))
    assert_refused(upload, dest, "source.unsafe_path", 422)


def test_gzip_bomb_is_refused_from_its_header_before_writing(upload, dest, monkeypatch):
    bomb = 64 * 1024 * 1024
    info = tarfile.TarInfo("bomb")
    info.size = bomb
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.addfile(info, io.BytesIO(bytes(bomb)))
    compressed = gzip.compress(buffer.getvalue(), compresslevel=9)
    assert len(compressed) < bomb // 500
    upload.write_bytes(compressed)
    opened = []
    real_open = os.open

    def recording_open(path, *args, **kwargs):
        opened.append(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", recording_open)
    error = assert_refused(upload, dest, "source.too_large", 413)
    assert "'bomb'" in error.message
    assert "bomb" not in opened


def test_total_over_the_cap_is_refused_and_what_was_written_removed(upload, dest):
    chunk = os.urandom(400 * 1024)
    write_tgz(upload, [reg("Procfile"), reg("a.bin", chunk), reg("b.bin", chunk), reg("c.bin", chunk)])
    assert_refused(upload, dest, "source.too_large", 413)


def test_data_beyond_the_header_size_is_not_trusted(upload, dest, monkeypatch):
    write_tgz(upload, [reg("Procfile"), reg("small.txt", b"tiny")])
    real_extractfile = tarfile.TarFile.extractfile

    def lying_extractfile(self, member):
        if member.name == "small.txt":
            return io.BytesIO(bytes(2 * MAX_BYTES))
        return real_extractfile(self, member)

    monkeypatch.setattr(tarfile.TarFile, "extractfile", lying_extractfile)
    assert_refused(upload, dest, "source.too_large", 413)


def test_huge_pax_header_is_refused_without_reading_it(upload, dest):
    info, data = reg("Procfile")
    info.pax_headers = {"comment": "x" * (2 * 1024 * 1024)}
    write_tgz(upload, [(info, data)])
    error = assert_refused(upload, dest, "source.too_large", 413)
    assert "metadata header" in error.message


def test_too_many_files_is_refused(upload, dest):
    write_tgz(upload, [reg(f"f{i}.py") for i in range(11)])
    assert_refused(upload, dest, "source.too_many_files", 413, max_files=10)


def test_directories_count_towards_the_file_cap(upload, dest):
    write_tgz(upload, [reg(f"d{i}/f.py") for i in range(5)])
    assert_refused(upload, dest, "source.too_many_files", 413, max_files=9)


def test_endless_root_entries_are_capped(upload, dest):
    write_tgz(upload, [reg("Procfile")] + [directory("./") for _ in range(40)])
    assert_refused(upload, dest, "source.too_many_files", 413, max_files=10)


def test_not_gzip_is_refused(upload, dest):
    upload.write_bytes(b"PK\x03\x04 this is a zip file, honest" + bytes(600))
    error = assert_refused(upload, dest, "source.not_an_archive", 422)
    assert "gzip" in error.message


def test_plain_tar_is_refused_with_a_hint(upload, dest):
    upload.write_bytes(tar_bytes([reg("Procfile", b"web: x\n")]))
    error = assert_refused(upload, dest, "source.not_an_archive", 422)
    assert "uncompressed tar" in error.message


def test_gzip_of_something_else_is_refused(upload, dest):
    upload.write_bytes(gzip.compress(b"just some text, not a tar archive\n" * 40))
    assert_refused(upload, dest, "source.not_an_archive", 422)


def test_empty_gzip_is_refused(upload, dest):
    upload.write_bytes(gzip.compress(b""))
    assert_refused(upload, dest, "source.not_an_archive", 422)


def good_entries() -> list[Entry]:
    noise = os.urandom(200 * 1024)  # incompressible, so a cut lands in the data
    return [reg("Procfile", b"web: python app.py\n"), reg("noise.bin", noise), reg("app.py", b"print()\n")]


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_truncated_gzip_is_refused(upload, dest, keep):
    data = gzip.compress(tar_bytes(good_entries()))
    upload.write_bytes(data[: int(len(data) * keep)])
    assert_refused(upload, dest, "source.not_an_archive", 422)


def test_missing_gzip_trailer_is_refused(upload, dest):
    upload.write_bytes(gzip.compress(tar_bytes(good_entries()))[:-4])
    assert_refused(upload, dest, "source.not_an_archive", 422)


def test_corrupted_gzip_is_refused(upload, dest):
    data = bytearray(gzip.compress(tar_bytes(good_entries()), compresslevel=1))
    data[len(data) // 2] ^= 0xFF
    upload.write_bytes(bytes(data))
    assert_refused(upload, dest, "source.not_an_archive", 422)


def test_damaged_header_mid_archive_is_not_taken_for_the_end(upload, dest):
    raw = bytearray(tar_bytes([reg("Procfile", b"web: x\n"), reg("app.py", b"print()\n")], fmt=tarfile.USTAR_FORMAT))
    second_header = 1024  # header + one data block
    raw[second_header + 148 : second_header + 156] = b"0000000\x00"  # bad checksum
    upload.write_bytes(gzip.compress(bytes(raw)))
    assert_refused(upload, dest, "source.not_an_archive", 422)


def test_missing_end_of_archive_marker_is_refused(upload, dest):
    raw = tar_bytes([reg("Procfile", b"web: x\n"), reg("app.py", b"print()\n")], fmt=tarfile.USTAR_FORMAT)
    upload.write_bytes(gzip.compress(raw[: 4 * 512]))  # two members, no zero blocks
    assert_refused(upload, dest, "source.not_an_archive", 422)


def test_truncated_tar_inside_valid_gzip_is_refused(upload, dest):
    raw = tar_bytes(good_entries(), fmt=tarfile.USTAR_FORMAT)
    upload.write_bytes(gzip.compress(raw[: 512 + 512 + 512 + 1000]))
    assert_refused(upload, dest, "source.not_an_archive", 422)


def test_long_trailing_garbage_is_refused(upload, dest):
    raw = tar_bytes([reg("Procfile", b"web: x\n")]) + bytes(2 * 1024 * 1024)
    upload.write_bytes(gzip.compress(raw))
    assert_refused(upload, dest, "source.not_an_archive", 422)


@pytest.mark.parametrize(
    "entries",
    [[], [directory("./")], [directory("app"), directory("app/static")]],
    ids=["no-entries", "only-root", "only-directories"],
)
def test_archive_without_files_is_refused(upload, dest, entries):
    write_tgz(upload, entries)
    assert_refused(upload, dest, "source.empty", 422)


def test_dest_must_be_empty(upload, dest):
    write_tgz(upload, [reg("Procfile")])
    (dest / "leftover").write_text("x")
    with pytest.raises(ValueError, match="empty"):
        extract(upload, dest)
    assert (dest / "leftover").exists()


def test_disk_errors_are_transient_platform_errors(upload, dest, monkeypatch):
    write_tgz(upload, [reg("Procfile"), reg("app.py", b"print()\n")])

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fchmod", full_disk)
    with pytest.raises(PlatformError) as caught:
        extract(upload, dest)
    assert caught.value.transient
    assert not caught.value.user_error
    assert list(dest.iterdir()) == []


# -- modes -------------------------------------------------------------------------------------


def test_modes_are_normalised_not_refused(upload, dest):
    write_tgz(
        upload,
        [
            directory("bin", mode=0o7777),
            reg("bin/suid", b"#!/bin/sh\n", mode=0o4755),
            reg("bin/sgid-plain", b"data", mode=0o6644),
            reg("bin/sticky", b"data", mode=0o1777),
            reg("world-writable.txt", b"data", mode=0o666),
            reg("unreadable.txt", b"data", mode=0o000),
            reg("group-exec.sh", b"#!/bin/sh\n", mode=0o610),
        ],
    )
    extract(upload, dest)
    assert tree(dest) == {
        "bin/": 0o755,
        "bin/suid": 0o755,
        "bin/sgid-plain": 0o644,
        "bin/sticky": 0o755,
        "world-writable.txt": 0o644,
        "unreadable.txt": 0o644,
        "group-exec.sh": 0o755,
    }


def test_modes_do_not_depend_on_the_umask(upload, dest):
    write_tgz(upload, [reg("a/b/c.py"), reg("run.sh", mode=0o755)])
    old = os.umask(0o077)
    try:
        extract(upload, dest)
    finally:
        os.umask(old)
    assert tree(dest) == {"a/": 0o755, "a/b/": 0o755, "a/b/c.py": 0o644, "run.sh": 0o755}


# -- good archives -----------------------------------------------------------------------------


def test_nested_directories_and_contents(upload, dest):
    write_tgz(
        upload,
        [
            reg("Procfile", b"web: gunicorn app:app\n"),
            directory("pkg"),
            reg("pkg/__init__.py", b""),
            reg("pkg/sub/deep/module.py", b"X = 1\n"),  # parents implied
            directory("pkg/sub"),  # a directory entry after its contents: fine
            reg("bin/start", b"#!/bin/sh\nexec gunicorn\n", mode=0o755),
        ],
    )
    result = extract(upload, dest)
    assert result == ExtractResult(files=4, directories=4, total_bytes=22 + 0 + 6 + 24, stripped_prefix=None)
    assert (dest / "pkg" / "sub" / "deep" / "module.py").read_bytes() == b"X = 1\n"
    assert (dest / "Procfile").read_text() == "web: gunicorn app:app\n"
    assert stat.S_IMODE((dest / "bin" / "start").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "Procfile").stat().st_mode) == 0o644


def test_dot_slash_names_from_tar_c_dot(upload, dest):
    write_tgz(upload, [directory("./"), reg("./Procfile"), directory("./app/"), reg("./app/main.py"), reg("a//b.py")])
    result = extract(upload, dest)
    assert set(tree(dest)) == {"Procfile", "app/", "app/main.py", "a/", "a/b.py"}
    assert result.stripped_prefix is None


def test_single_top_level_directory_is_flattened(upload, dest):
    write_tgz(
        upload,
        [
            directory("hello-3f2a9c1"),
            reg("hello-3f2a9c1/Procfile", b"web: x\n"),
            reg("hello-3f2a9c1/app/__init__.py"),
            reg("hello-3f2a9c1/.gitignore"),
        ],
        pax_headers={"comment": "3f2a9c1e"},  # GitHub tarballs start with a pax global header
    )
    result = extract(upload, dest)
    assert result.stripped_prefix == "hello-3f2a9c1"
    assert (result.files, result.directories) == (3, 1)
    assert set(tree(dest)) == {"Procfile", "app/", "app/__init__.py", ".gitignore"}


def test_wrapper_containing_its_own_name_is_flattened(upload, dest):
    write_tgz(upload, [reg("app/Procfile"), reg("app/app/__init__.py"), reg("app/app/views.py")])
    extract(upload, dest)
    assert set(tree(dest)) == {"Procfile", "app/", "app/__init__.py", "app/views.py"}


def test_no_flattening_beside_another_top_level_entry(upload, dest):
    write_tgz(upload, [reg("project/app.py"), reg("Procfile")])
    result = extract(upload, dest)
    assert result.stripped_prefix is None
    assert set(tree(dest)) == {"project/", "project/app.py", "Procfile"}


def test_single_top_level_file_is_kept(upload, dest):
    write_tgz(upload, [reg("Procfile", b"web: x\n")])
    assert extract(upload, dest) == ExtractResult(files=1, directories=0, total_bytes=7)


def test_gnu_format_long_names_within_limits(upload, dest):
    name = "/".join(["segment" * 10] * 8) + "/file.py"  # well over 100 bytes: a GNU long-name header
    write_tgz(upload, [reg("Procfile"), reg(name, b"ok")], fmt=tarfile.GNU_FORMAT)
    extract(upload, dest)
    assert (dest / name).read_bytes() == b"ok"


def test_utf8_names_are_fine(upload, dest):
    write_tgz(upload, [reg("Procfile"), reg("static/café-☕.txt", b"ok")])
    extract(upload, dest)
    assert (dest / "static" / "café-☕.txt").read_bytes() == b"ok"


def test_exactly_at_the_limits_is_accepted(upload, dest):
    write_tgz(upload, [reg("Procfile", b"a" * 100), reg("b", b"b" * 28)])
    result = extract(upload, dest, max_bytes=128, max_files=2)
    assert (result.files, result.total_bytes) == (2, 128)


# -- upload size and the error classes ---------------------------------------------------------


def test_check_upload_size():
    check_upload_size(10, 10)
    with pytest.raises(SourceRejected) as caught:
        check_upload_size(50 * 1024 * 1024 + 1, 50 * 1024 * 1024)
    assert (caught.value.code, caught.value.http_status) == ("source.too_large", 413)
    assert "50 MiB" in caught.value.message
    with pytest.raises(SourceRejected) as caught:
        check_upload_size(0, 10)
    assert (caught.value.code, caught.value.http_status) == ("source.not_an_archive", 422)


def test_error_classes_classify_and_pickle():
    rejected = SourceRejected("source.too_large", "Too big.", http_status=413)
    platform = PlatformError("platform.podman_timeout", "Try again.", transient=True)
    user = UserError("build.no_web_process", "Add a Procfile.")
    for error in (rejected, platform, user):
        copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own object, round-tripped
        assert type(copy) is type(error)
        assert (copy.code, copy.message, copy.transient) == (error.code, error.message, error.transient)
        assert isinstance(copy, DeployError)
    assert pickle.loads(pickle.dumps(rejected)).http_status == 413  # noqa: S301
    assert (rejected.user_error, user.user_error, platform.user_error) == (True, True, False)
    assert not user.transient
    assert user.as_dict() == {"code": "build.no_web_process", "message": "Add a Procfile."}
    assert UserError("build.bad_procfile").message  # a default message, never empty
    with pytest.raises(ValueError, match="413 or 422"):
        SourceRejected("source.too_large", "x", http_status=400)
