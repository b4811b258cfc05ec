# biocls workflow: see README.md. Rules are thin calls to the `biocls` CLI.
from snakemake.utils import min_version

min_version("9.0")


# The demo config applies only when the user gives none, so `--configfile my.yaml` runs exactly
# the experiments in my.yaml rather than merging them with the demo's.
if not config.get("experiments"):

    configfile: f"{workflow.basedir}/configs/default.yaml"


report: "workflows/report/workflow.rst"


include: "workflows/rules/common.smk"
include: "workflows/rules/cells.smk"
include: "workflows/rules/certify.smk"
include: "workflows/rules/repertoires.smk"
include: "workflows/rules/reports.smk"


rule all:
    input:
        all_outputs(),
    default_target: True
