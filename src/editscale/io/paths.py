"""Where the workflow's files go: the one place that spells their paths.

The rules (through ``rules/common.smk``), the config checks (:mod:`editscale.config`) and the
figure code (:mod:`editscale.reporting.figure_data`) all take their paths from here. Each function
gives the path of one kind of file; called without arguments it gives the rule's pattern, with
Snakemake wildcards (``trajectory()`` is
``results/trajectories/{model}/{method}/sample{sample}.h5``), called with values the file of one
job (``trajectory("gpt2", "rome", 0)``). Standard library only: the Snakefile imports it while it
builds the DAG.
"""

from __future__ import annotations

# -- inputs prepared by the workflow (resources/) ------------------------------------------------
COUNTERFACT = "resources/data/counterfact.json"
EDITOR_SPLIT = "resources/data/editor_split.json"
COLLAPSE_PROBE = "resources/data/collapse_probe.json"

# -- results/ ------------------------------------------------------------------------------------
BENCHMARKS = "results/benchmarks"
REPORT_CONFIG = "results/report/config.yaml"
REPORT_RUNTIME = "results/report/runtime.csv"
REPORT_RUNTIME_SUMMARY = "results/report/runtime_summary.csv"


def model_manifest(model: str = "{model}") -> str:
    """The manifest of a prepared (or trained) model folder."""
    return f"resources/models/{model}/editscale_manifest.json"


def model_gates(model: str = "{model}") -> str:
    """The gates a world model passed before any edit."""
    return f"resources/models/{model}/gates.json"


def model_gates_measured(model: str = "{model}") -> str:
    """What the gates of a world model measured (written even when a gate is missed);
    :func:`model_gates` is its copy once every gate passed."""
    return f"resources/models/{model}/gates.measured.json"


def ordering(sample: int | str = "{sample}") -> str:
    """The order in which sample ``sample`` edits the CounterFact records."""
    return f"resources/data/orderings/sample{sample}.json"


def downstream_set(task: str = "{task}") -> str:
    """The fixed evaluation examples and demonstrations of one downstream task."""
    return f"resources/data/downstream/{task}.json"


def world_file(name: str, world: str = "{world}") -> str:
    """A file of a synthetic world (``name``: e.g. ``corpus_train.jsonl``, ``glue/RTE/dev.tsv``)."""
    return f"resources/worlds/{world}/{name}"


def key_stats(
    model: str = "{model}", corpus: str = "{corpus}", layer: int | str = "{layer}"
) -> str:
    """Key statistics of one layer computed here over a corpus."""
    return f"resources/stats/{model}/{corpus}/layer{layer}.h5"


def published_key_stats(model: str = "{model}", layer: int | str = "{layer}") -> str:
    """Key statistics of one layer imported from the authors' published files."""
    return f"resources/stats_published/{model}/layer{layer}.h5"


def editor_file(model: str = "{model}", method: str = "{method}", ext: str = "safetensors") -> str:
    """The editor networks of a method (MEND): trained here (safetensors) or downloaded (pt)."""
    return f"resources/editors/{model}/{method}.{ext}"


def editor_manifest(
    model: str = "{model}", method: str = "{method}", ext: str = "safetensors"
) -> str:
    """The JSON manifest beside :func:`editor_file`."""
    return f"{editor_file(model, method, ext)}.json"


def _job(kind: str, model: str, method: str, sample: int | str) -> str:
    return f"results/{kind}/{model}/{method}/sample{sample}"


def trajectory(
    model: str = "{model}",
    method: str = "{method}",
    sample: int | str = "{sample}",
    ext: str = "h5",
) -> str:
    """A trajectory file (``h5``) or its per-edit metrics (``csv``)."""
    return f"{_job('trajectories', model, method, sample)}.{ext}"


def evaluation(
    model: str = "{model}",
    method: str = "{method}",
    sample: int | str = "{sample}",
    part: str = ".h5",
) -> str:
    """A trajectory's merged evaluation (``part`` ``.h5``) or a tidy CSV of it (``_forgetting.csv``,
    ``_downstream.csv``, ``_collapse.csv``)."""
    return f"{_job('evaluations', model, method, sample)}{part}"


EVALUATION_PARTS = ("_forgetting.csv", "_downstream.csv", "_collapse.csv")


def eval_chunk(
    model: str = "{model}",
    method: str = "{method}",
    sample: int | str = "{sample}",
    chunk: int | str = "{chunk}",
) -> str:
    """One evaluation job's checkpoints of a trajectory."""
    return f"{_job('evaluations', model, method, sample)}/chunk{chunk}.h5"


def disabling(
    model: str = "{model}",
    method: str = "{method}",
    sample: int | str = "{sample}",
    ext: str = "json",
) -> str:
    """The disabling-edit analysis of a trajectory (``json``; per-edit ``csv``)."""
    return f"{_job('disabling', model, method, sample)}.{ext}"


def figure(figures_dir: str, name: str, ext: str, model: str = "{model}") -> str:
    """A figure or table of one model (``name``: e.g. ``figure1``, ``table2``) under config
    ``figures.dir``."""
    return f"{figures_dir}/{model}/{name}.{ext}"


def sample_figure(
    figures_dir: str, name: str, ext: str, model: str = "{model}", sample: int | str = "{sample}"
) -> str:
    """A figure of one sample of one model (the report's appendix)."""
    return f"{figures_dir}/{model}/samples/{name}_sample{sample}.{ext}"


def benchmark(rule: str, job: str) -> str:
    """The benchmark file of a job of ``rule`` (``job``: its wildcards, e.g. ``{model}``): the
    runtime table reads them as ``<rule>/<model>/...``."""
    return f"{BENCHMARKS}/{rule}/{job}.tsv"
