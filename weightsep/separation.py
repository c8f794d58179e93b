"""Separation (WS only): which logical pages of a DNN stay exclusive, which get shared.

Takes a DNN's Fisher vector (and, for a target accuracy, its outputs on training data) and returns
the exclusive logical pages in the order they were chosen and the sharable rest (docs/algorithms.md §3.3):

* contribution density of page j: cd_j = sum(F in page j) / sum(F);
* pages sorted by cd descending become exclusive while `tpr - cumulative_cd >= margin` (checked
  before each page is taken, as the published code does, so the page that crosses the line is
  still taken);
* `tpr` is 1.0 without a target accuracy; with one, `target_performance_rate` below;
* overflow: if more sharable pages remain than there are shared pages, the next-highest-cd pages
  become exclusive until the rest fit.

    sep = separate(fisher, page_size=512, n_shared=128, margin=0.1)
    sep.exclusive, sep.sharable          # logical page indices

Two ways to decide how many pages each DNN keeps, by name (`SEPARATIONS`):

* "margin" (published WS): each DNN alone, by the margin rule above. The packed size then follows
  how concentrated each DNN's Fisher is, so it changes from machine to machine and seed to seed.
* "budget" (default): the DNNs packed together get one exclusive-page budget, set by the packing
  ratio asked for (`exclusive_budget`). Part of it is shared out evenly at packing time (each DNN
  its pages of highest cd, `allot`); the rest is a reserve that the joint optimiser hands out one
  page at a time to the DNNs whose validation accuracy lags their stand-alone accuracy most
  (`weightsep.optimize`, promotion). So memory is fixed by the user and accuracy decides where it goes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .pages import n_pages, to_pages


@dataclass(frozen=True)
class SeparationRule:
    """What a separation (chosen by name, `RULES`) means for the stages around it."""

    plans_a_set: bool  # one exclusive-page budget for the DNNs packed together: it packs a set into a new
    # store (never adds to one), and its spare pages are the optimiser's to promote (`--promote-pages` is its)
    help: str


RULES = {
    "budget": SeparationRule(True, "one exclusive-page budget for the set, from --ratio; the rest promoted by accuracy"),
    "margin": SeparationRule(False, "published WS: each DNN keeps pages until 1 - margin of its Fisher mass"),
}
SEPARATIONS = tuple(RULES)


@dataclass
class Separation:
    exclusive: torch.Tensor  # int64 logical pages kept exclusive, in the order chosen (highest cd first)
    sharable: torch.Tensor  # int64 logical pages to overlap onto shared pages, ascending
    contribution_density: torch.Tensor  # float64 [n_pages], sums to 1
    n_overflow: int  # exclusive pages added only because the sharable ones did not fit
    tpr: float


def contribution_density(fisher: torch.Tensor, page_size: int) -> torch.Tensor:
    """cd_j = Fisher mass of page j / total Fisher mass (float64; uniform if the Fisher is all zero)."""
    mass = to_pages(fisher.double(), page_size).sum(1)
    total = mass.sum()
    return mass / total if total > 0 else torch.full_like(mass, 1.0 / len(mass))


def target_performance_rate(probs: torch.Tensor, labels: torch.Tensor, target_accuracy: float,
                            alpha: float = 0.5) -> float:
    """WS's tpr from a DNN's output probabilities [N, C] on training data and a target accuracy.

    q = L2-normalised output row; loss = mean of -log q_label over samples with q_label <= alpha
    (0 for the others); alpha_acc = fraction with q_label > alpha; target_loss = loss * (alpha_acc
    + 1 - target); tpr = max(0, 1 - (target_loss - loss) / loss). A lower target gives a lower
    tpr, hence fewer exclusive pages.
    """
    if not 0.0 <= target_accuracy <= 1.0:
        raise ValueError(f"target accuracy is a fraction in [0, 1], got {target_accuracy}")
    q = probs.double() / probs.double().norm(dim=1, keepdim=True)
    q_label = q.gather(1, labels.view(-1, 1)).squeeze(1)
    low = q_label <= alpha
    loss = torch.where(low, -q_label.clamp_min(1e-300).log(), torch.zeros_like(q_label)).mean().item()
    alpha_acc = (~low).double().mean().item()
    if loss == 0.0:  # every sample above alpha: the ratio's limit, (alpha_acc - target)
        return max(0.0, 1.0 - (alpha_acc - target_accuracy))
    target_loss = loss * (alpha_acc + 1.0 - target_accuracy)
    return max(0.0, 1.0 - (target_loss - loss) / loss)


def separate(fisher: torch.Tensor, page_size: int, n_shared: int, margin: float = 0.1,
             tpr: float = 1.0, n_exclusive: int | None = None) -> Separation:
    """Split a DNN's logical pages into exclusive and sharable ones (see the module docstring).

    `n_exclusive` given (the budget separation, `weightsep.budget`): the `n_exclusive` pages of
    highest cd are exclusive, whatever the margin; overflow still applies.
    """
    if not 0.0 <= margin <= 1.0:
        raise ValueError(f"margin must be in [0, 1], got {margin}")
    cd = contribution_density(fisher, page_size)
    order = torch.argsort(cd, descending=True, stable=True)
    total = n_pages(fisher.numel(), page_size)
    if n_exclusive is None:
        cumulative = torch.cumsum(cd[order], 0)
        before = torch.cat([cd.new_zeros(1), cumulative[:-1]])  # cd already taken when page i is considered
        chosen = tpr - before >= margin
        n_exclusive = int(chosen.long().cumprod(0).sum())  # stop at the first page that fails
    elif not 0 <= n_exclusive <= total:
        raise ValueError(f"n_exclusive must be in [0, {total}], got {n_exclusive}")
    n_overflow = max(0, total - n_exclusive - n_shared)
    n_exclusive += n_overflow
    return Separation(
        exclusive=order[:n_exclusive].clone(),
        sharable=torch.sort(order[n_exclusive:]).values,
        contribution_density=cd,
        n_overflow=n_overflow,
        tpr=tpr,
    )


def exclusive_budget(n_weights: list[int], page_size: int, n_shared: int, ratio: float) -> int:
    """Exclusive pages that keep the packed store `ratio` times smaller than the stand-alone DNNs by
    weight count: floor(sum(n) / (ratio P)) - S, at least 0 (then the ratio cannot be reached)."""
    if ratio <= 0:
        raise ValueError(f"ratio must be positive, got {ratio}")
    return max(0, int(sum(n_weights) // (ratio * page_size)) - n_shared)


def allot(budget: int, pages: dict[str, int], n_shared: int, at_packing: float) -> tuple[dict[str, int], int]:
    """Exclusive pages per DNN at packing time, and the reserve left for promotion.

    Each DNN first keeps what cannot be shared (its pages beyond S), then `at_packing` of the
    budget is shared out evenly (the remainder to the DNNs first in order); the rest is the reserve.
    The budget never goes below what cannot be shared.
    """
    if not 0.0 <= at_packing <= 1.0:
        raise ValueError(f"at_packing must be in [0, 1], got {at_packing}")
    counts = {name: max(0, p - n_shared) for name, p in pages.items()}
    free = max(0, budget - sum(counts.values()))
    now = round(free * at_packing)
    for i, name in enumerate(counts):
        counts[name] = min(pages[name], counts[name] + now // len(counts) + (i < now % len(counts)))
    return counts, max(0, budget - sum(counts.values()))
