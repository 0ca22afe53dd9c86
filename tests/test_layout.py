"""The package's shape: grouped by stage, no stage importing a later one, short functions.

The stages, earliest first, are the pipeline's: file I/O and provenance, language models, data,
the organism, the editors, editing (trajectories), evaluation, reporting; ``config``, ``api``
and ``budget`` sit on top and may use them all. Imports inside functions count as much as those
at the top."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "src" / "editscale"
STAGES = ("io", "lm", "data", "organism", "editors", "editing", "evaluation", "reporting")
TOP = ("config", "api", "budget", "__init__")
MAX_FUNCTION_LINES = 80


def stage_of(module: str) -> int:
    """Rank of ``editscale.<first>...``: the stage's index, or one past the last for the top."""
    first = module.split(".")[1] if "." in module else "__init__"
    if first in STAGES:
        return STAGES.index(first)
    assert first in TOP, f"editscale.{first} belongs to no stage: add it to one, or to TOP"
    return len(STAGES)


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts)] = path
    return found


def imported(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every editscale import in the tree, at any depth."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "editscale":
                out += [(node.lineno, f"editscale.{a.name}") for a in node.names]
            elif node.module.startswith("editscale."):
                out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("editscale.")]
    return out


def test_every_module_belongs_to_a_stage():
    flat = [m for m in modules() if m.count(".") == 1 and m.split(".")[1] not in TOP]
    assert flat == [], f"modules outside the stage folders: {flat}"
    for module in modules():
        stage_of(module)


def test_no_stage_imports_a_later_one():
    backward = []
    for module, path in modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        relative = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level]
        assert not relative, f"{path}:{relative[0]}: use absolute editscale imports"
        for line, target in imported(tree):
            if stage_of(target) > stage_of(module):
                backward.append(f"{path.relative_to(REPO)}:{line}: {module} imports {target}")
    assert backward == [], "\n".join(backward)


def test_the_check_sees_a_backward_import(tmp_path):
    """The scan above reads imports inside functions too (a lazy import is still an import)."""
    tree = ast.parse("def f():\n    from editscale.reporting.plots import figure1\n")
    assert [stage_of(t) for _, t in imported(tree)] == [STAGES.index("reporting")]


def test_no_function_is_longer_than_the_limit():
    long = []
    for path in modules().values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                n = node.end_lineno - first + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.name} ({n} lines)")
    assert long == [], "\n".join(long)
