# Immune-repertoire experiments (task: repertoires): simulate (optional) → encode → split →
# train per fold (+ k-mer baseline) and final → evaluate. Each fold trains in its own job.


rule simulate_repertoires:
    output:
        directory("resources/{exp}/repertoires"),
    params:
        sim=simulate_params,
    log:
        "logs/{exp}/simulate_repertoires.log",
    wildcard_constraints:
        exp=_alt(REPS),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "biocls simulate repertoires --params {params.sim:q} --out {output} 2> {log}"


rule encode_repertoires:
    input:
        unpack(lambda wc: repertoire_inputs(wc.exp)),
    output:
        "results/{exp}/store.h5",
    params:
        spec=step_spec("encode"),
    log:
        "logs/{exp}/encode.log",
    wildcard_constraints:
        exp=_alt(REPS),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "biocls encode --spec {params.spec:q} --out {output} 2> {log}"


rule split_repertoires:
    input:
        unpack(lambda wc: repertoire_inputs(wc.exp)),
    output:
        "results/{exp}/splits.tsv",
    params:
        spec=step_spec("split"),
    log:
        "logs/{exp}/split.log",
    wildcard_constraints:
        exp=_alt(REPS),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "biocls split --spec {params.spec:q} --out {output} 2> {log}"


rule train_repertoires:
    input:
        store="results/{exp}/store.h5",
        splits="results/{exp}/splits.tsv",
    output:
        predictions="results/{exp}/folds/{fold}/predictions.tsv",
        attention="results/{exp}/folds/{fold}/attention.tsv",
    params:
        spec=step_spec("train"),
        out="results/{exp}/folds/{fold}",
        ckpt="results/{exp}/checkpoints/{fold}",
    log:
        "logs/{exp}/train_{fold}.log",
    wildcard_constraints:
        exp=_alt(REPS),
        fold=r"\d+",
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
    shell:
        "biocls train --spec {params.spec:q} --store {input.store} --splits {input.splits} "
        "--fold {wildcards.fold} --out {params.out} --checkpoints {params.ckpt} "
        "--threads {threads} 2> {log}"


rule train_repertoires_final:
    input:
        store="results/{exp}/store.h5",
        splits="results/{exp}/splits.tsv",
    output:
        directory("results/{exp}/model"),
    params:
        spec=step_spec("train"),
        ckpt="results/{exp}/checkpoints/final",
    log:
        "logs/{exp}/train_final.log",
    wildcard_constraints:
        exp=_alt(REPS),
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
    shell:
        "biocls train --spec {params.spec:q} --store {input.store} --splits {input.splits} "
        "--fold final --out {output} --checkpoints {params.ckpt} --threads {threads} 2> {log}"


rule evaluate_repertoires:
    input:
        splits="results/{exp}/splits.tsv",
        model="results/{exp}/model",
        folds=lambda wc: expand(
            "results/{exp}/folds/{fold}/predictions.tsv", exp=wc.exp, fold=fold_ids(wc.exp)
        ),
    output:
        predictions="results/{exp}/predictions.tsv",
        attention="results/{exp}/attention.tsv",
        metrics="results/{exp}/metrics.json",
    params:
        spec=step_spec("evaluate"),
    log:
        "logs/{exp}/evaluate.log",
    wildcard_constraints:
        exp=_alt(REPS),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "biocls evaluate --spec {params.spec:q} --splits {input.splits} "
        "--folds-dir results/{wildcards.exp}/folds --out results/{wildcards.exp} 2> {log}"
