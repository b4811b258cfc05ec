"""``biocls <verb>``: the single entry point. Snakemake rules call these verbs and nothing else.

Every verb reads its inputs from disk and writes its outputs atomically, so a failed or killed
step leaves nothing that a later run could mistake for a result. A mistake in the input is
reported on one line (what, where, how to fix) with exit status 2, before anything is written.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from biocls import __version__
from biocls._errors import BioclsError
from biocls.config import Experiment

log = logging.getLogger("biocls")

EPILOG = """\
typical order (the Snakemake workflow runs these for you):
  biocls simulate cells --out data/demo.h5ad
  biocls split    --spec SPEC --out results/EXP/splits.tsv
  biocls pretrain --spec SPEC --out results/IMG/pretrained      # images with a pretrain: block
  biocls train    --spec SPEC --splits results/EXP/splits.tsv --fold 0 --out results/EXP/folds/0
  biocls train    --spec SPEC --splits results/EXP/splits.tsv --fold final --out results/EXP/model
  biocls certify  --spec SPEC --model results/EXP/model --out results/EXP/certificate.json
  biocls evaluate --spec SPEC --splits results/EXP/splits.tsv --folds-dir results/EXP/folds \\
                  --out results/EXP [--certificate results/EXP/certificate.json]
  biocls report   --results results/EXP
  biocls predict  --model results/EXP/model --input new.h5ad --output annotated.h5ad
  biocls predict  --model results/IMG/model --input manifest.tsv --output predictions.tsv
  biocls summary  results                  # every experiment's headline figures

SPEC is one experiment of the config as JSON (a string, or a .json/.yaml file), with its data
paths (`input`, `metadata` + `repertoires`, or `manifest`) filled in. The workflow passes each
step only the keys it reads; missing keys take the defaults of biocls/config.py (`biocls schema`
lists them).
Python users call the same code in memory: biocls.tl.cross_validate, biocls.tl.annotate.
"""


def load_spec(text: str) -> Experiment:
    """Parse ``--spec`` (inline JSON, or a JSON/YAML file) into the typed experiment config.

    A rule passes only the slice its step reads; missing keys take the defaults of
    :mod:`biocls.config`, the same ones a full config gets.
    """
    import yaml

    from biocls.config import parse_experiment

    try:
        if text.lstrip().startswith("{"):
            spec = json.loads(text)
        else:
            path = Path(text)
            if not path.exists():
                raise BioclsError("spec file not found", where=text,
                                  fix="pass inline JSON or an existing .json/.yaml file")
            spec = yaml.safe_load(path.read_text())
    except (ValueError, yaml.YAMLError) as e:  # JSONDecodeError is a ValueError
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BioclsError(f"--spec is not valid JSON/YAML ({first})", where="--spec",
                          fix="quote the JSON in the shell") from None
    if not isinstance(spec, dict) or spec.get("task") not in ("cells", "repertoires", "images"):
        raise BioclsError("spec needs `task: cells`, `task: repertoires` or `task: images`",
                          where="--spec",
                          fix="pass one experiment block of the config")
    return parse_experiment(spec, source="--spec", partial=True)


def _parse_params(text: str | None) -> dict[str, Any]:
    """``--params`` JSON of a simulator; a typo is a one-line error, not a traceback."""
    if not text:
        return {}
    try:
        params = json.loads(text)
    except ValueError as e:
        raise BioclsError(f"--params is not valid JSON ({e})", where="--params",
                          fix="pass a JSON object, e.g. '{\"n_patients\": 12}'") from None
    if not isinstance(params, dict):
        raise BioclsError("--params must be a JSON object", where="--params",
                          fix="pass a JSON object, e.g. '{\"n_patients\": 12}'")
    return params


# -- verbs ---------------------------------------------------------------------------------------
def cmd_simulate(args: argparse.Namespace) -> None:
    params = _parse_params(args.params)
    if args.what == "cells":
        from biocls._io import atomic_path
        from biocls.config import _check_simulate
        from biocls.simulate import CELL_MODELS

        # `model` may come from --model or from the config's simulate: block (passed as --params)
        model = params.pop("model", None)
        if args.model and model is not None and model != args.model:
            raise BioclsError(f"--model {args.model} disagrees with \"model\": {model!r} in "
                              "--params", where="--model", fix="give the model once")
        model = args.model or model or "biocls"
        _check_simulate({"simulate": {**params, "model": model}}, "cells",
                        where="--params: simulate")
        adata = CELL_MODELS[model](**params)
        with atomic_path(args.out) as tmp:
            adata.write_h5ad(tmp)
        log.info("wrote %s (%d cells × %d genes, %d patients)", args.out, adata.n_obs,
                 adata.n_vars, adata.obs["patient"].nunique())
    elif args.model:
        raise BioclsError(f"--model {args.model} is an option of `simulate cells`",
                          where="--model", fix=f"drop --model for {args.what}")
    elif args.what == "images":
        from biocls.config import _check_simulate
        from biocls.simulate import simulate_images

        _check_simulate({"simulate": params}, "images", where="--params: simulate")
        manifest = simulate_images(Path(args.out), **params)
        log.info("wrote %s (%d images, %d patients)", Path(args.out) / "manifest.tsv",
                 len(manifest), manifest["patient"].nunique())
    else:
        from biocls.simulate import simulate_repertoires

        simulate_repertoires(Path(args.out), **params)


def cmd_example(args: argparse.Namespace) -> None:
    from biocls._io import atomic_path
    from biocls.data import example_dataset

    adata = example_dataset(args.name)
    with atomic_path(args.out) as tmp:
        adata.write_h5ad(tmp)
    log.info("wrote %s (%d cells × %d genes)", args.out, adata.n_obs, adata.n_vars)


def cmd_split(args: argparse.Namespace) -> None:
    from biocls.tasks import get_task, split

    exp = load_spec(args.spec)
    split(get_task(exp.task), exp, Path(args.out))


def cmd_encode(args: argparse.Namespace) -> None:
    from biocls.tasks import get_task

    exp = load_spec(args.spec)
    task = get_task(exp.task)
    if not hasattr(task, "encode"):
        raise BioclsError(f"`encode` is not a step of task {exp.task!r}", where="--spec",
                          fix="only repertoire experiments are encoded")
    task.encode(exp, Path(args.out))


def cmd_train(args: argparse.Namespace) -> None:
    from biocls.tasks import get_task, train
    from biocls.train import set_threads

    exp = load_spec(args.spec)
    task = get_task(exp.task)
    if task.encoded and not args.store:
        raise BioclsError(f"{exp.task} training needs --store", where="--store",
                          fix="pass the store.h5 written by `biocls encode`")
    set_threads(args.threads)  # the scheduler's allocation; an explicit model.threads wins
    train(task, exp, splits=Path(args.splits), fold=args.fold,
          out_dir=Path(args.out), store=Path(args.store) if args.store else None,
          checkpoint_dir=Path(args.checkpoints) if args.checkpoints else None)


def cmd_pretrain(args: argparse.Namespace) -> None:
    from biocls.tasks.images import pretrain
    from biocls.train import set_threads

    exp = load_spec(args.spec)
    if exp.task != "images" or exp.pretrain is None:
        raise BioclsError("`pretrain` needs a task: images experiment with a pretrain: block",
                          where="--spec", fix="add pretrain: {input: other_images.npz}")
    set_threads(args.threads)
    pretrain(exp, Path(args.out))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from biocls.tasks import evaluate, get_task

    exp = load_spec(args.spec)
    evaluate(get_task(exp.task), exp, splits=Path(args.splits), folds_dir=Path(args.folds_dir),
             out_dir=Path(args.out),
             certificate=Path(args.certificate) if args.certificate else None)


def cmd_certify(args: argparse.Namespace) -> None:
    from biocls.certify import certify, certify_unlabelled
    from biocls.train import set_threads

    exp = load_spec(args.spec)
    if exp.task != "cells":
        raise BioclsError("`certify` is for cell experiments", where="--spec",
                          fix="pass a `task: cells` experiment")
    set_threads(args.threads)
    if args.unlabelled:
        if not args.splits:
            raise BioclsError("--unlabelled needs --splits", where="--splits",
                              fix="pass results/<exp>/splits.tsv (its validation patients "
                                  "early-stop the two models)")
        certify_unlabelled(exp, splits=Path(args.splits), unlabelled=Path(args.unlabelled),
                           out=Path(args.out),
                           predictions=Path(args.predictions) if args.predictions else None)
    else:
        if not args.model:
            raise BioclsError("nothing to certify", where="--model",
                              fix="pass --model results/<exp>/model (or --unlabelled new.h5ad)")
        certify(exp, model=Path(args.model), out=Path(args.out))
    log.info("wrote %s", args.out)


def cmd_report(args: argparse.Namespace) -> None:
    from biocls.report import render_reports

    pages = render_reports(Path(args.results), Path(args.out) if args.out else None,
                           config_hash=args.config_hash)
    log.info("wrote %d report pages under %s", len(pages),
             args.out or Path(args.results) / "reports")


def cmd_predict(args: argparse.Namespace) -> None:
    from biocls.tasks import task_of_model

    task_of_model(Path(args.model)).predict_file(Path(args.model), Path(args.input),
                                                 Path(args.output))
    log.info("wrote %s", args.output)


def cmd_summary(args: argparse.Namespace) -> None:
    from biocls.summary import summary_table

    sys.stdout.write(summary_table(args.paths))


def cmd_schema(args: argparse.Namespace) -> None:
    from biocls._io import write_text
    from biocls.config import schema_yaml

    if args.out:
        write_text(args.out, schema_yaml())
        log.info("wrote %s", args.out)
    else:
        sys.stdout.write(schema_yaml())


# -- parser --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="biocls", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Patient-grouped multi-task classification of single cells (cell type + "
                    "cell state) and immune repertoires (attention MIL).")
    p.add_argument("--version", action="version", version=f"biocls {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    def verb(name: str, fn: Any, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(fn=fn)
        return sp

    s = verb("simulate", cmd_simulate,
             "simulate a multi-patient data set (cells: .h5ad; repertoires: AIRR TSVs + "
             "metadata; images: PNG cell images + manifest.tsv with clinical columns)")
    s.add_argument("what", choices=["cells", "repertoires", "images"])
    s.add_argument("--out", required=True, help="cells: output .h5ad; repertoires and images: "
                                                "output folder")
    s.add_argument("--params", help="simulator options as JSON, e.g. '{\"n_patients\": 12}'")
    s.add_argument("--model", choices=["biocls", "splatter"],
                   help="cells: the generator (default: biocls; a \"model\" key in --params "
                        "works too). splatter: gamma-Poisson counts with dropout, after Splatter")

    s = verb("example", cmd_example, "write a real data set that ships inside a package (offline)")
    s.add_argument("name", choices=["pbmc68k_reduced"])
    s.add_argument("--out", required=True, help="output .h5ad")

    s = verb("split", cmd_split, "assign patients to stratified, patient-grouped folds")
    s.add_argument("--spec", required=True, help="experiment block (JSON string or file)")
    s.add_argument("--out", required=True, help="splits.tsv to write")

    s = verb("encode", cmd_encode, "encode repertoires once into the compact HDF5 store")
    s.add_argument("--spec", required=True)
    s.add_argument("--out", required=True, help="store.h5 to write")

    s = verb("train", cmd_train, "fit one fold (or the final model) and predict its held-out "
                                 "patients")
    s.add_argument("--spec", required=True)
    s.add_argument("--splits", required=True, help="splits.tsv from `biocls split`")
    s.add_argument("--fold", required=True, help="fold number, or 'final' for all patients")
    s.add_argument("--out", required=True, help="fold folder (or model folder for 'final')")
    s.add_argument("--store", help="repertoires: store.h5 from `biocls encode`; images with a "
                                   "pretrain: block: the folder from `biocls pretrain`")
    s.add_argument("--checkpoints", help="folder for epoch checkpoints (a killed run resumes)")
    s.add_argument("--threads", type=int, help="CPU threads for torch (default: all)")

    s = verb("pretrain", cmd_pretrain, "images: train the encoder on another image set "
                                       "(pretrain.input) to start every fold from (transfer)")
    s.add_argument("--spec", required=True)
    s.add_argument("--out", required=True, help="folder to write (encoder.pt, pretrain.json)")
    s.add_argument("--threads", type=int, help="CPU threads for torch (default: all)")

    s = verb("evaluate", cmd_evaluate, "gather out-of-fold predictions into predictions.tsv and "
                                       "metrics.json")
    s.add_argument("--spec", required=True)
    s.add_argument("--splits", required=True)
    s.add_argument("--folds-dir", required=True)
    s.add_argument("--out", required=True, help="experiment results folder")
    s.add_argument("--certificate", help="certificate.json from `biocls certify`, merged into "
                                         "metrics.json under 'certificate'")

    s = verb("certify", cmd_certify,
             "RATT error certificate for the shipped model (trained with a certify: block: some "
             "fit cells carry random labels, one fold of patients is held out): a per-cell bound "
             "and a per-patient bound per head, with the error measured on the held-out "
             "patients. With --unlabelled: certify on a new, unlabelled cohort (A/B halves)")
    s.add_argument("--spec", required=True)
    s.add_argument("--model", help="results/<exp>/model, trained with the experiment's certify: "
                                   "block")
    s.add_argument("--splits", help="splits.tsv (needed with --unlabelled)")
    s.add_argument("--unlabelled", help="an unlabelled .h5ad cohort: two models, each trained "
                                        "with one half randomly labelled, certify and predict "
                                        "the other half (δ/2 each)")
    s.add_argument("--predictions", help="with --unlabelled: the cohort with its calls and the "
                                         "half that predicted each cell, as .h5ad")
    s.add_argument("--out", required=True, help="certificate.json to write")
    s.add_argument("--threads", type=int, help="CPU threads for torch (default: all)")

    s = verb("report", cmd_report, "render reports/index.html and one page per patient")
    s.add_argument("--results", required=True, help="results/<experiment>")
    s.add_argument("--out", help="reports folder (default: <results>/reports)")
    s.add_argument("--config-hash", help="the experiment's config hash "
                                         "(biocls.config.config_hash), shown on every page")

    s = verb("predict", cmd_predict, "apply a final model to new data (.h5ad, a folder of "
                                     "repertoire TSVs, or an image manifest)")
    s.add_argument("--model", required=True,
                   help="a final model folder, results/<experiment>/model (or one saved with "
                        "model.save); its task decides what --input must be")
    s.add_argument("--input", required=True,
                   help="cell model: an AnnData .h5ad (raw counts or log-normalised values in X; "
                        "genes matched by name). Repertoire model: a folder of <repertoire_id>.tsv "
                        "(or .tsv.gz) files, AIRR (junction_aa or cdr3_aa, with duplicate_count, "
                        "v_call or j_call) or DeepRC (amino_acid, templates); other TSVs there, "
                        "e.g. metadata.tsv, are skipped with a warning. Image model: a manifest "
                        "TSV whose image column (and clinical columns, for a model that fuses "
                        "them) are named as in training; no labels needed")
    s.add_argument("--output", required=True,
                   help="cell model: the annotated .h5ad (the input plus obs columns "
                        "biocls_cell_type, ..._confidence, and uns['biocls_predict']). Repertoire "
                        "model: a .tsv of repertoire_id, probability, plus <output>.json "
                        "recording the model, its config hash and the date. Image model: a .tsv, "
                        "one row per image: the image column, biocls_cell_type, "
                        "biocls_cell_type_confidence (and the same for cell_state)")
    s = verb("summary", cmd_summary, "print each experiment's headline figures (model vs "
                                     "baselines) from its metrics.json, and where its report is")
    s.add_argument("paths", nargs="*", default=["results"], metavar="PATH",
                   help="results/ (default), results/<experiment> or a metrics.json")
    s = verb("schema", cmd_schema,
             "print (or write) the config's JSON schema, generated from biocls/config.py")
    s.add_argument("--out", help="file to write (default: standard output)")
    return p


def _warning_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """Print a Python warning as one log line, like every other message of a verb (the default
    adds a second line of source code)."""
    if issubclass(category, UserWarning):
        log.warning("%s", message)
    else:
        log.warning("%s: %s", category.__name__, message)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _warning_line
            args.fn(args)
    except BioclsError as e:
        print(f"biocls {args.verb}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
