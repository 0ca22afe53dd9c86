rule world:
    output:
        counterfact=paths.world_file("counterfact.json"),
        train=paths.world_file("corpus_train.jsonl"),
        heldout=paths.world_file("corpus_heldout.jsonl"),
        facts=paths.world_file("facts.tsv"),
        summary=paths.world_file("world.json"),
        glue=[
            paths.world_file(f"glue/{sub}/dev.tsv")
            for sub in ("SST-2", "MRPC", "RTE", "CoLA")
        ],
    params:
        spec=lambda wildcards: config["worlds"][wildcards.world],
    log:
        "logs/world/{world}.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/world.py"


rule train_world_model:
    wildcard_constraints:
        model=world_models_regex(),
    input:
        corpus=world_corpus,
    output:
        manifest=paths.model_manifest(),
    params:
        world=lambda wildcards: config["models"][wildcards.model]["world"],
        training=world_training_hparams,
    log:
        "logs/train_world_model/{model}.log",
    benchmark:
        paths.benchmark("train_world_model", "{model}")
    threads: model_resource("threads")
    resources:
        mem_mb=model_resource("mem_mb"),
        runtime=model_resource("runtime"),
        gpu=model_resource("gpu"),
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/train_world_model.py"


rule model_gates:
    input:
        model=paths.model_manifest(),
        counterfact=paths.COUNTERFACT,
        orderings=[ordering_path(s) for s in range(config["samples"])],
        task_sets=list(downstream_sets().values()),
        stats=edit_gate_stats,
    output:
        paths.model_gates(),
    params:
        thresholds=lambda wildcards: {
            k: v
            for k, v in config["models"][wildcards.model]["gates"].items()
            if k != "edit"
        },
        edit=lambda wildcards: escfg.edit_gate_spec(config, wildcards.model),
        seed=config["seed"],
        n_edits=escfg.max_n_edits(config),
        tasks=list(downstream_sets()),
        dtype=lambda wildcards: config["models"][wildcards.model]["dtype"],
    log:
        "logs/model_gates/{model}.log",
    benchmark:
        paths.benchmark("model_gates", "{model}")
    threads: model_resource("threads")
    resources:
        mem_mb=model_resource("mem_mb"),
        runtime=model_resource("runtime"),
        gpu=model_resource("gpu"),
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/model_gates.py"
