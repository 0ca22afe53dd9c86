rule downstream_set:
    input:
        downstream_source_files,
    output:
        paths.downstream_set(),
    params:
        source=config["downstream"]["source"],
        n_per_label=config["downstream"]["n_per_label"],
        seed=config["downstream"]["seed"],
        rte_label_mapping=config["downstream"]["rte_label_mapping"],
        selection=config["downstream"]["selection"],
        demo_source=config["downstream"]["demo_source"],
    log:
        "logs/downstream_set/{task}.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/downstream_set.py"


rule collapse_probe:
    input:
        counterfact=paths.COUNTERFACT,
        corpus=perplexity_corpus_files,
    output:
        COLLAPSE_PROBE,
    params:
        corpus_name=perplexity_corpus_name(),
        corpus=perplexity_corpus_spec(),
        perplexity={
            k: config["evaluation"]["perplexity"][k]
            for k in ("n_docs", "pool_docs", "seed")
        },
        generation={
            k: config["evaluation"]["generation"][k] for k in ("prompts", "n_prompts")
        },
    log:
        "logs/collapse_probe.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/collapse_probe.py"


rule eval_chunk:
    input:
        unpack(trajectory_inputs),
        trajectory=trajectory_file,
        task_sets=list(downstream_sets().values()),
        collapse_probe=COLLAPSE_PROBE,
    output:
        paths.eval_chunk(),
    params:
        checkpoints=lambda wildcards: eval_plan_chunks(
            wildcards.model, wildcards.method
        )[int(wildcards.chunk)],
        tasks=list(downstream_sets()),
        forgetting_paraphrases=config["evaluation"]["forgetting_paraphrases"],
        max_new_tokens=config["downstream"]["max_new_tokens"],
        perplexity_max_tokens=config["evaluation"]["perplexity"]["max_tokens"],
        generation_max_new_tokens=config["evaluation"]["generation"]["max_new_tokens"],
        dtype=lambda wildcards: config["models"][wildcards.model]["dtype"],
    log:
        "logs/eval_chunk/{model}/{method}/sample{sample}/chunk{chunk}.log",
    benchmark:
        paths.benchmark("eval_chunk", "{model}/{method}/sample{sample}/chunk{chunk}")
    threads: model_resource("threads")
    resources:
        mem_mb=model_resource("mem_mb"),
        runtime=model_resource("runtime"),
        gpu=model_resource("gpu"),
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/eval_chunk.py"


rule eval_merge:
    input:
        chunks=eval_chunk_files,
        trajectory=trajectory_file,
    output:
        h5=paths.evaluation(),
        forgetting=paths.evaluation(part="_forgetting.csv"),
        downstream=paths.evaluation(part="_downstream.csv"),
        collapse=paths.evaluation(part="_collapse.csv"),
    params:
        forgetting_every=config["evaluation"]["forgetting_every"],
        downstream_every=config["evaluation"]["downstream_every"],
        test=config["evaluation"]["forgetting_test"],
    log:
        "logs/eval_merge/{model}/{method}/sample{sample}.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/eval_merge.py"


rule disabling:
    input:
        unpack(trajectory_inputs),
        trajectory=trajectory_file,
    output:
        json=paths.disabling(),
        csv=paths.disabling(ext="csv"),
    params:
        rule={
            k: config["disabling"][k]
            for k in (
                "norm_multiple",
                "window",
                "min_history",
                "refractory",
                "min_normal",
            )
        },
        prompts=config["disabling"]["prompts"],
        seed=config["disabling"]["seed"],
        n_tokens=config["disabling"]["generation_tokens"],
        dtype=lambda wildcards: config["models"][wildcards.model]["dtype"],
    log:
        "logs/disabling/{model}/{method}/sample{sample}.log",
    benchmark:
        paths.benchmark("disabling", "{model}/{method}/sample{sample}")
    threads: model_resource("threads")
    resources:
        mem_mb=model_resource("mem_mb"),
        runtime=model_resource("runtime"),
        gpu=model_resource("gpu"),
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/disabling.py"
