# Editor networks for editors that need them (MEND): a split of records reserved for training,
# a training job per (model, method), or the download of public pretrained weights.


rule editor_split:
    input:
        paths.COUNTERFACT,
    output:
        EDITOR_SPLIT,
    params:
        n_train=config["editor_training"]["n_train"],
        n_val=config["editor_training"]["n_val"],
        seed=config["editor_training"]["seed"],
        unique_subjects=config["counterfact"]["unique_subjects"],
    log:
        "logs/editor_split.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/editor_split.py"


rule train_mend:
    input:
        model=paths.model_manifest(),
        counterfact=paths.COUNTERFACT,
        split=EDITOR_SPLIT,
        corpus=editor_training_corpus_files,
    output:
        editor=paths.editor_file(),
        manifest=paths.editor_manifest(),
    params:
        hparams=method_hparams,
        training=lambda wildcards: config["methods"][wildcards.method]["training"],
        corpus=lambda wildcards: config["corpora"][escfg.editor_training_corpus(config)],
        dtype=lambda wildcards: config["models"][wildcards.model]["dtype"],
    log:
        "logs/train_mend/{model}/{method}.log",
    benchmark:
        paths.benchmark("train_mend", "{model}/{method}")
    priority: GATE_PRIORITY
    threads: model_resource("threads")
    resources:
        mem_mb=model_resource("mem_mb"),
        runtime=model_resource("runtime"),
        gpu=model_resource("gpu"),
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/train_mend.py"


rule download_editor:
    output:
        editor=paths.editor_file(ext="pt"),
        manifest=paths.editor_manifest(ext="pt"),
    params:
        weights=lambda wildcards: config["methods"][wildcards.method][
            "editor_weights"
        ][wildcards.model],
    log:
        "logs/download_editor/{model}/{method}.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/download_editor.py"
