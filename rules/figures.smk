"""Figures and tables of the paper from the tidy results (editscale.reporting.plots, editscale.reporting.tables), and
the report's extra items: the run's configuration and the runtime of the heavy jobs. The input
functions are in common.smk (figures and report)."""


rule figure1:
    input:
        unpack(figure_inputs),
    output:
        pdf=paths.figure(FIGURES, "figure1", "pdf"),
        png=report(
            paths.figure(FIGURES, "figure1", "png"),
            caption="../workflow/report/figure1.rst",
            category="Figures",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "Figure 1"},
        ),
        json=paths.figure(FIGURES, "figure1", "json"),
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
        pdf=paths.sample_figure(FIGURES, "figure1", "pdf"),
        png=report(
            paths.sample_figure(FIGURES, "figure1", "png"),
            caption="../workflow/report/figure1_sample.rst",
            category="Appendix: per-sample figures",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "Figure 1", "sample": "{sample}"},
        ),
        json=paths.sample_figure(FIGURES, "figure1", "json"),
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
        pdf=paths.figure(FIGURES, "figure2", "pdf"),
        png=report(
            paths.figure(FIGURES, "figure2", "png"),
            caption="../workflow/report/figure2.rst",
            category="Figures",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "Figure 2"},
        ),
        json=paths.figure(FIGURES, "figure2", "json"),
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
        pdf=paths.sample_figure(FIGURES, "figure2", "pdf"),
        png=report(
            paths.sample_figure(FIGURES, "figure2", "png"),
            caption="../workflow/report/figure2_sample.rst",
            category="Appendix: per-sample figures",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "Figure 2", "sample": "{sample}"},
        ),
        json=paths.sample_figure(FIGURES, "figure2", "json"),
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
        pdf=paths.figure(FIGURES, "collapse", "pdf"),
        png=report(
            paths.figure(FIGURES, "collapse", "png"),
            caption="../workflow/report/collapse.rst",
            category="Figures",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "Collapse measures"},
        ),
        json=paths.figure(FIGURES, "collapse", "json"),
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
        md=paths.figure(FIGURES, "table2", "md"),
        csv=report(
            paths.figure(FIGURES, "table2", "csv"),
            caption="../workflow/report/table2.rst",
            category="Tables",
            subcategory="{model}",
            labels={"model": "{model}", "table": "Table 2: distance"},
        ),
        tex=paths.figure(FIGURES, "table2", "tex"),
        generations=report(
            paths.figure(FIGURES, "table2_generations", "csv"),
            caption="../workflow/report/table8.rst",
            category="Tables",
            subcategory="{model}",
            labels={"model": "{model}", "table": "Table 8 analogue: generations"},
        ),
        json=paths.figure(FIGURES, "table2", "json"),
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
        md=paths.figure(FIGURES, "summary", "md"),
        csv=report(
            paths.figure(FIGURES, "summary", "csv"),
            caption="../workflow/report/summary.rst",
            category="Tables",
            subcategory="{model}",
            labels={"model": "{model}", "table": "Lifelong-editing summary"},
        ),
        tex=paths.figure(FIGURES, "summary", "tex"),
        json=paths.figure(FIGURES, "summary", "json"),
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
            paths.REPORT_CONFIG,
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
            paths.REPORT_RUNTIME,
            caption="../workflow/report/runtime.rst",
            category="Runtime",
            labels={"table": "per job"},
        ),
        summary=report(
            paths.REPORT_RUNTIME_SUMMARY,
            caption="../workflow/report/runtime.rst",
            category="Runtime",
            labels={"table": "per rule"},
        ),
    params:
        root=paths.BENCHMARKS,
        models=figure_models(),
    log:
        "logs/report/runtime_table.log",
    conda:
        "../envs/plot.yaml"
    script:
        "../workflow/scripts/runtime_table.py"
