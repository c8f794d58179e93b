"""Validation rules shared by the stage configs and the command line: one rule, one message.

Every config dataclass checks its fields in `__post_init__` with these helpers and raises a
ValueError that names the command-line flag (`--alpha must be in [0, 1], got 7`), so the library
and `python -m weightsep` report the same thing. `flag` gives a field's flag (cli.py derives its
flags from the configs with the same names).
"""
from __future__ import annotations

import dataclasses
import math

# config field -> command-line flag, where they differ from the field's name with - for _
FLAG_NAMES = {"estimator": "fisher", "samples": "fisher-samples", "chunk": "fisher-chunk",
              "normalize": "fisher-normalize", "n_shared": "shared-pages"}

MAX_PAGE_SIZE = 1 << 20  # weights per page (4 MiB of float32); the published P is 512
MAX_SHARED_WEIGHTS = 1 << 28  # shared pages x page size: 1 GiB per float32 copy of the shared store


def _show(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def flag(field: str) -> str:
    """The command-line flag of a config field."""
    return "--" + FLAG_NAMES.get(field, field.replace("_", "-"))


def finite(config) -> None:
    """Every float field of a config dataclass is a finite number (NaN passes every comparison)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{flag(f.name)} must be a finite number, got {value}")


def at_least(config, field: str, low, label: str | None = None) -> None:
    """getattr(config, field) >= low (None passes: the field's "not set")."""
    value = getattr(config, field)
    if value is not None and value < low:
        raise ValueError(f"{label or flag(field)} must be >= {_show(low)}, got {_show(value)}")


def positive(config, field: str, label: str | None = None) -> None:
    value = getattr(config, field)
    if value is not None and not value > 0:
        raise ValueError(f"{label or flag(field)} must be positive, got {_show(value)}")


def within(config, field: str, low, high, *, open_high: bool = False, label: str | None = None) -> None:
    """low <= value <= high (or < high with open_high); None passes."""
    value = getattr(config, field)
    if value is not None and not (low <= value < high if open_high else low <= value <= high):
        raise ValueError(f"{label or flag(field)} must be in [{_show(low)}, {_show(high)}{')' if open_high else ']'}, "
                         f"got {_show(value)}")


def one_of(config, field: str, choices) -> None:
    value = getattr(config, field)
    if value not in choices:
        raise ValueError(f"{flag(field)} {value!r} is unknown; choose from {', '.join(choices)}")
