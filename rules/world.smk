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


# The gates are a barrier before any edit, split in two so that a failed rerun of the gates (a
# tightened threshold, an exception) leaves the finished edit jobs alone: they wait for gates.json
# as ancient(), which checkpoint gates_passed writes only after model_gates passed. Why and how:
# rules/common.smk ("model gates") and docs/recovery.md ("A failed gate rerun").
rule model_gates:
    input:
        unpack(gate_inputs),
    output:
        gates_measured_file(),
    params:
        spec=gate_spec,
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


# The same inputs and params as model_gates: it reruns whenever they change, and its missing
# input (gates.measured.json, deleted with a failed model_gates) then reruns model_gates. A
# checkpoint, so that Snakemake decides again what the edit jobs need once the gates passed (while
# the gates are to run, it does not look at the jobs behind an ancient() input for their own
# reasons, e.g. changed params: rules/common.smk).
checkpoint gates_passed:
    input:
        unpack(gate_inputs),
        measured=gates_measured_file(),
    output:
        paths.model_gates(),
    params:
        spec=gate_spec,
    log:
        "logs/gates_passed/{model}.log",
    conda:
        "../envs/plot.yaml"
    script:
        "../workflow/scripts/gates_passed.py"
