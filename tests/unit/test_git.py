from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from drivers.git import GitCloneError
from drivers.git import GitRefRejected
from drivers.git import GitUrlRejected
from drivers.git import clone
from drivers.git import clone_argv
from drivers.git import fetch_sha_argvs
from drivers.git import git_env
from drivers.git import validate_git_ref
from drivers.git import validate_git_url

ALLOWED_HOSTS = ["github.com", "gitlab.com", "codeberg.org"]


def resolver_for(*addresses: str) -> Callable[[str], list[str]]:
    def resolve(host: str) -> list[str]:
        return list(addresses)

    return resolve


def public_resolver(host: str) -> list[str]:
    return ["140.82.121.3", "2606:50c0:8000::153"]


def check(
    url: str,
    *,
    resolver: Callable[[str], list[str]] = public_resolver,
    allowed_schemes: list[str] | None = None,
    allowed_hosts: list[str] | None = None,
    allow_local: bool = False,
) -> str:
    return validate_git_url(
        url,
        allowed_schemes=allowed_schemes if allowed_schemes is not None else ["https"],
        allowed_hosts=allowed_hosts if allowed_hosts is not None else ALLOWED_HOSTS,
        allow_local=allow_local,
        resolver=resolver,
    )


# --- URL -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://github.com/owner/repo.git", "https://github.com/owner/repo.git"),
        ("https://github.com/owner/repo", "https://github.com/owner/repo"),
        ("HTTPS://GitHub.COM/owner/repo.git", "https://github.com/owner/repo.git"),
        ("https://github.com./owner/repo.git", "https://github.com/owner/repo.git"),
        ("https://github.com:443/owner/repo.git", "https://github.com/owner/repo.git"),
        ("https://\uff47\uff49\uff54\uff48\uff55\uff42.com/owner/repo.git", "https://github.com/owner/repo.git"),
        ("https://gitlab.com/group/sub/repo.git", "https://gitlab.com/group/sub/repo.git"),
        ("https://www.codeberg.org/owner/repo.git", "https://www.codeberg.org/owner/repo.git"),
    ],
)
def test_accepts_public_allow_listed_urls(url: str, expected: str) -> None:
    assert check(url) == expected


def test_accepts_subdomain_of_allowed_host_case_insensitively() -> None:
    assert check("https://Git.Example.ORG/a/b", allowed_hosts=["EXAMPLE.org."]) == "https://git.example.org/a/b"


@pytest.mark.parametrize(
    "url",
    [
        # IP literals in every spelling
        "https://127.0.0.1/owner/repo.git",
        "https://[::1]/owner/repo.git",
        "https://[::ffff:127.0.0.1]/owner/repo.git",
        "https://169.254.169.254/latest/meta-data",
        "https://10.0.0.5/owner/repo.git",
        "https://2130706433/owner/repo.git",
        "http://2130706433/owner/repo.git",
        "https://0x7f000001/owner/repo.git",
        "https://0x7f.1/owner/repo.git",
        "https://127.1/owner/repo.git",
        "https://0177.0.0.1/owner/repo.git",
        "https://\uff11\uff12\uff17.\uff10.\uff10.\uff11/owner/repo.git",
        # names that mean this machine
        "https://localhost/owner/repo.git",
        "https://LOCALHOST./owner/repo.git",
        "https://github.localhost/owner/repo.git",
        "https://\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54/owner/repo.git",
        # credentials and host confusion
        "https://user:pass@github.com/owner/repo.git",
        "https://token@github.com/owner/repo.git",
        "https://github.com@evil.example/owner/repo.git",
        "https://github.com.evil.example/owner/repo.git",
        "https://evilgithub.com/owner/repo.git",
        "https://github.com\\@evil.example/owner/repo.git",
        # other transports and forms
        "ext::sh -c touch% /tmp/pwned",
        "ext::sh",
        "fd::3",
        "https::https://github.com/owner/repo.git",
        "file:///etc/passwd",
        "file:///srv/repos/app.git",
        "git@github.com:owner/repo.git",
        "ssh://git@github.com/owner/repo.git",
        "ssh://github.com/owner/repo.git",
        "git://github.com/owner/repo.git",
        "http://github.com/owner/repo.git",
        "/srv/repos/app.git",
        "github.com/owner/repo.git",
        # option injection, odd characters, size
        "-uhttps://github.com/owner/repo.git",
        "--upload-pack=touch /tmp/pwned",
        "https://github.com/owner/repo.git --upload-pack=x",
        "https://github.com/owner/repo.git\n",
        "https://github.com/owner/\trepo.git",
        "https://github.com/owner/repo\x00.git",
        "https://github.com/owner/repo.git?x=1",
        "https://github.com/owner/repo.git#main",
        "https://github.com/owner/../../repo.git",
        "https://github.com/",
        "https://github.com",
        "https://github.com:8443/owner/repo.git",
        "https://github.com:22/owner/repo.git",
        "https://github.com:notaport/owner/repo.git",
        "https://github.com/" + "a" * 2100,
        "",
    ],
)
def test_rejects_internal_and_dangerous_urls(url: str) -> None:
    with pytest.raises(GitUrlRejected) as exc_info:
        check(url)
    assert exc_info.value.code == "source.git_url_not_allowed"


@pytest.mark.parametrize(
    "address",
    [
        "10.1.2.3",
        "127.0.0.1",
        "169.254.169.254",
        "::1",
        "fd00::1",
        "224.0.0.1",
        "100.64.0.1",
        "::ffff:10.0.0.1",
        "64:ff9b::a00:1",
        "0.0.0.0",  # noqa: S104 - an address to refuse, not a bind
    ],
)
def test_rejects_host_resolving_to_non_public_address(address: str) -> None:
    with pytest.raises(GitUrlRejected, match="non-public"):
        check("https://github.com/owner/repo.git", resolver=resolver_for("140.82.121.3", address))


def test_rejects_host_that_does_not_resolve() -> None:
    def failing(host: str) -> list[str]:
        raise OSError("Name or service not known")

    with pytest.raises(GitUrlRejected, match="could not be resolved"):
        check("https://github.com/owner/repo.git", resolver=failing)
    with pytest.raises(GitUrlRejected, match="could not be resolved"):
        check("https://github.com/owner/repo.git", resolver=resolver_for())


def test_resolver_is_not_called_for_rejected_hosts() -> None:
    def exploding(host: str) -> list[str]:
        raise AssertionError("resolver called")

    with pytest.raises(GitUrlRejected):
        check("https://internal.corp/owner/repo.git", resolver=exploding)


def test_allowed_schemes_never_include_dangerous_transports() -> None:
    with pytest.raises(GitUrlRejected):
        check("ssh://github.com/owner/repo.git", allowed_schemes=["https", "ssh"])
    assert check("http://github.com/o/r.git", allowed_schemes=["https", "http"]) == "http://github.com/o/r.git"


def test_empty_allow_list_refuses_everything() -> None:
    with pytest.raises(GitUrlRejected):
        check("https://github.com/owner/repo.git", allowed_hosts=[])


def test_file_url_only_with_allow_local(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/repo"
    with pytest.raises(GitUrlRejected):
        check(url)
    assert check(url, allow_local=True) == url
    with pytest.raises(GitUrlRejected):
        check("file://host/srv/repo", allow_local=True)


# --- ref -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ref", ["main", "release/2024-01", "v1.2.3", "feature_x", "a" * 40, "0123456789abcdef" * 2 + "01234567"]
)
def test_accepts_refs(ref: str) -> None:
    assert validate_git_ref(ref) == ref


def test_sha_ref_is_lower_cased() -> None:
    assert validate_git_ref("ABCDEF" + "0" * 34) == "abcdef" + "0" * 34


@pytest.mark.parametrize(
    "ref",
    [
        "",
        "-b",
        "--upload-pack=x",
        "main..dev",
        "main@{1}",
        "@",
        "HEAD",
        "a b",
        "a\tb",
        "a\nb",
        "a\x7fb",
        "a~1",
        "a^",
        "a:b",
        "a?",
        "a*",
        "a[b",
        "a\\b",
        "/main",
        "main/",
        "a//b",
        "main.",
        ".hidden",
        "feature/.x",
        "main.lock",
        "feature/x.lock/y",
        "brånch",
        "x" * 256,
    ],
)
def test_rejects_refs(ref: str) -> None:
    with pytest.raises(GitRefRejected):
        validate_git_ref(ref)


# --- argv ----------------------------------------------------------------------------------------


def test_clone_argv_exact() -> None:
    assert clone_argv("https://github.com/owner/repo.git", "main", Path("/builds/d1/src")) == [
        "git",
        "-c",
        "protocol.allow=never",
        "-c",
        "protocol.https.allow=always",
        "-c",
        "core.hooksPath=/dev/null",
        "-c",
        "core.symlinks=false",
        "-c",
        "http.followRedirects=false",
        "-c",
        "transfer.fsckObjects=true",
        "clone",
        "--quiet",
        "--depth",
        "1",
        "--no-tags",
        "--single-branch",
        "--no-checkout",
        "--branch",
        "main",
        "--",
        "https://github.com/owner/repo.git",
        "/builds/d1/src",
    ]


def test_clone_argv_allows_file_only_when_local() -> None:
    argv = clone_argv("file:///tmp/repo", "main", Path("/tmp/out"), allow_local=True)
    assert "protocol.file.allow=always" in argv
    assert "protocol.https.allow=always" not in argv
    with pytest.raises(GitUrlRejected):
        clone_argv("file:///tmp/repo", "main", Path("/tmp/out"))
    with pytest.raises(GitUrlRejected):
        clone_argv("ext::sh -c id", "main", Path("/tmp/out"), allow_local=True)


def test_fetch_sha_argvs_exact() -> None:
    sha = "ab" * 20
    config = [
        "-c",
        "protocol.allow=never",
        "-c",
        "protocol.https.allow=always",
        "-c",
        "core.hooksPath=/dev/null",
        "-c",
        "core.symlinks=false",
        "-c",
        "http.followRedirects=false",
        "-c",
        "transfer.fsckObjects=true",
    ]
    assert fetch_sha_argvs("https://github.com/o/r.git", sha, Path("/b/src")) == [
        ["git", *config, "init", "--quiet", "--template=", "--", "/b/src"],
        ["git", *config, "-C", "/b/src", "remote", "add", "origin", "--", "https://github.com/o/r.git"],
        ["git", *config, "-C", "/b/src", "fetch", "--quiet", "--depth", "1", "--no-tags", "origin", sha],
    ]
    with pytest.raises(ValueError, match="sha"):
        fetch_sha_argvs("https://github.com/o/r.git", "main", Path("/b/src"))
    with pytest.raises(ValueError, match="branch or tag"):
        clone_argv("https://github.com/o/r.git", sha, Path("/b/src"))


def test_git_env_is_scrubbed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_DIR", "/somewhere")
    monkeypatch.setenv("GIT_ASKPASS", "/bin/leak")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    env = git_env(tmp_path)
    assert env["HOME"] == str(tmp_path)
    assert env["GIT_CONFIG_NOSYSTEM"] == "1"
    assert env["GIT_CONFIG_GLOBAL"] == "/dev/null"
    assert env["GIT_TERMINAL_PROMPT"] == "0"
    assert not {"GIT_DIR", "GIT_ASKPASS", "AWS_SECRET_ACCESS_KEY"} & env.keys()


# --- real clone ----------------------------------------------------------------------------------


def git(cwd: Path, *args: str) -> str:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(cwd),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_AUTHOR_NAME": "T",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "T",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    result = subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True, timeout=30)
    return result.stdout.strip()


@pytest.fixture
def upstream(tmp_path: Path) -> Path:
    repo = tmp_path / "upstream"
    repo.mkdir()
    git(repo, "init", "--quiet", "-b", "main")
    (repo / "Procfile").write_text("web: python app.py\n")
    (repo / "app.py").write_text("print('v1')\n")
    git(repo, "add", ".")
    git(repo, "commit", "--quiet", "-m", "v1")
    return repo


def test_clone_branch_from_local_repository(upstream: Path, tmp_path: Path) -> None:
    head = git(upstream, "rev-parse", "HEAD")
    dest = tmp_path / "out"
    commit = clone(f"file://{upstream}", "main", dest, timeout=60, allow_local=True)
    assert commit == head
    assert (dest / "Procfile").read_text() == "web: python app.py\n"
    assert (dest / "app.py").read_text() == "print('v1')\n"
    assert not (dest / ".git").exists()


def test_clone_sha_from_local_repository(upstream: Path, tmp_path: Path) -> None:
    first = git(upstream, "rev-parse", "HEAD")
    (upstream / "app.py").write_text("print('v2')\n")
    git(upstream, "commit", "--quiet", "-am", "v2")
    dest = tmp_path / "out"
    commit = clone(f"file://{upstream}", first.upper(), dest, timeout=60, allow_local=True)
    assert commit == first
    assert (dest / "app.py").read_text() == "print('v1')\n"
    assert not (dest / ".git").exists()


def test_clone_missing_branch_is_a_tenant_safe_error(upstream: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    with pytest.raises(GitCloneError) as exc_info:
        clone(f"file://{upstream}", "nope", dest, timeout=60, allow_local=True)
    assert exc_info.value.code == "source.git_clone_failed"
    assert exc_info.value.message == "The branch or tag was not found in the repository."
    assert str(tmp_path) not in exc_info.value.message
    assert not dest.exists()


def test_clone_unknown_sha_fails(upstream: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    with pytest.raises(GitCloneError) as exc_info:
        clone(f"file://{upstream}", "1" * 40, dest, timeout=60, allow_local=True)
    assert exc_info.value.code == "source.git_clone_failed"
    assert not dest.exists()


def test_clone_refuses_symlinks(upstream: Path, tmp_path: Path) -> None:
    (upstream / "passwd").symlink_to("/etc/passwd")
    git(upstream, "add", ".")
    git(upstream, "commit", "--quiet", "-m", "link")
    dest = tmp_path / "out"
    with pytest.raises(GitCloneError) as exc_info:
        clone(f"file://{upstream}", "main", dest, timeout=60, allow_local=True)
    assert exc_info.value.code == "source.unsupported_entry"
    assert not dest.exists()


def test_clone_enforces_caps(upstream: Path, tmp_path: Path) -> None:
    with pytest.raises(GitCloneError) as exc_info:
        clone(f"file://{upstream}", "main", tmp_path / "a", timeout=60, allow_local=True, max_files=1)
    assert exc_info.value.code == "source.too_many_files"
    with pytest.raises(GitCloneError) as exc_info:
        clone(f"file://{upstream}", "main", tmp_path / "b", timeout=60, allow_local=True, max_bytes=10)
    assert exc_info.value.code == "source.too_large"
    assert not (tmp_path / "a").exists()
    assert not (tmp_path / "b").exists()


def test_clone_refuses_file_url_without_allow_local(upstream: Path, tmp_path: Path) -> None:
    with pytest.raises(GitUrlRejected):
        clone(f"file://{upstream}", "main", tmp_path / "out", timeout=60)
    assert not (tmp_path / "out").exists()
