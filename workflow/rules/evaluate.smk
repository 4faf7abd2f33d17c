rule evaluate_snn:
    """Convert one ANN with one method, calibrate, and measure the accuracy at every step.

    steps is '1-T' for a method whose constants do not depend on T (one run, every t
    reported) and 'T' for one that does (one job per T), as the method registry says.
    """
    input:
        data=DATA_INFO,
        checkpoint=get_checkpoint,
    output:
        **EVAL_FILES,
    log:
        f"{LOGS}/evaluate_snn/{EVAL_KEY}.log",
    benchmark:
        f"{WORK}/benchmarks/evaluate_snn/{EVAL_KEY}.tsv"
    conda:
        "../../environment.yml"
    threads: config["threads"]["evaluate"]
    resources:
        **get_resources("evaluate"),
    params:
        root=lambda wc: grid.data_root(config, wc.dataset),
        method_args=get_method_args,
        n_test=config["evaluation"]["n_test"],
        test_seed=config["evaluation"]["test_seed"],
        transform=config["evaluation"]["calibration_transform"],
        batch_size=config["evaluation"]["batch_size"],
        device=lambda wc: get_evaluation(wc).ann.device,
        out=lambda wc, output: os.path.dirname(output.result),
        plugins=get_plugins_env(),
    shell:
        "{params.plugins}OMP_NUM_THREADS={threads} ftbc evaluate --checkpoint {input.checkpoint} --method {wildcards.method} "
        "--T {wildcards.steps} --data-root {params.root:q} --seed {wildcards.cseed} {params.method_args} "
        "--n-test {params.n_test} --test-seed {params.test_seed} --calibration-transform {params.transform} "
        "--batch-size {params.batch_size} --device {params.device} "
        "--out {params.out} --quiet > {log} 2>&1"
