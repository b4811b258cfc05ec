# Reports for every experiment: one index page and one page per patient, registered with
# Snakemake's report() so `snakemake --report report.html` shows them by experiment and patient.


rule report:
    input:
        metrics="results/{exp}/metrics.json",
        predictions="results/{exp}/predictions.tsv",
        splits="results/{exp}/splits.tsv",
    output:
        index=report(
            "results/{exp}/reports/index.html",
            caption="../report/index.rst",
            category="{exp}",
            subcategory="overview",
            labels={"page": "index"},
        ),
        patients=report(
            directory("results/{exp}/reports/patients"),
            patterns=["{patient}.html"],
            caption="../report/patient.rst",
            category="{exp}",
            subcategory="patients",
            labels={"patient": "{patient}"},
        ),
    log:
        "logs/{exp}/report.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    shell:
        "biocls report --results results/{wildcards.exp} 2> {log}"
