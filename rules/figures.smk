"""Figures and tables of the paper from the tidy results (editscale.plots, editscale.tables), and
the report's extra items: the run's configuration and the runtime of the heavy jobs. The input
functions are in common.smk (figures and report)."""


rule figure1:
    input:
        unpack(figure_inputs),
    output:
        pdf="figures/{model}/figure1.pdf",
        png=report(
            "figures/{model}/figure1.png",
            caption="../workflow/report/figure1.rst",
            category="Figures",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "Figure 1"},
        ),
        json="figures/{model}/figure1.json",
    params:
        kind="figure1",
        sample=None,
        layout=figure_layout,
        settings=figure_settings(),
    log:
        "logs/figures/{model}/figure1.log",
    conda:
        "../envs/plot.yaml"
    script:
        "../workflow/scripts/figure.py"


rule figure1_sample:
    input:
        unpack(figure_inputs),
    output:
        pdf="figures/{model}/samples/figure1_sample{sample}.pdf",
        png=report(
            "figures/{model}/samples/figure1_sample{sample}.png",
            caption="../workflow/report/figure1_sample.rst",
            category="Appendix: per-sample figures",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "Figure 1", "sample": "{sample}"},
        ),
        json="figures/{model}/samples/figure1_sample{sample}.json",
    params:
        kind="figure1",
        sample=lambda wildcards: int(wildcards.sample),
        layout=figure_layout,
        settings=figure_settings(),
    log:
        "logs/figures/{model}/figure1_sample{sample}.log",
    conda:
        "../envs/plot.yaml"
    script:
        "../workflow/scripts/figure.py"


rule figure2:
    input:
        unpack(figure2_inputs),
    output:
        pdf="figures/{model}/figure2.pdf",
        png=report(
            "figures/{model}/figure2.png",
            caption="../workflow/report/figure2.rst",
            category="Figures",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "Figure 2"},
        ),
        json="figures/{model}/figure2.json",
    params:
        kind="figure2",
        sample=None,
        layout=figure_layout,
        settings=figure_settings(),
    log:
        "logs/figures/{model}/figure2.log",
    conda:
        "../envs/plot.yaml"
    script:
        "../workflow/scripts/figure.py"


rule figure2_sample:
    input:
        unpack(figure2_inputs),
    output:
        pdf="figures/{model}/samples/figure2_sample{sample}.pdf",
        png=report(
            "figures/{model}/samples/figure2_sample{sample}.png",
            caption="../workflow/report/figure2_sample.rst",
            category="Appendix: per-sample figures",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "Figure 2", "sample": "{sample}"},
        ),
        json="figures/{model}/samples/figure2_sample{sample}.json",
    params:
        kind="figure2",
        sample=lambda wildcards: int(wildcards.sample),
        layout=figure_layout,
        settings=figure_settings(),
    log:
        "logs/figures/{model}/figure2_sample{sample}.log",
    conda:
        "../envs/plot.yaml"
    script:
        "../workflow/scripts/figure.py"


rule figure_collapse:
    input:
        unpack(collapse_figure_inputs),
    output:
        pdf="figures/{model}/collapse.pdf",
        png=report(
            "figures/{model}/collapse.png",
            caption="../workflow/report/collapse.rst",
            category="Figures",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "Collapse measures"},
        ),
        json="figures/{model}/collapse.json",
    params:
        kind="collapse",
        sample=None,
        layout=figure_layout,
        settings=figure_settings(),
    log:
        "logs/figures/{model}/collapse.log",
    conda:
        "../envs/plot.yaml"
    script:
        "../workflow/scripts/figure.py"


rule table2:
    input:
        unpack(table2_inputs),
    output:
        md="figures/{model}/table2.md",
        csv=report(
            "figures/{model}/table2.csv",
            caption="../workflow/report/table2.rst",
            category="Tables",
            subcategory="{model}",
            labels={"model": "{model}", "table": "Table 2: distance"},
        ),
        tex="figures/{model}/table2.tex",
        generations=report(
            "figures/{model}/table2_generations.csv",
            caption="../workflow/report/table8.rst",
            category="Tables",
            subcategory="{model}",
            labels={"model": "{model}", "table": "Table 8 analogue: generations"},
        ),
        json="figures/{model}/table2.json",
    params:
        layout=figure_layout,
    log:
        "logs/figures/{model}/table2.log",
    conda:
        "../envs/plot.yaml"
    script:
        "../workflow/scripts/table2.py"


rule run_config:
    output:
        report(
            "results/report/config.yaml",
            caption="../workflow/report/config.rst",
            category="Configuration",
        ),
    params:
        config_hash=config_hash(config),
        configfiles=[str(path) for path in workflow.configfiles],
    log:
        "logs/report/run_config.log",
    conda:
        "../envs/plot.yaml"
    script:
        "../workflow/scripts/run_config.py"


rule runtime_table:
    input:
        all_metrics_csv(),
        all_evaluations(),
    output:
        jobs=report(
            "results/report/runtime.csv",
            caption="../workflow/report/runtime.rst",
            category="Runtime",
            labels={"table": "per job"},
        ),
        summary=report(
            "results/report/runtime_summary.csv",
            caption="../workflow/report/runtime.rst",
            category="Runtime",
            labels={"table": "per rule"},
        ),
    params:
        root="results/benchmarks",
        models=figure_models(),
    log:
        "logs/report/runtime_table.log",
    conda:
        "../envs/plot.yaml"
    script:
        "../workflow/scripts/runtime_table.py"
