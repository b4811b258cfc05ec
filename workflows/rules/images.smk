# Cell-image experiments (task: images): only the simulator is theirs; splitting, training and
# evaluating use the cells rules (workflows/rules/cells.smk), which call the same CLI verbs.


rule simulate_images:
    output:
        manifest="resources/{exp}/images/manifest.tsv",
    params:
        sim=simulate_params,
        out="resources/{exp}/images",
    log:
        "logs/{exp}/simulate_images.log",
    wildcard_constraints:
        exp=_alt(IMAGES),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "biocls simulate images --params {params.sim:q} --out {params.out} 2> {log}"


rule pretrain_images:
    input:
        data=cells_input,
    output:
        directory("results/{exp}/pretrained"),
    params:
        spec=step_spec("pretrain"),
    log:
        "logs/{exp}/pretrain.log",
    wildcard_constraints:
        exp=_alt(IMAGES),
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
    shell:
        "biocls pretrain --spec {params.spec:q} --out {output} --threads {threads} 2> {log}"
