# RATT error certificates for cell experiments with a `certify:` block (biocls certify).
# With the block, train_cells_final trains the shipped model the RATT way (some fit cells with
# random labels, fold certify.fold held out); this rule certifies that model folder.
# evaluate_cells takes the certificate as an optional input (see certificate_input in common.smk)
# and merges it into metrics.json["certificate"]; the report shows it on the index page.


rule certify_cells:
    input:
        data=cells_input,
        model="results/{exp}/model",
    output:
        "results/{exp}/certificate.json",
    params:
        spec=step_spec("certify"),
    log:
        "logs/{exp}/certify.log",
    wildcard_constraints:
        exp=_alt(CERTIFIED),
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
    shell:
        "biocls certify --spec {params.spec:q} --model {input.model} --out {output} "
        "--threads {threads} 2> {log}"
