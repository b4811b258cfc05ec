"""Run the workflow as a user would: the one helper for every test that calls Snakemake."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"


def tool_env() -> dict[str, str]:
    """This interpreter's bin first on PATH (rules call `biocls` from PATH) and one OpenMP thread
    (the tests share a 2-core box)."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "OMP_NUM_THREADS": "1"}


def run_snakemake(*args: str, snakefile: Path | None = SNAKEFILE, cwd: Path | None = None,
                  timeout: int = 120) -> subprocess.CompletedProcess[str]:
    """``python -m snakemake [-s snakefile] *args`` in :func:`tool_env`."""
    cmd = [sys.executable, "-m", "snakemake",
           *(["-s", str(snakefile)] if snakefile else []), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=tool_env(),
                          cwd=cwd)
