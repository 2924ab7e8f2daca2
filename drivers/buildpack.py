"""Detect a tenant app and describe how to build it: pure functions on an unpacked source tree.

The tenant app convention (README.md, "Deploy your own app"): the archive's root holds a
`Procfile` with a `web:` process (and optionally `release:`), plus `requirements.txt` or
`pyproject.toml` (with `uv.lock` honoured when present).

A build happens in two images, and no tenant-controlled code ever runs on the host:

1. The dependency image, `localhost/coltsfoot-deps:<key[:32]>`, is made by running
   `dependency_install_script()` with `/bin/sh` inside a gVisor container from the base image,
   with `dependency_files()` mounted read-only at `/deps`, and committing the container. Its key
   (`dependency_key()`) hashes those files with the base image id, so apps with the same
   dependencies share it and a code-only change reuses it. uv (the platform's pinned binary,
   mounted read-only) and any `setup.py` run there, with the platform's index and CA settings.
2. The app image is `podman build` of the unpacked tree with `containerfile()`, which only
   copies files and sets the environment: no `RUN`, because `podman build` runs on the host in
   chroot isolation. Write the Containerfile *outside* the source tree and pass it with `-f`,
   so a tenant's own `Containerfile`/`Dockerfile` never matters and nothing we generate ends up
   in `/app/src` (which is why no `.containerignore` is written; a tenant's own one only drops
   the tenant's own files).

Dependency kinds, first match wins: `uv` (`uv.lock` + `pyproject.toml`), `requirements`
(`requirements.txt`), `pyproject` (`pyproject.toml` alone: its `[project].dependencies`, read
here as data, become a requirements file), `none`. Not supported: uv workspaces and path
dependencies (only the two files are mounted), `-r`/`-c` includes of other files, dynamic
dependencies.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import re
import shlex
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from core.faults import UserError

DepsKind = Literal["requirements", "pyproject", "uv", "none"]

PROCFILE = "Procfile"
REQUIREMENTS = "requirements.txt"
PYPROJECT = "pyproject.toml"
UV_LOCK = "uv.lock"

MAX_PROCFILE_BYTES = 64 * 1024
MAX_COMMAND_CHARS = 8192
MAX_REQUIREMENTS_BYTES = 1024 * 1024
MAX_PYPROJECT_BYTES = 1024 * 1024
MAX_LOCK_BYTES = 16 * 1024 * 1024
MAX_PROJECT_DEPENDENCIES = 1000
MAX_REQUIREMENT_CHARS = 1000

# Paths inside the containers: ours, never tenant text.
DEPS_MOUNT = "/deps"
VENV_DIR = "/app/.venv"
APP_DIR = "/app/src"
DEPS_IMAGE_REPOSITORY = "localhost/coltsfoot-deps"
# Where the platform's uv binary (the `uv` pinned in the platform's own uv.lock) and the tenant's uv cache
# are mounted in the dependency sandbox. Outside /tmp (the sandbox's tmpfs) and /app (what is committed).
UV_BINARY = "/opt/coltsfoot/bin/uv"
UV_CACHE_MOUNT = "/opt/coltsfoot/uv-cache"
# Part of every dependency key: bump it whenever the install script changes what it builds, so
# images made by the old recipe are not reused.
DEPENDENCY_RECIPE_VERSION = "2"

# Scratch paths inside the single-use install container (not the host's /tmp), removed at the end.
_UV_SCRATCH_CACHE = "/tmp/coltsfoot-uv-cache"  # noqa: S108
_LOCKED_REQUIREMENTS = "/tmp/coltsfoot-locked-requirements.txt"  # noqa: S108
_PATH = f"{VENV_DIR}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_PROCFILE_LINE_RE = re.compile(r"(?P<name>[A-Za-z0-9_-]{1,63}):(?P<command>.*)")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # tab is allowed
# A PEP 508 requirement starts with a distribution name; anything else (an option such as
# `--index-url`, a path, a line continuation, a per-requirement ` --option`) could change what
# pip does with the whole file.
_REQUIREMENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(?:[^\x00-\x1f\x7f\\]*[^\x00-\x1f\x7f\\\s])?")
_OPTION_RE = re.compile(r"\s-")
_IMAGE_REF_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}")
_HEX_RE = re.compile(r"[0-9a-f]{64}")


@dataclasses.dataclass(frozen=True)
class AppSpec:
    web_command: str
    release_command: str | None
    deps_kind: DepsKind


# -- detection ---------------------------------------------------------------------------------


def parse_procfile(text: str) -> dict[str, str]:
    """Process type -> command. Comments (`#`) and blank lines are skipped; anything else that
    is not `type: command` is `build.bad_procfile`, as is a type given twice."""
    if len(text) > MAX_PROCFILE_BYTES:
        raise _bad_procfile(f"it is larger than {MAX_PROCFILE_BYTES // 1024} KiB")
    processes: dict[str, str] = {}
    for number, raw_line in enumerate(text.removeprefix("\ufeff").split("\n"), start=1):
        line = raw_line.removesuffix("\r").strip()
        if not line or line.startswith("#"):
            continue
        match = _PROCFILE_LINE_RE.fullmatch(line)
        if match is None:
            raise _bad_procfile(f"line {number} is not `<type>: <command>` (types are letters, digits, `_`, `-`)")
        name, command = match["name"], match["command"].strip()
        if not command:
            raise _bad_procfile(f"line {number} has no command for `{name}`")
        if len(command) > MAX_COMMAND_CHARS:
            raise _bad_procfile(f"the command on line {number} is longer than {MAX_COMMAND_CHARS} characters")
        if _CONTROL_RE.search(command):
            raise _bad_procfile(f"line {number} contains a control character")
        if name in processes:
            raise _bad_procfile(f"`{name}` is defined twice (again on line {number})")
        processes[name] = command
    return processes


def detect(src: Path) -> AppSpec:
    """What to run and how to install dependencies, from the files at the root of `src`."""
    raw = _read_root_file(src, PROCFILE, MAX_PROCFILE_BYTES, "build.bad_procfile")
    if raw is None:
        raise UserError(
            "build.no_web_process",
            "No Procfile at the root of the archive. Add one with a web process, e.g. "
            "`web: gunicorn --bind 0.0.0.0:$PORT app:app`.",
        )
    processes = parse_procfile(_decode(raw, PROCFILE, "build.bad_procfile"))
    web = processes.get("web")
    if web is None:
        raise UserError(
            "build.no_web_process",
            "The Procfile has no `web:` process. Add a line like `web: gunicorn --bind 0.0.0.0:$PORT app:app`.",
        )
    return AppSpec(web_command=web, release_command=processes.get("release"), deps_kind=_detect_deps_kind(src))


def _detect_deps_kind(src: Path) -> DepsKind:
    has_lock = _is_present(src, UV_LOCK, "build.bad_lockfile")
    has_pyproject = _is_present(src, PYPROJECT, "build.bad_pyproject")
    if has_lock and has_pyproject:
        return "uv"
    if _is_present(src, REQUIREMENTS, "build.bad_requirements"):
        return "requirements"
    if has_lock:
        raise UserError("build.bad_lockfile", "uv.lock needs the pyproject.toml it was made from, at the archive root.")
    if has_pyproject:
        return "pyproject"
    return "none"


# -- dependencies ------------------------------------------------------------------------------


def dependency_files(src: Path, spec: AppSpec) -> dict[str, bytes]:
    """The files, by name under `/deps`, that fully determine the dependency image."""
    match spec.deps_kind:
        case "requirements":
            data = _require_root_file(src, REQUIREMENTS, MAX_REQUIREMENTS_BYTES, "build.bad_requirements")
            _decode(data, REQUIREMENTS, "build.bad_requirements")
            return {REQUIREMENTS: data}
        case "pyproject":
            data = _require_root_file(src, PYPROJECT, MAX_PYPROJECT_BYTES, "build.bad_pyproject")
            requirements = project_dependencies(_decode(data, PYPROJECT, "build.bad_pyproject"))
            return {REQUIREMENTS: "".join(f"{line}\n" for line in requirements).encode()}
        case "uv":
            data = _require_root_file(src, PYPROJECT, MAX_PYPROJECT_BYTES, "build.bad_pyproject")
            _load_toml(_decode(data, PYPROJECT, "build.bad_pyproject"))
            lock = _require_root_file(src, UV_LOCK, MAX_LOCK_BYTES, "build.bad_lockfile")
            _decode(lock, UV_LOCK, "build.bad_lockfile")
            return {PYPROJECT: data, UV_LOCK: lock}
        case "none":
            return {}


def project_dependencies(pyproject_text: str) -> list[str]:
    """`[project].dependencies` of a pyproject.toml, checked to be plain requirement lines."""
    document = _load_toml(pyproject_text)
    project = document.get("project", {})
    if not isinstance(project, dict):
        raise _bad_pyproject("`project` must be a table")
    dynamic = project.get("dynamic", [])
    if isinstance(dynamic, list) and "dependencies" in dynamic:
        raise _bad_pyproject(
            "its dependencies are dynamic; list them in [project].dependencies, or add a requirements.txt or uv.lock"
        )
    dependencies = project.get("dependencies", [])
    if not isinstance(dependencies, list) or not all(isinstance(item, str) for item in dependencies):
        raise _bad_pyproject("[project].dependencies must be a list of strings")
    if len(dependencies) > MAX_PROJECT_DEPENDENCIES:
        raise _bad_pyproject(f"it lists more than {MAX_PROJECT_DEPENDENCIES} dependencies")
    requirements = [item.strip() for item in dependencies]
    for item in requirements:
        if len(item) > MAX_REQUIREMENT_CHARS or not _REQUIREMENT_RE.fullmatch(item) or _OPTION_RE.search(item):
            shown = repr(item[:80])
            raise _bad_pyproject(f"{shown} in [project].dependencies is not a requirement like `flask>=3`")
    return requirements


def _feed(digest: hashlib._Hash, chunk: bytes) -> None:
    """Length-prefixed, so no two different inputs can run together into the same bytes."""
    digest.update(len(chunk).to_bytes(8, "big"))
    digest.update(chunk)


def dependency_key(files: Mapping[str, bytes], base_image_id: str) -> str:
    """sha256 hex over the recipe version, the base image id and the files' names and contents."""
    digest = hashlib.sha256()

    feed = functools.partial(_feed, digest)

    feed(b"coltsfoot-deps")
    feed(DEPENDENCY_RECIPE_VERSION.encode())
    feed(base_image_id.encode())
    feed(str(len(files)).encode())
    for name in sorted(files):
        feed(name.encode())
        feed(files[name])
    return digest.hexdigest()


def dependency_image(key: str) -> str:
    """The tag of the dependency image for a `dependency_key()`."""
    if not _HEX_RE.fullmatch(key):
        raise ValueError("not a dependency key")
    return f"{DEPS_IMAGE_REPOSITORY}:{key[:32]}"


# Bumped whenever what `source_digest()` feeds changes, so no old digest can match a new one.
SOURCE_DIGEST_VERSION = "1"
_READ_CHUNK = 1024 * 1024


def source_digest(src: Path, context: str) -> str:
    """sha256 hex over the tree under `src` as `podman build` copies it, and `context`: what else
    the image is made of (the base image id, the Containerfile). Two trees have the same digest only
    if they hold the same paths, each of the same type and permission bits, the same file bytes and
    the same link targets; modification times and owners are left out (the image resets owners, and
    times change nothing the app runs). Links and special files are hashed as what they are, never
    followed or read, though intake and the git fetch refuse them anyway."""
    digest = hashlib.sha256()

    feed = functools.partial(_feed, digest)

    feed(b"coltsfoot-source")
    feed(SOURCE_DIGEST_VERSION.encode())
    feed(context.encode())
    paths: list[bytes] = []
    for root, dirs, files in os.walk(os.fsencode(src)):
        base = os.path.relpath(root, os.fsencode(src))
        for name in (*dirs, *files):
            paths.append(os.path.normpath(os.path.join(base, name)))
    for relative in sorted(paths):
        path = os.path.join(os.fsencode(src), relative)
        info = os.lstat(path)
        mode = stat.S_IMODE(info.st_mode)
        feed(relative)
        if stat.S_ISREG(info.st_mode):
            feed(f"file {mode:o} {info.st_size}".encode())
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as handle:
                while chunk := handle.read(_READ_CHUNK):
                    digest.update(chunk)
        elif stat.S_ISDIR(info.st_mode):
            feed(f"dir {mode:o}".encode())
        elif stat.S_ISLNK(info.st_mode):
            feed(b"link " + os.readlink(path))
        else:
            feed(f"other {stat.S_IFMT(info.st_mode):o} {mode:o}".encode())
    return digest.hexdigest()


def dependency_install_script(spec: AppSpec, *, uv_cache: bool = False) -> str:
    """The `/bin/sh` script that builds `/app/.venv` inside the sandbox, from the files in `/deps`, with uv.

    Runs in a gVisor container from the base image, never on the host. uv is the platform's own binary,
    mounted read-only at `UV_BINARY`; with `uv_cache` its cache is the tenant's own directory mounted at
    `UV_CACHE_MOUNT` (never shared across tenants: a build runs package code, which could poison it), else a
    scratch directory of the sandbox. `PIP_INDEX_URL` (the platform's index setting, a secret in the
    environment when set) becomes uv's default index; certificates come from the system bundle, where the
    platform's CA bundle is mounted.
    """
    uv = UV_BINARY
    install = [uv, "pip", "install", "--python", f"{VENV_DIR}/bin/python"]
    commands = [
        ["echo", f"-----> Creating the virtualenv {VENV_DIR}"],
        [uv, "venv", "--python", "/usr/bin/python3", VENV_DIR],
    ]
    match spec.deps_kind:
        case "requirements":
            commands += [
                ["echo", "-----> Installing dependencies from requirements.txt"],
                [*install, "-r", f"{DEPS_MOUNT}/{REQUIREMENTS}"],
            ]
        case "pyproject":
            commands += [
                ["echo", "-----> Installing [project].dependencies from pyproject.toml"],
                [*install, "-r", f"{DEPS_MOUNT}/{REQUIREMENTS}"],
            ]
        case "uv":
            commands += [
                ["echo", "-----> Installing dependencies locked in uv.lock"],
                # The export pins every transitive dependency, and installing it honours the platform's
                # index setting (a sync would fetch from the URLs recorded in the lock).
                [
                    uv,
                    "export",
                    "--directory",
                    DEPS_MOUNT,
                    "--frozen",
                    "--no-dev",
                    "--no-hashes",
                    "--no-emit-workspace",
                    "--no-header",
                    "--quiet",  # the file is enough: no copy of it in the build log
                    "--output-file",
                    _LOCKED_REQUIREMENTS,
                ],
                # --no-deps keeps the install to exactly the exported pins.
                [*install, "--no-deps", "-r", _LOCKED_REQUIREMENTS],
                ["rm", "-f", _LOCKED_REQUIREMENTS],
            ]
        case "none":
            commands += [["echo", "-----> No requirements.txt or pyproject.toml: nothing to install"]]
    environment = {
        "HOME": "/tmp",  # noqa: S108 - the sandbox's own tmpfs
        "UV_CACHE_DIR": UV_CACHE_MOUNT if uv_cache else _UV_SCRATCH_CACHE,
        "UV_PYTHON_DOWNLOADS": "never",
        # Bytecode now, once: the app's tree is read-only at run time, so each start would compile it again.
        "UV_COMPILE_BYTECODE": "1",
        # The cache and the venv are on different filesystems: copy, and say so (no fallback warning).
        "UV_LINK_MODE": "copy",
        "UV_NO_PROGRESS": "1",
        "SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt",
    }
    lines = [
        "set -eu",
        "umask 022",
        *(f"export {key}={shlex.quote(value)}" for key, value in environment.items()),
        'if [ -n "${PIP_INDEX_URL:-}" ]; then export UV_DEFAULT_INDEX="$PIP_INDEX_URL"; fi',
        *(shlex.join(command) for command in commands),
    ]
    if not uv_cache:
        lines.append(shlex.join(["rm", "-rf", _UV_SCRATCH_CACHE]))
    return "\n".join(lines) + "\n"


# -- the app image -----------------------------------------------------------------------------


def containerfile(deps_image: str) -> str:
    """The app image: the dependency image plus the source, root-owned and read-only to the app.

    No `RUN`: `podman build` executes RUN steps on the host (chroot isolation), and nothing a
    tenant controls may run there.
    """
    if not _IMAGE_REF_RE.fullmatch(deps_image):
        raise ValueError("not an image reference")
    lines = [
        "# Generated by Coltsfoot. No RUN instructions: this build runs on the host.",
        f"FROM {deps_image}",
        # Owned by root with the modes the unpacker set (0644/0755): any uid can read, the app's
        # uid cannot write.
        f"COPY --chown=0:0 . {APP_DIR}",
        f"WORKDIR {APP_DIR}",
        f"ENV PATH={_PATH} VIRTUAL_ENV={VENV_DIR}",
        "ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp",
    ]
    return "\n".join(lines) + "\n"


# -- helpers -----------------------------------------------------------------------------------


def _is_present(src: Path, name: str, code: str) -> bool:
    try:
        mode = (src / name).lstat().st_mode
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(mode):
        raise UserError(code, f"{name} must be a regular file.")
    return True


def _read_root_file(src: Path, name: str, max_bytes: int, code: str) -> bytes | None:
    """The bytes of `src/name`, or None if absent. Refuses links, non-files and big files."""
    try:
        # O_NONBLOCK: opening a fifo must not hang the worker.
        fd = os.open(src / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError:
        raise UserError(code, f"{name} must be a regular file.") from None
    try:
        is_file = stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        os.close(fd)
        raise
    if not is_file:
        os.close(fd)
        raise UserError(code, f"{name} must be a regular file.")
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UserError(code, f"{name} is larger than {max_bytes // 1024} KiB.")
    return data


def _require_root_file(src: Path, name: str, max_bytes: int, code: str) -> bytes:
    data = _read_root_file(src, name, max_bytes, code)
    if data is None:
        raise UserError(code, f"{name} is missing from the archive root.")
    return data


def _decode(data: bytes, name: str, code: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(code, f"{name} is not valid UTF-8.") from None


def _load_toml(text: str) -> dict[str, object]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _bad_pyproject(f"it is not valid TOML ({exc})") from None
    except RecursionError:
        raise _bad_pyproject("it is nested too deeply") from None


def _bad_procfile(reason: str) -> UserError:
    return UserError("build.bad_procfile", f"The Procfile is malformed: {reason}.")


def _bad_pyproject(reason: str) -> UserError:
    return UserError("build.bad_pyproject", f"pyproject.toml cannot be used: {reason}.")
