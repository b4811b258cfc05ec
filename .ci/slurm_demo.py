"""CI (issue 5): the demo on a real single-node SLURM cluster, checked against a local run.

1. Bring the cluster up (.ci/slurm-cluster: Debian's slurmctld, slurmd, munge).
2. Run the demo locally (`snakemake --cores 2`) in one folder.
3. Run it again in another folder through `snakemake --profile configs/profiles/slurm`, and
   `scancel` the fold-0 cell-training job once its first epoch checkpoint exists. The profile's
   retry resubmits it with twice the memory, and training resumes from the checkpoint.
4. Check, from SLURM's own records (slurmctld's job table, its log and the jobcomp log), that every
   job of the DAG ran as a batch job submitted by sbatch and completed, that the cancelled one was
   retried with more memory, and that the retried training resumed mid-way.
5. Check that each experiment's metrics.json and predictions.tsv equal the local run's bytes.
6. Switch the profile's GPU line on and rerun one training job: SLURM must allocate it a GPU (the
   node declares one to the scheduler; nothing runs on it).
The cluster is shut down at the end, whatever happens (also on Ctrl-C or SIGTERM).

Usage: .venv/bin/python .ci/slurm_demo.py [--work DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / ".ci" / "slurm-cluster"
SLURM_LOGS = Path(os.environ.get("BIOCLS_SLURM_DIR", "/tmp/biocls-slurm"))
EXPERIMENTS = ("demo_cells", "demo_repertoires")
OUTPUTS = ("metrics.json", "predictions.tsv")
VICTIM = "rule_train_cells_wildcards_demo_cells_0"  # the job that is scancel-ed
# path: ensemble (the default) checkpoints its deep net under factored/deep/
VICTIM_CHECKPOINT = "results/demo_cells/checkpoints/0/factored/deep/checkpoint.pt"
VICTIM_FOLD_INFO = "results/demo_cells/folds/0/fold_info.json"
GPU_TARGET = "results/demo_cells/model"  # the training job rerun with the GPU switch on
_DEMO_MODEL = yaml.safe_load((REPO / "configs/default.yaml").read_text())["experiments"][
    "demo_cells"]["model"]
MAX_EPOCHS, PATIENCE = int(_DEMO_MODEL["max_epochs"]), int(_DEMO_MODEL["patience"])
LOCAL_RULES = {"all"}
# No accounting database on this cluster: job states come from squeue.
STATUS_ARGS = ("--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "5")
TIMEOUT_S = 1800
MIN_NODE_MEMORY_MB = 16000  # the retry of a training job asks for 2 x 8000 MB
CHILDREN: list[subprocess.Popen] = []  # Snakemake processes, stopped before the cluster goes down


class Failed(Exception):
    pass


def say(msg: str) -> None:
    print(f"slurm-demo: {msg}", flush=True)


def snakemake(work: Path, *args: str, log: Path) -> subprocess.Popen:
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(work), *args]
    say("$ " + " ".join(cmd))
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    CHILDREN.append(proc)
    return proc


def stop_children() -> None:
    """SIGINT makes Snakemake scancel its SLURM jobs; whatever does not stop in time is killed."""
    for proc in CHILDREN:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def finish(proc: subprocess.Popen, log: Path, what: str) -> str:
    try:
        rc = proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = "timeout"
    text = log.read_text()
    if rc != 0:
        print(text[-6000:])
        raise Failed(f"{what} failed ({rc}); full log: {log}")
    return text


def squeue() -> list[dict[str, str]]:
    """slurmctld's job table, finished jobs included (MinJobAge keeps them for an hour)."""
    out = subprocess.run(["squeue", "-t", "all", "-h", "-o", "%i|%j|%k|%T"], capture_output=True,
                         text=True, check=True).stdout
    keys = ("id", "name", "comment", "state")
    return [dict(zip(keys, line.split("|"), strict=True)) for line in out.splitlines()]


def training_unfinished(ckpt: Path) -> bool:
    """The checkpoint exists and its training would go on (epochs left, patience not used up)."""
    import torch  # only here: the rest of this script does not need it

    if not ckpt.exists():
        return False
    state = torch.load(ckpt, weights_only=True)
    return state["epoch"] < MAX_EPOCHS and state["bad_epochs"] < PATIENCE


class Canceller(threading.Thread):
    """scancel the victim job while its training is under way: a kill in the middle of training."""

    def __init__(self, work: Path) -> None:
        super().__init__(daemon=True)
        self.work, self.job_id, self.stop = work, None, threading.Event()

    def run(self) -> None:
        ckpt = self.work / VICTIM_CHECKPOINT
        while not self.stop.is_set():
            try:
                running = [j["id"] for j in squeue()
                           if j["comment"] == VICTIM and j["state"] == "RUNNING"]
                if running and training_unfinished(ckpt):
                    subprocess.run(["scancel", running[0]], check=True)
                    self.job_id = running[0]
                    say(f"scancel {self.job_id} ({VICTIM}) in the middle of its training")
                    return
            except (subprocess.CalledProcessError, OSError, RuntimeError) as e:
                say(f"canceller: {e} (trying again)")  # a transient squeue/scancel/read error
            time.sleep(0.05)


def submitted_jobs(log: str) -> tuple[str, set[str]]:
    """This run's SLURM name (its run ID) and the job ids Snakemake says it submitted."""
    run_id = re.search(r"SLURM run ID: (\S+)", log).group(1)
    return run_id, set(re.findall(r"has been submitted with SLURM jobid (\d+)", log))


def dag_size(log: str) -> int:
    """Number of jobs in the DAG minus local rules, from Snakemake's job-stats table."""
    table = log.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.M))
    return int(counts.pop("total")) - sum(int(counts.get(r, 0)) for r in LOCAL_RULES)


def scontrol(job_id: str) -> str:
    """slurmctld's full record of one job, on one line."""
    return subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True,
                          text=True).stdout


def jobcomp() -> dict[str, dict[str, str]]:
    """SLURM's job-completion log (jobcomp/filetxt): one `key=value ...` record per finished job."""
    records = {}
    for line in (SLURM_LOGS / "jobcomp.log").read_text().splitlines():
        rec = dict(re.findall(r"(\w+)=(\S*)", line))
        records[rec["JobId"]] = rec
    return records


def check_records(log: str, work: Path, victim: str) -> None:
    run_id, jobs = submitted_jobs(log)
    table = {j["id"]: j for j in squeue() if j["name"] == run_id}
    completed = jobcomp()
    ctld_log = (SLURM_LOGS / "log" / "slurmctld.log").read_text()
    problems = []
    if set(table) != jobs:
        problems.append(f"SLURM knows jobs {sorted(table)} under run {run_id}; Snakemake "
                        f"submitted {sorted(jobs)}")
    for job_id in sorted(jobs & set(table), key=int):
        show = scontrol(job_id)
        rec, what = completed.get(job_id, {}), f"job {job_id} ({table[job_id]['comment']})"
        want_state = "CANCELLED" if job_id == victim else "COMPLETED"
        if f"_slurm_rpc_submit_batch_job: JobId={job_id} " not in ctld_log:
            problems.append(f"{what}: no sbatch submission in slurmctld.log")
        if "BatchFlag=1" not in show:
            problems.append(f"{what}: not a batch job per scontrol")
        if re.search(r"gres[:/]gpu", show):
            problems.append(f"{what}: asked for a GPU, but the profile's GPU switch is off")
        if rec.get("JobState") != want_state or table[job_id]["state"] != want_state:
            problems.append(f"{what}: {rec.get('JobState')}, want {want_state}")
        if rec.get("WorkDir") != str(work):
            problems.append(f"{what}: ran in {rec.get('WorkDir')}, not {work}")
    done = sorted(table[j]["comment"] for j in table if j != victim)
    n_dag = dag_size(log)
    if len(set(done)) != len(done) or len(done) != n_dag:
        problems.append(f"completed SLURM jobs {done} do not match the {n_dag} jobs "
                        "of the DAG one to one")
    retry = [j for j in table if j != victim and table[j]["comment"] == VICTIM]
    if len(retry) != 1:
        problems.append(f"the cancelled job was resubmitted {len(retry)} times, want 1")
    else:
        mem = [int(re.search(r"mem=(\d+)M", completed[j]["Tres"]).group(1))
               for j in (victim, retry[0])]
        if mem[1] != 2 * mem[0]:
            problems.append(f"the retry asked for {mem[1]} MB after {mem[0]} MB, want twice")
        say(f"retry {retry[0]} of cancelled job {victim}: memory {mem[0]} -> {mem[1]} MB")
    if problems:
        raise Failed("SLURM records:\n  " + "\n  ".join(problems))
    say(f"SLURM records: {len(jobs)} batch jobs submitted by sbatch under run {run_id}: "
        f"{len(done)} completed (one per DAG job), 1 cancelled")


def check_gpu_switch(work: Path, slurm: Path) -> None:
    """Turn the profile's one GPU line on and rerun one training job: SLURM must give it a GPU.

    The cluster's node has one GPU that exists for the scheduler only, so the job still trains on
    the CPU (from scratch: a fit's checkpoints are removed once its outputs are written).
    """
    profile = work / "gpu-profile"
    shutil.copytree(REPO / "configs/profiles/slurm", profile)
    text, n = re.subn(r"^(\s*<<: &gpu) \{gpu: 0\}$", r"\1 {gpu: 1}",
                      (profile / "config.yaml").read_text(), flags=re.M)
    if n != 1:
        raise Failed("the profile has no single `<<: &gpu {gpu: 0}` line to switch GPUs on")
    (profile / "config.yaml").write_text(text)
    # one experiment's final model: the demo has two cell experiments
    proc = snakemake(slurm, GPU_TARGET, "--profile", str(profile), *STATUS_ARGS, "--forcerun",
                     "train_cells_final", log=work / "gpu.log")
    _, jobs = submitted_jobs(finish(proc, work / "gpu.log", "GPU-switch run"))
    if len(jobs) != 1:
        raise Failed(f"the GPU-switch run submitted {len(jobs)} jobs, want 1 (train_cells_final)")
    job_id = jobs.pop()
    show = scontrol(job_id)
    gpus = re.search(r"TresPerJob=(gres[:/]gpu[:=]1)\b", show)
    if gpus is None or "JobState=COMPLETED" not in show:
        raise Failed(f"job {job_id} with the GPU switch on: {show}")
    say(f"GPU switch on: job {job_id} (train_cells_final) got TresPerJob={gpus.group(1)} and "
        "completed")


def check_resumed(work: Path) -> None:
    history = json.loads((work / VICTIM_FOLD_INFO).read_text())["history"]
    epochs = len(history["train_loss"])
    if not 0 < history["resumed_from"] < epochs:
        raise Failed(f"the retried training did not resume mid-way: resumed_from="
                     f"{history['resumed_from']} of {epochs} epochs")
    say(f"the retried training resumed from epoch {history['resumed_from']} of {epochs}")


def check_identical(local: Path, slurm: Path) -> None:
    for exp in EXPERIMENTS:
        for name in OUTPUTS:
            a, b = local / "results" / exp / name, slurm / "results" / exp / name
            if a.read_bytes() != b.read_bytes():
                raise Failed(f"{b} differs from the local run's {a}")
        say(f"{exp}: metrics.json and predictions.tsv identical to the local run")
    check = REPO.parent / "shared" / "check_outputs.py"
    if check.exists():
        for exp in EXPERIMENTS:
            subprocess.run([sys.executable, str(check), str(slurm / "results" / exp)], check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, help="folder for both runs (default: a new temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the runs' folders when all passes")
    args = ap.parse_args()
    def interrupted(signum: int, _frame: object) -> None:
        raise Failed(f"interrupted by {signal.Signals(signum).name}")

    # Both are handled here (not ignored, even when started in the background), so the Snakemake
    # children start with default handlers too and scancel their jobs on SIGINT.
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    work = (args.work or Path(tempfile.mkdtemp(prefix="biocls-slurm-ci-"))).resolve()
    local, slurm = work / "local", work / "slurm"
    try:
        if subprocess.run([str(CLUSTER), "up"]).returncode != 0:
            raise Failed("the cluster did not come up")
        node_mb = int(subprocess.run(["sinfo", "-h", "-o", "%m"], capture_output=True, text=True,
                                     check=True).stdout.split()[0].rstrip("+"))
        if node_mb < MIN_NODE_MEMORY_MB:
            raise Failed(f"the node has {node_mb} MB for jobs; this check needs "
                         f"{MIN_NODE_MEMORY_MB} MB (a retried training job asks for twice 8000)")
        t0 = time.monotonic()
        text = finish(snakemake(local, "--cores", "2", log=work / "local.log"),
                      work / "local.log", "local run")
        say(f"local run: {time.monotonic() - t0:.0f} s")

        t0 = time.monotonic()
        canceller = Canceller(slurm)
        proc = snakemake(slurm, "--profile", str(REPO / "configs/profiles/slurm"), *STATUS_ARGS,
                         log=work / "slurm.log")
        canceller.start()
        text = finish(proc, work / "slurm.log", "SLURM run")
        canceller.stop.set()
        say(f"SLURM run: {time.monotonic() - t0:.0f} s")
        if canceller.job_id is None:
            raise Failed(f"{VICTIM} was never seen running with a checkpoint; nothing cancelled")

        check_records(text, slurm, canceller.job_id)
        check_resumed(slurm)
        check_identical(local, slurm)
        check_gpu_switch(work, slurm)
    except Failed as e:
        say(f"FAILED: {e}")
        say(f"runs kept in {work}; cluster logs in {SLURM_LOGS}/log")
        return 1
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):  # a second signal must not cut this short
            signal.signal(sig, signal.SIG_IGN)
        stop_children()
        subprocess.run([str(CLUSTER), "down"])
    if not args.keep and args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    say("passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
