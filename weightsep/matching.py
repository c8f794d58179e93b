"""Matching: assign a new DNN's sharable pages to distinct shared pages at least Fisher-weighted cost.

Arrays in, arrays out, no disk; everything is computed in float64. Takes

    w_a, F_a         [m, P]  the new DNN's sharable pages and their per-weight Fisher
    w_shared         [S, P]  the shared pages' current content
    F_shared         [S, P]  accumulated Fisher: the sum of the Fisher of all pages mapped onto each
    occupancy        [S]     how many DNNs already map a page onto each shared page

and returns, for each sharable page, the index of its shared page (all distinct; needs m <= S).
The cost of putting page a on shared page b is (docs/algorithms.md §3.4)

    cost(a, b) = sum_p (F_a[p] + F*_b[p]) * (w_a[p] - w*_b[p])^2   over p with F_a[p] > 0 and F*_b[p] > 0

so an unoccupied shared page (F* = 0) costs nothing. Matchers, by name in `MATCHERS`:

* "greedy": the published two-sided, occupancy-first greedy (the original CUDA `PageAlloc`),
  the paper-faithful mode.
* "optimal": the exact minimum-cost assignment (Hungarian-type solver), unconstrained.
* "optimal-occupancy": the exact minimum under the greedy's occupancy footprint (as many pages into
  each occupancy tier as the greedy puts there); never costs more than the greedy.
* "random": a uniformly random assignment that ignores the cost, the control against which the
  others' lower cost is measured (seeded by the DNN's pages, so a run repeats).

Reference convention for comparing matchers (`place`): a shared page holds its first occupant's
weights and accumulates every occupant's Fisher. The pipeline retrains the shared pages afterwards,
so this is the state matching sees, not the final one.

    state = empty_state(n_shared, page_size)
    state = place(np.arange(len(w0)), w0, F0, *state)            # the first DNN: identity
    result = match("optimal", w1, F1, *state)                    # MatchResult: assignment, cost, ...
    state = place(result.assignment, w1, F1, *state)
"""
from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy.optimize import linear_sum_assignment


class SharedState(NamedTuple):
    """What matching needs to know about the shared pages (see the module docstring)."""

    weights: np.ndarray  # [S, P] float64, content of each shared page
    fisher: np.ndarray  # [S, P] float64, accumulated Fisher of the pages mapped onto it
    occupancy: np.ndarray  # [S] int64, number of DNNs mapping a page onto it


@dataclass
class MatchResult:
    assignment: np.ndarray  # [m] int64, shared page index of each sharable page
    cost: float  # total cost of the assignment (sum of cost(a, assignment[a]))
    seconds: float  # wall time of the matcher, cost matrix included
    occupancy_after: np.ndarray  # [S] occupancy once the DNN is placed
    layout: dict[int, int]  # prior occupancy of the chosen shared pages -> how many pages went there


def _fisher(F: np.ndarray) -> np.ndarray:
    """Fisher in float64 with non-positive entries zeroed: the originals treat F <= 0 as absent."""
    F = np.asarray(F, dtype=np.float64)
    return np.where(F > 0, F, 0.0)


def cost_matrix(w_a: np.ndarray, F_a: np.ndarray, w_shared: np.ndarray, F_shared: np.ndarray) -> np.ndarray:
    """All pair costs [m, S] with one matrix product A @ B.T (docs/algorithms.md §3.4), clipped at 0 against rounding."""
    w_a, w_s = np.asarray(w_a, dtype=np.float64), np.asarray(w_shared, dtype=np.float64)
    F_a, F_s = _fisher(F_a), _fisher(F_shared)
    if w_a.ndim != 2 or w_a.shape != F_a.shape or w_s.shape != F_s.shape or w_s.ndim != 2:
        raise ValueError(f"want w_a, F_a [m, P] and w_shared, F_shared [S, P]; got {w_a.shape}, {F_a.shape}, "
                         f"{w_s.shape}, {F_s.shape}")
    if w_a.shape[1] != w_s.shape[1]:
        raise ValueError(f"page sizes differ: new DNN {w_a.shape[1]}, shared pages {w_s.shape[1]}")
    M_a, M_s = (F_a > 0).astype(np.float64), (F_s > 0).astype(np.float64)
    A = np.concatenate([F_a * w_a**2, F_a, F_a * w_a, M_a * w_a**2, M_a, M_a * w_a], axis=1)
    B = np.concatenate([M_s, M_s * w_s**2, -2 * M_s * w_s, F_s, F_s * w_s**2, -2 * F_s * w_s], axis=1)
    return np.maximum(A @ B.T, 0.0)


def pair_costs(w_a: np.ndarray, F_a: np.ndarray, w_b: np.ndarray, F_b: np.ndarray) -> np.ndarray:
    """cost(a_i, b_i) of aligned pages [m, P] -> [m], straight from the definition (no expansion)."""
    F_a, F_b = _fisher(F_a), _fisher(F_b)
    both = (F_a > 0) & (F_b > 0)
    diff = np.asarray(w_a, dtype=np.float64) - np.asarray(w_b, dtype=np.float64)
    return np.where(both, (F_a + F_b) * diff**2, 0.0).sum(axis=1)


def _problem(w_a: np.ndarray, F_a: np.ndarray, w_shared: np.ndarray, F_shared: np.ndarray,
             occupancy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validated cost matrix [m, S] and occupancy [S] shared by all matchers."""
    cost = cost_matrix(w_a, F_a, w_shared, F_shared)
    occupancy = np.asarray(occupancy, dtype=np.int64)
    m, S = cost.shape
    if occupancy.shape != (S,):
        raise ValueError(f"occupancy must be [S] = [{S}], got shape {occupancy.shape}")
    if m > S:
        raise ValueError(f"{m} sharable pages do not fit {S} shared pages (make more pages exclusive)")
    return cost, occupancy


def _tier_quota(occupancy: np.ndarray, m: int) -> list[tuple[np.ndarray, int]]:
    """The greedy's occupancy footprint: (shared pages of a tier, how many the DNN takes there),
    lowest occupancy first; every tier is filled except possibly the last (the partial tier)."""
    quota, left = [], m
    for level in np.unique(occupancy):
        if left == 0:
            break
        pages = np.flatnonzero(occupancy == level)
        take = min(len(pages), left)
        quota.append((pages, take))
        left -= take
    return quota


def _heaviest_first(pages: np.ndarray, mass: np.ndarray) -> np.ndarray:
    """Pages sorted by Fisher mass, descending; ties keep index order so results are reproducible."""
    return pages[np.argsort(-mass[pages], kind="stable")]


def _two_sided(cost: np.ndarray, dnn_mass: np.ndarray, shared_mass: np.ndarray) -> np.ndarray:
    """One tier of the published greedy on a square [n, n] cost block whose rows (DNN pages) and
    columns (shared pages) are both sorted heaviest first: while pages remain, the heavier head
    takes its cheapest still-free partner. Equal masses: the DNN page takes (as in `PageAlloc`);
    equal costs: the heavier partner."""
    n = len(dnn_mass)
    cost = cost.copy()
    col_of_row = np.full(n, -1, dtype=np.int64)
    row_taken, col_taken = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    row_head = col_head = 0
    for _ in range(n):
        while row_taken[row_head]:
            row_head += 1
        while col_taken[col_head]:
            col_head += 1
        if shared_mass[col_head] > dnn_mass[row_head]:
            row, col = int(np.argmin(cost[:, col_head])), col_head
        else:
            row, col = row_head, int(np.argmin(cost[row_head]))
        col_of_row[row] = col
        row_taken[row] = col_taken[col] = True
        cost[row, :] = np.inf
        cost[:, col] = np.inf
    return col_of_row


def greedy(w_a: np.ndarray, F_a: np.ndarray, w_shared: np.ndarray, F_shared: np.ndarray,
           occupancy: np.ndarray) -> np.ndarray:
    """Published greedy (docs/algorithms.md §3.4), tier by tier, lowest occupancy first: the tier's heaviest
    surplus shared pages stay free, the DNN's lightest surplus pages wait for the next tier."""
    cost, occupancy = _problem(w_a, F_a, w_shared, F_shared, occupancy)
    dnn_mass, shared_mass = _fisher(F_a).sum(axis=1), _fisher(F_shared).sum(axis=1)
    assignment = np.full(len(cost), -1, dtype=np.int64)
    waiting = _heaviest_first(np.arange(len(cost)), dnn_mass)
    for pages, take in _tier_quota(occupancy, len(cost)):
        tier = _heaviest_first(pages, shared_mass)[len(pages) - take :]
        rows, waiting = waiting[:take], waiting[take:]
        cols = _two_sided(cost[np.ix_(rows, tier)], dnn_mass[rows], shared_mass[tier])
        assignment[rows] = tier[cols]
    return assignment


def _min_cost_assignment(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """linear_sum_assignment; a square problem is first reduced by its row then column minima, which
    leaves the optimum unchanged and, as the solver starts from zero duals, makes it faster on the
    NWV pages (docs/results.md#code-notes). (A rectangular one cannot be column-reduced: not every column
    is used.)"""
    if cost.shape[0] == cost.shape[1]:
        cost = cost - cost.min(axis=1, keepdims=True)
        cost -= cost.min(axis=0, keepdims=True)
    return linear_sum_assignment(cost)


def optimal(w_a: np.ndarray, F_a: np.ndarray, w_shared: np.ndarray, F_shared: np.ndarray,
            occupancy: np.ndarray) -> np.ndarray:
    """Exact minimum-cost assignment over all shared pages, ignoring occupancy."""
    cost, _ = _problem(w_a, F_a, w_shared, F_shared, occupancy)
    rows, cols = _min_cost_assignment(cost)
    assignment = np.empty(len(cost), dtype=np.int64)
    assignment[rows] = cols
    return assignment


def optimal_occupancy(w_a: np.ndarray, F_a: np.ndarray, w_shared: np.ndarray, F_shared: np.ndarray,
                      occupancy: np.ndarray) -> np.ndarray:
    """Exact minimum-cost assignment with the greedy's occupancy footprint, as ONE square problem:
    columns are the footprint's tiers, dummy rows fill the partial tier's unused pages and may take
    only those (infinite cost elsewhere), so every full tier is used completely."""
    cost, occupancy = _problem(w_a, F_a, w_shared, F_shared, occupancy)
    quota = _tier_quota(occupancy, len(cost))
    if not quota:  # no sharable pages (all exclusive)
        return np.empty(0, dtype=np.int64)
    cols = np.concatenate([pages for pages, _ in quota])
    dummy_allowed = np.concatenate([np.full(len(pages), take < len(pages)) for pages, take in quota])
    n_dummy = len(cols) - len(cost)
    dummy = np.broadcast_to(np.where(dummy_allowed, 0.0, np.inf), (n_dummy, len(cols)))
    rows, chosen = _min_cost_assignment(np.vstack([cost[:, cols], dummy]))
    real = rows < len(cost)
    assignment = np.empty(len(cost), dtype=np.int64)
    assignment[rows[real]] = cols[chosen[real]]
    return assignment


def random_assignment(w_a: np.ndarray, F_a: np.ndarray, w_shared: np.ndarray, F_shared: np.ndarray,
                      occupancy: np.ndarray) -> np.ndarray:
    """Distinct shared pages drawn uniformly at random, whatever they cost."""
    seed = int.from_bytes(hashlib.sha256(np.ascontiguousarray(w_a).tobytes()).digest()[:8], "little")
    return np.random.default_rng(seed).permutation(len(w_shared))[: len(w_a)].astype(np.int64)


Matcher = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]
MATCHERS: dict[str, Matcher] = {"optimal": optimal, "optimal-occupancy": optimal_occupancy, "greedy": greedy,
                                "random": random_assignment}


def match(method: str, w_a: np.ndarray, F_a: np.ndarray, w_shared: np.ndarray, F_shared: np.ndarray,
          occupancy: np.ndarray) -> MatchResult:
    """Run the matcher named `method` and describe its assignment (cost, seconds, occupancy layout)."""
    if method not in MATCHERS:
        raise ValueError(f"unknown matcher {method!r}; choose from {', '.join(MATCHERS)}")
    start = time.perf_counter()
    assignment = MATCHERS[method](w_a, F_a, w_shared, F_shared, occupancy)
    seconds = time.perf_counter() - start
    occupancy = np.asarray(occupancy, dtype=np.int64)
    cost = float(pair_costs(w_a, F_a, np.asarray(w_shared)[assignment], np.asarray(F_shared)[assignment]).sum())
    layout = {int(level): count for level, count in sorted(Counter(occupancy[assignment].tolist()).items())}
    occupancy_after = occupancy + np.bincount(assignment, minlength=len(occupancy))
    return MatchResult(assignment, cost, seconds, occupancy_after, layout)


def empty_state(n_shared: int, page_size: int) -> SharedState:
    """A store of `n_shared` unoccupied shared pages (zero content, zero Fisher)."""
    zeros = np.zeros((n_shared, page_size), dtype=np.float64)
    return SharedState(zeros, zeros.copy(), np.zeros(n_shared, dtype=np.int64))


def place(assignment: np.ndarray, w_a: np.ndarray, F_a: np.ndarray, w_shared: np.ndarray, F_shared: np.ndarray,
          occupancy: np.ndarray) -> SharedState:
    """The shared state after mapping page a onto shared page assignment[a] (inputs untouched):
    F* += F_a, occupancy += 1, and a previously unoccupied page takes its first occupant's weights."""
    assignment = np.asarray(assignment, dtype=np.int64)
    if len(np.unique(assignment)) != len(assignment):
        raise ValueError("assignment maps two pages onto one shared page")
    weights = np.array(w_shared, dtype=np.float64)
    fisher = np.array(F_shared, dtype=np.float64)
    occupancy = np.array(occupancy, dtype=np.int64)
    first = occupancy[assignment] == 0
    weights[assignment[first]] = np.asarray(w_a, dtype=np.float64)[first]
    fisher[assignment] += _fisher(F_a)
    occupancy[assignment] += 1
    return SharedState(weights, fisher, occupancy)
