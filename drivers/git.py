"""Git sources for deployments: URL and ref validation, and a hardened shallow clone.

Everything here treats the URL and the ref as hostile tenant input. The module is pure Python
plus `git` run through argument lists; it reads no Django settings, so callers pass
``GIT_ALLOWED_SCHEMES``/``GIT_ALLOWED_HOSTS``/``GIT_ALLOW_LOCAL`` explicitly.

Validate the URL when the deployment intent is recorded *and* again in the task right before
``clone()``: each check resolves the host, which narrows (but cannot close) the DNS window
described in ``validate_git_url``.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import unicodedata
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

MAX_URL_LENGTH = 2048
MAX_REF_LENGTH = 255
DEFAULT_MAX_BYTES = 200 * 1024 * 1024
DEFAULT_MAX_FILES = 5000

# Resolves a host name to the IP address strings it points at (``socket.getaddrinfo`` by default).
Resolver = Callable[[str], Sequence[str]]

_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://", re.ASCII)
_DEFAULT_PORTS = {"https": 443, "http": 80}
# Schemes git may ever be asked to speak here; ssh, git://, ext:: and fd:: never are, whatever the
# settings say (ssh would need keys on the host, ext:: runs a command, fd:: reads our descriptors).
_NETWORK_SCHEMES = frozenset({"https", "http"})
_HOST_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)
# A last label that is all digits or 0x-hex makes inet_aton-style parsers (and curl) read the
# whole host as an IPv4 address: 2130706433, 0x7f.1, 127.1, 0177.0.0.1.
_NUMERIC_LABEL_RE = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)", re.ASCII)
_PATH_RE = re.compile(r"/(?:[A-Za-z0-9._~+-]|%[0-9A-Fa-f]{2}|/)+", re.ASCII)
_SHA_RE = re.compile(r"[0-9a-fA-F]{40}", re.ASCII)
_REF_FORBIDDEN_CHARS = frozenset(" ~^:?*[\\")
# RFC 6052 well-known NAT64 prefix: a "public" IPv6 address that a NAT64 gateway maps to IPv4.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class GitUrlRejected(ValueError):
    """The URL is not one the platform will clone from. ``message`` is safe to show the tenant."""

    code = "source.git_url_not_allowed"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class GitRefRejected(ValueError):
    """The branch, tag or commit name is not acceptable."""

    code = "source.git_ref_invalid"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class GitCloneError(Exception):
    """Cloning failed or produced a checkout we refuse. A user error: retrying will not help.

    ``message`` is tenant-safe (no host paths, no raw git output); ``detail`` holds redacted
    git output for the platform's logs only.
    """

    def __init__(self, message: str, *, code: str = "source.git_clone_failed", detail: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.detail = detail


@dataclass(frozen=True, slots=True)
class GitSource:
    """A repository and a ref (branch, tag or 40-hex commit sha) to deploy from."""

    url: str
    ref: str


# --- URL -----------------------------------------------------------------------------------------


def default_resolver(host: str) -> list[str]:
    infos = socket.getaddrinfo(host, 443, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def validate_git_url(
    url: str,
    *,
    allowed_schemes: Iterable[str] = ("https",),
    allowed_hosts: Iterable[str],
    allow_local: bool = False,
    resolver: Resolver | None = None,
) -> str:
    """Return the normalised URL to clone, or raise ``GitUrlRejected``.

    The returned URL is rebuilt from the validated parts (lower-case scheme, IDNA host, no
    default port), so git receives exactly what was checked, never the tenant's spelling.

    DNS: the host must be allow-listed *and* every address it resolves to must be public. git
    resolves the name again when it connects, so a hostile resolver (TTL 0, answering public
    now and private later) still has a window between this check and the clone. Keeping the
    allow-list to hosts whose DNS the platform trusts is the real defence; per-connection
    pinning would need an egress proxy or a network namespace around git.
    """
    if not isinstance(url, str) or not url:
        raise GitUrlRejected("The git URL is empty.")
    if len(url) > MAX_URL_LENGTH:
        raise GitUrlRejected(f"The git URL is longer than {MAX_URL_LENGTH} characters.")
    if any(ch.isspace() or unicodedata.category(ch).startswith("C") for ch in url):
        raise GitUrlRejected("The git URL contains whitespace or control characters.")
    if url.startswith("-"):
        raise GitUrlRejected("The git URL must not start with '-'.")
    match = _SCHEME_RE.match(url)
    if match is None:
        # scp-style "git@host:repo", bare paths and "<transport>::<address>" (ext::, fd::) all land here.
        raise GitUrlRejected("The git URL must be of the form https://host/owner/repo.")
    scheme = match.group(1).lower()
    if "@" in url:
        raise GitUrlRejected("The git URL must not contain credentials or '@'; the repository must be public.")
    if "?" in url or "#" in url:
        raise GitUrlRejected("The git URL must not have a query string or fragment.")

    if scheme == "file":
        if not allow_local:
            raise GitUrlRejected("file:// URLs are not allowed.")
        return _validate_file_url(url)
    schemes = {s.strip().lower() for s in allowed_schemes} & _NETWORK_SCHEMES
    if scheme not in schemes:
        allowed = ", ".join(sorted(schemes)) or "none"
        raise GitUrlRejected(f"The git URL scheme {scheme!r} is not allowed (allowed: {allowed}).")

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # bad port, bad brackets, NFKC tricks in the netloc
        raise GitUrlRejected("The git URL is malformed.") from exc
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        raise GitUrlRejected("The git URL must not name a port.")
    raw_host = parts.hostname or ""
    if not raw_host:
        raise GitUrlRejected("The git URL has no host.")
    if "[" in parts.netloc or ":" in raw_host:
        raise GitUrlRejected("The git URL must use a host name, not an IP address.")
    host = _normalise_host(raw_host)
    _check_host_is_name(host)

    allowed_names = {_normalise_host(h) for h in allowed_hosts if h.strip()}
    if not any(host == name or host.endswith("." + name) for name in allowed_names):
        raise GitUrlRejected(f"The git host {host!r} is not in the list of allowed hosts.")

    path = parts.path
    if not _PATH_RE.fullmatch(path) or path.strip("/") == "":
        raise GitUrlRejected("The git URL path must look like /owner/repo.")
    if any(segment in {".", ".."} for segment in path.split("/")):
        raise GitUrlRejected("The git URL path must not contain '.' or '..' segments.")

    _check_resolves_publicly(host, resolver or default_resolver)
    return f"{scheme}://{host}{path}"


def _normalise_host(host: str) -> str:
    name = host.strip().lower()
    if name.endswith("."):
        name = name[:-1]
    try:
        # Python's codec is IDNA 2003 (nameprep): it also folds full-width letters, digits and
        # ideographic full stops, so look-alike spellings of "localhost" or "127.0.0.1" reach the
        # checks below in their ASCII form.
        ascii_name = name.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise GitUrlRejected("The git host name is not a valid domain name.") from exc
    return ascii_name.lower().removesuffix(".")


def _check_host_is_name(host: str) -> None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        raise GitUrlRejected("The git URL must use a host name, not an IP address.")
    labels = host.split(".")
    if len(host) > 253 or not all(_HOST_LABEL_RE.fullmatch(label) for label in labels):
        raise GitUrlRejected("The git host name is not a valid domain name.")
    if _NUMERIC_LABEL_RE.fullmatch(labels[-1]):
        raise GitUrlRejected("The git URL must use a host name, not an IP address.")
    if labels[-1] == "localhost":
        raise GitUrlRejected("The git URL must not point at localhost.")


def _check_resolves_publicly(host: str, resolver: Resolver) -> None:
    try:
        addresses = list(resolver(host))
    except (OSError, UnicodeError) as exc:  # socket.gaierror is an OSError
        raise GitUrlRejected(f"The git host {host!r} could not be resolved.") from exc
    if not addresses:
        raise GitUrlRejected(f"The git host {host!r} could not be resolved.")
    for address in addresses:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError as exc:
            raise GitUrlRejected(f"The git host {host!r} could not be resolved.") from exc
        if not _is_public(ip):
            raise GitUrlRejected(f"The git host {host!r} resolves to a non-public address.")


def _is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast  # 224/4 counts as "global" to the ipaddress module
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    ):
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        # IPv6 forms that carry an IPv4 address: judge the embedded one too.
        embedded: list[ipaddress.IPv4Address] = []
        if ip.ipv4_mapped is not None:
            embedded.append(ip.ipv4_mapped)
        if ip.sixtofour is not None:
            embedded.append(ip.sixtofour)
        if ip.teredo is not None:
            embedded.extend(ip.teredo)
        if ip in _NAT64:
            embedded.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        return all(_is_public(v4) for v4 in embedded)
    return True


def _validate_file_url(url: str) -> str:
    # Tests only (GIT_ALLOW_LOCAL): an absolute path on this machine, no host.
    path = url[len("file://") :]
    if not path.startswith("/") or path.startswith("//"):
        raise GitUrlRejected("file:// URLs must be absolute paths without a host.")
    if not _PATH_RE.fullmatch(path):
        raise GitUrlRejected("The file:// path contains unsupported characters.")
    if any(segment in {".", ".."} for segment in path.split("/")):
        raise GitUrlRejected("The file:// path must not contain '.' or '..' segments.")
    return f"file://{path}"


# --- ref -----------------------------------------------------------------------------------------


def is_commit_sha(ref: str) -> bool:
    return _SHA_RE.fullmatch(ref) is not None


def validate_git_ref(ref: str) -> str:
    """Return a branch/tag name, or a 40-hex commit sha (lower-cased), or raise ``GitRefRejected``.

    Roughly ``git check-ref-format --branch`` plus a length bound. A 40-hex name is always taken
    as a commit sha, never as a branch that happens to look like one.
    """
    if not isinstance(ref, str) or not ref:
        raise GitRefRejected("The git ref is empty.")
    if len(ref) > MAX_REF_LENGTH:
        raise GitRefRejected(f"The git ref is longer than {MAX_REF_LENGTH} characters.")
    if is_commit_sha(ref):
        return ref.lower()
    if not ref.isascii() or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in ref):
        raise GitRefRejected("The git ref must be printable ASCII.")
    if any(ch in _REF_FORBIDDEN_CHARS for ch in ref):
        raise GitRefRejected("The git ref contains a character git does not allow (space ~ ^ : ? * [ \\).")
    if ref.startswith("-"):
        raise GitRefRejected("The git ref must not start with '-'.")
    if ref == "@" or "@{" in ref or ".." in ref or "//" in ref:
        raise GitRefRejected("The git ref must not contain '@{', '..' or '//', or be '@'.")
    if ref.startswith("/") or ref.endswith("/") or ref.endswith("."):
        raise GitRefRejected("The git ref must not start or end with '/' or end with '.'.")
    for component in ref.split("/"):
        if component.startswith(".") or component.endswith(".lock"):
            raise GitRefRejected("No part of the git ref may start with '.' or end with '.lock'.")
    if ref == "HEAD":
        raise GitRefRejected("Name a branch, tag or commit rather than HEAD.")
    return ref


# --- commands ------------------------------------------------------------------------------------


def _url_scheme(url: str, *, allow_local: bool) -> str:
    match = _SCHEME_RE.match(url)
    scheme = match.group(1).lower() if match else ""
    if scheme == "file" and allow_local:
        return scheme
    if scheme in _NETWORK_SCHEMES:
        return scheme
    raise GitUrlRejected("The git URL scheme is not allowed.")


def git_config_args(url: str, *, allow_local: bool = False) -> list[str]:
    """``-c`` options for every git call: only this URL's transport, no hooks, no symlinks.

    Redirects are off because an allow-listed host could otherwise bounce git to an internal
    address the URL check never saw (a renamed GitHub repository therefore needs its new URL).
    """
    scheme = _url_scheme(url, allow_local=allow_local)
    return [
        "-c",
        "protocol.allow=never",
        "-c",
        f"protocol.{scheme}.allow=always",
        "-c",
        "core.hooksPath=/dev/null",
        "-c",
        "core.symlinks=false",
        "-c",
        "http.followRedirects=false",
        "-c",
        "transfer.fsckObjects=true",
    ]


def clone_argv(url: str, ref: str, dest: Path, *, allow_local: bool = False) -> list[str]:
    """Shallow single-branch clone of a branch or tag, without checkout (the tree is inspected first)."""
    if is_commit_sha(ref):
        raise ValueError("clone_argv takes a branch or tag; use fetch_sha_argvs for a commit sha")
    return [
        "git",
        *git_config_args(url, allow_local=allow_local),
        "clone",
        "--quiet",
        "--depth",
        "1",
        "--no-tags",
        "--single-branch",
        "--no-checkout",
        "--branch",
        ref,
        "--",
        url,
        str(dest),
    ]


def fetch_sha_argvs(url: str, sha: str, dest: Path, *, allow_local: bool = False) -> list[list[str]]:
    """init + remote add + shallow fetch of exactly one commit (servers must allow fetching by sha)."""
    if not is_commit_sha(sha):
        raise ValueError("fetch_sha_argvs takes a 40-hex commit sha")
    config = git_config_args(url, allow_local=allow_local)
    return [
        ["git", *config, "init", "--quiet", "--template=", "--", str(dest)],
        ["git", *config, "-C", str(dest), "remote", "add", "origin", "--", url],
        ["git", *config, "-C", str(dest), "fetch", "--quiet", "--depth", "1", "--no-tags", "origin", sha.lower()],
    ]


def checkout_argv(url: str, dest: Path, commit: str, *, allow_local: bool = False) -> list[str]:
    return [
        "git",
        *git_config_args(url, allow_local=allow_local),
        "-C",
        str(dest),
        "checkout",
        "--quiet",
        "--detach",
        commit,
    ]


def git_env(home: Path) -> dict[str, str]:
    """A scrubbed environment: no host git config, no prompts, no inherited GIT_* variables."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_LFS_SKIP_SMUDGE": "1",
        "LC_ALL": "C",  # stable English messages for _clone_failure_message
    }
    # The platform's own egress settings still apply to git.
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy", "SSL_CERT_FILE"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


# --- clone ---------------------------------------------------------------------------------------


def clone(
    url: str,
    ref: str,
    dest: Path,
    *,
    timeout: float,
    allow_local: bool = False,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
) -> str:
    """Check ``ref`` of ``url`` out into ``dest`` (which must not exist) and return the commit sha.

    ``url`` must come from ``validate_git_url``. The result is a plain tree: ``.git`` is removed,
    and symlinks, submodules, and trees over ``max_files``/``max_bytes`` are refused before
    anything is checked out. ``timeout`` bounds the whole operation. On any failure ``dest`` is
    removed and ``GitCloneError`` raised.
    """
    ref = validate_git_ref(ref)
    dest = Path(dest)
    if dest.exists():
        raise FileExistsError(f"clone destination already exists: {dest}")
    deadline = time.monotonic() + timeout
    try:
        with tempfile.TemporaryDirectory(prefix="coltsfoot-git-home-") as home:
            env = git_env(Path(home))
            run = _Runner(env=env, deadline=deadline, dest=dest, timeout=timeout)
            if is_commit_sha(ref):
                for argv in fetch_sha_argvs(url, ref, dest, allow_local=allow_local):
                    run(argv)
                commit = run(["git", "-C", str(dest), "rev-parse", "--verify", "FETCH_HEAD^{commit}"]).strip()
                if commit != ref:
                    raise GitCloneError("The fetched commit does not match the requested sha.")
            else:
                run(clone_argv(url, ref, dest, allow_local=allow_local))
                commit = run(["git", "-C", str(dest), "rev-parse", "--verify", "HEAD^{commit}"]).strip()
            listing = run(["git", "-C", str(dest), "ls-tree", "-r", "-l", "-z", "--full-tree", commit])
            _check_tree_listing(listing, max_bytes=max_bytes, max_files=max_files)
            run(checkout_argv(url, dest, commit, allow_local=allow_local))
        shutil.rmtree(dest / ".git")
        _check_checkout(dest, max_bytes=max_bytes, max_files=max_files)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    logger.info("git source checked out", extra={"commit": commit})
    return commit


class _Runner:
    def __init__(self, *, env: dict[str, str], deadline: float, dest: Path, timeout: float) -> None:
        self.env = env
        self.deadline = deadline
        self.dest = dest
        self.timeout = timeout

    def __call__(self, argv: list[str]) -> str:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise GitCloneError(f"Fetching the repository took longer than {self.timeout:g} seconds.")
        try:
            result = subprocess.run(
                argv,
                check=True,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=remaining,
                env=self.env,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise GitCloneError(f"Fetching the repository took longer than {self.timeout:g} seconds.") from exc
        except subprocess.CalledProcessError as exc:
            detail = self._redact(exc.stderr or "")
            logger.warning("git failed", extra={"returncode": exc.returncode, "git_stderr": detail[-2000:]})
            raise GitCloneError(_clone_failure_message(detail), detail=detail) from exc
        except OSError as exc:  # git missing or not executable: a platform problem, logged in full
            logger.error("could not run git", extra={"error": str(exc)})
            raise GitCloneError("The platform could not run git.", detail=str(exc)) from exc
        return result.stdout

    def _redact(self, text: str) -> str:
        return text.replace(str(self.dest), "<checkout>")


def _clone_failure_message(stderr: str) -> str:
    # Curated messages only: raw git output names host paths and may echo the URL.
    lowered = stderr.lower()
    if "remote branch" in lowered and "not found" in lowered:
        return "The branch or tag was not found in the repository."
    if "not our ref" in lowered or "couldn't find remote ref" in lowered:
        return "The commit was not found in the repository."
    if (
        "repository not found" in lowered
        or "does not appear to be a git repository" in lowered
        or "could not read username" in lowered
        or "authentication failed" in lowered
        or "terminal prompts disabled" in lowered
    ):
        return "The repository was not found or is not public."
    if "could not resolve host" in lowered or "failed to connect" in lowered or "connection timed out" in lowered:
        return "The git host could not be reached."
    if "redirect" in lowered:
        return "The git host answered with a redirect; use the repository's current URL."
    if "fsck" in lowered or "bad object" in lowered:
        return "The repository contains malformed objects."
    return "git could not fetch the repository."


def _check_tree_listing(listing: str, *, max_bytes: int, max_files: int) -> None:
    """Refuse symlinks, submodules and oversize trees from ``ls-tree -r -l -z`` output, before checkout.

    This is what stops a highly compressible blob from filling the disk on checkout; the pack
    itself is bounded only by the timeout.
    """
    files = 0
    total = 0
    for entry in listing.split("\0"):
        if not entry:
            continue
        meta, _, _path = entry.partition("\t")
        fields = meta.split()
        if len(fields) != 4:
            raise GitCloneError("The repository listing could not be read.", detail=entry[:200])
        mode, _kind, _oid, size = fields
        if mode == "120000":
            raise GitCloneError(
                "The repository contains a symbolic link; they are not supported.", code="source.unsupported_entry"
            )
        if mode == "160000":
            raise GitCloneError(
                "The repository contains a git submodule; they are not supported.", code="source.unsupported_entry"
            )
        if mode not in {"100644", "100755"}:
            raise GitCloneError("The repository contains an unsupported entry.", code="source.unsupported_entry")
        files += 1
        total += int(size)
        _check_caps(files, total, max_bytes=max_bytes, max_files=max_files)


def _check_checkout(root: Path, *, max_bytes: int, max_files: int) -> None:
    # Defence in depth after checkout: with core.symlinks=false git writes links as plain files,
    # but whatever is on disk must be plain files and directories within the caps.
    files = 0
    total = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in [*dirnames, *filenames]:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISLNK(st.st_mode):
                raise GitCloneError(
                    "The repository contains a symbolic link; they are not supported.", code="source.unsupported_entry"
                )
            if stat.S_ISDIR(st.st_mode):
                continue
            if not stat.S_ISREG(st.st_mode):
                raise GitCloneError("The repository contains an unsupported entry.", code="source.unsupported_entry")
            files += 1
            total += st.st_size
            _check_caps(files, total, max_bytes=max_bytes, max_files=max_files)


def _check_caps(files: int, total: int, *, max_bytes: int, max_files: int) -> None:
    if files > max_files:
        raise GitCloneError(f"The repository has more than {max_files} files.", code="source.too_many_files")
    if total > max_bytes:
        raise GitCloneError(f"The repository is larger than {max_bytes} bytes.", code="source.too_large")
