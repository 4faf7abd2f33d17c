rule train_ann:
    """Train one ANN (dataset, arch, activation, seed) from its recipe."""
    input:
        DATA_INFO,
    output:
        **ANN_FILES,
    log:
        f"{LOGS}/train_ann/{ANN_KEY}.log",
    benchmark:
        f"{WORK}/benchmarks/train_ann/{ANN_KEY}.tsv"
    conda:
        "../../environment.yml"
    threads: config["threads"]["train"]
    resources:
        **get_resources("train"),
    params:
        root=lambda wc: grid.data_root(config, wc.dataset),
        recipe=lambda wc: get_ann(wc).recipe,
        epochs=lambda wc: f"--epochs {get_ann(wc).epochs}" if get_ann(wc).epochs else "",
        device=lambda wc: get_ann(wc).device,
        act_args=lambda wc: get_ann(wc).act_args,
        # several GPUs: one process per GPU under torchrun (DDP); the recipe's batch is the global one
        launcher=lambda wc, resources: (
            f"torchrun --standalone --nproc_per_node={resources.gpu} -m ftbc" if resources.gpu > 1 else "ftbc"
        ),
        out=lambda wc, output: os.path.dirname(output.weights),
    shell:
        "OMP_NUM_THREADS={threads} {params.launcher} train --dataset {wildcards.dataset} --data-root {params.root:q} "
        "--arch {wildcards.arch} --act {wildcards.act} {params.act_args} --recipe {params.recipe} {params.epochs} "
        "--seed {wildcards.seed} --device {params.device} --out {params.out} --quiet > {log} 2>&1"
