rule key_stats:
    input:
        model=paths.model_manifest(),
        corpus=lambda wildcards: corpus_files(wildcards.corpus),
        # the convergence probes are CounterFact subjects
        counterfact=(
            [paths.COUNTERFACT] if config["stats"]["convergence"]["tolerance"] else []
        ),
    output:
        paths.key_stats(),
    params:
        corpus=lambda wildcards: config["corpora"][wildcards.corpus],
        n_docs=config["stats"]["n_docs"],
        sample=config["stats"]["sample"],
        sample_seed=config["stats"]["sample_seed"],
        max_doc_tokens=config["stats"]["max_doc_tokens"],
        batch_tokens=config["stats"]["batch_tokens"],
        convergence=config["stats"]["convergence"],
        dtype=lambda wildcards: config["models"][wildcards.model]["dtype"],
    log:
        "logs/key_stats/{model}/{corpus}/layer{layer}.log",
    benchmark:
        paths.benchmark("key_stats", "{model}/{corpus}/layer{layer}")
    priority: GATE_PRIORITY
    threads: model_resource("threads")
    resources:
        mem_mb=model_resource("mem_mb"),
        runtime=model_resource("runtime"),
        gpu=model_resource("gpu"),
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/key_stats.py"


rule import_stats:
    input:
        model=paths.model_manifest(),
    output:
        paths.published_key_stats(),
    params:
        entry=lambda wildcards: escfg.published_stats(
            config, wildcards.model, int(wildcards.layer)
        ),
        hub_name=lambda wildcards: config["models"][wildcards.model].get("repo_id"),
    log:
        "logs/import_stats/{model}/layer{layer}.log",
    benchmark:
        paths.benchmark("import_stats", "{model}/layer{layer}")
    threads: 1
    # a local rule (a download): the model is not loaded, only the .npz (GPT-J's: 1 GiB) converted
    resources:
        mem_mb=6000,
        runtime=120,
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/import_stats.py"
