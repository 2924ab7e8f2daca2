"""The platform base image: Debian bookworm with Python, built locally (no registry needed).

`debootstrap` writes a minimal root filesystem into a scratch directory under BUILD_ROOT, which
is tarred and imported with `podman import`. It runs once per machine; `base_image_ensure` is a
no-op when the image is already present. An operator who sets COLTSFOOT_BASE_IMAGE to a
registry image gets that image pulled instead of built.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from django.conf import settings

from drivers import podman

logger = logging.getLogger(__name__)

DEFAULT_MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates")
IMAGE_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV HOME=/tmp",
    "ENV LANG=C.UTF-8",
    "ENV PYTHONUNBUFFERED=1",
    "WORKDIR /app",
)
APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
LOG_TAIL_CHARS = 4000


class BaseImageError(Exception):
    pass


def debian_mirror(sources: Iterable[Path] = APT_SOURCES) -> str:
    """The mirror for debootstrap: settings.BASE_IMAGE_MIRROR if set, else the first apt source
    on this machine that serves `bookworm`, else deb.debian.org."""
    configured = str(getattr(settings, "BASE_IMAGE_MIRROR", "") or "")
    if configured:
        return configured
    for path in sources:
        files = sorted(path.iterdir()) if path.is_dir() else [path]
        for file in files:
            if not file.is_file() or file.suffix not in {".list", ".sources"}:
                continue
            mirror = _mirror_in(file.read_text(errors="replace"), deb822=file.suffix == ".sources")
            if mirror:
                return mirror
    return DEFAULT_MIRROR


def _mirror_in(text: str, *, deb822: bool) -> str:
    if deb822:
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                key, sep, value = line.partition(":")
                if sep and not line.startswith((" ", "#")):
                    fields[key.strip().lower()] = value.strip()
            if "deb" in fields.get("types", "").split() and SUITE in fields.get("suites", "").split():
                return fields.get("uris", "").split()[0] if fields.get("uris") else ""
        return ""
    for line in text.splitlines():
        words = re.sub(r"\[[^]]*\]", "", line).split()  # drop "[signed-by=...]" options
        if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
            return words[1]
    return ""


def base_image_ensure(*, force: bool = False, mirror: str | None = None) -> str:
    """Make settings.BASE_IMAGE available locally; returns its image id."""
    ref = settings.BASE_IMAGE
    if not force and podman.image_exists(ref):
        logger.info("base image %s already present", ref)
        return podman.image_id(ref)
    if not ref.startswith("localhost/"):
        logger.info("pulling base image %s", ref)
        podman.image_pull(ref, tls_verify=True)
        return podman.image_id(ref)
    return base_image_build(ref, mirror=mirror or debian_mirror())


def base_image_build(ref: str, *, mirror: str) -> str:
    settings.BUILD_ROOT.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="base-image-", dir=settings.BUILD_ROOT))
    rootfs = workdir / "rootfs"
    tarball = workdir / "rootfs.tar"
    started = time.monotonic()
    try:
        logger.info("debootstrap %s from %s into %s", SUITE, mirror, rootfs)
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                SUITE,
                str(rootfs),
                mirror,
            ],
            what="debootstrap",
        )
        logger.info("debootstrap done in %.0f s", time.monotonic() - started)
        _finish_rootfs(rootfs)
        _run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(tarball), "."], what="tar")
        logger.info("importing %s (%d MiB)", ref, tarball.stat().st_size // (1024 * 1024))
        podman.run(podman.import_argv(str(tarball), ref, IMAGE_CHANGES), timeout=settings.BUILD_TIMEOUT_SECONDS)
        image_id = podman.image_id(ref)
        logger.info("base image %s built in %.0f s: %s", ref, time.monotonic() - started, image_id)
        return image_id
    finally:
        _remove_scratch(workdir)


def _finish_rootfs(rootfs: Path) -> None:
    app = rootfs / "app"
    app.mkdir(exist_ok=True)
    app.chmod(0o1777)  # tenant uids differ; the sandbox is the boundary, not this directory
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for entry in (rootfs / cache).glob("*"):
            if entry.is_file() or entry.is_symlink():
                entry.unlink()
    for entry in (rootfs / "var/cache/apt").glob("*.bin"):
        entry.unlink()


def _run(argv: list[str], *, what: str) -> None:
    try:
        subprocess.run(
            argv,
            check=True,
            capture_output=True,
            text=True,
            timeout=settings.BUILD_TIMEOUT_SECONDS,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.CalledProcessError as exc:
        output = (exc.stdout or "") + (exc.stderr or "")
        raise BaseImageError(f"{what} failed (exit {exc.returncode}): {output[-LOG_TAIL_CHARS:]}") from exc
    except subprocess.TimeoutExpired as exc:
        raise BaseImageError(f"{what} timed out after {settings.BUILD_TIMEOUT_SECONDS} s") from exc
    except FileNotFoundError as exc:
        raise BaseImageError(f"{argv[0]} is not installed (apt-get install {argv[0]})") from exc


def _mounts_under(directory: Path) -> list[str]:
    prefix = str(directory).rstrip("/") + "/"
    mounts = []
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        for line in mountinfo:
            # Field 5 is the mount point, with spaces etc. octal-escaped.
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
            if point.startswith(prefix):
                mounts.append(point)
    return sorted(mounts, key=len, reverse=True)


def _remove_scratch(workdir: Path) -> None:
    """debootstrap mounts /proc and /sys in the target and unmounts them from an exit trap,
    which does not run if it is killed: unmount leftovers first, because rmtree through a
    live mount would delete the host's files."""
    for point in _mounts_under(workdir):
        logger.warning("unmounting leftover %s", point)
        try:
            subprocess.run(
                ["umount", "--lazy", point],  # noqa: S607 - util-linux, on PATH
                check=True,
                capture_output=True,
                text=True,
                timeout=60,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            logger.error("cannot unmount %s: %s", point, exc)
    if _mounts_under(workdir):
        logger.error("leaving %s in place: it still has mounts", workdir)
        return
    shutil.rmtree(workdir, ignore_errors=True)
    if os.path.exists(workdir):
        logger.warning("could not remove %s completely", workdir)
