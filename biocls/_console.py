"""What a failed workflow step says on the console of ``snakemake``.

Every rule sends the stderr of its ``biocls <verb>`` to ``logs/<exp>/<rule>.log``; a mistake in
the input ends there as one line, ``biocls <verb>: error: <where>: <what> — fix: <how>``. Left
alone, Snakemake's console shows only ``message: None``, the shell command and "check log
file(s)". The Snakefile installs two hooks from here:

* :func:`show_step_errors` — a filter on Snakemake's logger: when a job fails, its error line
  (read from the job's log) becomes the ``message:`` of Snakemake's "Error in rule" block;
* :func:`report_failures` — the ``onerror:`` handler: after Snakemake's own messages it prints a
  marked block with each failed step, its log and its error line.

The same filter shortens the ``--spec '{...}'`` JSON (about 1 KB per command) to ``--spec '{…}'``
in the two places Snakemake prints a failed command; ``snakemake -n -p`` prints it in full.

Both work from the log files that Snakemake names in its error event, so they behave the same
under the SLURM executor (the rule logs are on the shared file system; its own message is kept).
Nothing here runs unless the Snakefile calls it; ``snakemake`` is imported lazily.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

#: how the block :func:`report_failures` prints begins ("==> biocls: 1 step failed; ...")
BANNER = "==> biocls:"
#: the CLI's one-line error (biocls/cli.py: ``biocls <verb>: error: ...``)
ERROR_LINE = re.compile(r"^biocls [\w-]+: error: ")
#: the inline JSON that rules pass to ``--spec`` (shell-quoted, no whitespace outside strings)
SPEC_ARG = re.compile(r"--spec '\{.*?\}'(?=[\s']|$)")
_TAIL_BYTES = 64 * 1024  # training logs can be long; the error is at the end
_MAX_SHOWN = 10


def error_line(logs: Iterable[str | Path], *, since: float | None = None) -> str | None:
    """The line that says why a step failed: the last ``biocls <verb>: error:`` line of the
    first log that has one; otherwise the last non-empty line of the first non-empty log (a
    traceback's exception, say). ``None`` when the logs are absent or empty, or (``since``, a
    time stamp) older than this run: a job killed before its shell ran leaves an earlier run's
    log, whose error is not this failure's."""
    fallback = None
    for path in logs:
        if since is not None and _mtime(Path(path)) < since:
            continue
        lines = _tail_lines(Path(path))
        errors = [ln for ln in lines if ERROR_LINE.match(ln)]
        if errors:
            return errors[-1]
        if fallback is None and lines:
            fallback = lines[-1]
    return fallback


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return float("-inf")


def _tail_lines(path: Path) -> list[str]:
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - _TAIL_BYTES))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    # splitlines also splits at the \r of progress bars
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


@dataclass
class Failure:
    rule: str
    logs: list[str]
    line: str | None


class StepErrors(logging.Filter):
    """A filter on Snakemake's logger: fills in each failed job's ``message:`` from its log and
    remembers the failure for :meth:`summary`. It never drops a record."""

    def __init__(self) -> None:
        super().__init__()
        self.failures: dict[object, Failure] = {}
        self.started = time.time() - 1.0  # logs older than this run are not its errors

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            self._see(record)
        except Exception:  # the console must never break Snakemake's logging
            pass
        return True

    def _see(self, record: logging.LogRecord) -> None:
        event = str(getattr(record, "event", "") or "")
        if event == "error" and isinstance(record.msg, str):  # "RuleException: ... Command '...'"
            record.msg = shorten_spec(record.msg)
        elif event == "job_error":
            if isinstance(getattr(record, "shellcmd", None), str):
                record.shellcmd = shorten_spec(record.shellcmd)
            logs = [str(p) for p in getattr(record, "log", None) or []]
            rule = str(getattr(record, "rule_name", "") or "?")
            line = error_line(logs, since=self.started)
            record.rule_msg = _message(line, getattr(record, "rule_msg", None), rule, logs)
            jobid = getattr(record, "jobid", None)
            self.failures[id(record) if jobid is None else jobid] = Failure(rule, logs, line)
        elif event == "group_error":
            for info in getattr(record, "job_error_info", None) or []:
                logs = [str(p) for p in info.get("log") or []]
                self.failures[info.get("jobid")] = Failure(str(info.get("rule_name", "?")),
                                                           logs,
                                                           error_line(logs, since=self.started))
        elif event == "job_finished":  # a retry that succeeded is not a failure
            self.failures.pop(getattr(record, "job_id", None), None)

    def summary(self) -> str:
        """The block :func:`report_failures` prints; empty when no job failed."""
        if not self.failures:
            return ""
        failures = list(self.failures.values())
        n = len(failures)
        out = [f"{BANNER} {n} step{'s' if n > 1 else ''} failed; the error from each one's log:"]
        for f in failures[:_MAX_SHOWN]:
            out.append(f"  {f.rule}" + (f" (log: {', '.join(f.logs)})" if f.logs else ""))
            out.append(f"    {f.line or 'its log is empty: see the error above'}")
        if n > _MAX_SHOWN:
            out.append(f"  ... and {n - _MAX_SHOWN} more: see the error blocks above")
        return "\n".join(out)


def shorten_spec(text: str) -> str:
    """``--spec '{"folds":4,...}'`` → ``--spec '{…}'``."""
    return SPEC_ARG.sub("--spec '{…}'", text)


def _message(line: str | None, original: object, rule: str, logs: list[str]) -> str:
    """The ``message:`` of Snakemake's error block; keeps an executor's own message."""
    if line is None:
        line = (f"{rule} failed and its log ({', '.join(logs)}) says nothing"
                if logs else f"{rule} failed")
    return f"{line} ({original})" if original else line


def _logger() -> logging.Logger:
    from snakemake.logging import logger

    return logger


def show_step_errors() -> StepErrors:
    """Install :class:`StepErrors` on Snakemake's logger (replacing one installed before, so a
    workflow parsed twice in one process starts afresh). Called by the Snakefile."""
    logger = _logger()
    for f in [f for f in logger.filters if isinstance(f, StepErrors)]:
        logger.removeFilter(f)
    errors = StepErrors()
    logger.addFilter(errors)
    return errors


def report_failures() -> None:
    """The Snakefile's ``onerror:`` handler: print each failed step's error line, marked, after
    Snakemake's own messages (stderr, like them)."""
    for f in _logger().filters:
        if isinstance(f, StepErrors) and f.failures:
            print("\n" + f.summary(), file=sys.stderr, flush=True)
