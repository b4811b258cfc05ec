"""Issue 5, point 1: the SLURM profile covers every rule, retries with more memory, has one GPU
switch, and `snakemake -n --profile configs/profiles/slurm` resolves it.

Submitting for real needs a cluster: .ci/slurm_demo.py does that in CI.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from snakemake_run import run_snakemake

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "configs" / "profiles" / "slurm"
TRAINING = {"train_cells", "train_cells_final", "certify_cells", "pretrain_images",
            "train_repertoires", "train_repertoires_final"}
def profile(text: str | None = None) -> dict:
    return yaml.safe_load(text if text is not None else (PROFILE / "config.yaml").read_text())


def workflow_rules() -> set[str]:
    proc = run_snakemake("-d", str(REPO), "--list-rules")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return set(proc.stdout.split()) - {"all"}


def test_profile_sets_memory_and_runtime_for_every_rule() -> None:
    p = profile()
    assert p["executor"] == "slurm"
    assert p["retries"] >= 1 and p["jobs"] >= 1
    rules = workflow_rules()
    assert {"train_cells", "train_repertoires", "report"} <= rules  # the listing worked
    assert set(p["set-resources"]) == rules  # a new rule must be sized here too
    for rule in rules:
        res = p["set-resources"][rule]
        for key in ("mem_mb", "runtime"):
            # `attempt` is 2 on the retry: the second try must ask for more
            expr = str(res[key])
            assert eval(expr, {"attempt": 2}) > eval(expr, {"attempt": 1}), (rule, key)


def test_gpu_switch_is_one_line() -> None:
    text = (PROFILE / "config.yaml").read_text()
    switch = re.compile(r"^(\s*<<: &gpu) \{gpu: 0\}\s*$", flags=re.M)
    assert len(switch.findall(text)) == 1
    off = profile()
    on = profile(switch.sub(r"\1 {gpu: 1, gpu_model: a100}", text))
    for rule, res in on["set-resources"].items():
        training = rule in TRAINING
        assert res.get("gpu") == (1 if training else None), rule
        assert res.get("gpu_model") == ("a100" if training else None), rule
        assert off["set-resources"][rule].get("gpu") in (0, None), rule
        assert {k: v for k, v in res.items() if not k.startswith("gpu")} == {
            k: v for k, v in off["set-resources"][rule].items() if not k.startswith("gpu")}


@pytest.mark.slow
def test_dry_run_through_the_profile(tmp_path: Path) -> None:
    """`snakemake -n --profile configs/profiles/slurm` as a user types it: the demo config."""
    proc = run_snakemake("-d", str(tmp_path), "-n", "--profile", str(PROFILE))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "Using profile" in out and "slurm" in out
    # the profile's sizes reach the jobs (attempt 1): training 8000 MB and 120 min, no GPU
    train = out.split("rule train_cells:", 1)[1].split("\n\n", 1)[0]
    resources = re.search(r"resources: (.*)", train).group(1)
    assert "mem_mb=8000" in resources and "runtime=120" in resources and "gpu=0" in resources
