"""Pack to an accuracy (`run --max-loss`): the smallest store whose every DNN keeps, on validation
data, within a stated loss of its own no-sharing control.

The store starts at its smallest (`smallest`): the shared pages the DNNs need (S, the largest DNN's
page count unless `--shared-pages` says otherwise) and no exclusive page but those a DNN larger than
S cannot share, packed and optimised as the main job. While some DNN's validation accuracy lies
more than its bound below its control's (`misses`), the store grows (`grow`): the joint optimiser
continues from the state it reached for a third of the main job's steps, with spare exclusive pages
that it hands out at its first check to the DNNs below their bound, furthest below first
(`PageOptimizer.promotions`, aimed at the bound). A round offers `PAGES_PER_PP` pages per percentage
point a DNN misses by, times 2 ** round. Measured so far, the rounds do not move the DNNs (the
continued optimisation does not beat the state it starts from; docs/pipeline.md): experimental.
Pages no DNN below its bound takes stay unused: the store is as large as the pages given
out. Each round is recorded (`Round`); test data is never looked at here: the caller scores it once,
on the last state.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .evaluate import packed_theta
from .group import Group
from .optimize import OptimizeConfig, optimize
from .pack import PackConfig, shared_pages_needed
from .page_optimizer import History
from .records import DNNRecord
from .separation import reach
from .state import PackedState

DEFAULT_MAX_LOSS_PP = 1.0  # a DNN named in no bound: the "within 1 pp of its control"
PAGES_PER_PP = 3  # first round's offer per DNN and pp missed (budget experiment: ~25 pages gained ~1.1 pp over 10 DNNs)
MAX_ROUNDS = 4  # rounds after the first: with GROW_SHARE, the search takes at most 1 + 4/3 main jobs of steps
GROW_SHARE = 3  # a growing round runs 1/GROW_SHARE of the main job's steps


@dataclass(frozen=True)
class Round:
    """One size the search tried: its exclusive pages, its weights, and what each DNN missed its bound by
    on validation (pp; 0 where it kept it)."""

    exclusive_pages: int
    packed_weights: int
    missed_pp: dict[str, float]

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
    tried, and a warning naming each DNN the last size still left outside its bound."""
    bounds = sorted(set(search["max_loss_pp"].values()))
    sizes = [r["exclusive_pages"] for r in search["rounds"]]
    lines = [f"max-loss:    within {' / '.join(f'{b:g}' for b in bounds)} pp of each DNN's no-sharing control on "
             f"validation; exclusive pages tried: {' -> '.join(map(str, sizes))}"]
    over = {n: pp for n, pp in search["rounds"][-1]["missed_pp"].items() if pp > 0}
    if over:
        lines.append(f"warning:     after {len(sizes) - 1} growing round(s) " + ", ".join(
            f"{n} missed its bound by {pp:.2f} pp" for n, pp in sorted(over.items(), key=lambda item: -item[1]))
            + " on validation; a looser bound for it, or more --steps, may keep it")
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


def grow(state: PackedState, records: dict[str, DNNRecord], bounds: dict[str, float], config: OptimizeConfig,
         group: Group | None = None) -> tuple[PackedState, History | None, list[Round]]:
    """Grow `state` (packed and optimised at its smallest) until every DNN's validation accuracy reaches
    its bound (`bounds`: accuracies, fractions), or MAX_ROUNDS rounds have run (see the module
    docstring). Returns the last state (its budget plan: the ratio reached), the last round's
    optimiser history (None when none ran) and every size tried, the first included."""
    group = group or Group.current()
    mine = [n for n, record in records.items() if record.data is not None]
    tasks = {n: records[n].task(records[n].reference.theta, records[n].batches) for n in mine}
    rounds, history = [_round(state, misses(state, records, bounds, group))], None
    for k in range(MAX_ROUNDS):
        missed = rounds[-1].missed_pp
        offer = sum(math.ceil(PAGES_PER_PP * 2 ** k * pp) for pp in missed.values())
        if offer == 0:
            break
        grown = replace(config, steps=max(1, config.steps // GROW_SHARE), promote_pages=offer, promote_start=0.0,
                        promote_end=0.0)
        state, history = optimize(state, tasks, grown, group=group, targets=bounds)
        rounds.append(_round(state, misses(state, records, bounds, group)))
    reached = sum(v.n_weights for v in state.vnns.values()) / rounds[-1].packed_weights
    budget = {**state.config.budget, "ratio": reached, "exclusive_pages": rounds[-1].exclusive_pages, "spare": 0}
    return state.replace(config=replace(state.config, budget=budget)), history, rounds
