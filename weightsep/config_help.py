"""Help text for config fields, written once beside the default as dataclass field metadata.

    steps: int = opt(1500, "joint: optimisation steps")
    pack: PackConfig = opt(help="how the DNNs are packed", factory=PackConfig)

`python -m weightsep <command> --help` shows it (cli.py's config flags) and docs/config.md is
generated from it (`python -m weightsep.config_docs`; a test keeps the file equal to its output).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

HELP = "help"  # the metadata key
REPO = Path(__file__).resolve().parent.parent


def opt(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with its default (or default factory) and its help text."""
    if not help:
        raise ValueError("a config field needs its help text")
    return dataclasses.field(default=default, default_factory=factory, metadata={HELP: help})


def help_text(f: dataclasses.Field) -> str:
    """The help text of a field ('' where it has none)."""
    return f.metadata.get(HELP, "")


def default_text(f: dataclasses.Field) -> str:
    """A field's default as the docs and --help show it: a path inside the repository relative to it,
    a default factory by its name unless it is a literal (`list`, a lambda)."""
    if f.default is not dataclasses.MISSING:
        value = f.default
        if isinstance(value, Path) and value.is_absolute() and value.is_relative_to(REPO):
            return str(value.relative_to(REPO))
        return str(value)
    factory = f.default_factory
    if (isinstance(factory, type) and not dataclasses.is_dataclass(factory)) or factory.__name__ == "<lambda>":
        return str(factory())
    return f"{factory.__name__}()"


def markdown_table(cls: type, flags: dict[str, str]) -> str:
    """A config's fields as a markdown table: field, command-line flag (where it has one), default, help."""
    rows = ["| field | flag | default | help |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        cells = (f"`{f.name}`", f"`{flags[f.name]}`" if f.name in flags else "", f"`{default_text(f)}`",
                 help_text(f).replace("|", "\\|"))
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def flag_help(f: dataclasses.Field) -> str:
    """A config flag's argparse help: its help text and default (argparse formats help with %)."""
    return f"{help_text(f)} (default {default_text(f)})".replace("%", "%%")
