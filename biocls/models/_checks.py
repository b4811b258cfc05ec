"""Argument checks shared by the blocks: one line that names the argument and what is allowed."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["check_choice", "check_positive"]


def check_choice(name: str, value: str, allowed: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``allowed`` (MONAI-style string options)."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; use one of {list(allowed)}")
    return value


def check_positive(name: str, value: int | float) -> None:
    """Raise unless ``value > 0``."""
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
