# biocls workflow: see README.md. Rules are thin calls to the `biocls` CLI.
from snakemake.utils import min_version

from biocls._console import report_failures, show_step_errors

min_version("9.0")

# A failed step's one-line error (`biocls <verb>: error: ...`, in its log under logs/) goes on
# the console: as the `message:` of Snakemake's error block, and again after its own messages
# (onerror). Both read the logs that Snakemake names, so they work under SLURM too.
show_step_errors()


# The demo config applies only when the user gives none, so `--configfile my.yaml` runs exactly
# the experiments in my.yaml rather than merging them with the demo's.
if not config.get("experiments"):

    configfile: f"{workflow.basedir}/configs/default.yaml"


report: "workflows/report/workflow.rst"


include: "workflows/rules/common.smk"
include: "workflows/rules/cells.smk"
include: "workflows/rules/certify.smk"
include: "workflows/rules/repertoires.smk"
include: "workflows/rules/images.smk"
include: "workflows/rules/reports.smk"


onerror:
    report_failures()


rule all:
    input:
        all_outputs(),
    default_target: True
