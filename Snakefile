"""Sequential model editing at scale (Gupta, Rao, Anumanchipalli 2024): the workflow.

    snakemake --cores all                                # default config: a small offline run
    snakemake --cores all --configfile config/paper.yaml # the paper's setting

Without --configfile, config/config.yaml (next to this file) is used; a config file given on the
command line replaces it entirely (no merge). Keys are explained in config/README.md.
"""

from snakemake.utils import min_version

min_version("9.0")


if not workflow.overwrite_configfiles:

    configfile: f"{workflow.basedir}/config/config.yaml"


include: "rules/common.smk"
include: "rules/prepare.smk"
include: "rules/stats.smk"
include: "rules/trajectory.smk"
include: "rules/evaluation.smk"


# Light jobs run on the submitting host under a cluster executor.
localrules:
    all,
    counterfact,
    ordering,
    metrics_csv,
    eval_merge,
    downstream_set,


rule all:
    input:
        all_metrics_csv(),
        all_evaluations(),
    default_target: True
