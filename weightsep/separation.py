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

from collections.abc import Mapping
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
    weight count: floor(sum(n) / (ratio P)) - S, at least 0 (then the ratio may not be reached: `reach`)."""
    if ratio <= 0:
        raise ValueError(f"ratio must be positive, got {ratio}")
    return max(0, int(sum(n_weights) // (ratio * page_size)) - n_shared)


RATIO_TOLERANCE = 0.05  # a packing ratio within 5% of the one asked counts as reached (pages are whole)


@dataclass(frozen=True)
class Reach:
    """How far the budget separation can pack a set of DNNs by weight count, and what bounds it (`reach`).

    A DNN's pages lie on distinct shared pages, so its pages beyond the S shared pages stay exclusive
    whatever the ratio: the store holds at least S + those pages, never fewer than the largest DNN's."""

    weights: int  # the DNNs' weights, in all
    page_size: int  # P
    n_shared: int  # S
    beyond: int  # the DNNs' pages beyond S, in all
    largest: str  # the DNN of most pages
    pages: int  # its page count
    dnns: int  # how many DNNs

    @property
    def ratio(self) -> float:
        """The most these S shared pages reach: sum(n) / (P (S + the pages beyond S))."""
        return self.weights / (self.page_size * (self.n_shared + self.beyond))

    @property
    def best(self) -> float:
        """The most any S reaches: sum(n) / (P x the largest DNN's pages), at S = its pages."""
        return self.weights / (self.page_size * self.pages)

    def shortfall(self, asked: float, reached: float | None = None) -> str | None:
        """Why the ratio `asked` cannot be reached (`ratio` is more than `RATIO_TOLERANCE` below it): what
        prevents it and the ways out; None where it can. `reached`: the store's ratio by count, which is
        `ratio` as the budget packs it (the budget is then 0), another after `add` or `remove`."""
        if self.ratio >= (1 - RATIO_TOLERANCE) * asked:
            return None
        reached = self.ratio if reached is None else reached
        if self.n_shared > self.pages:
            why = f"S = {self.n_shared} shared pages are more than the largest DNN, {self.largest!r}, has ({self.pages})"
        elif self.n_shared == self.pages:
            why = f"DNN {self.largest!r} has {self.pages} pages and S = {self.n_shared} shared pages must hold them"
        else:
            why = (f"DNN {self.largest!r} has {self.pages} pages, more than S = {self.n_shared} shared pages hold: "
                   f"{self.beyond} pages beyond S stay exclusive")
        ways = [] if self.n_shared == self.pages else [f"leave --shared-pages unset (S = {self.pages}: at most {self.best:.2f}x)"]
        if self.best < (1 - RATIO_TOLERANCE) * asked:
            drop = ["drop it" if self.n_shared == self.pages else f"drop {self.largest!r}"] if self.dnns > 1 else []
            ways += [*drop, "pack more DNNs with it"]
        ways.append(f"ask for at most {self.ratio:.2f}x")
        return (f"ratio {asked:g} asked, {reached:.2f}x reached: {why}, so at most {self.ratio:.2f}x; "
                + ", ".join(ways[:-1]) + ("," if len(ways) > 2 else "") + " or " + ways[-1])


def reach(n_weights: Mapping[str, int], page_size: int, n_shared: int) -> Reach:
    """The `Reach` of DNNs of `n_weights` weights each (by name) in a store of `n_shared` shared pages."""
    pages = {name: n_pages(n, page_size) for name, n in n_weights.items()}
    largest = max(pages, key=pages.get)
    return Reach(sum(n_weights.values()), page_size, n_shared, sum(max(0, p - n_shared) for p in pages.values()),
                 largest, pages[largest], len(pages))


def allot(budget: int, pages: dict[str, int], n_shared: int, at_packing: float) -> tuple[dict[str, int], int]:
    """Exclusive pages per DNN at packing time, and the reserve left for promotion.

    Each DNN first keeps what cannot be shared (its pages beyond S), then `at_packing` of the rest of
    the budget is shared out evenly (the remainder to the DNNs first in order); the rest is the reserve. The budget
    never goes below what these first claims take.
    """
    if not 0.0 <= at_packing <= 1.0:
        raise ValueError(f"at_packing must be in [0, 1], got {at_packing}")
    counts = {name: max(0, p - n_shared) for name, p in pages.items()}
    free = max(0, budget - sum(counts.values()))
    now = round(free * at_packing)
    for i, name in enumerate(counts):
        counts[name] = min(pages[name], counts[name] + now // len(counts) + (i < now % len(counts)))
    return counts, max(0, budget - sum(counts.values()))
