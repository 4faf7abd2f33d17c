# ANN-to-SNN conversion: train ANNs, convert and calibrate them with every method,
# evaluate at every time step, and regenerate the tables. See README.md ("Workflow").
#   snakemake --cores all                                   # config/config.yaml, quick CPU grid
#   snakemake --cores all --configfile config/paper.yaml    # the papers' grid (GPUs)
#   snakemake --workflow-profile workflow/profiles/slurm    # on a SLURM cluster
# workflow/profiles/default (rerun-incomplete, keep-going) is found through the
# top-level profiles/ link, where Snakemake looks beside a root Snakefile.
from snakemake.utils import min_version

min_version("8.0")


# A --configfile replaces the default grid instead of being merged into it, so the
# paper grid never inherits the quick grid's CPU shortcuts.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/tables.smk"


rule all:
    default_target: True
    input:
        get_final_output(),
