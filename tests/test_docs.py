"""The README and docs/ as a user meets them: every shell command runs as written, every relative
link resolves, the README stays short, and no machine path is baked into the docs or benchmarks.

Each ```bash / ```sh / ```shell block of README.md and docs/*.md is split into commands (backslash
continuations joined, comments dropped) and each command is checked by what it is:

* ``make X``: the Makefile has target X, and ``make -n X`` succeeds;
* ``snakemake ...`` / ``.venv/bin/snakemake ...``: its options exist, and it plans as a dry run
  (``-n``) in the repository root, offline (``--unlock`` and ``--report FILE`` are replaced by the
  dry run of the same config; ``--sdm conda`` is kept only where conda is installed);
* ``python`` / ``.venv/bin/python`` with a script or ``-m module``: the script exists, its
  ``--help`` works and names every option the command uses;
* ``pytest`` / ``.venv/bin/pytest``: the test files it names exist;
* a shell script (``*.sh``): it exists, is executable and parses (``bash -n``).

Anything else fails, so a new kind of command needs a check here. Dry runs of the same command
run once.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
SNAKEMAKE = VENV_BIN / "snakemake"
SHARED_DATA = REPO.parent / "shared" / "data"
README_MAX_LINES = 220
SHELL_LANGS = {"bash", "sh", "shell"}
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.M | re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
MACHINE_PATH = re.compile(r"(?<![\w.])/(?:work|root|home)/")
# snakemake options (with their number of values) that would do something beyond planning, or
# that do not change the plan: dropped, the rest dry-runs
SNAKEMAKE_ACTIONS = {"--unlock": 0, "--report": 1, "--conda-create-envs-only": 0, "--cores": 1}
TIMEOUT_S = 120


@dataclass(frozen=True)
class Command:
    """One shell command of a doc: where it is, its environment prefix and its words."""

    where: str
    env: tuple[tuple[str, str], ...]
    argv: tuple[str, ...]


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def shell_blocks(text: str) -> list[tuple[int, str]]:
    """(line number of the block's first command line, body) of every shell code block."""
    return [
        (text.count("\n", 0, m.start(2)) + 1, m.group(2))
        for m in FENCE.finditer(text)
        if m.group(1).lower() in SHELL_LANGS
    ]


def block_lines(body: str, first_line: int) -> list[tuple[int, str]]:
    """Logical command lines of a block: continuations joined, blank and comment lines dropped."""
    out: list[tuple[int, str]] = []
    pending, start = "", first_line
    for offset, raw in enumerate(body.splitlines()):
        line = raw.rstrip()
        if not pending:
            start = first_line + offset
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full and not full.startswith("#"):
            out.append((start, full))
    return out


def parse_command(where: str, line: str) -> Command:
    """Split a command line into its leading NAME=value assignments and its words."""
    words = shlex.split(line, comments=True)
    env: list[tuple[str, str]] = []
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
        name, value = words.pop(0).split("=", 1)
        env.append((name, value))
    return Command(where, tuple(env), tuple(words))


def doc_commands() -> list[Command]:
    commands = []
    for path in doc_files():
        rel = path.relative_to(REPO)
        for first, body in shell_blocks(path.read_text()):
            for lineno, line in block_lines(body, first):
                commands.append(parse_command(f"{rel}:{lineno}", line))
    return commands


def run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def assert_ok(proc: subprocess.CompletedProcess, what: str) -> str:
    assert proc.returncode == 0, f"{what} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def options_of(words: tuple[str, ...] | list[str]) -> list[str]:
    return [w.split("=", 1)[0] for w in words if w.startswith("--")]


def makefile_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.M))


def check_make(cmd: Command) -> None:
    args = list(cmd.argv[1:])
    targets = [a for a in args if not a.startswith("-") and "=" not in a]
    assert targets, "make without a target"
    missing = [t for t in targets if t not in makefile_targets()]
    assert not missing, f"the Makefile has no target {missing}"
    assert_ok(run(["make", "-n", *args], dict(cmd.env)), f"make -n {' '.join(args)}")


def snakemake_dry_args(args: list[str]) -> list[str]:
    """The command's arguments as a dry run: actions dropped, conda only where it exists."""
    out: list[str] = []
    skip = 0
    for i, word in enumerate(args):
        if skip:
            skip -= 1
            continue
        if word in SNAKEMAKE_ACTIONS:
            skip = SNAKEMAKE_ACTIONS[word]
            continue
        if word == "--sdm" and args[i + 1] == "conda" and shutil.which("conda") is None:
            skip = 1
            continue
        out.append(word)
    return out


def check_snakemake(cmd: Command, snakemake_help: str, planned: dict[tuple, str]) -> None:
    """Options known, and the dry run plans (once per distinct dry run, kept in ``planned``)."""
    args = list(cmd.argv[1:])
    unknown = [o for o in options_of(args) if o not in snakemake_help]
    assert not unknown, f"snakemake has no option {unknown}"
    if "config/smollm2.yaml" in args and not SHARED_DATA.exists():
        pytest.skip(f"config/smollm2.yaml reads {SHARED_DATA}")
    dry = [str(SNAKEMAKE), *snakemake_dry_args(args), "-n", "--nolock", "--quiet"]
    if tuple(dry) not in planned:  # the environment (CONDA_OVERRIDE_CUDA) only matters to conda
        planned[tuple(dry)] = assert_ok(run(dry, dict(cmd.env)), " ".join(dry))


def check_python(cmd: Command) -> None:
    args = list(cmd.argv[1:])
    if args[0] == "-m":
        target, rest = ["-m", args[1]], args[2:]
    else:
        script = REPO / args[0]
        assert script.is_file(), f"no script {args[0]}"
        target, rest = [str(script)], args[1:]
    helptext = assert_ok(run([sys.executable, *target, "--help"]), f"{target} --help")
    unknown = [o for o in options_of(rest) if o not in helptext]
    assert not unknown, f"{' '.join(target)} has no option {unknown}"


def check_pytest(cmd: Command) -> None:
    paths = [a.split("::")[0] for a in cmd.argv[1:] if not a.startswith("-")]
    missing = [p for p in paths if not (REPO / p).exists()]
    assert not missing, f"no test file {missing}"


def check_script(cmd: Command) -> None:
    script = REPO / cmd.argv[0]
    assert script.is_file(), f"no script {cmd.argv[0]}"
    assert os.access(script, os.X_OK), f"{cmd.argv[0]} is not executable"
    assert_ok(run(["bash", "-n", str(script)]), f"bash -n {cmd.argv[0]}")


def command_kind(argv: tuple[str, ...]) -> str:
    program = Path(argv[0]).name if argv else ""
    if program == "make":
        return "make"
    if program == "snakemake":
        return "snakemake"
    if program in {"python", "python3"}:
        return "python"
    if program == "pytest":
        return "pytest"
    if program.endswith(".sh"):
        return "script"
    return "unknown"


def distinct_commands() -> list[Command]:
    """One Command per distinct (environment, words), the first place it appears."""
    seen: dict[tuple, Command] = {}
    for cmd in doc_commands():
        seen.setdefault((cmd.env, cmd.argv), cmd)
    return list(seen.values())


COMMANDS = distinct_commands()


@pytest.fixture(scope="module")
def snakemake_help() -> str:
    return assert_ok(run([str(SNAKEMAKE), "--help"]), "snakemake --help")


@pytest.fixture(scope="module")
def planned() -> dict[tuple, str]:
    """The dry runs that succeeded in this module, by their arguments."""
    return {}


def test_docs_have_commands():
    kinds = {command_kind(c.argv) for c in COMMANDS}
    assert {"make", "snakemake", "python"} <= kinds, kinds


@pytest.mark.parametrize(
    "cmd", COMMANDS, ids=[f"{c.where} {' '.join(c.argv)[:60]}" for c in COMMANDS]
)
def test_command_runs_as_written(cmd: Command, request):
    kind = command_kind(cmd.argv)
    if kind == "make":
        check_make(cmd)
    elif kind == "snakemake":
        check_snakemake(
            cmd, request.getfixturevalue("snakemake_help"), request.getfixturevalue("planned")
        )
    elif kind == "python":
        check_python(cmd)
    elif kind == "pytest":
        check_pytest(cmd)
    elif kind == "script":
        check_script(cmd)
    else:
        pytest.fail(f"{cmd.where}: no check for the command {' '.join(cmd.argv)!r}")


def heading_slugs(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings (code blocks excluded)."""
    text = FENCE.sub("", path.read_text())
    slugs = set()
    for title in re.findall(r"^#{1,6}\s+(.*?)\s*#*\s*$", text, re.M):
        plain = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", title).lower()
        slugs.add(re.sub(r"[^\w\- ]", "", plain).replace(" ", "-"))
    return slugs


def relative_links(path: Path) -> list[str]:
    text = FENCE.sub("", path.read_text())
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(doc: Path):
    broken = []
    for target in relative_links(doc):
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in heading_slugs(dest):
            broken.append(f"{target} (no heading #{anchor})")
    assert not broken, f"{doc.relative_to(REPO)}: broken links: {broken}"


def test_readme_is_short():
    n = len((REPO / "README.md").read_text().splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines (at most {README_MAX_LINES})"


def test_readme_keeps_python_api_section():
    text = (REPO / "README.md").read_text()
    assert re.search(r"^## Python API$", text, re.M)
    assert "docs/api.md" in text


def test_no_machine_paths():
    files = [
        *doc_files(),
        REPO / "Makefile",
        *sorted((REPO / "benchmarks").glob("*")),
        *sorted((REPO / "config").glob("*")),
    ]
    hits = [
        f"{p.relative_to(REPO)}:{i}: {line.strip()}"
        for p in files
        if p.is_file()
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if MACHINE_PATH.search(line)
    ]
    assert not hits, "machine paths:\n" + "\n".join(hits)


def makefile_variable(name: str) -> str:
    match = re.search(rf"^{name}\s*\?=\s*(\S+)", (REPO / "Makefile").read_text(), re.M)
    assert match, f"the Makefile sets no {name}"
    return match.group(1)


def import_bench_engine():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import bench_engine
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return bench_engine


def test_smollm2_folder_is_one_path_inside_the_repository():
    """prepare_smollm2.sh makes the folder that make bench and bench_engine.py look for, and
    that rule prepare_model makes for make run-smollm2: runs/smollm2/ + resources/models/smollm2."""
    folder = Path("runs/smollm2/resources/models/smollm2")
    assert import_bench_engine().SMOLLM2_REL == folder
    assert makefile_variable("SMOLLM2") == str(folder)
    assert f"$repo/{folder}" in (REPO / "benchmarks/prepare_smollm2.sh").read_text()
    assert (
        "--configfile config/smollm2.yaml --directory runs/smollm2"
        in (REPO / "Makefile").read_text()
    )
    from editscale.io import paths  # the rules' own spelling of the model folder

    assert Path(paths.model_manifest("smollm2")).parent == Path("resources/models/smollm2")
    assert re.search(r"^models:\n  smollm2:$", (REPO / "config/smollm2.yaml").read_text(), re.M)


def test_bench_engine_skips_an_absent_smollm2_with_a_log_line(tmp_path, caplog):
    bench_engine = import_bench_engine()
    with caplog.at_level(logging.INFO, logger="bench_engine"):
        assert bench_engine.smollm2_target(str(tmp_path / "absent")) == []
    assert "skipping SmolLM2-135M" in caplog.text
    (tmp_path / "config.json").write_text("{}")
    assert bench_engine.smollm2_target(str(tmp_path)) == [
        ("SmolLM2-135M (layer 6)", str(tmp_path), 6)
    ]
