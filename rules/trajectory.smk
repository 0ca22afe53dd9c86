rule trajectory:
    input:
        unpack(trajectory_inputs),
    output:
        paths.trajectory(),
    params:
        editor=lambda wildcards: config["methods"][wildcards.method]["editor"],
        hparams=method_hparams,
        n_edits=lambda wildcards: escfg.experiment_n_edits(
            config, wildcards.model, wildcards.method
        ),
        snapshot_every=config["snapshot_every"],
        store_updates=lambda wildcards: config["methods"][wildcards.method][
            "store_updates"
        ],
        edits_per_step=lambda wildcards: config["methods"][wildcards.method][
            "edits_per_step"
        ],
        seed=config["seed"],
        dtype=lambda wildcards: config["models"][wildcards.model]["dtype"],
    log:
        "logs/trajectory/{model}/{method}/sample{sample}.log",
    benchmark:
        paths.benchmark("trajectory", "{model}/{method}/sample{sample}")
    priority: TRAJECTORY_PRIORITY
    threads: model_resource("threads")
    resources:
        mem_mb=model_resource("mem_mb"),
        runtime=model_resource("runtime"),
        gpu=model_resource("gpu"),
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/trajectory.py"


rule metrics_csv:
    input:
        paths.trajectory(),
    output:
        paths.trajectory(ext="csv"),
    log:
        "logs/metrics_csv/{model}/{method}/sample{sample}.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow/scripts/metrics_csv.py"
