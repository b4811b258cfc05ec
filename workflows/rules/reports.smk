# Reports for every experiment: an index page and one page per patient, linked by relative
# paths, and all_pages.html, the same pages in one file linked by #anchors. Snakemake's
# report.html shows each result as a data: URL in a frame, where relative links lead nowhere, so
# all_pages.html is what report() registers: one entry per experiment, every link working.
from biocls.config import config_hash


rule report:
    input:
        metrics="results/{exp}/metrics.json",
        predictions="results/{exp}/predictions.tsv",
        splits="results/{exp}/splits.tsv",
        model="results/{exp}/model",
    output:
        index="results/{exp}/reports/index.html",
        patients=directory("results/{exp}/reports/patients"),
        all_pages=report(
            "results/{exp}/reports/all_pages.html",
            caption="../report/index.rst",
            category="{exp}",
            labels={"page": "index and patient pages"},
        ),
    params:
        # provenance line of every page: the experiment's config fingerprint
        config_hash=lambda wc: config_hash(EXPS[wc.exp]),
    log:
        "logs/{exp}/report.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    shell:
        "biocls report --results results/{wildcards.exp} --config-hash {params.config_hash} "
        "2> {log}"
