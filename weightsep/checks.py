"""Validation rules shared by the stage configs and the command line: one rule, one message.

Every config dataclass checks its fields in `__post_init__` with these helpers and raises a
ValueError that names the command-line flag (`--alpha must be in [0, 1], got 7`), so the library
and `python -m weightsep` report the same thing. `flag` gives a field's flag (cli.py derives its
flags from the configs with the same names).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import numbers
import tempfile
import types
import typing
from pathlib import Path

# config field -> command-line flag, where they differ from the field's name with - for _
FLAG_NAMES = {"estimator": "fisher", "samples": "fisher-samples", "chunk": "fisher-chunk",
              "normalize": "fisher-normalize", "n_shared": "shared-pages",
              "group": "int4-group"}

MAX_PAGE_SIZE = 1 << 20  # weights per page (4 MiB of float32); the published P is 512
MAX_SHARED_WEIGHTS = 1 << 28  # shared pages x page size: 1 GiB per float32 copy of the shared store


def _show(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def flag(field: str) -> str:
    """The command-line flag of a config field."""
    return "--" + FLAG_NAMES.get(field, field.replace("_", "-"))


# what a field of that type may hold (numpy's integers and floats are numbers.Integral / numbers.Real too)
_SCALARS = {int: (numbers.Integral,), float: (numbers.Real,), str: (str,), bool: (bool,)}


@functools.cache
def _field_kinds(cls: type) -> dict[str, tuple[tuple[type, ...], bool]]:
    """Per scalar field of a config dataclass: the Python types its value may have, and whether None may stand."""
    hints, out = typing.get_type_hints(cls), {}
    for f in dataclasses.fields(cls):
        args = typing.get_args(hints[f.name]) if isinstance(hints[f.name], types.UnionType) else (hints[f.name],)
        scalar = [a for a in args if a is not type(None)]
        if len(scalar) == 1 and scalar[0] in _SCALARS:
            out[f.name] = (_SCALARS[scalar[0]], type(None) in args)
    return out


def typed(config) -> None:
    """Every scalar field of a config dataclass holds its declared type (an int field refuses 2.5 and
    True, a float field a string), so a library call is checked as the command line's parser is."""
    for name, (kinds, optional) in _field_kinds(type(config)).items():
        value = getattr(config, name)
        if (value is None and optional) or (isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))):
            continue
        want = {numbers.Integral: "an integer", numbers.Real: "a number", str: "a string", bool: "True or False"}[kinds[0]]
        want += " or None" if optional else ""
        raise ValueError(f"{flag(name)} must be {want}, got {value!r} ({type(value).__name__})")


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
        raise ValueError(f"unknown {field.replace('_', ' ')} {value!r} ({flag(field)}); choose from {', '.join(choices)}")


# ---- command lines ----------------------------------------------------------------------------

class Parser(argparse.ArgumentParser):
    """argparse with a one-line error: `error: <what is wrong> (see <prog> --help)`, exit status 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def int_at_least(low: int):
    """An argparse type: an int >= low, else a message naming the bound."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    parse.__name__ = f"int >= {low}"
    return parse


def writable_dir(path: Path, flag_name: str) -> None:
    """Fail now, before any work, if `path` cannot become or be a writable directory: it is a file, a
    parent is a file, or the nearest existing directory refuses a new file (read-only, no permission)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag_name} {path} is a file, not a directory")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{flag_name} {path}: {existing} is a file, so the directory cannot be made")
    try:  # os.access says yes to root on a read-only directory; creating a file is the real test
        with tempfile.TemporaryFile(dir=existing, prefix=".weightsep-write-test-"):
            pass
    except OSError as e:
        raise ValueError(f"{flag_name} {path}: cannot write in {existing} ({e.strerror})") from None
