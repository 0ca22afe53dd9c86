"""Config validation and the helper functions the rules use (no rules here).

params hold what defines a result, so that changing them re-runs the job (Snakemake's params
rerun trigger). Settings that do not change a result (device, checkpoint frequency, the full
config stored for provenance) are read by the scripts from ``snakemake.config`` instead.
"""

import os
import re
import sys
from pathlib import Path

from snakemake.utils import validate

try:
    from editscale import config as escfg
    from editscale.evaluation.checkpoints import checkpoint_plan, chunks as plan_chunks
    from editscale.io import paths
except ImportError:
    # snakemake runs outside the project's environment: use the source tree
    sys.path.insert(0, str(Path(workflow.basedir) / "src"))
    from editscale import config as escfg
    from editscale.evaluation.checkpoints import checkpoint_plan, chunks as plan_chunks
    from editscale.io import paths

# Jobs in conda environments (--sdm conda) and on cluster nodes import editscale from this
# source tree: the environments hold its dependencies, not the package itself.
_src = str(Path(workflow.basedir) / "src")
if _src not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ.update(
        PYTHONPATH=os.pathsep.join(p for p in (_src, os.environ.get("PYTHONPATH")) if p)
    )


# Schema validation fills in the defaults; the cross-key checks then fail before any job runs.
# editscale's validation first: a bad key gets one line naming it (snakemake's validate() would
# print the whole schema, over a thousand lines). Snakemake skips validate() in cluster jobs
# (--mode remote), which re-parse the workflow on the node; editscale's fills the defaults there.
# Each config file is first checked on its own, so that an error names the file (a workflow
# target written after --configfile is read as a config file), and so are the --config keys
# (top-level keys only; nested keys go in an overlay file): config/README.md.
_overrides = dict(workflow.config_settings.config or {})
with escfg.config_overrides_hint(_overrides):
    escfg.validate_run_config(
        config, configfiles=workflow.configfiles, overrides=_overrides
    )
    validate(config, schema="../workflow/schemas/config.schema.yaml")
    escfg.check_config(config)

# where figures and tables go (config figures.dir)
FIGURES = config["figures"]["dir"]


wildcard_constraints:
    model=r"[^/]+",
    method=r"[^/]+",
    corpus=r"[^/]+",
    sample=r"\d+",
    layer=r"\d+",


# ---------------------------------------------------------------- paths
# Every file's path is spelled in editscale.io.paths (shared with the figure code).


def model_manifest(model):
    return paths.model_manifest(model)


def ordering_path(sample):
    return paths.ordering(sample)


def stats_path(model, method):
    """The key statistics ``method`` needs on ``model``: None, one file, or a list of files
    (one per edited layer: MEMIT)."""
    files = escfg.stats_files(config, method, model)
    if not files:
        return None
    return files[0] if len(files) == 1 else files


def all_metrics_csv():
    return [
        paths.trajectory(model, method, sample, "csv")
        for model, method in escfg.experiments(config)
        for sample in range(figure_data.experiment_samples(config, model, method))
    ]


# ---------------------------------------------------------------- models and data


def model_build_spec(wildcards):
    """What defines a prepared model folder (dtype and device do not: they apply at load)."""
    spec = {
        k: v
        for k, v in config["models"][wildcards.model].items()
        if k not in ("dtype", "device")
    }
    if spec["source"] == "scratch" and spec.get("seed") is None:
        spec["seed"] = config["seed"]
    return spec


def tokenizer_corpus(wildcards):
    spec = config["models"][wildcards.model]
    if spec["source"] != "scratch":
        return None
    return config["corpora"][spec["tokenizer_corpus"]]


def corpus_files(name):
    """Local files of a corpus (inputs of the jobs that read it)."""
    corpus = config["corpora"][name]
    return list(corpus["paths"]) if corpus["type"] == "text_files" else []


def model_inputs(wildcards):
    spec = config["models"][wildcards.model]
    if spec["source"] == "local":
        return [str(Path(spec["path"]) / "config.json")]
    if spec["source"] == "scratch":
        return corpus_files(spec["tokenizer_corpus"])
    if spec["source"] == "gguf" and spec.get("path"):
        return [spec["path"]]
    return []


def world_models():
    """Models trained here on a synthetic world (source: world)."""
    return [m for m, spec in config["models"].items() if spec["source"] == "world"]


def _one_of(names):
    """A wildcard regex matching exactly these names (none: a regex matching nothing)."""
    return "|".join(re.escape(n) for n in names) if names else "(?!)"


def world_models_regex():
    return _one_of(world_models())


def other_models_regex():
    """Any model name that is not trained on a world (rule prepare_model makes those)."""
    return rf"(?!(?:{_one_of(world_models())})/)[^/]+"


def world_corpus(wildcards):
    return paths.world_file(
        "corpus_train.jsonl", config["models"][wildcards.model]["world"]
    )


def world_training_hparams(wildcards):
    """Architecture (from the model entry) + training hyperparameters of a world model."""
    spec = config["models"][wildcards.model]
    seed = spec.get("seed")
    return {
        "arch": spec.get("arch", "gpt2"),
        "n_layer": spec["n_layer"],
        "d_model": spec["d_model"],
        "d_mlp": spec.get("d_mlp"),
        "n_head": spec["n_head"],
        "vocab_size": spec["vocab_size"],
        "block_size": spec["n_positions"],
        "seed": config["seed"] if seed is None else seed,
        **spec.get("training", {}),
    }


# ---------------------------------------------------------------- model gates
# The gates of a world model are a go/no-go barrier before any edit, not data: no job reads the
# gates file's content (trajectories, evaluations and disabling jobs only wait for it). So a rerun
# of the gates, passed or failed, must not rerun the finished edit jobs (docs/recovery.md, "A
# failed gate rerun"). Snakemake 9.27 (dag.py, update_needrun) reruns every job behind a job that
# runs ("Input files updated by another job") unless all the files between them are ancient() and
# exist; and it deletes the output of a failed job. Hence two rules:
#
#   model_gates   measures, writes gates.measured.json, and fails on a missed gate
#   gates_passed  (a checkpoint) copies a passed measurement to gates.json
#
# The edit jobs take gates.json as ancient(): it is never the output of a job that may fail, so
# it survives a failed model_gates and a rerun of the gates does not reach them. gates_passed has
# model_gates' inputs and params, so that it (and, through its then missing input, model_gates)
# reruns whenever they change: no edit job starts without gates passed with the current config and
# inputs. gates.measured.json is an input of rule all, so a run makes a missing or failed
# measurement again. gates_passed is a checkpoint because, while a job runs, Snakemake skips the
# jobs behind it that only an ancient() input connects, without checking their own reasons to run
# (changed params, a new output): once a checkpoint has run it plans the DAG again, and then it
# checks them. A dry run (-n) shows the first plan ("DAG of jobs will be updated after completion").


def gates_file(model):
    """The gates JSON a world model must pass before any edit (None for other models)."""
    if config["models"][model]["source"] != "world":
        return None
    return paths.model_gates(model)


def gates_measured_file(model="{model}"):
    """What rule model_gates measured (written even when a gate is missed, then deleted by
    Snakemake with the failed job); gates.json is its copy once every gate passed."""
    return paths.model_gates_measured(model)


def all_gates_measured():
    """The gate measurements of the world models edited in this config (inputs of rule all)."""
    models = dict.fromkeys(model for model, _ in escfg.experiments(config))
    return [gates_measured_file(m) for m in models if gates_file(m) is not None]


def edit_gate_stats(wildcards):
    """The key statistics the edit gates of a world model need (none without edit gates)."""
    edit = config["models"][wildcards.model].get("gates", {}).get("edit")
    if edit is None:
        return []
    return escfg.stats_files(config, edit["method"], wildcards.model)


def gate_inputs(wildcards):
    """The input files of the gates of a world model (rules model_gates and gates_passed)."""
    return {
        "model": model_manifest(wildcards.model),
        "counterfact": paths.COUNTERFACT,
        "orderings": [ordering_path(s) for s in range(config["samples"])],
        "task_sets": list(downstream_sets().values()),
        "stats": edit_gate_stats(wildcards),
    }


def gate_spec(wildcards):
    """Everything besides the input files that decides the gates' verdict (rules model_gates and
    gates_passed): the thresholds, the edit gates, the records checked, the dtype."""
    spec = config["models"][wildcards.model]
    return {
        "thresholds": {k: v for k, v in spec["gates"].items() if k != "edit"},
        "edit": escfg.edit_gate_spec(config, wildcards.model),
        "seed": config["seed"],
        "n_edits": escfg.max_n_edits(config),
        "tasks": list(downstream_sets()),
        "dtype": spec["dtype"],
    }


def counterfact_input(wildcards):
    path = config["counterfact"].get("path")
    return [path] if path is not None else []


# ---------------------------------------------------------------- trajectories


def trajectory_inputs(wildcards):
    inputs = {
        "model": model_manifest(wildcards.model),
        "counterfact": paths.COUNTERFACT,
        "ordering": ordering_path(wildcards.sample),
    }
    stats = stats_path(wildcards.model, wildcards.method)
    if stats is not None:
        inputs["stats"] = stats
    gates = gates_file(wildcards.model)
    if gates is not None:
        # ancient: a barrier, not data; a rerun of the gates does not rerun the edit jobs (above)
        inputs["gates"] = ancient(gates)
    editor = escfg.editor_file(config, wildcards.method, wildcards.model)
    if editor is not None:
        inputs["editor_file"] = editor
    return inputs


# ---------------------------------------------------------------- editor networks (MEND)

EDITOR_SPLIT = paths.EDITOR_SPLIT


def editor_split_inputs(wildcards):
    """The editor split when some experiment trains an editor: orderings then exclude its records."""
    return [EDITOR_SPLIT] if escfg.trained_editors(config) else []


def editor_training_corpus_files(wildcards):
    return corpus_files(escfg.editor_training_corpus(config))


def method_hparams(wildcards):
    return escfg.method_hparams(config, wildcards.method, wildcards.model)


# ---------------------------------------------------------------- resources

# Scheduling order (Snakemake's priority: higher first among ready jobs), longest work first:
# - the jobs that gate trajectories (key statistics, editor training) before any trajectory: they
#   may take all cores, and started later each would wait for every running one-thread job to end
#   at once, with cores idle meanwhile;
# - trajectories before the evaluations and the rest, which fill the cores at the end.
GATE_PRIORITY = 10
TRAJECTORY_PRIORITY = 5


def model_resource(key):
    """A resource of the heavy rules for the job's model and rule.

    Config ``resources.<model>``, its per-rule ``rules`` overrides, then the schema defaults.
    Snakemake passes the rule's name (``rulename``) to resource and thread functions.
    """
    return lambda wildcards, rulename: escfg.model_resources(
        config, wildcards.model, rulename
    )[key]


# ---------------------------------------------------------------- evaluations


def eval_plan_chunks(model, method):
    """The evaluation checkpoints of experiment (model, method), in chunks (one job each)."""
    ev = config["evaluation"]
    plan = checkpoint_plan(
        escfg.experiment_n_edits(config, model, method),
        ev["forgetting_every"],
        ev["downstream_every"],
    )
    return plan_chunks(plan, ev["chunk_size"])


def model_evaluated(model):
    """Whether any experiment of the model has evaluation checkpoints."""
    return any(
        eval_plan_chunks(m, method) for m, method in escfg.experiments(config) if m == model
    )


def eval_chunk_files(wildcards):
    return [
        paths.eval_chunk(wildcards.model, wildcards.method, wildcards.sample, i)
        for i in range(len(eval_plan_chunks(wildcards.model, wildcards.method)))
    ]


def downstream_sets():
    return {task: paths.downstream_set(task) for task in config["downstream"]["tasks"]}


def downstream_source_files(wildcards):
    source = config["downstream"]["source"]
    if source["type"] != "glue_files":
        return []
    sub = {"sst2": "SST-2", "mrpc": "MRPC", "rte": "RTE", "cola": "CoLA"}[wildcards.task]
    return [str(Path(source["path"]) / sub / "dev.tsv")]


COLLAPSE_PROBE = paths.COLLAPSE_PROBE


def perplexity_corpus_name():
    """The corpus of the held-out perplexity (None: not measured)."""
    return escfg.perplexity_corpus(config)


def perplexity_corpus_spec():
    name = perplexity_corpus_name()
    return None if name is None else config["corpora"][name]


def perplexity_corpus_files(wildcards):
    name = perplexity_corpus_name()
    return [] if name is None else corpus_files(name)


def trajectory_file(wildcards):
    return paths.trajectory(wildcards.model, wildcards.method, wildcards.sample)


def all_evaluations():
    out = []
    for model, method in escfg.experiments(config):
        for sample in range(figure_data.experiment_samples(config, model, method)):
            if eval_plan_chunks(model, method):
                out += [
                    paths.evaluation(model, method, sample, part)
                    for part in (".h5", *paths.EVALUATION_PARTS)
                ]
            if figure_data.has_disabling(config, method):
                out.append(paths.disabling(model, method, sample))
    return out


# ---------------------------------------------------------------- figures and report


from editscale.reporting import figure_data
from editscale.io.provenance import config_hash


def figure_models():
    return list(dict.fromkeys(model for model, _ in escfg.experiments(config)))


def figure_layout(wildcards):
    return figure_data.figure_layout(
        config, wildcards.model, evaluated=model_evaluated(wildcards.model)
    )


def figure_inputs(wildcards):
    """The tidy files a figure of the model reads (one sample when the job has a sample wildcard),
    plus the model manifest and the data files, whose hashes go into the provenance."""
    sample = getattr(wildcards, "sample", None)
    layout = [
        e for e in figure_layout(wildcards) if sample is None or e["sample"] == int(sample)
    ]
    inputs = {
        "metrics": [e["metrics"] for e in layout],
        "evaluations": [e["evaluation"] for e in layout if e["evaluation"]],
        "manifest": model_manifest(wildcards.model),
        "counterfact": paths.COUNTERFACT,
        "orderings": sorted({ordering_path(e["sample"]) for e in layout}),
    }
    return inputs


def figure2_inputs(wildcards):
    inputs = figure_inputs(wildcards)
    sample = getattr(wildcards, "sample", None)
    inputs["downstream"] = [
        e["downstream"]
        for e in figure_layout(wildcards)
        if e["downstream"] and (sample is None or e["sample"] == int(sample))
    ]
    inputs["task_sets"] = (
        list(downstream_sets().values()) if model_evaluated(wildcards.model) else []
    )
    return inputs


def collapse_figure_inputs(wildcards):
    """The collapse figure's tidy files: per-edit metrics (weight norms), evaluation HDF5 files
    (initial norms) and collapse CSVs (perplexity, generation entropy)."""
    inputs = figure_inputs(wildcards)
    inputs["collapse"] = [e["collapse"] for e in figure_layout(wildcards) if e["collapse"]]
    return inputs


def table2_inputs(wildcards):
    return {
        "disabling": [e["disabling"] for e in figure_layout(wildcards) if e["disabling"]],
        "manifest": model_manifest(wildcards.model),
        "counterfact": paths.COUNTERFACT,
        "orderings": [ordering_path(s) for s in range(config["samples"])],
    }


def summary_inputs(wildcards):
    """The lifelong summary's tidy files: Figure 2's (per-edit metrics, evaluations, downstream)
    plus every trajectory's disabling JSON."""
    inputs = figure2_inputs(wildcards)
    inputs["disabling"] = [
        e["disabling"] for e in figure_layout(wildcards) if e["disabling"]
    ]
    return inputs


def figure_settings():
    return {k: config["figures"][k] for k in ("bucket", "window", "band", "dpi", "labels")}


def all_figures():
    out = []
    for model in figure_models():
        for fig in ("figure1", "figure2"):
            out += [
                paths.figure(FIGURES, fig, ext, model) for ext in ("pdf", "png", "json")
            ]
            out += [
                paths.sample_figure(FIGURES, fig, ext, model, s)
                for s in range(config["samples"])
                for ext in ("pdf", "png", "json")
            ]
        out += [
            paths.figure(FIGURES, "collapse", ext, model) for ext in ("pdf", "png", "json")
        ]
        for table in ("table2", "summary"):
            out += [
                paths.figure(FIGURES, table, ext, model)
                for ext in ("md", "csv", "tex", "json")
            ]
        out.append(paths.figure(FIGURES, "table2_generations", "csv", model))
    return out + [
        paths.REPORT_CONFIG,
        paths.REPORT_RUNTIME,
        paths.REPORT_RUNTIME_SUMMARY,
    ]
