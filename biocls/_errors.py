"""One exception type for every mistake a user can fix.

The CLI prints a :class:`BioclsError` as a single line and exits non-zero; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations


class BioclsError(Exception):
    """A user-fixable problem: say what, where (file, field, ID) and how to fix it, on one line."""

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None) -> None:
        parts = [f"{where}: {what}" if where else what]
        if fix:
            parts.append(f"fix: {fix}")
        super().__init__(" — ".join(parts).replace("\n", " "))
