rule world:
    output:
        counterfact="resources/worlds/{world}/counterfact.json",
        train="resources/worlds/{world}/corpus_train.jsonl",
        heldout="resources/worlds/{world}/corpus_heldout.jsonl",
        facts="resources/worlds/{world}/facts.tsv",
        summary="resources/worlds/{world}/world.json",
        glue=expand(
            "resources/worlds/{{world}}/glue/{sub}/dev.tsv",
            sub=["SST-2", "MRPC", "RTE", "CoLA"],
        ),
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
        manifest="resources/models/{model}/editscale_manifest.json",
    params:
        world=lambda wildcards: config["models"][wildcards.model]["world"],
        training=world_training_hparams,
    log:
        "logs/train_world_model/{model}.log",
    benchmark:
        "results/benchmarks/train_world_model/{model}.tsv"
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
        model="resources/models/{model}/editscale_manifest.json",
        counterfact="resources/data/counterfact.json",
        orderings=[ordering_path(s) for s in range(config["samples"])],
        task_sets=list(downstream_sets().values()),
        stats=edit_gate_stats,
    output:
        "resources/models/{model}/gates.json",
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
        "results/benchmarks/model_gates/{model}.tsv"
    threads: model_resource("threads")
    resources:
        mem_mb=model_resource("mem_mb"),
        runtime=model_resource("runtime"),
        gpu=model_resource("gpu"),
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/model_gates.py"
