"""Evaluation: packed accuracy next to stand-alone accuracy, and the papers' summary table.

Takes a `PackedState`, each DNN's model and test data and its stand-alone accuracy; returns a `Table`
of `Row`s and `Totals` (weights by count AND by bytes, both ratios, the mean accuracy difference) and formats
them as a table (text and Markdown). Weight counts of the packed store count whole pages, as the
WS paper does (128 shared + 94 exclusive pages of 512 = 113,664); bytes are the pages in their
formats (float32 unless quantised; values plus scales, `precision.packed_bytes`) plus page tables
at their dtype (`state.PAGE_TABLE_DTYPE`, int64) for the packed store and float32 weights for the
stand-alone DNNs.

    theta = packed_theta(state, "mnist10k")
    table = summarize(state, rows)
    print(format_table(table.to_json()))   # the JSON form, as summary.json holds it
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from . import precision
from .flat import evaluating, load_buffer_state
from .pages import materialize, n_pages
from .separation import reach
from .state import PackedState

BYTES_PER_WEIGHT = 4  # float32


NO_PREDICTION = -1  # the prediction for an input whose logits are not all finite: never a class


@torch.no_grad()
def predictions(model, theta: torch.Tensor, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """int64 [N]: `model`'s argmax per input, run with weights `theta` in eval mode (its buffers as
    they are), in small batches (a conv net's activations for thousands of 32x32 images would add
    to the main job's peak memory); `NO_PREDICTION` where a logit is NaN or inf (argmax would
    name a class for them)."""
    out = []
    with evaluating(model):
        for start in range(0, len(x), batch_size):
            logits = model(x[start : start + batch_size], theta)
            out.append(torch.where(torch.isfinite(logits).all(1), logits.argmax(1), NO_PREDICTION))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)


def accuracy(model, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Fraction of inputs `model` with weights `theta` classifies correctly (non-finite logits: wrong)."""
    return (predictions(model, theta, x, batch_size) == y).sum().item() / max(1, len(x))


def reported_accuracy(model, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, who: str) -> float:
    """`accuracy` for a reported figure: inputs with NaN or inf logits are a FloatingPointError
    naming `who`, not a score (its weights or buffers are damaged or diverged)."""
    predicted = predictions(model, theta, x)
    broken = int((predicted == NO_PREDICTION).sum())
    if broken:
        raise not_scored(who, broken, len(x))
    return (predicted == y).sum().item() / max(1, len(x))


def not_scored(who: str, broken: int, total: int) -> FloatingPointError:
    """The error for `broken` of `total` inputs whose logits are NaN or inf: reported, never scored."""
    return FloatingPointError(f"{who}: {broken:,} of {total:,} inputs give NaN or inf logits: its packed weights or "
                              "buffers are damaged or diverged; not scored")


def packed_theta(state: PackedState, name: str, model: torch.nn.Module | None = None) -> torch.Tensor:
    """DNN `name`'s flat weights resolved through its page table. Given its `model`, the DNN's stored
    buffers (batch-norm statistics...) are loaded into it too: the two together run it as packed."""
    vnn = state.vnns[name]
    if model is not None:
        load_buffer_state(model, vnn.buffers, f"DNN {name!r} in the store")
    return materialize(state.shared_pages, vnn.exclusive_pages, vnn.page_table, vnn.n_weights)


@dataclass
class Row:
    name: str
    weights: int
    pages: int
    exclusive_pages: int
    standalone_accuracy: float
    packed_accuracy: float
    control_accuracy: float | None = None  # the no-sharing control: same extra training, no sharing
    published: dict | None = None  # the paper's figures (%), e.g. {"stand_alone": 98.61, "separated": 98.45}
    control_val_gain_pp: float | None = None  # the control's validation accuracy minus stand-alone's (pp): what it saw

    @property
    def difference_pp(self) -> float:
        return 100.0 * (self.packed_accuracy - self.standalone_accuracy)

    @property
    def packed_minus_control_pp(self) -> float | None:
        return None if self.control_accuracy is None else 100.0 * (self.packed_accuracy - self.control_accuracy)

    @property
    def control_gain_pp(self) -> float | None:
        """What the extra training alone gave: near 0 when the stand-alone model was trained to its plateau."""
        return None if self.control_accuracy is None else 100.0 * (self.control_accuracy - self.standalone_accuracy)

    def to_json(self) -> dict:
        """Its fields and differences; `control_val_gain_pp` only where it was measured (older summaries read the same)."""
        out = {k: v for k, v in asdict(self).items() if k != "control_val_gain_pp" or v is not None}
        return {**out, "difference_pp": self.difference_pp, "packed_minus_control_pp": self.packed_minus_control_pp,
                "control_gain_pp": self.control_gain_pp}


@dataclass
class Totals:
    """The table's totals: stand-alone against packed by weight count and by bytes, and the accuracies
    (fractions; differences in percentage points). The control's figures only with the no-sharing control."""

    dnns: int
    page_size: int
    shared_pages: int
    exclusive_pages: int
    standalone_weights: int
    packed_weights: int
    ratio_by_count: float
    standalone_bytes: int
    packed_bytes: int
    ratio_by_bytes: float
    packed_fraction_by_count: float
    page_formats: dict[str, int]  # pages per format
    packed_bytes_by_part: dict[str, int]
    mean_standalone_accuracy: float
    mean_packed_accuracy: float
    mean_difference_pp: float
    worst_difference_pp: float
    mean_control_accuracy: float | None = None
    mean_packed_minus_control_pp: float | None = None
    worst_packed_minus_control_pp: float | None = None
    largest_control_gain_pp: float | None = None  # the DNN that gained most from extra training alone
    ratio_warning: str | None = None  # the ratio asked was not reached: why, and the DNN that prevents it

    def to_json(self) -> dict:
        """As summary.json holds them: the control's figures left out when none ran."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class Table:
    """The summary table of one packed state: a row per DNN and the totals."""

    rows: list[Row]
    totals: Totals

    def to_json(self) -> dict:
        """As summary.json holds it (and `format_table` reads it)."""
        return {"rows": [r.to_json() for r in self.rows], "totals": self.totals.to_json()}


def make_row(state: PackedState, name: str, standalone_accuracy: float, packed_accuracy: float,
             control_accuracy: float | None = None, published: dict | None = None,
             control_val_gain_pp: float | None = None) -> Row:
    vnn = state.vnns[name]
    return Row(name, vnn.n_weights, n_pages(vnn.n_weights, state.page_size), vnn.exclusive_pages.shape[0],
               standalone_accuracy, packed_accuracy, control_accuracy, published, control_val_gain_pp)


def ratio_warning(state: PackedState) -> str | None:
    """Why the budget separation's ratio (its plan, in the state's config) was not reached by weight count,
    naming the DNN that prevents it (`separation.Reach`); None where it was, or where no ratio was asked."""
    if state.config.budget is None:
        return None
    sizes = {name: vnn.n_weights for name, vnn in state.vnns.items()}
    pages = state.n_shared + sum(vnn.n_exclusive for vnn in state.vnns.values())
    return reach(sizes, state.page_size, state.n_shared).shortfall(state.config.budget["ratio"],
                                                                   sum(sizes.values()) / (state.page_size * pages))


def summarize(state: PackedState, rows: list[Row]) -> Table:
    """Totals stand-alone vs packed, by weight count and by bytes, with both ratios (and why the ratio
    asked was not reached, where it was not)."""
    P = state.page_size
    standalone_weights = sum(r.weights for r in rows)
    exclusive = sum(r.exclusive_pages for r in rows)
    packed_weights = (state.n_shared + exclusive) * P
    standalone_bytes = standalone_weights * BYTES_PER_WEIGHT
    by_format = precision.packed_bytes(state)
    packed_bytes = sum(by_format.values())
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    totals = Totals(
        dnns=len(rows), page_size=P, shared_pages=state.n_shared, exclusive_pages=exclusive,
        standalone_weights=standalone_weights, packed_weights=packed_weights,
        ratio_by_count=standalone_weights / packed_weights, standalone_bytes=standalone_bytes,
        packed_bytes=packed_bytes, ratio_by_bytes=standalone_bytes / packed_bytes,
        packed_fraction_by_count=packed_weights / standalone_weights, page_formats=precision.format_counts(state),
        packed_bytes_by_part=by_format, mean_standalone_accuracy=mean([r.standalone_accuracy for r in rows]),
        mean_packed_accuracy=mean([r.packed_accuracy for r in rows]), mean_difference_pp=mean([r.difference_pp for r in rows]),
        worst_difference_pp=min(r.difference_pp for r in rows), ratio_warning=ratio_warning(state))
    if all(r.control_accuracy is not None for r in rows):
        totals.mean_control_accuracy = mean([r.control_accuracy for r in rows])
        totals.mean_packed_minus_control_pp = 100 * (totals.mean_packed_accuracy - totals.mean_control_accuracy)
        totals.worst_packed_minus_control_pp = min(r.packed_minus_control_pp for r in rows)
        totals.largest_control_gain_pp = max(r.control_gain_pp for r in rows)
    return Table(rows, totals)


def spread(values: list[float]) -> dict:
    """Mean, min, max and sample standard deviation (0 for one value) of a figure over seeds, and
    `ci95`: the half-width of the mean's 95% Student-t interval (None for one value)."""
    from scipy.stats import t  # imported when a spread is made: `import weightsep` stays light

    n, mean = len(values), sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    ci95 = float(t.ppf(0.975, n - 1)) * (var / n) ** 0.5 if n > 1 else None
    return {"mean": mean, "min": min(values), "max": max(values), "std": var ** 0.5, "n": n, "ci95": ci95}


AGGREGATED_TOTALS = ("ratio_by_count", "ratio_by_bytes", "exclusive_pages", "mean_standalone_accuracy",
                     "mean_packed_accuracy", "mean_difference_pp", "worst_difference_pp",
                     "mean_packed_minus_control_pp", "worst_packed_minus_control_pp", "largest_control_gain_pp")
AGGREGATED_ROWS = ("exclusive_pages", "standalone_accuracy", "packed_accuracy", "difference_pp",
                   "packed_minus_control_pp", "control_gain_pp", "control_val_gain_pp")


def aggregate(summaries: list[dict]) -> dict:
    """Every seed's totals and per-DNN figures as spreads (see `spread`)."""
    totals = {k: spread([s["totals"][k] for s in summaries]) for k in AGGREGATED_TOTALS
              if all(k in s["totals"] for s in summaries)}
    names = [r["name"] for r in summaries[0]["rows"]]
    by_name = [{r["name"]: r for r in s["rows"]} for s in summaries]
    dnns = {n: {k: spread([rows[n][k] for rows in by_name]) for k in AGGREGATED_ROWS
                if all(rows[n].get(k) is not None for rows in by_name)} for n in names}
    return {"seeds": [s.get("seed") for s in summaries], "totals": totals, "dnns": dnns}


def format_aggregate(agg: dict, markdown: bool = False) -> str:
    """The table over seeds: per DNN the mean, its 95% t-interval's half-width and [min, max] of each
    figure, then the totals."""
    def cell(d: dict, scale: float = 1.0, signed: bool = False, digits: int = 2) -> str:
        f = f"{{:{'+' if signed else ''}.{digits}f}}"
        interval = f" ±{scale * d['ci95']:.{digits}f}" if d.get("ci95") is not None else ""
        return f"{f.format(scale * d['mean'])}{interval} [{f.format(scale * d['min'])}, {f.format(scale * d['max'])}]"

    control = "mean_packed_minus_control_pp" in agg["totals"]
    head = ["DNN", "exclusive", "stand-alone %", "packed %"] + (["packed - control pp"] if control else []) + [
        "packed - stand-alone pp"] + (["control - stand-alone pp"] if control else [])
    body = [[name, cell(d["exclusive_pages"], digits=1), cell(d["standalone_accuracy"], 100), cell(d["packed_accuracy"], 100)]
            + ([cell(d["packed_minus_control_pp"], signed=True)] if control else []) + [cell(d["difference_pp"], signed=True)]
            + ([cell(d["control_gain_pp"], signed=True)] if control else []) for name, d in agg["dnns"].items()]
    t = agg["totals"]
    gains = [d["control_gain_pp"]["mean"] for d in agg["dnns"].values() if "control_gain_pp" in d]
    body.append(["mean", cell(t["exclusive_pages"], digits=1), cell(t["mean_standalone_accuracy"], 100),
                 cell(t["mean_packed_accuracy"], 100)]
                + ([cell(t["mean_packed_minus_control_pp"], signed=True)] if control else [])
                + [cell(t["mean_difference_pp"], signed=True)] + ([f"{sum(gains) / len(gains):+.2f}"] if control else []))
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in body]
    else:
        widths = [max(len(x) for x in col) for col in zip(head, *body)]
        fmt = lambda r: "  ".join(x.rjust(w) if i else x.ljust(w) for i, (x, w) in enumerate(zip(r, widths)))  # noqa: E731
        lines = [fmt(head), "-" * (sum(widths) + 2 * len(widths) - 2)] + [fmt(r) for r in body]
    seeds = ", ".join(map(str, agg["seeds"]))
    lines += ["", f"over {len(agg['seeds'])} seeds ({seeds}): mean ±half-width of its 95% t-interval [min, max]",
              f"ratio:       {cell(t['ratio_by_count'])}x by weight count, {cell(t['ratio_by_bytes'])}x by bytes",
              ]
    if control:
        lines.append(f"accuracy:    packed - no-sharing control: mean {cell(t['mean_packed_minus_control_pp'], signed=True)} pp, "
                     f"worst DNN {cell(t['worst_packed_minus_control_pp'], signed=True)} pp")
    lines.append(f"{'             ' if control else 'accuracy:    '}packed - stand-alone: mean "
                 f"{cell(t['mean_difference_pp'], signed=True)} pp, worst DNN {cell(t['worst_difference_pp'], signed=True)} pp")
    if control:
        lines.append(f"             the control's gain over stand-alone (extra training alone), per DNN: largest of the means "
                     f"{max(gains):+.2f} pp; per seed, largest {cell(t['largest_control_gain_pp'], signed=True)} pp")
    seen = {name: d["control_val_gain_pp"]["mean"] for name, d in agg["dnns"].items() if "control_val_gain_pp" in d}
    if seen:
        top = max(seen, key=seen.get)
        lines.append(f"             on validation the control gains at most {seen[top]:+.2f} pp on one DNN "
                     f"({top}, mean over seeds)")
    return "\n".join(lines)


def format_table(summary: dict, markdown: bool = False) -> str:
    """The paper-style table; Markdown for results/summary.md, aligned text for the terminal."""
    rows, t = summary["rows"], summary["totals"]
    control = "mean_control_accuracy" in t
    paper = all(r.get("published") for r in rows)
    head = ["DNN", "weights", "pages", "exclusive", "stand-alone %"] + (["no-sharing %"] if control else []) + [
        "packed %"] + (["packed - control pp"] if control else []) + ["packed - stand-alone pp"] + (
        ["paper: stand-alone %", "separated %", "diff pp"] if paper else [])

    def published(p: dict) -> list[str]:
        return [f"{p['stand_alone']:.2f}", f"{p['separated']:.2f}", f"{p['separated'] - p['stand_alone']:+.2f}"]

    body = [[r["name"], f"{r['weights']:,}", str(r["pages"]), str(r["exclusive_pages"]), f"{100 * r['standalone_accuracy']:.2f}"]
            + ([f"{100 * r['control_accuracy']:.2f}"] if control else []) + [f"{100 * r['packed_accuracy']:.2f}"]
            + ([f"{r['packed_minus_control_pp']:+.2f}"] if control else []) + [f"{r['difference_pp']:+.2f}"]
            + (published(r["published"]) if paper else []) for r in rows]
    mean_published = {k: sum(r["published"][k] for r in rows) / len(rows) for k in ("stand_alone", "separated")} if paper else {}
    body.append(["mean", "", "", "", f"{100 * t['mean_standalone_accuracy']:.2f}"]
                + ([f"{100 * t['mean_control_accuracy']:.2f}"] if control else []) + [f"{100 * t['mean_packed_accuracy']:.2f}"]
                + ([f"{t['mean_packed_minus_control_pp']:+.2f}"] if control else []) + [f"{t['mean_difference_pp']:+.2f}"]
                + (published(mean_published) if paper else []))
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in body]
    else:
        widths = [max(len(x) for x in col) for col in zip(head, *body)]
        fmt = lambda r: "  ".join(x.rjust(w) if i else x.ljust(w) for i, (x, w) in enumerate(zip(r, widths)))  # noqa: E731
        lines = [fmt(head), "-" * (sum(widths) + 2 * len(widths) - 2)] + [fmt(r) for r in body]
    lines += [
        "",
        f"stand-alone: {t['standalone_weights']:,} weights, {t['standalone_bytes'] / 1024:,.1f} KiB",
        f"packed:      {t['packed_weights']:,} weights ({t['shared_pages']} shared + {t['exclusive_pages']} exclusive "
        f"pages of {t['page_size']}), {t['packed_bytes'] / 1024:,.1f} KiB with page tables"
        + ("" if list(t.get("page_formats", {"float32": 0})) == ["float32"] else
           " (pages: " + ", ".join(f"{n} {f}" for f, n in t["page_formats"].items()) + ")"),
        f"ratio:       {t['ratio_by_count']:.2f}x by weight count ({100 * t['packed_fraction_by_count']:.1f}% of stand-alone), "
        f"{t['ratio_by_bytes']:.2f}x by bytes",
        *([f"warning:     {t['ratio_warning']}"] if "ratio_warning" in t else []),
        "accuracy:    " + (f"packed - no-sharing control: mean {t['mean_packed_minus_control_pp']:+.2f} pp, worst DNN "
                            f"{t['worst_packed_minus_control_pp']:+.2f} pp; " if control else "")
        + f"packed - stand-alone: mean {t['mean_difference_pp']:+.2f} pp, worst DNN {t['worst_difference_pp']:+.2f} pp",
    ]
    return "\n".join(lines)
