"""Pack to an accuracy (`run --max-loss`): the smallest store whose every DNN keeps, on validation
data, within a stated loss of its own no-sharing control.

The search is over one number, the packing ratio: each size it tries is what `run --ratio R` packs
(the budget separation: its exclusive pages spread by Fisher mass, half at packing and half by
promotion), packed and optimised afresh, so a pass costs one main job's optimisation; stand-alone
models, Fisher and the control are made once. The first pass is the main job itself, at its ratio
(`start`), or the smallest store where that ratio cannot be reached. After each pass the worst DNN's
distance from its bound on validation (`over`, pp: > 0 missed, <= 0 kept with that much room) picks
the next ratio (`next_ratio`). A DNN counts as missing only by what its validation loss exceeds its
bound plus NOISE_SE standard errors of its control's validation accuracy (`noise`): on a validation
set of a few hundred samples (dna 200, instruments 336) that error is 1.5-2.6 pp, and the control's
accuracy, read at its best check, sits high by chance, so a smaller miss says nothing about the
store's size. From a size that missed, the store grows in ln(ratio) by the miss over
PP_PER_LOG_RATIO (a secant through two misses once there are two); from one that kept, it shrinks
the same way by the room, towards the smallest store; once a kept size and a missed one bracket the
bound, the next lies between them where the line through them crosses it. Each move is clamped to
STEP. The search stops when the bracket is within CLOSE, when the smallest store keeps, or after
MAX_PASSES, and returns the smallest size that kept every bound (else the largest tried, with a
warning). Measured against a grid of ratios in docs/pipeline.md; test data is never looked at here:
the caller scores the result once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .evaluate import packed_theta
from .fisher import FisherConfig
from .group import Group
from .optimize import OptimizeConfig
from .pack import PackConfig, shared_pages_needed
from .packing import pack_and_optimize_records
from .page_optimizer import History
from .pages import n_pages
from .precision import PrecisionConfig
from .records import DNNRecord
from .separation import reach
from .state import PackedState

DEFAULT_MAX_LOSS_PP = 1.0  # a DNN named in no bound: the "within 1 pp of its control"
# the first move's slope: the worst DNN's test loss (pp) per unit of ln(ratio), read off the budget
# experiment's ten suite DNNs between 4x and 6x on the tuning seeds 0-4 (docs/pipeline.md)
PP_PER_LOG_RATIO = 3.0
STEP = (math.log(1.15), math.log(2.0))  # a move in ln(ratio): at least 15% (a smaller one is lost in the noise), at most 2x
CLOSE = math.log(1.10)  # a kept size and a missed one this close: done (the "within 10%")
MAX_PASSES = 3  # passes in all, the first included: the search costs at most 3 main jobs' optimisation
NOISE_SE = 1.0  # standard errors of the control's validation accuracy a miss must exceed (not tuned: one SE)


@dataclass(frozen=True)
class Round:
    """One size the search tried: the ratio asked, its exclusive pages, its weights, and each DNN's
    validation loss beyond its bound (pp; > 0 missed by that much, <= 0 kept with that much room)."""

    ratio: float
    exclusive_pages: int
    packed_weights: int
    over_pp: dict[str, float]

    @property
    def worst(self) -> float:
        return max(self.over_pp.values())

    @property
    def kept(self) -> bool:
        """Every DNN within its bound at this size."""
        return self.worst <= 0

    def to_json(self) -> dict:
        return {"ratio": self.ratio, "exclusive_pages": self.exclusive_pages, "packed_weights": self.packed_weights,
                "over_pp": self.over_pp}


def check(max_loss: float | None, by_dnn: dict[str, float], names: list[str], control: bool,
          optimize_config: OptimizeConfig, pack_config: PackConfig) -> None:
    """What `--max-loss` needs, checked before any work: a ValueError naming the flag otherwise."""
    for name, pp in ({"--max-loss": max_loss} | {f"--max-loss {n}=": v for n, v in by_dnn.items()}).items():
        if pp is not None and not (math.isfinite(pp) and pp >= 0):
            raise ValueError(f"{name}{'' if name.endswith('=') else ' '}{pp}: a loss bound is a number of pp >= 0")
    unknown = sorted(set(by_dnn) - set(names))
    if unknown:
        raise ValueError(f"--max-loss names DNN(s) not in the run: {', '.join(unknown)} (the run's: {', '.join(names)})")
    if not control:
        raise ValueError("--max-loss bounds each DNN's loss against its no-sharing control: drop --no-control")
    if optimize_config.optimizer != "joint":
        raise ValueError(f"--max-loss sizes the store the joint optimiser fills (--optimizer {optimize_config.optimizer})")
    if pack_config.mode != "ws":
        raise ValueError("--max-loss sizes the exclusive pages: it needs --mode ws")


def losses(names: list[str], max_loss: float | None, by_dnn: dict[str, float]) -> dict[str, float]:
    """Each DNN's bound (pp): its own, else `max_loss`, else DEFAULT_MAX_LOSS_PP."""
    default = DEFAULT_MAX_LOSS_PP if max_loss is None else max_loss
    return {n: by_dnn.get(n, default) for n in names}


def limits(config: PackConfig, sizes: dict[str, int]) -> tuple[float, float]:
    """The ratios (by count) the search moves between: the smallest store's (no page exclusive but those a
    DNN larger than S cannot share: the largest reachable) and the largest store's (every page exclusive)."""
    n_shared = shared_pages_needed(list(sizes.values()), config)
    total_pages = sum(n_pages(n, config.page_size) for n in sizes.values())
    return (reach(sizes, config.page_size, n_shared).ratio,
            sum(sizes.values()) / (config.page_size * (n_shared + total_pages)))


def start(config: PackConfig, sizes: dict[str, int]) -> PackConfig:
    """The search's first pass: the budget separation at `config`'s ratio (the main job's), or at the
    smallest store's where that ratio cannot be reached."""
    return replace(config, separation="budget", ratio=min(config.ratio, limits(config, sizes)[0]))


def noise(records: dict[str, DNNRecord], control_val: dict[str, float], group: Group) -> dict[str, float]:
    """Each DNN's allowance for validation noise (pp): NOISE_SE binomial standard errors of its control's
    validation accuracy on its validation set."""
    mine = {n: NOISE_SE * 100 * math.sqrt(control_val[n] * (1 - control_val[n]) / len(record.data.val.y))
            for n, record in records.items() if record.data is not None}
    return group.all_merged(mine)


def over(state: PackedState, records: dict[str, DNNRecord], bounds: dict[str, float],
         group: Group) -> dict[str, float]:
    """pp by which each DNN's validation accuracy lies below its bound (`bounds`: accuracies, fractions,
    the noise allowance included); negative where it lies above."""
    val = {n: records[n].accuracy(packed_theta(state, n, records[n].model), "val")
           for n, record in records.items() if record.data is not None}
    return {n: 100 * (bounds[n] - a) for n, a in group.all_merged(val).items()}


def next_ratio(tried: list[tuple[float, float]], top: float, bottom: float) -> float | None:
    """The ratio to try next from the (ratio, worst DNN's pp over its bound) tried so far, or None when
    done; `top`, `bottom`: the smallest and the largest store's ratios (see the module docstring)."""
    def move(pp: float, slope: float) -> float:
        return min(max(pp / slope, STEP[0]), STEP[1])

    kept = [t for t in tried if t[1] <= 0]
    missed = sorted(t for t in tried if t[1] > 0)
    if kept:
        ratio, room = max(kept)  # the smallest store that kept
        above = [t for t in missed if t[0] > ratio]
        if above:  # bracketed: between the two, where the line through them crosses the bound
            hi, miss = above[0]
            if math.log(hi / ratio) <= CLOSE:
                return None
            share = min(max(-room / (miss - room), 0.25), 0.75)
            return ratio * (hi / ratio) ** share
        if ratio >= top * (1 - 1e-9):
            return None
        return min(top, ratio * math.exp(move(-room, PP_PER_LOG_RATIO)))
    (ratio, miss), *rest = missed  # none kept: grow from the largest store tried
    if ratio <= bottom * (1 + 1e-9):
        return None
    slope = PP_PER_LOG_RATIO
    if rest and rest[0][1] > miss:  # a secant through the two largest stores that missed
        slope = (rest[0][1] - miss) / math.log(rest[0][0] / ratio)
    return max(bottom, ratio * math.exp(-move(miss, slope)))


def described(search: dict) -> str:
    """The search as summary.json records it (`max_loss`), in lines for the table: the bounds, the sizes
    tried, and the one kept, or a warning naming each DNN the largest size tried still left outside its bound."""
    bounds = sorted(set(search["max_loss_pp"].values()))
    rounds = [Round(**r) for r in search["rounds"]]
    noise = search["noise_pp"].values()
    lines = [f"max-loss:    within {' / '.join(f'{b:g}' for b in bounds)} pp of each DNN's no-sharing control on "
             f"validation, plus {NOISE_SE:g} standard error of the control's validation accuracy "
             f"({min(noise):.2f}-{max(noise):.2f} pp); ratios tried: {' -> '.join(f'{r.ratio:.2f}' for r in rounds)} "
             f"(worst DNN {', '.join(f'{r.worst:+.2f}' for r in rounds)} pp over its bound)"]
    kept = [r for r in rounds if r.kept]
    if kept:
        best = min(kept, key=lambda r: r.packed_weights)
        lines.append(f"kept:        ratio {best.ratio:.2f} ({best.exclusive_pages} exclusive pages), the smallest "
                     "size tried that keeps every bound")
    else:
        largest = max(rounds, key=lambda r: r.packed_weights)
        lines.append(f"warning:     after {len(rounds)} pass(es) " + ", ".join(
            f"{n} missed its bound by {pp:.2f} pp" for n, pp in sorted(largest.over_pp.items(), key=lambda i: -i[1])
            if pp > 0) + " on validation at the largest store tried, the one kept; a looser bound for it, "
            "or more --steps, may keep it")
    return "\n".join(lines)


def notes(seed: dict) -> str:
    """The lines under one seed's table (`SeedSummary.to_json`): a --max-loss run's search (`described`);
    for a run packed to a ratio, each DNN that ended more than DEFAULT_MAX_LOSS_PP below its no-sharing
    control on test, and the flags that would give it more of the store ("" where none did, or where
    the run had no control)."""
    if "max_loss" in seed:
        return described(seed["max_loss"])
    over = sorted((r["packed_minus_control_pp"], r["name"]) for r in seed["rows"]
                   if r.get("packed_minus_control_pp") is not None and r["packed_minus_control_pp"] < -DEFAULT_MAX_LOSS_PP)
    if not over:
        return ""
    return (f"warning:     {', '.join(f'{name} {pp:+.2f} pp' for pp, name in over)} against the no-sharing control "
            f"on test: beyond {DEFAULT_MAX_LOSS_PP:g} pp. A lower --ratio leaves the DNNs more exclusive pages; "
            f"--max-loss {DEFAULT_MAX_LOSS_PP:g} searches for the smallest store that keeps each within "
            f"{DEFAULT_MAX_LOSS_PP:g} pp on validation (experimental: docs/pipeline.md)")


def search(records: dict[str, DNNRecord], bounds: dict[str, float], first: tuple[PackedState, History],
           pack_config: PackConfig, fisher_config: FisherConfig, optimize_config: OptimizeConfig,
           precision_config: PrecisionConfig | None = None, group: Group | None = None,
           ) -> tuple[PackedState, History, list[Round]]:
    """The smallest store found whose every DNN's validation accuracy reaches its bound (`bounds`:
    accuracies, fractions), from `first` (packed with `pack_config`, `start`'s, and optimised); see the
    module docstring. Returns that state (its budget plan: the ratio reached), its optimiser history
    and every size tried, in order."""
    group = group or Group.current()
    sizes = {n: record.model.n_weights for n, record in records.items()}
    top, bottom = limits(pack_config, sizes)
    passes = [(*first, _round(first[0], pack_config.ratio, over(first[0], records, bounds, group)))]
    while len(passes) < MAX_PASSES:
        ratio = next_ratio([(p[2].ratio, p[2].worst) for p in passes], top, bottom)
        if ratio is None:
            break
        state, history, _, _ = pack_and_optimize_records(records, replace(pack_config, ratio=ratio), fisher_config,
                                                         optimize_config, precision_config, group)
        passes.append((state, history, _round(state, ratio, over(state, records, bounds, group))))
    kept = [p for p in passes if p[2].kept]
    state, history, chosen = (min(kept, key=lambda p: p[2].packed_weights) if kept
                              else max(passes, key=lambda p: p[2].packed_weights))
    reached = sum(sizes.values()) / chosen.packed_weights
    return (state.replace(config=replace(state.config, budget={**state.config.budget, "ratio": reached})), history,
            [p[2] for p in passes])


def _round(state: PackedState, ratio: float, over_pp: dict[str, float]) -> Round:
    exclusive = sum(v.n_exclusive for v in state.vnns.values())
    return Round(ratio, exclusive, state.page_size * (state.n_shared + exclusive), over_pp)
