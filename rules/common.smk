"""Config validation and the helper functions the rules use (no rules here).

params hold what defines a result, so that changing them re-runs the job (Snakemake's params
rerun trigger). Settings that do not change a result (device, checkpoint frequency, the full
config stored for provenance) are read by the scripts from ``snakemake.config`` instead.
"""

import sys
from pathlib import Path

from snakemake.utils import validate

try:
    from editscale import config as escfg
    from editscale.checkpoints import checkpoint_plan, chunks as plan_chunks
except ImportError:
    # snakemake runs outside the project's environment: use the source tree
    sys.path.insert(0, str(Path(workflow.basedir) / "src"))
    from editscale import config as escfg
    from editscale.checkpoints import checkpoint_plan, chunks as plan_chunks


# Schema validation fills in the defaults; the cross-key checks then fail before any job runs.
validate(config, schema="../workflow/schemas/config.schema.yaml")
escfg.check_config(config)


wildcard_constraints:
    model=r"[^/]+",
    method=r"[^/]+",
    corpus=r"[^/]+",
    sample=r"\d+",
    layer=r"\d+",


# ---------------------------------------------------------------- paths


def model_manifest(model):
    return f"resources/models/{model}/editscale_manifest.json"


def ordering_path(sample):
    return f"resources/data/orderings/sample{sample}.json"


def stats_path(model, method):
    """The key statistics file ``method`` needs on ``model``, or None."""
    layer = escfg.stats_layer(config, method, model)
    if layer is None:
        return None
    return f"resources/stats/{model}/{config['stats']['corpus']}/layer{layer}.h5"


def all_metrics_csv():
    return [
        f"results/trajectories/{model}/{method}/sample{sample}.csv"
        for model, method in escfg.experiments(config)
        for sample in range(config["samples"])
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
    return []


def counterfact_input(wildcards):
    path = config["counterfact"].get("path")
    return [path] if path is not None else []


# ---------------------------------------------------------------- trajectories


def trajectory_inputs(wildcards):
    inputs = {
        "model": model_manifest(wildcards.model),
        "counterfact": "resources/data/counterfact.json",
        "ordering": ordering_path(wildcards.sample),
    }
    stats = stats_path(wildcards.model, wildcards.method)
    if stats is not None:
        inputs["stats"] = stats
    return inputs


def method_hparams(wildcards):
    return escfg.method_hparams(config, wildcards.method, wildcards.model)


# ---------------------------------------------------------------- resources


def model_resource(key):
    """A resource of the heavy rules for the job's model (config ``resources``, schema defaults)."""
    return lambda wildcards: escfg.model_resources(config, wildcards.model)[key]


# ---------------------------------------------------------------- evaluations


def eval_plan_chunks():
    ev = config["evaluation"]
    plan = checkpoint_plan(
        config["n_edits"], ev["forgetting_every"], ev["downstream_every"]
    )
    return plan_chunks(plan, ev["chunk_size"])


def eval_chunk_files(wildcards):
    return [
        f"results/evaluations/{wildcards.model}/{wildcards.method}/sample{wildcards.sample}/chunk{i}.h5"
        for i in range(len(eval_plan_chunks()))
    ]


def downstream_sets():
    return {
        task: f"resources/data/downstream/{task}.json"
        for task in config["downstream"]["tasks"]
    }


def downstream_source_files(wildcards):
    source = config["downstream"]["source"]
    if source["type"] != "glue_files":
        return []
    sub = {"sst2": "SST-2", "mrpc": "MRPC", "rte": "RTE", "cola": "CoLA"}[
        wildcards.task
    ]
    return [str(Path(source["path"]) / sub / "dev.tsv")]


def trajectory_file(wildcards):
    return f"results/trajectories/{wildcards.model}/{wildcards.method}/sample{wildcards.sample}.h5"


def all_evaluations():
    out = []
    for model, method in escfg.experiments(config):
        for sample in range(config["samples"]):
            base = f"results/evaluations/{model}/{method}/sample{sample}"
            if eval_plan_chunks():
                out += [
                    f"{base}.h5",
                    f"{base}_forgetting.csv",
                    f"{base}_downstream.csv",
                ]
            out.append(f"results/disabling/{model}/{method}/sample{sample}.json")
    return out
