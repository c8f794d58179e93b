"""Pack to an accuracy (`run --max-loss`): the smallest store whose every DNN keeps, on validation
data, within a stated loss of its own no-sharing control.

The search packs and optimises the DNNs afresh for each size it tries (a pass costs one main job's
optimisation; stand-alone models, Fisher and the control are made once). The first pass is the
smallest store (`smallest`): the shared pages the DNNs need (S, the largest DNN's page count unless
`--shared-pages` says otherwise) and no exclusive page but those a DNN larger than S cannot share.
After each pass, every DNN whose validation accuracy lies more than its bound below its control's
(`misses`) is offered more of the store for the next: `PAGES_PER_PP` exclusive pages per percentage
point it missed by, doubled each pass, added to what it was offered before. The next pass packs
afresh with those pages exclusive from the start (its pages of highest Fisher mass, holding its
stand-alone weights: `separation.allot`'s `extra`) and the budget no larger, so nothing is left to
promote. (Pages handed out later by promotion start from the shared page's content; measured, they
kept the DNNs that missed further from their bounds than the same pages given at packing.) The
search stops at the first size that keeps every bound, or after MAX_PASSES, and returns the smallest
size that kept them all (else the last). Test data is never looked at here: the caller scores the result once.
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
from .precision import PrecisionConfig
from .records import DNNRecord
from .separation import reach
from .state import PackedState

DEFAULT_MAX_LOSS_PP = 1.0  # a DNN named in no bound: the "within 1 pp of its control"
PAGES_PER_PP = 12  # a missing DNN's first offer per pp it missed by (tuning seed 0: about 12-14 pages per pp; docs/pipeline.md)
MAX_PASSES = 3  # passes in all, the smallest store's included: the search costs at most 3 main jobs' optimisation


@dataclass(frozen=True)
class Round:
    """One size the search tried: its exclusive pages, its weights, and what each DNN missed its bound by
    on validation (pp; 0 where it kept it)."""

    exclusive_pages: int
    packed_weights: int
    missed_pp: dict[str, float]

    @property
    def kept(self) -> bool:
        """Every DNN within its bound at this size."""
        return not any(pp > 0 for pp in self.missed_pp.values())

    def to_json(self) -> dict:
        return {"exclusive_pages": self.exclusive_pages, "packed_weights": self.packed_weights,
                "missed_pp": self.missed_pp}


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
        raise ValueError(f"--max-loss grows the store by promotion, which only the joint optimiser does "
                         f"(--optimizer {optimize_config.optimizer})")
    if pack_config.mode != "ws":
        raise ValueError("--max-loss sizes the exclusive pages: it needs --mode ws")


def losses(names: list[str], max_loss: float | None, by_dnn: dict[str, float]) -> dict[str, float]:
    """Each DNN's bound (pp): its own, else `max_loss`, else DEFAULT_MAX_LOSS_PP."""
    default = DEFAULT_MAX_LOSS_PP if max_loss is None else max_loss
    return {n: by_dnn.get(n, default) for n in names}


def smallest(config: PackConfig, sizes: dict[str, int]) -> PackConfig:
    """`config` packing DNNs of `sizes` weights into the smallest store they fit: the budget separation at the
    ratio its S reaches, so no page is exclusive but those a DNN larger than S cannot share."""
    n_shared = shared_pages_needed(list(sizes.values()), config)
    return replace(config, separation="budget", ratio=reach(sizes, config.page_size, n_shared).ratio)


def misses(state: PackedState, records: dict[str, DNNRecord], bounds: dict[str, float],
           group: Group) -> dict[str, float]:
    """pp by which each DNN's validation accuracy lies below its bound (an accuracy, a fraction); 0 if not."""
    val = {n: records[n].accuracy(packed_theta(state, n, records[n].model), "val")
           for n, record in records.items() if record.data is not None}
    return {n: max(0.0, 100 * (bounds[n] - a)) for n, a in group.all_merged(val).items()}


def described(search: dict) -> str:
    """The search as summary.json records it (`max_loss`), in lines for the table: the bounds, the sizes
    tried, and the one kept, or a warning naming each DNN the last size still left outside its bound."""
    bounds = sorted(set(search["max_loss_pp"].values()))
    rounds = search["rounds"]
    lines = [f"max-loss:    within {' / '.join(f'{b:g}' for b in bounds)} pp of each DNN's no-sharing control on "
             f"validation; exclusive pages tried: {' -> '.join(str(r['exclusive_pages']) for r in rounds)}"]
    kept = [r for r in rounds if Round(**r).kept]
    if kept:
        lines.append(f"kept:        {min(kept, key=lambda r: r['packed_weights'])['exclusive_pages']} exclusive pages, "
                     "the smallest size tried that keeps every bound")
    else:
        over = {n: pp for n, pp in rounds[-1]["missed_pp"].items() if pp > 0}
        lines.append(f"warning:     after {len(rounds)} pass(es) " + ", ".join(
            f"{n} missed its bound by {pp:.2f} pp" for n, pp in sorted(over.items(), key=lambda item: -item[1]))
            + " on validation; the store kept is the last; a looser bound for it, or more --steps, may keep it")
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


def _round(state: PackedState, missed: dict[str, float]) -> Round:
    exclusive = sum(v.n_exclusive for v in state.vnns.values())
    return Round(exclusive, state.page_size * (state.n_shared + exclusive), missed)


def search(records: dict[str, DNNRecord], bounds: dict[str, float], first: tuple[PackedState, History],
           pack_config: PackConfig, fisher_config: FisherConfig, optimize_config: OptimizeConfig,
           precision_config: PrecisionConfig | None = None, group: Group | None = None,
           ) -> tuple[PackedState, History, list[Round]]:
    """The smallest store found whose every DNN's validation accuracy reaches its bound (`bounds`:
    accuracies, fractions), from `first` (the smallest store, packed with `pack_config` and optimised);
    see the module docstring. Returns that state (its budget plan: the ratio reached), its optimiser
    history and every size tried, in order."""
    group = group or Group.current()
    sizes = {n: record.model.n_weights for n, record in records.items()}
    passes = [(*first, _round(first[0], misses(first[0], records, bounds, group)))]
    floor = passes[0][2].exclusive_pages  # the smallest store's: only what no DNN can share
    offered: dict[str, int] = {}
    for k in range(1, MAX_PASSES):
        missed = {n: pp for n, pp in passes[-1][2].missed_pp.items() if pp > 0}
        if not missed:
            break
        for n, pp in missed.items():
            offered[n] = offered.get(n, 0) + math.ceil(PAGES_PER_PP * 2 ** (k - 1) * pp)
        config = replace(pack_config, ratio=_ratio_for(sizes, pack_config.page_size, first[0].n_shared,
                                                       floor + sum(offered.values())))
        state, history, _, _ = pack_and_optimize_records(records, config, fisher_config, optimize_config,
                                                         precision_config, group, extra=offered)
        passes.append((state, history, _round(state, misses(state, records, bounds, group))))
    kept = [p for p in passes if p[2].kept]
    state, history, last = min(kept, key=lambda p: p[2].packed_weights) if kept else passes[-1]
    reached = sum(sizes.values()) / last.packed_weights
    budget = {**state.config.budget, "ratio": reached, "exclusive_pages": last.exclusive_pages, "spare": 0}
    return state.replace(config=replace(state.config, budget=budget)), history, [p[2] for p in passes]


def _ratio_for(sizes: dict[str, int], page_size: int, n_shared: int, exclusive: int) -> float:
    """The ratio by weight count whose budget (`separation.exclusive_budget`) is `exclusive` pages:
    half a page above the store's size, so the floor there lands on it."""
    return sum(sizes.values()) / (page_size * (n_shared + exclusive + 0.5))
