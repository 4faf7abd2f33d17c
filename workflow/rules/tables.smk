rule tables:
    """The long table, paper-style tables (Markdown, LaTeX) and figures, from every evaluation."""
    input:
        runs=get_evaluation_results,
        published=config["published"],
    output:
        accuracy=report(
            f"{RESULTS}/{TABLE_FILES['accuracy']}",
            category="Tables",
            caption="../report/accuracy.rst",
        ),
        spikes=report(
            f"{RESULTS}/{TABLE_FILES['spikes']}",
            category="Tables",
            caption="../report/spikes.rst",
        ),
        summary=f"{RESULTS}/{TABLE_FILES['summary']}",
        iteration_log=f"{RESULTS}/{TABLE_FILES['iteration_log']}",
        markdown=[f"{RESULTS}/{d}.md" for d in grid.datasets(config)],
        latex=[f"{RESULTS}/{d}.tex" for d in grid.datasets(config)],
        html=report(
            [f"{RESULTS}/{d}.html" for d in grid.datasets(config)],
            category="Tables",
            caption="../report/paper_table.rst",
        ),
        gaps=[f"{RESULTS}/{d}_gaps.md" for d in grid.datasets(config)],
        figures=report(
            [f"{RESULTS}/figures/{figure_name(d, a)}" for d, a in grid.figure_keys(config)],
            category="Accuracy against T",
            caption="../report/accuracy_vs_T.rst",
        ),
        iterations=report(
            f"{RESULTS}/figures/{ITERATIONS_FIGURE}",
            category="FTBC calibration",
            caption="../report/iterations.rst",
        ),
    log:
        f"{LOGS}/tables.log",
    conda:
        "../../environment.yml"
    params:
        T=",".join(str(t) for t in sorted(config["T"])),
        out=lambda wc, output: os.path.dirname(output.accuracy),
    shell:
        "ftbc tables {input.runs} --published {input.published} --T {params.T} --out {params.out} > {log} 2>&1"
