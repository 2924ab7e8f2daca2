"""App detection, dependency files and keys, the install script and the Containerfile."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

from core.faults import UserError
from drivers.buildpack import DEPS_IMAGE_REPOSITORY
from drivers.buildpack import MAX_PROCFILE_BYTES
from drivers.buildpack import AppSpec
from drivers.buildpack import containerfile
from drivers.buildpack import dependency_files
from drivers.buildpack import dependency_image
from drivers.buildpack import dependency_install_script
from drivers.buildpack import dependency_key
from drivers.buildpack import detect
from drivers.buildpack import parse_procfile
from drivers.buildpack import project_dependencies
from drivers.buildpack import source_digest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello"
WEB = "gunicorn --bind 0.0.0.0:$PORT app:app"
BASE = "sha256:" + "b" * 64


def write(root: Path, files: dict[str, str | bytes]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content)
        else:
            path.write_bytes(content)
    return root


# -- Procfile ----------------------------------------------------------------------------------


def test_parse_procfile_basic():
    text = (
        "\ufeff# processes\n"
        "\n"
        f"web: {WEB}\r\n"
        "release:python manage.py migrate --noinput\n"
        "   worker_2:   celery -A proj worker   \n"
        "  # indented comment\n"
        "clock-1: python clock.py # a comment stays part of the command\n"
    )
    assert parse_procfile(text) == {
        "web": WEB,
        "release": "python manage.py migrate --noinput",
        "worker_2": "celery -A proj worker",
        "clock-1": "python clock.py # a comment stays part of the command",
    }


def test_parse_procfile_keeps_colons_and_tabs_in_commands():
    assert parse_procfile("web: sh -c 'echo a:b'\tc\n") == {"web": "sh -c 'echo a:b'\tc"}


def test_parse_procfile_empty_is_empty():
    assert parse_procfile("") == {}
    assert parse_procfile("# nothing\n\n") == {}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("web gunicorn app:app\n", "line 1"),
        ("web : gunicorn\n", "line 1"),
        ("we b: gunicorn\n", "line 1"),
        ("wéb: gunicorn\n", "line 1"),
        ("# ok\n: gunicorn\n", "line 2"),
        ("web:\n", "no command"),
        ("web:    \n", "no command"),
        ("web: a\nweb: b\n", "defined twice"),
        ("web: echo \x00 hi\n", "control character"),
        ("web: echo \x1b[31m\n", "control character"),
        ("web: echo one\x0bmore\n", "control character"),
        (f"web: {'x' * 9000}\n", "longer than"),
        (f"{'a' * 64}: x\n", "line 1"),
    ],
)
def test_parse_procfile_rejects_malformed(text, fragment):
    with pytest.raises(UserError) as caught:
        parse_procfile(text)
    assert caught.value.code == "build.bad_procfile"
    assert fragment in caught.value.message


def test_parse_procfile_is_bounded():
    with pytest.raises(UserError) as caught:
        parse_procfile("# padding\n" * (MAX_PROCFILE_BYTES // 10 + 1))
    assert caught.value.code == "build.bad_procfile"


# -- detect ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "kind"),
    [
        ({}, "none"),
        ({"requirements.txt": "flask\n"}, "requirements"),
        ({"pyproject.toml": "[project]\nname='x'\n"}, "pyproject"),
        ({"pyproject.toml": "", "uv.lock": ""}, "uv"),
        ({"pyproject.toml": "", "uv.lock": "", "requirements.txt": ""}, "uv"),
        ({"pyproject.toml": "", "requirements.txt": ""}, "requirements"),
        ({"requirements.txt": "", "uv.lock": ""}, "requirements"),
        ({"sub/requirements.txt": "flask\n"}, "none"),  # only the root counts
    ],
)
def test_detect_dependency_kind(tmp_path, files, kind):
    write(tmp_path, {"Procfile": f"web: {WEB}\n", **files})
    assert detect(tmp_path) == AppSpec(web_command=WEB, release_command=None, deps_kind=kind)


def test_detect_release_command(tmp_path):
    write(tmp_path, {"Procfile": f"release: python manage.py migrate\nweb: {WEB}\nworker: celery\n"})
    spec = detect(tmp_path)
    assert (spec.web_command, spec.release_command) == (WEB, "python manage.py migrate")


def test_detect_example_app():
    spec = detect(EXAMPLE)
    assert spec.web_command == "gunicorn --bind 0.0.0.0:$PORT --workers 2 app:app"
    assert spec.release_command is not None
    assert spec.deps_kind == "requirements"
    requirements = dependency_files(EXAMPLE, spec)["requirements.txt"].decode().split()
    assert sorted(line.split("==")[0] for line in requirements) == ["flask", "gunicorn"]


def test_missing_procfile_is_no_web_process(tmp_path):
    write(tmp_path, {"app.py": "", "procfile": f"web: {WEB}\n", "sub/Procfile": f"web: {WEB}\n"})
    with pytest.raises(UserError) as caught:
        detect(tmp_path)
    assert caught.value.code == "build.no_web_process"
    assert "Procfile" in caught.value.message
    assert str(tmp_path) not in caught.value.message


@pytest.mark.parametrize("procfile", ["", "# web: x\n", "worker: celery\nrelease: migrate\n", "Web: gunicorn\n"])
def test_procfile_without_web_is_no_web_process(tmp_path, procfile):
    write(tmp_path, {"Procfile": procfile})
    with pytest.raises(UserError) as caught:
        detect(tmp_path)
    assert caught.value.code == "build.no_web_process"
    assert "`web:`" in caught.value.message


def test_procfile_not_utf8(tmp_path):
    write(tmp_path, {"Procfile": b"web: echo caf\xe9\n"})
    with pytest.raises(UserError) as caught:
        detect(tmp_path)
    assert caught.value.code == "build.bad_procfile"


def test_procfile_too_big_is_refused_without_reading_it_all(tmp_path):
    write(tmp_path, {"Procfile": f"web: {WEB}\n" + "#" * (10 * MAX_PROCFILE_BYTES)})
    with pytest.raises(UserError) as caught:
        detect(tmp_path)
    assert caught.value.code == "build.bad_procfile"


@pytest.mark.parametrize("kind", ["symlink", "directory", "fifo"])
def test_procfile_must_be_a_regular_file(tmp_path, kind):
    target = write(tmp_path / "elsewhere", {"Procfile": f"web: {WEB}\n"}) / "Procfile"
    src = tmp_path / "src"
    src.mkdir()
    if kind == "symlink":
        (src / "Procfile").symlink_to(target)
    elif kind == "directory":
        (src / "Procfile").mkdir()
    else:
        os.mkfifo(src / "Procfile")
    with pytest.raises(UserError) as caught:
        detect(src)
    assert caught.value.code == "build.bad_procfile"


def test_stray_lock_without_pyproject(tmp_path):
    write(tmp_path, {"Procfile": f"web: {WEB}\n", "uv.lock": ""})
    with pytest.raises(UserError) as caught:
        detect(tmp_path)
    assert caught.value.code == "build.bad_lockfile"


def test_requirements_directory_is_refused(tmp_path):
    write(tmp_path, {"Procfile": f"web: {WEB}\n"})
    (tmp_path / "requirements.txt").mkdir()
    with pytest.raises(UserError) as caught:
        detect(tmp_path)
    assert caught.value.code == "build.bad_requirements"


# -- dependency files --------------------------------------------------------------------------


def spec(kind) -> AppSpec:
    return AppSpec(web_command=WEB, release_command=None, deps_kind=kind)


def test_dependency_files_per_kind(tmp_path):
    write(
        tmp_path,
        {
            "requirements.txt": "flask==3.1.3\n",
            "pyproject.toml": (
                '[project]\nname = "x"\ndependencies = ["flask>=3", "  gunicorn ; sys_platform == \'linux\'"]\n'
            ),
            "uv.lock": "version = 1\n",
            "app.py": "print()\n",
        },
    )
    assert dependency_files(tmp_path, spec("requirements")) == {"requirements.txt": b"flask==3.1.3\n"}
    assert dependency_files(tmp_path, spec("pyproject")) == {
        "requirements.txt": b"flask>=3\ngunicorn ; sys_platform == 'linux'\n"
    }
    assert dependency_files(tmp_path, spec("uv")) == {
        "pyproject.toml": (tmp_path / "pyproject.toml").read_bytes(),
        "uv.lock": b"version = 1\n",
    }
    assert dependency_files(tmp_path, spec("none")) == {}


def test_pyproject_without_dependencies_installs_nothing(tmp_path):
    write(tmp_path, {"pyproject.toml": "[tool.ruff]\nline-length = 100\n"})
    assert dependency_files(tmp_path, spec("pyproject")) == {"requirements.txt": b""}


@pytest.mark.parametrize(
    ("pyproject", "fragment"),
    [
        ("[project\nname = 1", "not valid TOML"),
        ("project = 3\n", "must be a table"),
        ('[project]\ndynamic = ["dependencies"]\n', "dynamic"),
        ('[project]\ndependencies = "flask"\n', "list of strings"),
        ("[project]\ndependencies = [1]\n", "list of strings"),
        ('[project]\ndependencies = ["--index-url=https://evil.example/simple"]\n', "not a requirement"),
        ('[project]\ndependencies = ["flask\\n--extra-index-url https://evil.example"]\n', "not a requirement"),
        ('[project]\ndependencies = ["-r /etc/passwd"]\n', "not a requirement"),
        ('[project]\ndependencies = ["./local-path"]\n', "not a requirement"),
        ('[project]\ndependencies = ["flask \\\\"]\n', "not a requirement"),
        ('[project]\ndependencies = ["flask --config-settings=x=y"]\n', "not a requirement"),
        ('[project]\ndependencies = [""]\n', "not a requirement"),
        ("x = " + "[" * 5000 + "]" * 5000 + "\n", "pyproject.toml"),
    ],
)
def test_bad_pyproject(tmp_path, pyproject, fragment):
    write(tmp_path, {"pyproject.toml": pyproject})
    with pytest.raises(UserError) as caught:
        dependency_files(tmp_path, spec("pyproject"))
    assert caught.value.code == "build.bad_pyproject"
    assert fragment in caught.value.message
    assert str(tmp_path) not in caught.value.message


def test_project_dependencies_accepts_pep508_forms():
    text = (
        "[project]\ndependencies = [\n"
        '  "Django>=5.2,<7",\n'
        '  "psycopg[binary]>=3.2",\n'
        '  "requests @ https://files.example/requests-2.32.0-py3-none-any.whl",\n'
        "  \"tomli; python_version < '3.11'\",\n"
        "]\n"
    )
    assert len(project_dependencies(text)) == 4


def test_oversized_and_non_utf8_dependency_files(tmp_path):
    write(tmp_path, {"requirements.txt": b"flask\xff\n"})
    with pytest.raises(UserError) as caught:
        dependency_files(tmp_path, spec("requirements"))
    assert caught.value.code == "build.bad_requirements"
    write(tmp_path, {"requirements.txt": "flask\n" * 200_000})
    with pytest.raises(UserError) as caught:
        dependency_files(tmp_path, spec("requirements"))
    assert caught.value.code == "build.bad_requirements"
    assert "larger than" in caught.value.message


def test_missing_file_for_the_detected_kind(tmp_path):
    with pytest.raises(UserError) as caught:
        dependency_files(tmp_path, spec("uv"))
    assert caught.value.code == "build.bad_pyproject"


# -- dependency key ----------------------------------------------------------------------------


def test_dependency_key_is_stable_hex():
    files = {"requirements.txt": b"flask==3.1.3\n"}
    key = dependency_key(files, BASE)
    assert key == dependency_key(dict(files), BASE)
    assert len(key) == 64
    assert int(key, 16) >= 0
    assert dependency_key({"uv.lock": b"2", "pyproject.toml": b"1"}, BASE) == dependency_key(
        {"pyproject.toml": b"1", "uv.lock": b"2"}, BASE
    )


def test_dependency_key_changes_with_any_input():
    files = {"requirements.txt": b"flask==3.1.3\n"}
    key = dependency_key(files, BASE)
    variants = [
        dependency_key({"requirements.txt": b"flask==3.1.2\n"}, BASE),
        dependency_key({"requirements.txt": b"flask==3.1.3\ngunicorn\n"}, BASE),
        dependency_key({"other.txt": b"flask==3.1.3\n"}, BASE),
        dependency_key(files, "sha256:" + "c" * 64),
        dependency_key({}, BASE),
        # Names and contents cannot be shifted into each other.
        dependency_key({"requirements.tx": b"tflask==3.1.3\n"}, BASE),
        dependency_key({"a": b"", "b": b""}, BASE),
        dependency_key({"a": b"b"}, BASE),
    ]
    assert key not in variants
    assert len(set(variants)) == len(variants)


def test_code_changes_do_not_change_the_key(tmp_path):
    write(tmp_path, {"Procfile": f"web: {WEB}\n", "requirements.txt": "flask\n", "app.py": "v = 1\n"})
    before = dependency_key(dependency_files(tmp_path, detect(tmp_path)), BASE)
    write(tmp_path, {"app.py": "v = 2\n", "Procfile": "web: gunicorn other:app\n"})
    assert dependency_key(dependency_files(tmp_path, detect(tmp_path)), BASE) == before


def test_dependency_image_tag():
    key = dependency_key({}, BASE)
    assert dependency_image(key) == f"{DEPS_IMAGE_REPOSITORY}:{key[:32]}"
    assert dependency_image(key).startswith("localhost/coltsfoot-deps:")
    with pytest.raises(ValueError, match="key"):
        dependency_image("nothex")


# -- install script ----------------------------------------------------------------------------


def script_commands(kind) -> list[list[str]]:
    return [shlex.split(line) for line in dependency_install_script(spec(kind)).splitlines()]


UV = "/opt/coltsfoot/bin/uv"


def exports(script: str) -> dict[str, str]:
    return dict(
        line.removeprefix("export ").split("=", 1) for line in script.splitlines() if line.startswith("export ")
    )


@pytest.mark.parametrize("kind", ["requirements", "pyproject", "uv", "none"])
def test_install_script_creates_the_venv_with_uv_first(kind):
    commands = script_commands(kind)
    assert commands[0] == ["set", "-eu"]
    venv = next(command for command in commands if command[0] != "export" and "venv" in command)
    assert venv == [UV, "venv", "--python", "/usr/bin/python3", "/app/.venv"]
    # Nothing runs pip: every install is uv's, into the app's venv.
    assert not any("pip" in command and UV not in command for command in commands)
    for command in commands:
        if "install" in command:
            assert command[:5] == [UV, "pip", "install", "--python", "/app/.venv/bin/python"]


def test_install_script_settings_for_uv():
    env = exports(dependency_install_script(spec("requirements")))
    assert env["UV_PYTHON_DOWNLOADS"] == "never"  # the base image's Python, never a download
    assert env["UV_COMPILE_BYTECODE"] == "1"  # the app's tree is read-only at run time
    assert env["SSL_CERT_FILE"] == "/etc/ssl/certs/ca-certificates.crt"  # where the platform's CA bundle goes
    assert env["HOME"] == "/tmp"
    # The platform's index setting arrives as PIP_INDEX_URL (a secret): uv is pointed at it.
    assert 'export UV_DEFAULT_INDEX="$PIP_INDEX_URL"' in dependency_install_script(spec("requirements"))


def test_without_a_tenant_cache_uv_uses_a_scratch_cache_it_removes():
    script = dependency_install_script(spec("requirements"))
    scratch = exports(script)["UV_CACHE_DIR"]
    assert scratch.startswith("/tmp/")
    assert script.splitlines()[-1] == f"rm -rf {scratch}"


def test_with_the_tenant_cache_uv_uses_its_mount_and_keeps_it():
    script = dependency_install_script(spec("requirements"), uv_cache=True)
    assert exports(script)["UV_CACHE_DIR"] == "/opt/coltsfoot/uv-cache"
    assert "rm -rf /opt/coltsfoot/uv-cache" not in script


@pytest.mark.parametrize("kind", ["requirements", "pyproject"])
def test_install_script_for_requirements(kind):
    commands = script_commands(kind)
    assert commands[-2] == [UV, "pip", "install", "--python", "/app/.venv/bin/python", "-r", "/deps/requirements.txt"]


def test_install_script_for_uv_honours_the_lock():
    commands = script_commands("uv")
    export = next(command for command in commands if command[:2] == [UV, "export"])
    assert {"--frozen", "--no-hashes", "--no-emit-workspace", "--no-dev"} <= set(export)
    assert export[export.index("--directory") + 1] == "/deps"
    output = export[export.index("--output-file") + 1]
    final = next(command for command in commands if "install" in command)
    assert final[-2:] == ["-r", output]
    assert "--no-deps" in final  # exactly the locked pins
    assert commands.index(export) < commands.index(final) < commands.index(["rm", "-f", output])


def test_install_script_for_none_installs_nothing():
    assert not any("install" in command for command in script_commands("none"))


def test_install_script_reads_only_from_deps_mount():
    for kind in ("requirements", "pyproject", "uv"):
        script = dependency_install_script(spec(kind))
        assert "/deps/" in script or "--directory /deps" in script
        assert "/app/src" not in script  # the tenant's code is not there while dependencies install


# -- Containerfile -----------------------------------------------------------------------------


def test_containerfile_has_no_run_and_the_expected_steps():
    text = containerfile("localhost/coltsfoot-deps:" + "a" * 32)
    instructions = [line.split()[0] for line in text.splitlines() if line and not line.startswith("#")]
    assert "RUN" not in instructions
    assert not any(word in instructions for word in ("ADD", "ONBUILD", "ARG", "USER", "VOLUME"))
    assert instructions[:3] == ["FROM", "COPY", "WORKDIR"]
    assert f"FROM localhost/coltsfoot-deps:{'a' * 32}\n" in text
    assert "COPY --chown=0:0 . /app/src\n" in text
    assert "WORKDIR /app/src\n" in text
    assert "ENV PATH=/app/.venv/bin:" in text
    assert "PYTHONUNBUFFERED=1" in text
    assert "HOME=/tmp" in text


@pytest.mark.parametrize("ref", ["bad ref", "localhost/x:1\nRUN id", "", "-x"])
def test_containerfile_refuses_odd_image_refs(ref):
    with pytest.raises(ValueError, match="image"):
        containerfile(ref)


# -- The source digest -------------------------------------------------------------------------

TREE: dict[str, str | bytes] = {
    "Procfile": f"web: {WEB}\n",
    "requirements.txt": "flask==3.1.0\n",
    "app.py": "app = None\n",
    "static/logo.png": b"\x89PNG\x00\x01",
}


def digest_of(root: Path, files: dict[str, str | bytes], context: str = BASE) -> str:
    root.mkdir()
    return source_digest(write(root, files), context)


def test_source_digest_is_the_same_for_the_same_tree_wherever_and_however_it_was_written(tmp_path):
    first = digest_of(tmp_path / "first", TREE)
    second = digest_of(tmp_path / "second", dict(reversed(TREE.items())))

    assert first == second
    assert len(first) == 64
    assert set(first) <= set("0123456789abcdef")
    os.utime(tmp_path / "second" / "app.py", (0, 0))  # times are not part of it
    assert source_digest(tmp_path / "second", BASE) == first


@pytest.mark.parametrize(
    "change",
    [
        {"app.py": "app = 1\n"},
        {"requirements.txt": "flask==3.1.1\n"},
        {"Procfile": "web: python app.py\n"},
        {"static/logo.png": b"\x89PNG\x00\x02"},
        {"new.py": ""},
        {"static/more/deep.txt": "x"},
    ],
    ids=["code", "requirements", "procfile", "binary", "new-empty-file", "new-nested-file"],
)
def test_any_changed_or_added_file_changes_the_source_digest(tmp_path, change):
    assert digest_of(tmp_path / "a", TREE) != digest_of(tmp_path / "b", {**TREE, **change})


def test_a_removed_renamed_or_split_file_changes_the_source_digest(tmp_path):
    baseline = digest_of(tmp_path / "base", {"a.py": "xy", "b.py": ""})
    assert digest_of(tmp_path / "removed", {"a.py": "xy"}) != baseline
    assert digest_of(tmp_path / "renamed", {"c.py": "xy", "b.py": ""}) != baseline
    assert digest_of(tmp_path / "split", {"a.py": "x", "b.py": "y"}) != baseline
    # A file's bytes cannot pass for the next file's path.
    assert digest_of(tmp_path / "joined", {"a.py": "xyb.py"}) != baseline


def test_the_executable_bit_and_an_empty_directory_change_the_source_digest(tmp_path):
    baseline = digest_of(tmp_path / "base", TREE)
    executable = tmp_path / "exec"
    digest_of(executable, TREE)
    (executable / "app.py").chmod(0o755)
    assert source_digest(executable, BASE) != baseline
    empty_dir = tmp_path / "dir"
    digest_of(empty_dir, TREE)
    (empty_dir / "media").mkdir()
    assert source_digest(empty_dir, BASE) != baseline


def test_the_context_is_part_of_the_source_digest(tmp_path):
    """The base image id (and the Containerfile) the image is built from: a rebuilt base image
    must not reuse an app image built on the old one."""
    digest_of(tmp_path / "tree", TREE)
    assert source_digest(tmp_path / "tree", BASE) != source_digest(tmp_path / "tree", "sha256:" + "c" * 64)


def test_a_symlink_is_hashed_as_a_link_and_never_followed(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    tree = tmp_path / "tree"
    digest_of(tree, TREE)
    before = source_digest(tree, BASE)
    (tree / "link").symlink_to(outside)
    linked = source_digest(tree, BASE)
    outside.write_text("changed")

    assert linked != before
    assert source_digest(tree, BASE) == linked  # the target's bytes were never read
