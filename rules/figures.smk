"""Figures and tables of the paper from the tidy results (editscale.reporting.plots, editscale.reporting.tables), and
the report's extra items: the run's configuration and the runtime of the heavy jobs. The input
functions are in common.smk (figures and report)."""


rule figure1:
    input:
        unpack(figure_inputs),
    output:
        pdf=f"{FIGURES}/{{model}}/figure1.pdf",
        png=report(
            f"{FIGURES}/{{model}}/figure1.png",
            caption="../workflow/report/figure1.rst",
            category="Figures",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "Figure 1"},
        ),
        json=f"{FIGURES}/{{model}}/figure1.json",
    params:
        kind="figure1",
        sample=None,
        layout=figure_layout,
        settings=figure_settings(),
    log:
        f"logs/{FIGURES}/{{model}}/figure1.log",
    conda:
        "../envs/plot.yaml"
    script:
        "../workflow/scripts/figure.py"


rule figure1_sample:
    input:
        unpack(figure_inputs),
    output:
        pdf=f"{FIGURES}/{{model}}/samples/figure1_sample{{sample}}.pdf",
        png=report(
            f"{FIGURES}/{{model}}/samples/figure1_sample{{sample}}.png",
            caption="../workflow/report/figure1_sample.rst",
            category="Appendix: per-sample figures",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "Figure 1", "sample": "{sample}"},
        ),
        json=f"{FIGURES}/{{model}}/samples/figure1_sample{{sample}}.json",
    params:
        kind="figure1",
        sample=lambda wildcards: int(wildcards.sample),
        layout=figure_layout,
        settings=figure_settings(),
    log:
        f"logs/{FIGURES}/{{model}}/figure1_sample{{sample}}.log",
    conda:
        "../envs/plot.yaml"
    script:
        "../workflow/scripts/figure.py"


rule figure2:
    input:
        unpack(figure2_inputs),
    output:
        pdf=f"{FIGURES}/{{model}}/figure2.pdf",
        png=report(
            f"{FIGURES}/{{model}}/figure2.png",
            caption="../workflow/report/figure2.rst",
            category="Figures",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "Figure 2"},
        ),
        json=f"{FIGURES}/{{model}}/figure2.json",
    params:
        kind="figure2",
        sample=None,
        layout=figure_layout,
        settings=figure_settings(),
    log:
        f"logs/{FIGURES}/{{model}}/figure2.log",
    conda:
        "../envs/plot.yaml"
    script:
        "../workflow/scripts/figure.py"


rule figure2_sample:
    input:
        unpack(figure2_inputs),
    output:
        pdf=f"{FIGURES}/{{model}}/samples/figure2_sample{{sample}}.pdf",
        png=report(
            f"{FIGURES}/{{model}}/samples/figure2_sample{{sample}}.png",
            caption="../workflow/report/figure2_sample.rst",
            category="Appendix: per-sample figures",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "Figure 2", "sample": "{sample}"},
        ),
        json=f"{FIGURES}/{{model}}/samples/figure2_sample{{sample}}.json",
    params:
        kind="figure2",
        sample=lambda wildcards: int(wildcards.sample),
        layout=figure_layout,
        settings=figure_settings(),
    log:
        f"logs/{FIGURES}/{{model}}/figure2_sample{{sample}}.log",
    conda:
        "../envs/plot.yaml"
    script:
        "../workflow/scripts/figure.py"


rule figure_collapse:
    input:
        unpack(collapse_figure_inputs),
    output:
        pdf=f"{FIGURES}/{{model}}/collapse.pdf",
        png=report(
            f"{FIGURES}/{{model}}/collapse.png",
            caption="../workflow/report/collapse.rst",
            category="Figures",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "Collapse measures"},
        ),
        json=f"{FIGURES}/{{model}}/collapse.json",
    params:
        kind="collapse",
        sample=None,
        layout=figure_layout,
        settings=figure_settings(),
    log:
        f"logs/{FIGURES}/{{model}}/collapse.log",
    conda:
        "../envs/plot.yaml"
    script:
        "../workflow/scripts/figure.py"


rule table2:
    input:
        unpack(table2_inputs),
    output:
        md=f"{FIGURES}/{{model}}/table2.md",
        csv=report(
            f"{FIGURES}/{{model}}/table2.csv",
            caption="../workflow/report/table2.rst",
            category="Tables",
            subcategory="{model}",
            labels={"model": "{model}", "table": "Table 2: distance"},
        ),
        tex=f"{FIGURES}/{{model}}/table2.tex",
        generations=report(
            f"{FIGURES}/{{model}}/table2_generations.csv",
            caption="../workflow/report/table8.rst",
            category="Tables",
            subcategory="{model}",
            labels={"model": "{model}", "table": "Table 8 analogue: generations"},
        ),
        json=f"{FIGURES}/{{model}}/table2.json",
    params:
        layout=figure_layout,
    log:
        f"logs/{FIGURES}/{{model}}/table2.log",
    conda:
        "../envs/plot.yaml"
    script:
        "../workflow/scripts/table2.py"


rule summary_table:
    input:
        unpack(summary_inputs),
    output:
        md=f"{FIGURES}/{{model}}/summary.md",
        csv=report(
            f"{FIGURES}/{{model}}/summary.csv",
            caption="../workflow/report/summary.rst",
            category="Tables",
            subcategory="{model}",
            labels={"model": "{model}", "table": "Lifelong-editing summary"},
        ),
        tex=f"{FIGURES}/{{model}}/summary.tex",
        json=f"{FIGURES}/{{model}}/summary.json",
    params:
        layout=figure_layout,
        last=config["figures"]["summary_last"],
        forgetting_test=config["evaluation"]["forgetting_test"],
    log:
        f"logs/{FIGURES}/{{model}}/summary.log",
    conda:
        "../envs/plot.yaml"
    script:
        "../workflow/scripts/summary_table.py"


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
