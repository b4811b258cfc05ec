# Single-cell and cell-image experiments (task: cells, task: images): the same verbs, so the
# same rules. Each fold trains in its own job.


wildcard_constraints:
    fold=r"\d+",


rule simulate_cells:
    output:
        "resources/{exp}/cells.h5ad",
    params:
        sim=simulate_params,
    log:
        "logs/{exp}/simulate_cells.log",
    wildcard_constraints:
        exp=_alt(CELLS),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "biocls simulate cells --params {params.sim:q} --out {output} 2> {log}"


rule example_data:
    output:
        "resources/examples/{name}.h5ad",
    log:
        "logs/examples/{name}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "biocls example {wildcards.name} --out {output} 2> {log}"


rule split_cells:
    input:
        data=cells_input,
    output:
        "results/{exp}/splits.tsv",
    params:
        spec=step_spec("split"),
    log:
        "logs/{exp}/split.log",
    wildcard_constraints:
        exp=_alt(CELLS + IMAGES),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    shell:
        "biocls split --spec {params.spec:q} --out {output} 2> {log}"


rule train_cells:
    input:
        unpack(pretrained_input),
        data=cells_input,
        splits="results/{exp}/splits.tsv",
    output:
        "results/{exp}/folds/{fold}/predictions.tsv",
    params:
        store=store_arg,
        spec=step_spec("train"),
        out="results/{exp}/folds/{fold}",
        ckpt="results/{exp}/checkpoints/{fold}",
    log:
        "logs/{exp}/train_{fold}.log",
    wildcard_constraints:
        exp=_alt(CELLS + IMAGES),
    threads: 1
    resources:
        mem_mb=8000,
        runtime=120,
    shell:
        "biocls train --spec {params.spec:q} --splits {input.splits} --fold {wildcards.fold} "
        "--out {params.out} --checkpoints {params.ckpt} {params.store} --threads {threads} 2> {log}"


rule train_cells_final:
    input:
        unpack(pretrained_input),
        data=cells_input,
        splits="results/{exp}/splits.tsv",
    output:
        directory("results/{exp}/model"),
    params:
        store=store_arg,
        spec=step_spec("final"),
        ckpt="results/{exp}/checkpoints/final",
    log:
        "logs/{exp}/train_final.log",
    wildcard_constraints:
        exp=_alt(CELLS + IMAGES),
    threads: 1
    resources:
        mem_mb=8000,
        runtime=120,
    shell:
        "biocls train --spec {params.spec:q} --splits {input.splits} --fold final "
        "--out {output} --checkpoints {params.ckpt} {params.store} --threads {threads} 2> {log}"


rule evaluate_cells:
    input:
        unpack(lambda wc: certificate_input(wc.exp)),
        unpack(lambda wc: official_test_input(wc.exp)),
        splits="results/{exp}/splits.tsv",
        folds=lambda wc: expand(
            "results/{exp}/folds/{fold}/predictions.tsv", exp=wc.exp, fold=fold_ids(wc.exp)
        ),
    output:
        predictions="results/{exp}/predictions.tsv",
        metrics="results/{exp}/metrics.json",
    params:
        spec=step_spec("evaluate"),
        certificate=lambda wc: " ".join(f"--{k} {v}" for k, v in certificate_input(wc.exp).items()),
    log:
        "logs/{exp}/evaluate.log",
    wildcard_constraints:
        exp=_alt(CELLS + IMAGES),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    shell:
        "biocls evaluate --spec {params.spec:q} --splits {input.splits} "
        "--folds-dir results/{wildcards.exp}/folds --out results/{wildcards.exp} "
        "{params.certificate} 2> {log}"
