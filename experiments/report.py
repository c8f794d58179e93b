"""The experiments, found by discovery, and results/REPORT.md gathered from what they wrote.

An experiment is a module of this package with `SECTION` (its place in the report), `TITLE`,
`QUESTION` and `run(scale, fresh) -> result`; the result holds `setup`, `table` (markdown),
`answer` and `rows` (the CSV). `report` reads only results/experiments/*.json: it runs nothing.
"""
from __future__ import annotations

import importlib
import json
import pkgutil
import time
from dataclasses import asdict
from pathlib import Path

from weightsep.files import atomic_write_text, source_commit
from weightsep.pipeline import RESULTS_DIR

from . import harness

PACKAGE = Path(__file__).parent


def experiments() -> list[str]:
    """Module names of the experiments, in report order."""
    found = []
    for info in pkgutil.iter_modules([str(PACKAGE)]):
        text = (PACKAGE / f"{info.name}.py").read_text()
        if "\nSECTION = " in text:
            found.append((int(text.split("\nSECTION = ")[1].split()[0]), info.name))
    return [name for _, name in sorted(found)]


def in_all() -> list[str]:
    """The experiments `all` runs: every one but those that set IN_ALL = False (fixed DNNs and budgets)."""
    return [name for name in experiments() if getattr(module(name), "IN_ALL", True)]


def module(name: str):
    return importlib.import_module(f"experiments.{name}")


def out_dir(results: Path, paper: bool) -> Path:
    """Where an experiment's files go: results/experiments/, the paper DNNs' in its paper/."""
    return results / "experiments" / "paper" if paper else results / "experiments"


def flags(scale: harness.Scale) -> str:
    """The command-line flags that make `scale` from the default one: the command that reruns it."""
    default = harness.Scale.default(scale.quick, scale.paper)
    out = (" --paper" if scale.paper else "") + (" --quick" if scale.quick else "")
    for field, value in (("dnns", scale.dnns), ("seeds", scale.seeds), ("steps", scale.steps),
                         ("train_steps", scale.train_steps)):
        if value != getattr(default, field) and value is not None:
            out += f" --{field.replace('_', '-')} " + (" ".join(map(str, value)) if isinstance(value, tuple) else str(value))
    return out


def run(name: str, scale: harness.Scale, fresh: bool = False, results: Path = RESULTS_DIR) -> Path:
    """Run one experiment and write its .json, .csv and .png under `results`/experiments."""
    mod = module(name)
    start, commit = time.perf_counter(), source_commit()  # the code as the experiment starts
    with harness.recording() as made:
        result = mod.run(scale, fresh)
    result["comparisons"] = made
    result.update(name=name, title=mod.TITLE, question=mod.QUESTION,
                  scale={k: v for k, v in asdict(scale).items() if k != "runs"},  # where runs are kept is this machine's
                  command=f"python -m experiments {name}{flags(scale)}", seconds=time.perf_counter() - start,
                  date=time.strftime("%Y-%m-%d %H:%M"), code=harness.code_hash(), commit=commit)
    result.setdefault("scale_text", scale.describe())  # an experiment that ignores part of the scale says so
    return harness.write_outputs(name, result, mod.plot, out_dir(results, scale.paper))


def made(result: dict) -> str:
    """When and from which commit a section's JSON was written (JSON written before issue 27 has no commit)."""
    commit = result.get("commit")
    if not commit:
        return result["date"]
    return f"{result['date']}, commit {commit['sha'][:7]}" + (" with uncommitted changes" if commit["dirty"] else "")


def section(result: dict, number: int, png: str) -> str:
    lines = [f"## {number}. {result['title']}", "", f"**Question.** {result['question']}", "",
             f"**Setup.** `{result['command']}` ({made(result)}). "
             f"{result['setup']} Scale: {result['scale_text']}.",
             "", result["table"], "", f"![{result['title']}]({png})", "", f"**Answer.** {result['answer']}", ""]
    return "\n".join(lines)


def write(results: Path = RESULTS_DIR) -> Path:
    """`results`/REPORT.md from the experiments' JSON files (the suite's, then the paper DNNs')."""
    path = results / "REPORT.md"
    parts = ["# weightsep: experiments on the papers' open questions", "",
             "Each section states a question the NWV (MobiSys 2020) and WS (PerCom 2022) papers leave open, the "
             "setup that measures it (command, DNNs, budget, seeds), the table and plot, and the answer with its "
             "spread. Cells are the mean over seeds ± the half-width of its 95% Student-t interval, marked (95% t), and "
             "so are the plots' error bars; a difference from a section's reference is "
             "paired by seed and shown as its mean ± the half-width of its 95% t-interval, marked ~ when the "
             "paired t-test, Holm-corrected over the section's comparisons, shows no difference at 5%. "
             "Accuracy changes are in percentage points (pp) of test accuracy. The headline difference is packed "
             "minus the no-sharing control (`packed - control pp`): the same DNNs and seeds, each DNN optimised alone "
             "with all its pages exclusive at the same optimiser config and budget, so it is what sharing costs at "
             "that budget; per seed the mean over the DNNs of packed minus control, shown as its mean ± the "
             "half-width of its 95% t-interval over seeds, ~ as above. Packed minus stand-alone (the trained DNNs "
             "before any optimisation) stays beside it. Selection is on validation data, test scored once. Regenerate with "
             "`python -m experiments all` (finished runs are kept in results/experiments/runs) or just this file "
             "with `python -m experiments report`.",
             "",
             f"The default budget is the main job's: {harness.Scale.steps:,} DNN-batches per DNN, validation every "
             f"{harness.check_interval(harness.Scale.steps)} steps, over seeds {', '.join(map(str, harness.Scale.seeds))}; "
             "compared settings take the same bytes and the same DNN-batches. Each section's scale line says what it "
             "ran at: one that says 150 DNN-batches was computed at the old default, a tenth of the main job's, where "
             "nothing had converged, and its ranking may be the budget's until `python -m experiments all` reruns it.",
             "",
             "A section whose setup names no commit was computed before issue 27 (stand-alone models trained to "
             "fixed budgets, no control column, the older statistics): its table is as that code wrote it, until "
             "`python -m experiments all` reruns it.", ""]
    contents, body, sections = [], [], []
    number = 0
    for paper in (False, True):
        for name in experiments():
            file = out_dir(results, paper) / f"{name}.json"
            if not file.exists():
                continue
            result = json.loads(file.read_text())
            number += 1
            title = result["title"] + (" (paper DNNs)" if paper else "")
            result["title"] = title
            contents.append(f"{number}. [{title}](#{number}-{anchor(title)})")
            png = file.with_suffix(".png").relative_to(path.parent).as_posix()
            body.append(section(result, number, png))
            sections.append(result)
    if not body:
        raise ValueError(f"no experiment results in {out_dir(results, False)}: run `python -m experiments all` first")
    contents.append(f"{number + 1}. [{ACROSS}](#{number + 1}-{anchor(ACROSS)})")
    body.append(across(sections, number + 1))
    atomic_write_text(path, "\n".join(parts + contents + [""] + body))
    return path


ACROSS = "Every comparison, corrected across the report"


def across(sections: list[dict], number: int) -> str:
    """Holm's correction over every paired comparison of every section that recorded them: a difference
    called real here survives all the report's comparisons, not one table's."""
    made = [{**c, "section": r["title"]} for r in sections for c in r.get("comparisons", [])]
    harness.holm(made)
    missing = [r["title"] for r in sections if "comparisons" not in r]
    lines = [f"## {number}. {ACROSS}", "",
             f"{len(made)} paired comparisons (each against its section's reference or its no-sharing control, paired by "
             "seed), Holm-corrected together at 5%: shown means the difference survives every comparison in the "
             "report. Smallest p first."
             + (f" Sections computed before the report recorded comparisons, left out: {'; '.join(missing)}." if missing
                else ""), "",
             "| section | setting | against | difference (95% t) | p | shown across the report |", "|---|---|---|---|---|---|"]
    for c in sorted(made, key=lambda c: c["p"]):
        interval = "" if c["ci95"] is None else f" ± {c['ci95']:.2f}"
        lines.append(f"| {c['section']} | {c['setting']} | {c['against']} | {c['mean']:+.2f}{interval} | {c['p']:.3g} | "
                     f"{'no' if c['noise'] else 'yes'} |")
    return "\n".join(lines) + "\n"


def anchor(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    keep = "".join(c for c in title.lower() if c.isalnum() or c in " -_")
    return keep.replace(" ", "-")
