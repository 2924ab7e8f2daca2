"""The packer: what goes into the archive, by git's ignore rules and .coltsfootignore; never .git."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from coltsfoot_cli.packer import pack
from coltsfoot_cli.packer import parse_rules


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return root


def packed(root: Path) -> set[str]:
    buffer = io.BytesIO()
    pack(root, buffer)
    buffer.seek(0)
    with tarfile.open(fileobj=buffer, mode="r:gz") as tar:
        return {m.name for m in tar.getmembers() if m.isfile()}


def test_git_is_never_packed_whatever_the_ignore_files_say(tmp_path):
    tree(tmp_path, {"Procfile": "web: x", ".git/config": "[core]", "sub/.git": "gitdir: ../x", ".coltsfoot": "{}"})
    (tmp_path / ".coltsfootignore").write_text("!.git\n!.git/**\n")
    assert packed(tmp_path) == {"Procfile", ".coltsfootignore"}


def test_gitignore_patterns(tmp_path):
    tree(
        tmp_path,
        {
            ".gitignore": "# comment\n*.pyc\n/build\nnode_modules/\ndocs/*.md\n!docs/keep.md\n**/cache/**\n\\#hash\n",
            "app.py": "",
            "app.pyc": "",
            "pkg/mod.pyc": "",
            "build/out.js": "",
            "src/build/keep.txt": "",  # `/build` is anchored to the root
            "node_modules/x/index.js": "",
            "web/node_modules/y.js": "",  # unanchored directory pattern: any depth
            "docs/a.md": "",
            "docs/keep.md": "",
            "docs/sub/b.md": "",  # `docs/*.md`: `*` does not cross `/`
            "x/cache/y/z": "",
            "#hash": "",
        },
    )
    assert packed(tmp_path) == {".gitignore", "app.py", "src/build/keep.txt", "docs/keep.md", "docs/sub/b.md"}


def test_a_directory_only_pattern_leaves_a_file_of_that_name(tmp_path):
    tree(tmp_path, {".gitignore": "logs/\n", "logs": "a file", "a/logs/x": ""})
    assert packed(tmp_path) == {".gitignore", "logs"}


def test_nothing_inside_an_excluded_directory_comes_back(tmp_path):
    tree(tmp_path, {".gitignore": "vendor/\n!vendor/keep.py\n", "vendor/keep.py": "", "main.py": ""})
    assert packed(tmp_path) == {".gitignore", "main.py"}


def test_negation_re_includes_a_file(tmp_path):
    tree(tmp_path, {".gitignore": "*.log\n!important.log\n", "a.log": "", "important.log": ""})
    assert packed(tmp_path) == {".gitignore", "important.log"}


def test_nested_gitignore_applies_below_its_directory_and_wins(tmp_path):
    tree(
        tmp_path,
        {
            ".gitignore": "*.tmp\n",
            "a/.gitignore": "!keep.tmp\n/local.txt\n",
            "a/keep.tmp": "",
            "a/drop.tmp": "",
            "a/local.txt": "",
            "a/b/local.txt": "",  # anchored to a/
            "local.txt": "",  # a/.gitignore does not reach up
        },
    )
    assert packed(tmp_path) == {".gitignore", "a/.gitignore", "a/keep.tmp", "a/b/local.txt", "local.txt"}


def test_coltsfootignore_adds_rules_and_can_re_include_what_git_ignores(tmp_path):
    tree(
        tmp_path,
        {
            ".gitignore": "dist/\n.env\n",
            ".coltsfootignore": "tests/\n!.env\n",
            "dist/app.whl": "",
            ".env": "",
            "tests/test_x.py": "",
            "app.py": "",
        },
    )
    assert packed(tmp_path) == {".gitignore", ".coltsfootignore", ".env", "app.py"}


def test_double_star_forms(tmp_path):
    tree(
        tmp_path,
        {
            ".gitignore": "a/**/z.txt\nlogs/**\n",
            "a/z.txt": "",
            "a/b/c/z.txt": "",
            "b/a/z.txt": "",  # anchored: only under the root's a/
            "logs/x/y": "",
        },
    )
    assert packed(tmp_path) == {".gitignore", "b/a/z.txt"}


def test_trailing_spaces_and_character_classes(tmp_path):
    tree(
        tmp_path,
        {
            ".gitignore": "file[0-9].txt   \nnot[!a].md\n",
            "file1.txt": "",
            "filex.txt": "",
            "notb.md": "",
            "nota.md": "",
        },
    )
    assert packed(tmp_path) == {".gitignore", "filex.txt", "nota.md"}


def test_symlinks_are_skipped_and_reported(tmp_path):
    tree(tmp_path, {"app.py": "", "secret": "s"})
    os.symlink("/etc/passwd", tmp_path / "link")
    skipped: list[str] = []
    buffer = io.BytesIO()
    pack(tmp_path, buffer, skipped=lambda path, why: skipped.append(path))
    assert skipped == ["link"]


def test_archive_entries_have_no_owner_and_normal_modes(tmp_path):
    tree(tmp_path, {"run.sh": "#!/bin/sh", "data.txt": ""})
    (tmp_path / "run.sh").chmod(0o700)
    buffer = io.BytesIO()
    pack(tmp_path, buffer)
    buffer.seek(0)
    with tarfile.open(fileobj=buffer, mode="r:gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members["run.sh"].mode == 0o755
    assert members["data.txt"].mode == 0o644
    assert {m.uid for m in members.values()} == {0}
    assert {m.uname for m in members.values()} == {""}


@pytest.mark.parametrize(
    ("pattern", "path", "is_dir", "matched"),
    [
        ("*.py", "a/b/c.py", False, True),
        ("/*.py", "a/c.py", False, False),
        ("a?c", "abc", False, True),
        ("a?c", "a/c", False, False),
        ("**", "any/thing", False, True),
        ("foo/", "foo", True, True),
        ("foo/", "foo", False, False),
        ("\\!important", "!important", False, True),
        ("a/**/b", "a/b", False, True),
        ("[abc", "[abc", False, True),
    ],
)
def test_rule_matching(pattern, path, is_dir, matched):
    (rule,) = parse_rules(pattern)
    assert rule.matches(path, is_dir=is_dir) is matched
