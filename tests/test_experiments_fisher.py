"""The Fisher experiment's agreement measures on synthetic Fisher vectors (no DNN, no training)."""
from __future__ import annotations

import pytest
import torch

from experiments import harness
from experiments.fisher import agreement, exclusive_pages, grid, per_seed

P = 4  # page size


def page_fisher(masses: list[float]) -> torch.Tensor:
    """A Fisher vector whose page j holds masses[j] (spread evenly over its P weights)."""
    return torch.tensor(masses, dtype=torch.float64).repeat_interleave(P) / P


def test_identical_vectors_agree_fully():
    f = page_fisher([float(2 ** -j) for j in range(10)])
    a = agreement(f, f.clone(), page_size=P)
    assert a["spearman"] == pytest.approx(1.0) and a["jaccard"] == 1.0


def test_reversed_ranking_disagrees():
    masses = [float(2 ** -j) for j in range(10)]
    a = agreement(page_fisher(masses), page_fisher(masses[::-1]), page_size=P)
    assert a["spearman"] == pytest.approx(-1.0)
    assert a["jaccard"] == 0.0  # each keeps its few heaviest pages, at opposite ends


def test_exclusive_pages_hold_ninety_percent_of_the_mass():
    # 50 + 30 + 8 = 88% is short of 90%, so the fourth page (crossing 90%) is still taken; no more
    assert exclusive_pages(page_fisher([8, 50, 1, 30, 4, 7]), page_size=P, margin=0.1) == {1, 3, 0, 5}


def test_per_seed_averages_over_dnns():
    cell = lambda s, j: {"spearman": s, "jaccard": j, "seconds": 1.0, "exclusive_pages": 3}  # noqa: E731
    runs = {0: {"a": {"x 50": cell(1.0, 0.5)}, "b": {"x 50": cell(0.5, 0.5)}},
            1: {"a": {"x 50": cell(0.9, 1.0)}, "b": {"x 50": cell(0.7, 0.0)}}}
    rows = per_seed(runs, "x 50")
    assert [r["seed"] for r in rows] == [0, 1]
    assert [r["spearman"] for r in rows] == [0.75, 0.8] and [r["jaccard"] for r in rows] == [0.5, 0.5]


def test_grid_quick_drops_k_1000():
    quick = grid(harness.Scale.default(quick=True))
    assert ("paper", 50) in quick and not any(k == 1000 for _, k in quick)
    assert ("true", 1000) in grid(harness.Scale(dnns=("dna",)))
