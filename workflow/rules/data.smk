rule prepare_data:
    """Check a dataset once (extracting an archive), and cache CIFAR's decoded images."""
    output:
        DATA_INFO,
    log:
        f"{LOGS}/prepare_data/{{dataset}}.log",
    conda:
        "../../environment.yml"
    params:
        root=lambda wc: grid.raw_data_root(config, wc.dataset),
        extract=lambda wc: f"--extract-to {grid.DATA_DIR.format(work=WORK, dataset=wc.dataset)}",
        download="--download" if config["download"] else "",
        subset=grid.subset_args(config),
    shell:
        "ftbc prepare-data --dataset {wildcards.dataset} --data-root {params.root:q} {params.extract} "
        "{params.download} {params.subset} --out {output} > {log} 2>&1"
