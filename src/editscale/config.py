"""Workflow configuration: schema validation with defaults, cross-key checks, derived values.

The JSON schema is ``workflow/schemas/config.schema.yaml`` (the same file the Snakefile gives
to ``snakemake.utils.validate``). :func:`load_config` validates a config (a YAML path or a dict),
fills in the schema's defaults and then runs :func:`check_config`, the checks a schema cannot
express (names that must refer to each other, layers within the model, ...). Every problem is a
:class:`ConfigError` whose message starts with the dotted key path, e.g.
``config key 'models.gpt2-xl.source': 'hug' is not one of ['hub', 'local', 'scratch']``.

This module is light (yaml, jsonschema and the editor registry; no torch) so that the
Snakefile can import it at parse time.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import re
import stat
import warnings
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, NoReturn

import yaml

from editscale.io import paths

if TYPE_CHECKING:
    from editscale.editors import EditorInfo

__all__ = [
    "ConfigError",
    "ConfigWarning",
    "SCHEMA_NAME",
    "schema_path",
    "load_schema",
    "load_config",
    "validate_schema",
    "validate_run_config",
    "config_overrides_hint",
    "check_config_file",
    "check_config_overrides",
    "ConfigFileError",
    "check_config",
    "experiments",
    "method_hparams",
    "needs_covariance",
    "stats_layer",
    "stats_file",
    "stats_files",
    "stats_layer_file",
    "stats_layers",
    "published_stats",
    "model_resources",
    "model_n_layer",
    "editor_file",
    "trained_editors",
    "editor_training_corpus",
    "perplexity_corpus",
]

SCHEMA_NAME = "config.schema.yaml"
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


class ConfigError(ValueError):
    """An invalid configuration; ``key`` is the dotted path of the offending key."""

    def __init__(self, key: str, problem: str):
        self.key = key
        self.problem = problem
        super().__init__(f"config key '{key}': {problem}" if key else f"config: {problem}")


class ConfigWarning(UserWarning):
    """A configuration that runs but probably is not what was meant (e.g. an unpinned revision)."""


# --------------------------------------------------------------------------- schema


_HERE = Path(__file__).resolve().parent


def _schema_candidates() -> list[Path]:
    env = os.environ.get("EDITSCALE_CONFIG_SCHEMA")
    return ([Path(env)] if env else []) + [
        _HERE / SCHEMA_NAME,
        _HERE.parents[1] / "workflow" / "schemas" / SCHEMA_NAME,
    ]


def schema_path() -> Path:
    """The schema file: ``$EDITSCALE_CONFIG_SCHEMA``, a copy next to this module, or the repo's."""
    candidates = _schema_candidates()
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"config schema not found (looked at {', '.join(map(str, candidates))})"
    )


def _schema_key() -> tuple[str, int, int]:
    """(path, mtime_ns, size) of the schema file (:func:`schema_path`): the key of the parse
    caches, so that an edited or another schema file (``$EDITSCALE_CONFIG_SCHEMA``) is parsed
    afresh. One ``stat`` per candidate: cheap enough to run for every resource of every job."""
    for path in _schema_candidates():
        try:
            st = path.stat()
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            return str(path), st.st_mtime_ns, st.st_size
    return str(schema_path()), 0, 0  # raises FileNotFoundError naming the places looked at


@lru_cache(maxsize=8)
def _parsed_schema(path: str, mtime_ns: int, size: int) -> dict:
    """The parsed schema, cached. Never handed out: :func:`load_schema` returns deep copies."""
    return yaml.safe_load(Path(path).read_text(encoding="utf-8"))


def load_schema() -> dict:
    """A fresh copy of the parsed schema (the caller may change it; the cache stays intact).

    Parsing the YAML is the expensive part (planning the paper's DAG asked for it thousands of
    times, once per resource of every job); it is parsed once per schema file version.
    """
    return copy.deepcopy(_parsed_schema(*_schema_key()))


def _key_path(parts: Iterable[Any]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _default_filling_validator(schema: dict):
    """A Draft 2020-12 validator that also sets the schema's defaults (deep copies) while
    validating."""
    from jsonschema import Draft202012Validator, validators

    validate_properties = Draft202012Validator.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, subschema):
        if isinstance(instance, dict):
            for prop, sub in properties.items():
                if isinstance(sub, dict) and "default" in sub and prop not in instance:
                    instance[prop] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, subschema)

    cls = validators.extend(Draft202012Validator, {"properties": set_defaults})
    return cls(schema)


def _error_key(error) -> tuple[str, str]:
    """(dotted key path, message) of a jsonschema error, naming a missing key in the path."""
    path = list(error.absolute_path)
    message = error.message
    if error.validator == "required":
        match = re.match(r"^'([^']+)' is a required property$", message)
        if match:
            path.append(match.group(1))
            message = "is required but missing"
    elif error.validator == "additionalProperties":
        match = re.search(r"\('([^']+)' was unexpected\)", message)
        if match:
            path.append(match.group(1))
            known = sorted(error.schema.get("properties", {}))
            close = difflib.get_close_matches(match.group(1), known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            message = (
                f"is not a known key here ({hint}known: {known})"
                if known
                else "is not a known key here (a typo?)"
            )
    elif "propertyNames" in error.absolute_schema_path:
        path.append(str(error.instance))
        message = f"{error.instance!r} is not a valid name (letters, digits, '.', '_', '-'; no '/')"
    elif error.validator == "type" and error.instance is None:
        message = message.replace("None is not", "null is not", 1)
    return _key_path(path), message


def validate_schema(cfg: dict) -> dict:
    """Validate ``cfg`` in place against the schema and fill in defaults; returns ``cfg``.

    On failure raises :class:`ConfigError` for the most specific error (the deepest key).
    """
    from jsonschema.exceptions import best_match

    validator = _default_filling_validator(load_schema())
    errors = list(validator.iter_errors(cfg))
    if errors:
        # Prefer the deepest error (the most precise key); best_match breaks ties.
        depth = max(len(e.absolute_path) for e in errors)
        deepest = [e for e in errors if len(e.absolute_path) == depth]
        key, message = _error_key(best_match(deepest))
        raise ConfigError(key, message)
    return cfg


def load_config(path_or_dict: str | os.PathLike | dict, base_dir: str | os.PathLike = ".") -> dict:
    """Read (YAML path) or copy (dict) a config, validate it, fill defaults and check cross-keys.

    Relative paths inside the config are relative to ``base_dir`` (the working directory of the
    snakemake run); they are used here only to read a local model's ``config.json``.
    """
    if isinstance(path_or_dict, dict):
        cfg = copy.deepcopy(path_or_dict)
    else:
        with open(path_or_dict, encoding="utf-8") as f:
            cfg = yaml.safe_load(f)
        if cfg is None:
            cfg = {}
    if not isinstance(cfg, dict):
        raise ConfigError("", f"expected a mapping at the top level, got {type(cfg).__name__}")
    validate_schema(cfg)
    check_config(cfg, base_dir=base_dir)
    return cfg


# --------------------------------------------------------------------------- config sources
# What the Snakefile checks before the merged config (validate_run_config): each --configfile
# file on its own, so that an error names the file, and the --config keys.

CONFIG_FILE_SUFFIXES = (".yaml", ".yml", ".json")
# the top folders of what a run writes: a path there is a workflow target, not a config file
_RUN_FOLDERS = ("results", "resources", "logs", "figures", "runs", ".snakemake")
TARGET_HINT = (
    "Snakemake's --configfile takes every word after it as a config file, so a target written "
    "after it is read as one: put the targets before --configfile, or end the list of config "
    "files with -- (snakemake --configfile config/smollm2.yaml -- TARGET)"
)
OVERLAY_HINT = (
    "--config sets top-level keys only, and reads the values inside a mapping or list as text; "
    "put nested keys in an overlay file, a YAML file with just the keys to change, given after "
    "the config it changes: --configfile config/config.yaml my-overlay.yaml (config/README.md, "
    "'Overlay files')"
)
# keywords of what a whole config must have (required keys, counts, conditional requirements):
# a config file that is a part of a run's config (an overlay) need not satisfy them alone
_WHOLE_CONFIG_KEYWORDS = frozenset(
    {"required", "minItems", "minProperties", "allOf", "anyOf", "oneOf", "not", "if", "then"}
    | {"else", "dependentRequired", "default"}
)
# keywords whose values map names (properties, definitions), not keywords, to subschemas
_NAMED_SUBSCHEMAS = frozenset({"properties", "$defs", "patternProperties", "definitions"})


class ConfigFileError(ConfigError):
    """A config file given with ``--configfile`` that is not one, or that is wrong on its own."""

    def __init__(self, path: str | os.PathLike, problem: str, key: str = ""):
        self.path = str(path)
        ValueError.__init__(
            self, f"config file {self.path}: " + (f"key '{key}': {problem}" if key else problem)
        )
        self.key, self.problem = key, problem


def _partial_schema(node: Any) -> Any:
    """The schema without what only a whole config must satisfy (:data:`_WHOLE_CONFIG_KEYWORDS`):
    what every config file, an overlay too, must satisfy on its own."""
    if isinstance(node, list):
        return [_partial_schema(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in _WHOLE_CONFIG_KEYWORDS:
            continue
        if key in _NAMED_SUBSCHEMAS and isinstance(value, dict):
            out[key] = {name: _partial_schema(sub) for name, sub in value.items()}
        else:
            out[key] = _partial_schema(value)
    return out


def _looks_like_target(path: Path, data: dict, known: Iterable[str]) -> bool:
    """A file with unknown top-level keys that is more likely a workflow target than a config
    with a typo: not YAML/JSON by its name, in a folder a run writes, or mostly unknown keys
    that are mostly not close to a config key (a JSON sidecar, a run's config record)."""
    known = list(known)
    unknown = [str(k) for k in data if k not in known]
    typos = [k for k in unknown if difflib.get_close_matches(k, known, n=1)]
    return (
        path.suffix.lower() not in CONFIG_FILE_SUFFIXES
        or any(part in _RUN_FOLDERS for part in path.parts[:-1])
        or (2 * len(unknown) >= len(data) and 2 * len(typos) < len(unknown))
    )


def check_config_file(path: str | os.PathLike) -> None:
    """One ``--configfile`` file on its own: a mapping of known config keys, each of the schema's
    type and range (keys another file gives may be missing). Raises :class:`ConfigFileError`
    naming the file; for what looks like a workflow target (a path under ``results/`` etc., no
    YAML/JSON suffix, no config key at all) it says how to give targets with --configfile."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigFileError(
            path, f"cannot be read as YAML or JSON ({type(e).__name__}). {TARGET_HINT}"
        ) from None
    schema = load_schema()
    known = sorted(schema.get("properties", {}))
    if not isinstance(data, dict):
        what = "empty" if data is None else f"a {type(data).__name__}"
        raise ConfigFileError(
            path,
            f"is not a config file (it is {what}, not a mapping of config keys). " + TARGET_HINT,
        )
    unknown = [k for k in data if k not in known]
    if unknown and _looks_like_target(path, data, known):
        raise ConfigFileError(
            path,
            f"is not a config file (its keys {unknown[:5]} are no config keys; known: "
            f"{known}). {TARGET_HINT}",
        )
    errors = list(Draft202012Validator(_partial_schema(schema)).iter_errors(data))
    if errors:
        depth = max(len(e.absolute_path) for e in errors)
        key, message = _error_key(best_match([e for e in errors if len(e.absolute_path) == depth]))
        raise ConfigFileError(path, message, key=key)


def check_config_overrides(overrides: dict) -> None:
    """The ``--config KEY=VALUE`` keys: known top-level keys (a dotted key is not a path)."""
    known = sorted(load_schema().get("properties", {}))
    for key in overrides:
        if key in known:
            continue
        close = difflib.get_close_matches(str(key).split(".")[0], known, n=1)
        hint = f"did you mean {close[0]!r}? " if close and "." not in str(key) else ""
        raise ConfigError(
            str(key),
            f"given with --config, is not a top-level config key ({hint}known: "
            f"{known}). {OVERLAY_HINT}",
        )


def validate_run_config(
    cfg: dict, configfiles: Iterable[str | os.PathLike] = (), overrides: dict | None = None
) -> dict:
    """The start-up validation of a run: every config file on its own
    (:func:`check_config_file`), the ``--config`` keys (:func:`check_config_overrides`), then the
    merged config (:func:`validate_schema`, which fills in the defaults)."""
    for path in dict.fromkeys(map(str, configfiles)):
        check_config_file(path)
    check_config_overrides(dict(overrides or {}))
    return validate_schema(cfg)


@contextmanager
def config_overrides_hint(overrides: dict | None) -> Iterator[None]:
    """Re-raise a :class:`ConfigError` in a key that ``--config`` set with a mapping or list with
    how to set nested keys instead (Snakemake reads the values inside as text)."""
    try:
        yield
    except ConfigError as e:
        root = re.split(r"[.\[]", e.key, maxsplit=1)[0]
        if not isinstance(e, ConfigFileError) and isinstance(
            dict(overrides or {}).get(root), (dict, list)
        ):
            raise ConfigError(
                e.key, f"{e.problem} (set with --config {root}=...). {OVERLAY_HINT}"
            ) from None
        raise


# --------------------------------------------------------------------------- derived values


def experiments(cfg: dict) -> list[tuple[str, str]]:
    """The (model, method) pairs, in config order."""
    return [(e["model"], e["method"]) for e in cfg["experiments"]]


def experiment_n_edits(cfg: dict, model: str, method: str) -> int:
    """Edits per trajectory of the experiment (model, method): its own ``n_edits``, else the
    top-level ``n_edits``."""
    for e in cfg["experiments"]:
        if e["model"] == model and e["method"] == method and e.get("n_edits") is not None:
            return int(e["n_edits"])
    return int(cfg["n_edits"])


def max_n_edits(cfg: dict) -> int:
    """The most edits any experiment makes (what every ordering must hold)."""
    return max(experiment_n_edits(cfg, model, method) for model, method in experiments(cfg))


def method_hparams(cfg: dict, method: str, model: str) -> dict:
    """The hyperparameters of ``method`` on ``model``: ``hparams`` updated by
    ``per_model[model]``."""
    m = cfg["methods"][method]
    return {
        **copy.deepcopy(m.get("hparams", {})),
        **copy.deepcopy(m.get("per_model", {}).get(model, {})),
    }


def needs_covariance(cfg: dict, method: str) -> bool:
    """Whether the editor of ``method`` uses key statistics
    (``EDITORS[editor].needs_covariance``)."""
    from editscale.editors import editor_info

    return editor_info(cfg["methods"][method]["editor"]).needs_covariance


def stats_layers(cfg: dict, method: str, model: str) -> list[int]:
    """The layers whose key statistics ``method`` needs on ``model``, in the editor's order: its
    merged hyperparameters' ``layers`` (MEMIT) or ``layer`` (ROME); [] if it needs none."""
    if not needs_covariance(cfg, method):
        return []
    from editscale.editors import stats_layers as editor_stats_layers

    return editor_stats_layers(method_hparams(cfg, method, model))


def stats_layer(cfg: dict, method: str, model: str) -> int | None:
    """The one layer whose key statistics ``method`` needs on ``model`` (None if it needs none)."""
    layers = stats_layers(cfg, method, model)
    if len(layers) > 1:
        raise ValueError(
            f"{method!r} on {model!r} needs the statistics of layers {layers}: use stats_layers"
        )
    return layers[0] if layers else None


def published_stats(cfg: dict, model: str, layer: int) -> dict | None:
    """The ``stats.published`` entry for block ``layer`` of ``model`` (None: computed here)."""
    for entry in cfg["stats"].get("published") or []:
        if entry["model"] == model and int(entry["layer"]) == int(layer):
            return entry
    return None


def stats_layer_file(cfg: dict, model: str, layer: int) -> str:
    """The key statistics file of block ``layer`` of ``model``: imported published statistics
    (``resources/stats_published/``, rule import_stats) where ``stats.published`` lists that
    model and layer, else ``resources/stats/<model>/<corpus>/`` (rule key_stats)."""
    if published_stats(cfg, model, layer) is not None:
        return paths.published_key_stats(model, layer)
    return paths.key_stats(model, cfg["stats"]["corpus"], layer)


def stats_files(cfg: dict, method: str, model: str) -> list[str]:
    """The key statistics files ``method`` needs on ``model``, one per :func:`stats_layers`."""
    return [stats_layer_file(cfg, model, layer) for layer in stats_layers(cfg, method, model)]


def stats_file(cfg: dict, method: str, model: str) -> str | None:
    """The one key statistics file ``method`` needs on ``model`` (None: it needs none)."""
    layer = stats_layer(cfg, method, model)
    return None if layer is None else stats_layer_file(cfg, model, layer)


def editor_file(cfg: dict, method: str, model: str) -> str | None:
    """The editor file ``method`` needs on ``model`` (MEND), or None: a downloaded public file
    (``.pt``) when ``editor_weights`` names the model, else one trained by rule train_mend."""
    from editscale.editors import editor_info

    spec = cfg["methods"][method]
    if not editor_info(spec["editor"]).needs_editor_file:
        return None
    ext = "pt" if model in spec.get("editor_weights", {}) else "safetensors"
    return paths.editor_file(model, method, ext)


def trained_editors(cfg: dict) -> list[tuple[str, str]]:
    """The (model, method) experiments whose editor is trained here (rule train_mend)."""
    return [
        (model, method)
        for model, method in experiments(cfg)
        if (editor_file(cfg, method, model) or "").endswith(".safetensors")
    ]


def editor_training_corpus(cfg: dict) -> str | None:
    """The locality corpus of editor training: ``editor_training.corpus``, else ``stats.corpus``."""
    return cfg.get("editor_training", {}).get("corpus") or cfg["stats"].get("corpus")


def perplexity_corpus(cfg: dict) -> str | None:
    """The corpus of the held-out perplexity: ``evaluation.perplexity.corpus``, else
    ``stats.corpus``; None when neither is set or ``n_docs`` is 0 (perplexity not measured)."""
    ppl = cfg.get("evaluation", {}).get("perplexity", {})
    if int(ppl.get("n_docs", 0)) == 0:
        return None
    return ppl.get("corpus") or cfg.get("stats", {}).get("corpus")


@lru_cache(maxsize=8)
def _resource_default_items(path: str, mtime_ns: int, size: int) -> tuple[tuple[str, Any], ...]:
    props = _parsed_schema(path, mtime_ns, size)["$defs"]["resources"]["properties"]
    return tuple((k, copy.deepcopy(v["default"])) for k, v in props.items() if "default" in v)


def _resource_defaults() -> dict:
    """The schema's defaults of ``resources.<model>`` (a new dict each call, values copied)."""
    return {k: copy.deepcopy(v) for k, v in _resource_default_items(*_schema_key())}


def model_resources(cfg: dict, model: str, rule: str | None = None) -> dict:
    """``mem_mb``, ``runtime`` (minutes), ``threads`` and ``gpu`` of the heavy rules for ``model``.

    Schema defaults, updated by ``resources.<model>``, updated by ``resources.<model>.rules.<rule>``
    (per-rule amounts for that model, e.g. a longer runtime for trajectories than for evaluation
    chunks). The ``rules`` table itself is not part of the result.
    """
    spec = cfg.get("resources", {}).get(model, {})
    out = {k: v for k, v in {**_resource_defaults(), **spec}.items() if k != "rules"}
    if rule is not None:
        out.update(spec.get("rules", {}).get(rule, {}))
    return out


def under(base_dir: str | os.PathLike, path: str | os.PathLike) -> Path:
    """``path`` relative to the run's working directory ``base_dir``, with ``..`` resolved by name:
    the working directory may not exist yet at start-up (snakemake --directory creates it), and
    the operating system cannot walk ``..`` out of a directory that does not exist."""
    return Path(os.path.normpath(Path(base_dir) / path))


def _check_gguf_source(where: str, spec: dict, base_dir: str | os.PathLike = ".") -> None:
    """A gguf model's file exists (``path``) or its package is installed (``package``), checked
    at start-up without reading the file."""
    import importlib.util

    if spec.get("path"):
        if not under(base_dir, spec["path"]).is_file():
            raise ConfigError(f"{where}.path", f"GGUF file {spec['path']!r} does not exist")
        return
    found = importlib.util.find_spec(spec["package"])
    if found is None or not found.submodule_search_locations:
        raise ConfigError(
            f"{where}.package",
            f"Python package {spec['package']!r} is not installed "
            "(make venv installs the packages of requirements-models.txt, without their "
            "dependencies)",
        )
    folder = Path(list(found.submodule_search_locations)[0])
    if not (folder / spec["file"]).is_file():
        raise ConfigError(
            f"{where}.file", f"package {spec['package']!r} ({folder}) has no file {spec['file']!r}"
        )


def model_n_layer(cfg: dict, model: str, base_dir: str | os.PathLike = ".") -> int | None:
    """The model's number of blocks when known: ``n_layer`` in the config, else a local model's
    ``config.json`` (``n_layer`` / ``num_hidden_layers``); None otherwise (e.g. a hub model)."""
    spec = cfg["models"][model]
    if spec.get("n_layer") is not None:
        return int(spec["n_layer"])
    if spec.get("source") == "local":
        cfg_json = under(base_dir, spec["path"]) / "config.json"
        try:
            hf = json.loads(cfg_json.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        for key in ("n_layer", "num_hidden_layers", "num_layers"):
            if isinstance(hf.get(key), int):
                return hf[key]
    return None


# --------------------------------------------------------------------------- cross-key checks


def _editor_info(cfg: dict, method: str, used_by: str = "") -> EditorInfo:
    """The :class:`editscale.editors.EditorInfo` of ``methods.<method>.editor``; an unknown editor
    is a :class:`ConfigError` naming that key and the known editors (``used_by``: what needs the
    method, said in the message)."""
    from editscale.editors import EDITORS

    name = cfg["methods"][method]["editor"]
    if name not in EDITORS:
        raise ConfigError(
            f"methods.{method}.editor",
            f"unknown editor {name!r}; known editors: {sorted(EDITORS)}{used_by}",
        )
    return EDITORS[name]


def _check_edit_gates(cfg: dict, model: str, edit: dict, base_dir: str | os.PathLike = ".") -> None:
    where = f"models.{model}.gates.edit"
    method = edit["method"]
    if method not in cfg["methods"]:
        raise ConfigError(
            f"{where}.method",
            f"{method!r} is not a key of methods (defined: {sorted(cfg['methods'])})",
        )
    if model not in cfg["methods"][method].get("per_model", {}):
        raise ConfigError(
            f"{where}.method", f"methods.{method}.per_model has no entry for {model!r}"
        )
    _editor_info(cfg, method, f" (method {method!r} runs the edit gates, {where}.method)")
    _check_method_hparams(cfg, method, model, base_dir)


def _check_layers(
    hp: Any, n_layer: int | None, model: str, key: Callable[[str], str], given: Iterable[str]
) -> None:
    """The layers an editor's hparams ``hp`` name exist in ``model`` (``n_layer`` blocks, None when
    unknown): an integer ``layer``, else MEND's ``layers`` list or, without it, ``n_last_layers``.
    ``key`` maps a field name to its config key; ``given`` are the fields the config sets."""
    given = set(given)

    def fail(name: str, problem: str, index: int | None = None) -> NoReturn:
        default = "" if name in given else " (the default)"
        raise ConfigError(key(name) + ("" if index is None else f"[{index}]"), problem + default)

    span = "" if n_layer is None else f": model {model!r} has {n_layer} layers (0..{n_layer - 1})"

    def check_index(name: str, value: Any, index: int | None = None) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            fail(name, f"expected an integer layer, got {value!r}", index)
        if value < 0 or (n_layer is not None and value >= n_layer):
            fail(name, f"{value} is out of range{span or ' (layers start at 0)'}", index)

    if isinstance(getattr(hp, "layer", None), int):
        check_index("layer", hp.layer)
    if getattr(hp, "layers", None) is not None:
        if not hp.layers:
            fail(
                "layers",
                "is empty: give at least one layer, or null to edit the last n_last_layers",
            )
        for i, layer in enumerate(hp.layers):
            check_index("layers", layer, i)
    elif isinstance(getattr(hp, "n_last_layers", None), int):
        n = hp.n_last_layers
        if n < 1:
            fail("n_last_layers", f"{n} is out of range: at least 1 layer is edited")
        if n_layer is not None and n > n_layer:
            fail("n_last_layers", f"{n} is out of range: model {model!r} has {n_layer} layers")


def _check_method_hparams(
    cfg: dict, method: str, model: str, base_dir: str | os.PathLike = "."
) -> None:
    """The hparams ``method`` runs with on ``model`` (``hparams`` merged with ``per_model[model]``)
    build its editor's dataclass (known names, types, the dataclass's own checks) and name layers
    the model has; an error names the key where the value was set (a missing required value: the
    ``per_model`` entry, a default one: ``hparams``). Torch-free (editors.hparams), so that this
    runs at start-up."""
    from editscale.editors.hparams import HParamError, check_hparams

    spec = cfg["methods"][method]
    cls = _editor_info(cfg, method).hparams
    if cls is None:
        return
    per_model = spec.get("per_model", {}).get(model, {})
    where = f"methods.{method}.per_model.{model}"
    keys = {
        name: f"methods.{method}.hparams.{name}"
        for name in spec.get("hparams", {})
        if name not in per_model
    }
    values = method_hparams(cfg, method, model)
    try:
        hp = check_hparams(cls, values, where, keys)
    except HParamError as e:
        raise ConfigError(e.key, e.problem) from None
    _check_layers(
        hp,
        model_n_layer(cfg, model, base_dir),
        model,
        lambda name: f"{where}.{name}" if name in per_model else f"methods.{method}.hparams.{name}",
        values,
    )


def _check_enough_records(cfg: dict, base_dir: str | os.PathLike = ".") -> None:
    """The local CounterFact file holds enough records for the longest trajectory: its
    (unique-subject) records, less those reserved for training an editor, at least the largest
    ``n_edits``. Checked at start-up when the file is already on disk (a file a rule makes, or
    a download, is checked by rule ordering); an unreadable file or a bad record stops the run
    here, naming the record, before rule counterfact would replace the data link (and the
    outputs that depend on it). So does a record with a text field longer than
    ``counterfact.max_chars`` or an empty paraphrase or neighbourhood list."""
    from editscale.data.counterfact import (
        DEFAULT_MAX_CHARS,
        load_counterfact,
        unique_subject_records,
    )

    path = cfg["counterfact"].get("path")
    if path is None or not under(base_dir, path).is_file():
        return
    max_chars = cfg["counterfact"].get("max_chars", DEFAULT_MAX_CHARS)
    try:
        records = load_counterfact(under(base_dir, path), max_chars=max_chars)
    except ValueError as e:  # a bad record stops the run before any job replaces a finished output
        raise ConfigError("counterfact.path", str(e)) from None
    if cfg["counterfact"].get("unique_subjects", True):
        records = unique_subject_records(records)
    training = cfg.get("editor_training", {})
    reserved = training.get("n_train", 0) + training.get("n_val", 0) if trained_editors(cfg) else 0
    available = len(records) - reserved
    for i, e in enumerate(cfg["experiments"]):
        n = experiment_n_edits(cfg, e["model"], e["method"])
        if n > available:
            key = f"experiments[{i}].n_edits" if e.get("n_edits") is not None else "n_edits"
            raise ConfigError(
                key,
                f"{n} edits asked but {path} has {available} records to edit "
                f"({len(records)} usable, {reserved} reserved for editor training)",
            )


def _check_stats_files(cfg: dict, base_dir: str | os.PathLike = ".") -> None:
    """Key statistics files already on disk hold the layer (and corpus) their path names.

    A file put in place by hand for another layer, corpus or model would otherwise be found
    out only by the trajectory job, after Snakemake had deleted that job's finished output.
    Reads HDF5 attributes and the model's manifest only (cheap); the model is compared when it
    is already prepared (its ``model_id`` and ``revision``, as the trajectory job compares them)
    and the file is not older than it (else rule key_stats recomputes the file anyway).
    """
    for i, exp in enumerate(cfg["experiments"]):
        key = f"methods.{exp['method']}.per_model.{exp['model']}." + (
            "layers" if "layers" in method_hparams(cfg, exp["method"], exp["model"]) else "layer"
        )
        for layer in stats_layers(cfg, exp["method"], exp["model"]):
            _check_stats_file(cfg, exp, layer, key, i, base_dir)


def _check_stats_file(cfg: dict, exp: dict, layer: int, key: str, i: int, base_dir) -> None:
    import h5py

    from editscale.io.provenance import identity_from_manifest

    published = published_stats(cfg, exp["model"], layer) is not None
    corpus = "published" if published else cfg["stats"].get("corpus")
    if corpus is not None:
        rel = stats_layer_file(cfg, exp["model"], layer)
        path = under(base_dir, rel)
        if not path.is_file():
            return
        try:
            with h5py.File(path, "r") as h5:
                attrs = {
                    k: h5.attrs[k]
                    for k in ("layer", "corpus", "model_id", "revision")
                    if k in h5.attrs
                }
        except OSError as e:
            raise ConfigError(
                key, f"statistics file {rel} is unreadable ({e}); move it aside to recompute it"
            ) from None
        found = {
            "layer": int(attrs["layer"]) if "layer" in attrs else None,
            **{
                k: str(attrs[k]) if k in attrs else None for k in ("corpus", "model_id", "revision")
            },
        }
        wanted = [("layer", layer), ("corpus", corpus)]
        manifest = under(base_dir, paths.model_manifest(exp["model"]))
        # the model is prepared and not newer than the file (a newer model makes Snakemake
        # recompute the statistics anyway): the file must be this model's
        if manifest.is_file() and path.stat().st_mtime >= manifest.stat().st_mtime:
            ident = identity_from_manifest(json.loads(manifest.read_text()), manifest.parent)
            wanted += [("model_id", ident["model_id"]), ("revision", ident["revision"])]
        for attr, want in wanted:
            if found[attr] not in (None, "unknown") and found[attr] != want:
                raise ConfigError(
                    key,
                    f"statistics file {rel} holds {attr} {found[attr]!r}, not {want!r}; "
                    "move it aside to recompute it (experiments[" + str(i) + "])",
                )


def _check_training_hparams(cfg: dict, method: str) -> None:
    """``methods.<method>.training`` builds its editor's training dataclass (MEND's rule
    train_mend)."""
    from editscale.editors.hparams import HParamError, check_hparams

    spec = cfg["methods"][method]
    cls = _editor_info(cfg, method).training
    if cls is None:
        return
    try:
        check_hparams(cls, spec.get("training", {}), f"methods.{method}.training")
    except HParamError as e:
        raise ConfigError(e.key, e.problem) from None


def edit_gate_spec(cfg: dict, model: str) -> dict | None:
    """What the edit gates of ``model`` run (method, editor, hparams, limits), or None."""
    edit = cfg["models"][model].get("gates", {}).get("edit")
    if edit is None:
        return None
    method = edit["method"]
    return {
        **edit,
        "editor": cfg["methods"][method]["editor"],
        "hparams": method_hparams(cfg, method, model),
    }


def _check_steps(cfg: dict, i: int, model: str, method: str) -> None:
    """``methods.<m>.edits_per_step``: a batched editor, and every count of edits that must end a
    step (n_edits, snapshot_every, the evaluation checkpoints) a multiple of it."""
    from editscale.editors import edits_per_step_problem

    spec = cfg["methods"][method]
    k = spec.get("edits_per_step", 1)
    if k == 1:
        return
    ev = cfg.get("evaluation", {})
    counts = {
        f"experiments[{i}].n_edits"
        if cfg["experiments"][i].get("n_edits")
        else "n_edits": experiment_n_edits(cfg, model, method),
        "snapshot_every": cfg["snapshot_every"],
    }
    for name in ("forgetting_every", "downstream_every"):
        if name in ev:
            counts[f"evaluation.{name}"] = ev[name]
    problem = edits_per_step_problem(
        spec["editor"],
        k,
        counts,
        store_updates=spec.get("store_updates", True),
        store_updates_key=f"methods.{method}.store_updates",
    )
    if problem is not None:
        raise ConfigError(f"methods.{method}.edits_per_step", problem)


def check_config(cfg: dict, base_dir: str | os.PathLike = ".") -> None:
    """Checks across keys, on a schema-valid config with defaults filled in.

    * every experiment names a defined model and method, and no pair is repeated;
    * every method's editor exists; every method has ``per_model`` hparams for each model it
      runs on, with an integer ``layer`` (below the model's ``n_layer`` when known) if the editor
      needs covariance statistics;
    * the hparams every experiment (and edit gate) runs with build the editor's dataclass
      (``EditorInfo.hparams``: known names, value types, the dataclass's own checks) and the
      layers they name (``layer``, MEND's ``layers`` / ``n_last_layers``) exist in the model when
      its size is known; ``training`` builds ``EditorInfo.training`` where an editor is trained;
    * ``stats.corpus`` and every scratch model's ``tokenizer_corpus`` name a defined corpus;
    * ``counterfact`` has exactly one of ``path`` and ``url``;
    * scratch models: ``d_model`` divisible by ``n_head``; local models: their config.json's
      ``model_type`` has an entry in the architecture table (scratch and world models: the
      schema's ``arch`` values);
    * ``resources`` only names defined models, ``disabling.methods`` defined methods.

    Warns (:class:`ConfigWarning`) for hub models and corpora whose revision is not a commit hash.
    """
    for name, spec in cfg["models"].items():
        _check_model(cfg, name, spec, base_dir)
    _warn_corpus_revisions(cfg.get("corpora", {}))
    _check_counterfact(cfg["counterfact"])
    for name, spec in cfg["methods"].items():
        _check_method(cfg, name, spec)
    seen: set[tuple[str, str]] = set()
    for i, exp in enumerate(cfg["experiments"]):
        _check_experiment(cfg, i, exp, seen, base_dir)
    for method in dict.fromkeys(method for _, method in trained_editors(cfg)):
        _check_training_hparams(cfg, method)
    _check_enough_records(cfg, base_dir)
    _check_stats_files(cfg, base_dir)
    _check_editor_training(cfg)
    _check_stats_settings(cfg)
    _check_defined(cfg)


def _not_defined(value: str, section: str, defined: Iterable) -> str:
    return f"{value!r} is not a key of {section} (defined: {sorted(defined)})"


def _check_model(cfg: dict, name: str, spec: dict, base_dir) -> None:
    """One ``models`` entry: its corpus, world and shapes; its edit gates; a GGUF file; a hub
    revision that is not a commit hash (a warning)."""
    where = f"models.{name}"
    corpora = cfg.get("corpora", {})
    if spec["source"] == "scratch":
        _check_heads(where, spec)
        if spec["tokenizer_corpus"] not in corpora:
            raise ConfigError(
                f"{where}.tokenizer_corpus",
                _not_defined(spec["tokenizer_corpus"], "corpora", corpora),
            )
    if spec["source"] == "world":
        if spec["world"] not in cfg.get("worlds", {}):
            raise ConfigError(
                f"{where}.world", _not_defined(spec["world"], "worlds", cfg.get("worlds", {}))
            )
        _check_heads(where, spec)
        edit = spec.get("gates", {}).get("edit")
        if edit is not None:
            _check_edit_gates(cfg, name, edit, base_dir)
    if spec["source"] == "gguf":
        _check_gguf_source(where, spec, base_dir)
    if spec["source"] == "local":
        _check_local_architecture(where, spec, base_dir)
    if spec["source"] == "hub" and not _COMMIT.match(spec["revision"]):
        warnings.warn(
            f"config key '{where}.revision': {spec['revision']!r} is not a commit hash; "
            "a branch or tag can move, pin the 40-character commit for reproducibility",
            ConfigWarning,
            stacklevel=3,
        )


def _check_local_architecture(where: str, spec: dict, base_dir) -> None:
    """A local model folder's ``config.json`` names a ``model_type`` of the architecture table
    (:data:`editscale.lm.architectures.ARCHITECTURES`). A folder without a readable config.json
    is left to rule prepare_model, which names it. (Hub models are checked when their
    config.json is fetched, before their weights; GGUF files before they are dequantised.)"""
    from editscale.lm.architectures import UnsupportedArchitecture, spec_of_folder

    folder = under(base_dir, spec["path"])
    try:
        spec_of_folder(folder)
    except UnsupportedArchitecture as err:
        raise ConfigError(f"{where}.path", str(err)) from None
    except (OSError, ValueError):
        return  # no readable config.json: rule prepare_model names the folder


def _check_heads(where: str, spec: dict) -> None:
    if spec["d_model"] % spec["n_head"]:
        raise ConfigError(
            f"{where}.d_model",
            f"{spec['d_model']} is not divisible by n_head={spec['n_head']}",
        )


def _warn_corpus_revisions(corpora: dict) -> None:
    for name, spec in corpora.items():
        if (
            spec["type"] == "hub"
            and spec.get("data_files") is None
            and not (spec.get("revision") and _COMMIT.match(spec["revision"]))
        ):
            warnings.warn(
                f"config key 'corpora.{name}.revision': {spec.get('revision')!r} is not a commit "
                "hash; the data set may change between runs",
                ConfigWarning,
                stacklevel=3,
            )


def _check_counterfact(cf: dict) -> None:
    has_path, has_url = cf.get("path") is not None, cf.get("url") is not None
    if has_path == has_url:
        raise ConfigError(
            "counterfact",
            "give exactly one of 'path' (a local file) and 'url' "
            f"(downloaded and checked against 'sha256'); got path={cf.get('path')!r}, "
            f"url={cf.get('url')!r}",
        )


def _check_method(cfg: dict, name: str, spec: dict) -> None:
    """One ``methods`` entry: a known editor, defined models, editor files only for MEND."""
    models = cfg["models"]
    info = _editor_info(cfg, name)
    for section in ("per_model", "editor_weights"):
        for model in spec.get(section, {}):
            if model not in models:
                raise ConfigError(
                    f"methods.{name}.{section}.{model}", _not_defined(model, "models", models)
                )
    if (spec.get("training") or spec.get("editor_weights")) and not info.needs_editor_file:
        raise ConfigError(
            f"methods.{name}",
            f"'training' and 'editor_weights' apply to editors that need "
            f"an editor file (MEND), not to {spec['editor']!r}",
        )


def _check_experiment(
    cfg: dict, i: int, exp: dict, seen: set[tuple[str, str]], base_dir: str | os.PathLike
) -> None:
    """``experiments[i]``: a defined model and method, not repeated, no more ``samples`` than the
    run draws, with the method's per-model hparams (and the layers its statistics need), its
    hparams and its step size."""
    models, methods = cfg["models"], cfg["methods"]
    model, method = exp["model"], exp["method"]
    if model not in models:
        raise ConfigError(f"experiments[{i}].model", _not_defined(model, "models", models))
    if method not in methods:
        raise ConfigError(f"experiments[{i}].method", _not_defined(method, "methods", methods))
    if (model, method) in seen:
        raise ConfigError(f"experiments[{i}]", f"({model}, {method}) is listed twice")
    seen.add((model, method))
    per_model = methods[method].get("per_model", {})
    if model not in per_model:
        raise ConfigError(
            f"methods.{method}.per_model.{model}",
            f"missing: method {method!r} runs on model {model!r} (experiments[{i}]) "
            "and needs its per-model hparams there",
        )
    if exp.get("samples") is not None and exp["samples"] > cfg["samples"]:
        raise ConfigError(
            f"experiments[{i}].samples",
            f"{exp['samples']} orderings asked but the run draws {cfg['samples']} "
            "(top-level samples); an experiment runs the first of them",
        )
    _check_covariance_layers(cfg, model, method, per_model[model], base_dir)
    _check_method_hparams(cfg, method, model, base_dir)
    _check_steps(cfg, i, model, method)


def _check_covariance_layers(
    cfg: dict, model: str, method: str, hp: dict, base_dir: str | os.PathLike
) -> None:
    """An editor that needs key statistics names its layer (an integer in the model's range) or
    its layers in ``methods.<method>.per_model.<model>``."""
    editor = cfg["methods"][method]["editor"]
    info = _editor_info(cfg, method)
    if info.needs_covariance and "layer" in info.hparams.__dataclass_fields__:
        layer = hp.get("layer")
        key = f"methods.{method}.per_model.{model}.layer"
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise ConfigError(
                key,
                f"required (an integer >= 0): editor {editor!r} "
                "edits one layer and needs its key statistics",
            )
        n_layer = model_n_layer(cfg, model, base_dir)
        if n_layer is not None and layer >= n_layer:
            raise ConfigError(
                key,
                f"{layer} is out of range: model {model!r} has {n_layer} layers (0..{n_layer - 1})",
            )
    elif info.needs_covariance and "layers" not in hp:
        raise ConfigError(
            f"methods.{method}.per_model.{model}.layers",
            f"required (a list of layers): editor {editor!r} edits these "
            "layers of this model and needs their key statistics",
        )


def _check_editor_training(cfg: dict) -> None:
    """Where an editor is trained here, a defined corpus of locality text."""
    if not trained_editors(cfg):
        return
    corpora = cfg.get("corpora", {})
    model, method = trained_editors(cfg)[0]
    loc_corpus = editor_training_corpus(cfg)
    if loc_corpus is None:
        raise ConfigError(
            "editor_training.corpus",
            f"required: method {method!r} trains an editor for model {model!r} (no "
            f"methods.{method}.editor_weights.{model}) and needs locality text: set "
            "editor_training.corpus or stats.corpus",
        )
    if loc_corpus not in corpora:
        problem = _not_defined(loc_corpus, "corpora", corpora)
        if cfg.get("editor_training", {}).get("corpus"):
            raise ConfigError("editor_training.corpus", problem)
        # editor_training.corpus null: the locality text is stats.corpus, where the typo is
        raise ConfigError(
            "stats.corpus", f"{problem} (editor training's locality text: its corpus is null)"
        )


def _check_stats_settings(cfg: dict) -> None:
    """``stats``: a defined corpus (required when some statistics are computed here) that can be
    sampled as asked, published entries of defined models, a convergence check that runs."""
    corpora, models = cfg.get("corpora", {}), cfg["models"]
    stats_corpus = cfg["stats"].get("corpus")
    if stats_corpus is not None and stats_corpus not in corpora:
        raise ConfigError("stats.corpus", _not_defined(stats_corpus, "corpora", corpora))
    if (
        stats_corpus is not None
        and cfg["stats"].get("sample") == "random"
        and corpora[stats_corpus]["type"] == "hub"
        and corpora[stats_corpus].get("streaming", True)
    ):
        raise ConfigError(
            "stats.sample",
            f"'random' needs the length of corpus {stats_corpus!r}: set "
            f"corpora.{stats_corpus}.streaming: false (or stats.sample: first)",
        )
    for i, entry in enumerate(cfg["stats"].get("published") or []):
        if entry["model"] not in models:
            raise ConfigError(
                f"stats.published[{i}].model", _not_defined(entry["model"], "models", models)
            )
    needs_computed = [
        (e["model"], e["method"])
        for e in cfg["experiments"]
        if any(
            published_stats(cfg, e["model"], layer) is None
            for layer in stats_layers(cfg, e["method"], e["model"])
        )
    ]
    if needs_computed and stats_corpus is None:
        raise ConfigError(
            "stats.corpus",
            f"required: {needs_computed[0][1]!r} on {needs_computed[0][0]!r} needs "
            "covariance statistics (and stats.published has none for its layer)",
        )
    conv = cfg["stats"]["convergence"]
    if conv["tolerance"] is not None and conv["check_every_docs"] > cfg["stats"]["n_docs"]:
        raise ConfigError(
            "stats.convergence.check_every_docs",
            f"{conv['check_every_docs']} exceeds stats.n_docs ({cfg['stats']['n_docs']}): "
            "no convergence check would ever run",
        )


def _check_defined(cfg: dict) -> None:
    """``evaluation.perplexity.corpus``, the models of ``resources`` and the methods of
    ``disabling.methods`` are defined."""
    corpora, models = cfg.get("corpora", {}), cfg["models"]
    for i, method in enumerate(cfg.get("disabling", {}).get("methods") or []):
        if method not in cfg["methods"]:
            raise ConfigError(
                f"disabling.methods[{i}]", _not_defined(method, "methods", cfg["methods"])
            )
    ppl_corpus = cfg.get("evaluation", {}).get("perplexity", {}).get("corpus")
    if ppl_corpus is not None and ppl_corpus not in corpora:
        raise ConfigError(
            "evaluation.perplexity.corpus", _not_defined(ppl_corpus, "corpora", corpora)
        )
    for model in cfg.get("resources", {}):
        if model not in models:
            raise ConfigError(f"resources.{model}", _not_defined(model, "models", models))
