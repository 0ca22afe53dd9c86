rule prepare_model:
    wildcard_constraints:
        model=other_models_regex(),
    input:
        model_inputs,
    output:
        manifest=paths.model_manifest(),
    params:
        spec=model_build_spec,
        tokenizer_corpus=tokenizer_corpus,
    log:
        "logs/prepare_model/{model}.log",
    benchmark:
        paths.benchmark("prepare_model", "{model}")
    threads: model_resource("threads")
    resources:
        mem_mb=model_resource("mem_mb"),
        runtime=model_resource("runtime"),
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/prepare_model.py"


rule counterfact:
    input:
        counterfact_input,
    output:
        paths.COUNTERFACT,
    params:
        url=config["counterfact"].get("url"),
        sha256=config["counterfact"].get("sha256"),
    log:
        "logs/counterfact.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/counterfact.py"


rule ordering:
    input:
        paths.COUNTERFACT,
        reserved=editor_split_inputs,
    output:
        paths.ordering(),
    params:
        seed=config["ordering_seed"],
        unique_subjects=config["counterfact"]["unique_subjects"],
        # checked against the records left (the ordering itself does not depend on it)
        n_edits=escfg.max_n_edits(config),
    log:
        "logs/ordering/sample{sample}.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/ordering.py"
