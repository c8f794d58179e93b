"""Figures in the docs drawn from the result JSON that holds them, so prose and results cannot disagree.

    python -m weightsep.doc_figures            # rewrite every marked figure from its JSON
    python -m weightsep.doc_figures --check    # only list the figures that disagree or cannot be drawn (exit 1)

A figure in README.md, docs/*.md, results/*.md or a folder's README.md sits between markers that name its JSON file (from
the repository root), the key path to it and a format:

    <!-- figure results/experiments/switching.json:rows.dnns=10.d-gather median us:.0f -->58<!-- /figure --> us

A key path's steps are separated by dots. In a dict a step is the longest key the path goes on with,
so keys with dots and spaces need no quoting (`torch.load / gather`); in a list a step is an index
(`rows.2`), `field=value` (the one element whose field reads value: `rows.dnns=10`; several joined
by `&`: `per_dnn.dnn=fashion&rule=fixed budget`) or `*` (every
element: the figure is the range of the values, `29-39`, `-0.4 to +0.2`). The format is Python's format
spec (`.2f`, `+.2f`, `,d`, `.1%`; `.7` shortens a string, as in `commit.sha:.7`, the commit that
produced the JSON), after the last colon; none gives `str`. A marker stays on one line; in a
fenced code block it is an example, shown as written, and left alone.
tests/test_doc_figures.py runs the check on the repository's docs.
"""
from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .files import atomic_write_text
from .paths import REPO_ROOT

DOCS = ("README.md", "docs/*.md", "results/*.md", "*/README.md")  # */README.md: examples/, suite/, custom_op/ ...
FIGURE = re.compile(r"<!-- figure (?P<file>[^:\s]+):(?P<key>[^>]+?)(?::(?P<format>[^:>]*))? -->"
                    r"(?P<text>.*?)<!-- /figure -->")
CODE = re.compile(r"^```.*?^```", re.M | re.S)  # a fenced block shows a marker as text: an example, not a figure


class FigureError(ValueError):
    """A marker that cannot be drawn: its JSON file or key is missing, or its format does not apply."""


def docs(root: Path = REPO_ROOT) -> list[Path]:
    """The markdown files whose figures are drawn."""
    return [path for pattern in DOCS for path in sorted(root.glob(pattern))
            if not any(part.startswith(".") for part in path.relative_to(root).parts)]  # not .pytest_cache/, .venv/


def resolve(data: Any, key: str) -> Any:
    """The value at `key` in `data`: a list of values when a step is `*`."""
    if not key:
        return data
    if isinstance(data, list):
        step, _, rest = key.partition(".")
        if step == "*":
            return [resolve(item, rest) for item in data]
        if "=" in step:
            wanted = [condition.partition("=") for condition in step.split("&")]
            found = [item for item in data if isinstance(item, dict)
                     and all(str(item.get(name)) == want for name, _, want in wanted)]
            if len(found) != 1:
                raise FigureError(f"{len(found)} elements with {step}, not one")
            return resolve(found[0], rest)
        if step.lstrip("-").isdigit() and -len(data) <= int(step) < len(data):
            return resolve(data[int(step)], rest)
        raise FigureError(f"no element {step!r} in a list of {len(data)}")
    if isinstance(data, dict):
        for name in sorted(data, key=len, reverse=True):
            if key == name or key.startswith(name + "."):
                return resolve(data[name], key[len(name) + 1:])
    raise FigureError(f"no key {key!r}")


def formatted(value: Any, spec: str) -> str:
    """`value` in format `spec`; a list as the range of its values, low-high (low to high when a sign
    shows, where a hyphen would read as one)."""
    try:
        if isinstance(value, list):
            low, high = format(min(value), spec), format(max(value), spec)
            return low if low == high else f"{low}{' to ' if min(value) < 0 or '+' in spec else '-'}{high}"
        return format(value, spec)
    except (TypeError, ValueError) as e:
        raise FigureError(f"cannot format {value!r} as {spec!r}: {e}") from None


@dataclass
class Drawn:
    """A markdown file with its figures drawn anew, and what was wrong with them: figures that
    disagreed with their JSON (redrawn in `text`) and markers that cannot be drawn (left as they were)."""

    text: str
    wrong: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)


def load(path: Path, loaded: dict[Path, Any]) -> Any:
    if path not in loaded:
        try:
            loaded[path] = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise FigureError(f"cannot read {path.name}: {e}") from None
    return loaded[path]


def draw(doc: Path, root: Path = REPO_ROOT, loaded: dict[Path, Any] | None = None) -> Drawn:
    """`doc`'s figures drawn from their JSON (files read once into `loaded`)."""
    loaded = {} if loaded is None else loaded
    text = doc.read_text()
    drawn = Drawn(text)

    code = [block.span() for block in CODE.finditer(text)]

    def figure(match: re.Match) -> str:
        if any(start < match.start() < end for start, end in code):
            return match[0]
        line = text.count("\n", 0, match.start()) + 1
        where = f"{doc.relative_to(root)}:{line}: {match['file']}:{match['key']}"
        try:
            value = formatted(resolve(load(root / match["file"], loaded), match["key"]), match["format"] or "")
        except FigureError as e:
            drawn.broken.append(f"{where}: {e}")
            return match[0]
        if value != match["text"]:
            drawn.wrong.append(f"{where}: the doc says {match['text']!r}, the JSON {value!r}")
        return match[0][:match.start("text") - match.start()] + value + "<!-- /figure -->"

    drawn.text = FIGURE.sub(figure, text)
    return drawn


def main(argv: list[str] | None = None, root: Path = REPO_ROOT) -> int:
    parser = argparse.ArgumentParser(prog="python -m weightsep.doc_figures", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a figure disagrees or is broken")
    args = parser.parse_args(argv)
    loaded: dict[Path, Any] = {}
    failed = False
    for doc in docs(root):
        drawn = draw(doc, root, loaded)
        for problem in drawn.broken + drawn.wrong:
            print(problem)
        if drawn.wrong and not args.check:
            atomic_write_text(doc, drawn.text)
            print(f"wrote {doc.relative_to(root)}")
        failed |= bool(drawn.broken or (args.check and drawn.wrong))
    return int(failed)


if __name__ == "__main__":
    raise SystemExit(main())
