"""Matching: the cost matrix, the three matchers' validity and ordering, the greedy by hand, the NWV fixtures."""
from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
import torch

from dnnkit.originals import NWV_ORDER, load_nwv_arrays, load_nwv_dnn
from weightsep import matching
from weightsep.matching import MATCHERS, cost_matrix, empty_state, match, place
from weightsep.pages import to_pages
from weightsep.paths import fixtures_dir

RTOL = 1e-9  # costs are sums of float64 products; allow rounding when comparing matchers


def random_state(seed: int, S: int = 40, P: int = 8, m: int = 25):
    """A new DNN and a shared store with occupancy tiers 0..3; unoccupied pages carry no Fisher."""
    rng = np.random.default_rng(seed)
    occupancy = rng.integers(0, 4, S)
    F_shared = rng.lognormal(0, 1.5, (S, P)) * occupancy[:, None]
    F_shared[rng.random((S, P)) < 0.2] = 0
    w_shared = rng.normal(0, 1, (S, P)) * (occupancy[:, None] > 0)
    F_a = rng.lognormal(0, 1.5, (m, P))
    F_a[rng.random((m, P)) < 0.2] = 0
    w_a = rng.normal(0, 1, (m, P))
    return w_a, F_a, w_shared, F_shared, occupancy


def test_cost_matrix_equals_double_loop():
    w_a, F_a, w_shared, F_shared, _ = random_state(0, S=9, P=6, m=7)
    expected = np.zeros((len(w_a), len(w_shared)))
    for a in range(len(w_a)):
        for b in range(len(w_shared)):
            for p in range(w_a.shape[1]):
                if F_a[a, p] > 0 and F_shared[b, p] > 0:
                    expected[a, b] += (F_a[a, p] + F_shared[b, p]) * (w_a[a, p] - w_shared[b, p]) ** 2
    np.testing.assert_allclose(cost_matrix(w_a, F_a, w_shared, F_shared), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", list(MATCHERS))
def test_assignment_is_injective_and_in_range(method):
    w_a, F_a, w_shared, F_shared, occupancy = random_state(1)
    result = match(method, w_a, F_a, w_shared, F_shared, occupancy)
    assert result.assignment.shape == (len(w_a),)
    assert len(set(result.assignment.tolist())) == len(w_a)
    assert result.assignment.min() >= 0 and result.assignment.max() < len(w_shared)
    assert sum(result.layout.values()) == len(w_a)
    assert result.occupancy_after.sum() == occupancy.sum() + len(w_a)


@pytest.mark.parametrize("method", list(MATCHERS))
def test_no_sharable_pages_gives_empty_assignment(method):
    _, _, w_shared, F_shared, occupancy = random_state(3)
    result = match(method, np.zeros((0, 8)), np.zeros((0, 8)), w_shared, F_shared, occupancy)
    assert result.assignment.shape == (0,) and result.cost == 0 and result.layout == {}


@pytest.mark.parametrize("seed", range(6))
def test_optimal_le_optimal_occupancy_le_greedy(seed):
    state = random_state(seed)
    results = {method: match(method, *state) for method in MATCHERS}
    greedy, constrained, free = (results[k].cost for k in ("greedy", "optimal-occupancy", "optimal"))
    assert free <= constrained * (1 + RTOL) and constrained <= greedy * (1 + RTOL)
    assert results["optimal-occupancy"].layout == results["greedy"].layout


@pytest.mark.parametrize("seed", range(4))
def test_optimal_matchers_equal_brute_force(seed):
    """Enumerate every injective assignment of 4 pages onto 7; the footprint is the greedy's layout."""
    w_a, F_a, w_shared, F_shared, occupancy = random_state(seed, S=7, P=3, m=4)
    cost = cost_matrix(w_a, F_a, w_shared, F_shared)
    footprint = match("greedy", w_a, F_a, w_shared, F_shared, occupancy).layout
    best_free = best_constrained = np.inf
    for cols in itertools.permutations(range(7), 4):
        total = cost[range(4), cols].sum()
        best_free = min(best_free, total)
        if Counter(occupancy[list(cols)].tolist()) == Counter(footprint):
            best_constrained = min(best_constrained, total)
    assert match("optimal", w_a, F_a, w_shared, F_shared, occupancy).cost == pytest.approx(best_free, rel=1e-9)
    constrained = match("optimal-occupancy", w_a, F_a, w_shared, F_shared, occupancy)
    assert constrained.cost == pytest.approx(best_constrained, rel=1e-9)


def test_greedy_by_hand():
    """P = 1, so cost(a, b) = (F_a + F*_b) * (w_a - w*_b)^2 where both Fisher values are > 0.

    DNN pages (w, F): a0 (0, 4), a1 (1, 1), a2 (3, 2); by mass a0 > a2 > a1.
    Shared (w*, F*, occupancy): b0 (3.2, 3, 1), b1 (1, 9, 1), b2 (5, 0, 0), b3 (3, 0.5, 1), b4 (3, 6, 1).
    Tier 0 = {b2}: one page for three, so a2 and a1 (the lightest) wait; a0 -> b2 (cost 0).
    Tier 1 = {b0, b1, b3, b4} for 2 pages: the heaviest, b1 (9) and b4 (6), stay free although they would
    cost 0 for a1 and a2. Heads b0 (3) vs a2 (2): the shared page is heavier and takes its cheapest DNN
    page: a2 (5 * 0.2^2 = 0.2) rather than a1 (4 * 2.2^2 = 19.36). Then heads b3 (0.5) vs a1 (1): a1 -> b3
    (1.5 * 2^2 = 6). The one-sided variant would give a2 -> b3 (0), a1 -> b0 (19.36) instead.
    """
    w_a, F_a = np.array([[0.0], [1.0], [3.0]]), np.array([[4.0], [1.0], [2.0]])
    w_shared, F_shared = np.array([[3.2], [1.0], [5.0], [3.0], [3.0]]), np.array([[3.0], [9.0], [0.0], [0.5], [6.0]])
    occupancy = np.array([1, 1, 0, 1, 1])
    result = match("greedy", w_a, F_a, w_shared, F_shared, occupancy)
    assert result.assignment.tolist() == [2, 3, 0]
    assert result.cost == pytest.approx(6.2)
    assert result.layout == {0: 1, 1: 2}
    constrained = match("optimal-occupancy", w_a, F_a, w_shared, F_shared, occupancy)
    assert constrained.cost == pytest.approx(0.0) and constrained.layout == {0: 1, 1: 2}
    assert constrained.assignment[0] == 2 and constrained.assignment[1] == 1


def test_place_keeps_first_occupant_weights_and_accumulates_fisher():
    state = empty_state(3, 2)
    first_w, first_F = np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[1.0, 1.0], [2.0, 0.0]])
    state = place(np.array([2, 0]), first_w, first_F, *state)
    state = place(np.array([0]), np.array([[9.0, 9.0]]), np.array([[0.5, 0.5]]), *state)
    np.testing.assert_array_equal(state.weights, [[3.0, 4.0], [0.0, 0.0], [1.0, 2.0]])
    np.testing.assert_array_equal(state.fisher, [[2.5, 0.5], [0.0, 0.0], [1.0, 1.0]])
    np.testing.assert_array_equal(state.occupancy, [2, 0, 1])


def test_bad_inputs_are_refused():
    state = random_state(2)
    with pytest.raises(ValueError, match="greedy"):
        match("hungarian", *state)
    w_a, F_a, w_shared, F_shared, occupancy = random_state(2, S=5, m=6)
    with pytest.raises(ValueError, match="do not fit"):
        matching.optimal(w_a, F_a, w_shared, F_shared, occupancy)


def test_originals_refuses_non_npy_and_names_missing_files(tmp_path):
    with pytest.raises(ValueError, match="not a .npy"):
        load_nwv_arrays(tmp_path / "weights.pkl")
    with pytest.raises(FileNotFoundError, match="absent_network_weight.npy"):
        load_nwv_arrays(tmp_path / "absent_network_weight.npy")
    np.save(tmp_path / "plain.npy", np.zeros(3))
    with pytest.raises(ValueError, match="plain.npy"):
        load_nwv_arrays(tmp_path / "plain.npy")


def test_nwv_sequential_placement_optimal_never_worse_than_greedy():
    """The five NWV DNNs at P = 100, NWV mode, state advanced with the greedy (the published path)."""
    if not (fixtures_dir() / "nwv").is_dir():
        pytest.skip(f"NWV fixtures not found in {fixtures_dir() / 'nwv'} (set WEIGHTSEP_FIXTURES)")
    dnns = [[to_pages(torch.from_numpy(v), 100).numpy() for v in load_nwv_dnn(name)] for name in NWV_ORDER]
    state = empty_state(max(len(w) for w, _ in dnns), 100)
    state = place(np.arange(len(dnns[0][0])), *dnns[0], *state)
    for name, (w, F) in zip(NWV_ORDER[1:], dnns[1:], strict=True):
        results = {method: match(method, w, F, *state) for method in MATCHERS}
        greedy = results["greedy"].cost
        assert results["optimal"].cost <= greedy * (1 + RTOL), name
        assert results["optimal-occupancy"].cost <= greedy * (1 + RTOL), name
        state = place(results["greedy"].assignment, w, F, *state)


def published_page_alloc(w_a, F_a, w_s, F_s, occupancy):
    """A literal, loop-by-loop port of the published greedy allocation (docs/algorithms.md §3.4, the CUDA
    `PageAlloc`), as the reference for `greedy`: nothing from weightsep.matching is used."""
    m, S, P = len(w_a), len(w_s), len(w_a[0])

    def cost(a, b):
        total = 0.0
        for p in range(P):
            if F_a[a][p] > 0 and F_s[b][p] > 0:
                total += (F_a[a][p] + F_s[b][p]) * (w_a[a][p] - w_s[b][p]) ** 2
        return total

    def mass(F, i):
        return sum(f for f in F[i] if f > 0)

    def heaviest_first(items, F):  # stable: equal masses keep index order
        return sorted(items, key=lambda i: -mass(F, i))

    assignment = [-1] * m
    waiting = heaviest_first(range(m), F_a)
    for level in sorted(set(occupancy)):
        if not waiting:
            break
        tier = heaviest_first([b for b in range(S) if occupancy[b] == level], F_s)
        take = min(len(tier), len(waiting))
        tier = tier[len(tier) - take:]  # the tier's heaviest surplus pages stay free
        rows, waiting = waiting[:take], waiting[take:]  # the DNN's lightest wait for the next tier
        free_rows, free_cols = list(rows), list(tier)
        while free_rows:
            a, b = free_rows[0], free_cols[0]  # the heads: heaviest still free on each side
            if mass(F_s, b) > mass(F_a, a):  # the shared page takes its cheapest DNN page
                best = free_rows[0]
                for r in free_rows:
                    if cost(r, b) < cost(best, b):
                        best = r
                a = best
            else:  # equal masses: the DNN page takes; equal costs: the heavier partner
                best = free_cols[0]
                for c in free_cols:
                    if cost(a, c) < cost(a, best):
                        best = c
                b = best
            assignment[a] = b
            free_rows.remove(a)
            free_cols.remove(b)
    return assignment


@pytest.mark.parametrize("seed", range(12))
def test_greedy_equals_a_literal_port_of_the_published_allocation(seed):
    """Small integer weights and Fisher, so masses and costs tie exactly and often; three or four
    occupancy tiers; more DNN pages than the lowest tier holds."""
    rng = np.random.default_rng(seed)
    S, P, m = 12, 4, 9
    w_a, w_s = rng.integers(-2, 3, (m, P)).astype(float), rng.integers(-2, 3, (S, P)).astype(float)
    F_a, F_s = rng.integers(0, 3, (m, P)).astype(float), rng.integers(0, 3, (S, P)).astype(float)
    occupancy = rng.integers(0, 3 + seed % 2, S)
    occupancy[:3] = [0, 1, 2]  # at least three tiers
    expected = published_page_alloc(w_a.tolist(), F_a.tolist(), w_s.tolist(), F_s.tolist(), occupancy.tolist())
    assert matching.greedy(w_a, F_a, w_s, F_s, occupancy).tolist() == expected
