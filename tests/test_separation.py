import pytest
import torch

from weightsep.pages import n_pages
from weightsep.separation import (
    RATIO_TOLERANCE,
    allot,
    contribution_density,
    exclusive_budget,
    reach,
    separate,
    target_performance_rate,
)

# P = 2: page masses 4, 4, 1, 1 of a total of 10, so cd = 0.4, 0.4, 0.1, 0.1
FISHER = torch.tensor([4.0, 0.0, 3.0, 1.0, 1.0, 0.0, 0.0, 1.0])


def test_contribution_density_by_hand():
    torch.testing.assert_close(contribution_density(FISHER, 2), torch.tensor([0.4, 0.4, 0.1, 0.1], dtype=torch.float64))


def test_pages_become_exclusive_while_tpr_minus_cumulative_cd_reaches_the_margin():
    # before taking page i the cumulative cd is 0, 0.4, 0.8, 0.9: with margin 0.15, 1 - 0.8 >= 0.15
    # takes the third page, 1 - 0.9 < 0.15 stops at the fourth
    sep = separate(FISHER, page_size=2, n_shared=8, margin=0.15)
    assert sep.exclusive.tolist() == [0, 1, 2] and sep.sharable.tolist() == [3] and sep.n_overflow == 0
    sep = separate(FISHER, page_size=2, n_shared=8, margin=0.5)
    assert sep.exclusive.tolist() == [0, 1] and sep.sharable.tolist() == [2, 3]


def test_overflow_makes_the_next_highest_pages_exclusive():
    sep = separate(FISHER, page_size=2, n_shared=1, margin=0.5)
    assert sep.exclusive.tolist() == [0, 1, 2] and sep.sharable.tolist() == [3] and sep.n_overflow == 1


def test_lower_tpr_gives_fewer_exclusive_pages():
    assert separate(FISHER, 2, 8, margin=0.15, tpr=0.5).exclusive.tolist() == [0]  # then 0.5 - 0.4 < 0.15
    assert separate(FISHER, 2, 8, margin=0.1, tpr=0.0).exclusive.numel() == 0


def test_target_performance_rate_by_hand():
    # sample A: p = (1, 0), label 0: q_label = 1 > alpha; sample B: p = (0.2, 0.8), label 0:
    # q = p / |p| = (0.2425, 0.9701), q_label <= alpha, loss term -ln 0.2425
    probs = torch.tensor([[1.0, 0.0], [0.2, 0.8]])
    labels = torch.tensor([0, 0])
    # alpha_acc = 0.5; target_loss = loss (alpha_acc + 1 - a*); tpr = 1 - (alpha_acc - a*)
    assert target_performance_rate(probs, labels, 0.3, alpha=0.5) == pytest.approx(0.8)
    assert target_performance_rate(probs, labels, 0.9, alpha=0.5) == pytest.approx(1.4)
    assert target_performance_rate(torch.tensor([[1.0, 0.0]]), torch.tensor([0]), 0.9) == pytest.approx(0.9)
    with pytest.raises(ValueError):
        target_performance_rate(probs, labels, 90.0)


def test_budget_from_ratio_by_hand():
    # 10 DNNs of 65,536 weights at 6x: 655,360 / (6 * 512) = 213.3 -> 213 pages, minus 128 shared = 85
    assert exclusive_budget([65_536] * 10, 512, 128, 6.0) == 85
    assert exclusive_budget([65_536] * 2, 512, 128, 6.0) == 0  # unreachable: never negative
    with pytest.raises(ValueError):
        exclusive_budget([10], 512, 128, 0.0)


def test_allot_keeps_what_cannot_be_shared_then_splits_evenly_and_reserves_the_rest():
    counts, spare = allot(20, {"a": 10, "b": 12, "c": 10}, n_shared=10, at_packing=0.5)
    # b must keep 2 (12 pages, 10 shared); 18 free, 9 now: 3 each; 9 spare
    assert counts == {"a": 3, "b": 5, "c": 3} and spare == 9
    counts, spare = allot(7, {"a": 4, "b": 4}, n_shared=8, at_packing=1.0)
    assert counts == {"a": 4, "b": 3} and spare == 0  # the odd page to the first; never above a DNN's pages
    counts, spare = allot(1, {"a": 12}, n_shared=10, at_packing=0.5)
    assert counts == {"a": 2} and spare == 0  # below what cannot be shared: that is kept anyway


def test_a_given_number_of_exclusive_pages_overrides_the_margin():
    fisher = torch.tensor([9.0, 9, 1, 1, 5, 5, 0, 0])  # 4 pages of 2: masses 18, 2, 10, 0
    sep = separate(fisher, page_size=2, n_shared=4, margin=0.1, n_exclusive=2)
    assert sep.exclusive.tolist() == [0, 2] and sep.sharable.tolist() == [1, 3]
    with pytest.raises(ValueError):
        separate(fisher, page_size=2, n_shared=4, n_exclusive=5)


# issue 29's engineer: a MobileNet of 438 pages, a ResNet-8 of 153 and a DS-CNN of 46 (P = 512), asked for 3x
TINYML = {"resnet8": 77_850, "dscnn": 23_050, "mobilenet": 224_123}


def test_the_reachable_ratio_is_bounded_by_the_largest_dnn_by_hand():
    # 325,023 weights; the published S = 128: 310 of mobilenet's pages and 25 of resnet8's stay exclusive
    at_128 = reach(TINYML, 512, 128)
    assert (at_128.largest, at_128.pages, at_128.beyond) == ("mobilenet", 438, 335)
    assert at_128.ratio == pytest.approx(325_023 / (512 * 463))  # 1.37x: what the engineer got for 3x
    assert at_128.best == pytest.approx(325_023 / (512 * 438))  # 1.45x: S = mobilenet's pages, none beyond
    assert reach(TINYML, 512, 438).ratio == at_128.best and reach(TINYML, 512, 200).ratio == at_128.best


def test_an_unreachable_ratio_names_the_dnn_that_prevents_it_and_the_ways_out():
    assert reach(TINYML, 512, 438).shortfall(3.0) == (
        "ratio 3 asked, 1.45x reached: DNN 'mobilenet' has 438 pages and S = 438 shared pages must hold them, "
        "so at most 1.45x; drop it, pack more DNNs with it, or ask for at most 1.45x")
    too_few = reach(TINYML, 512, 128).shortfall(3.0)
    assert too_few.startswith("ratio 3 asked, 1.37x reached: DNN 'mobilenet' has 438 pages, more than S = 128 shared "
                              "pages hold: 335 pages beyond S stay exclusive, so at most 1.37x; leave --shared-pages "
                              "unset (S = 438: at most 1.45x), drop 'mobilenet'")
    # ten DNNs of 120 pages in 128 shared pages reach 9.4x, in 120 the 10x asked
    too_many = reach({f"d{i}": 120 * 512 for i in range(10)}, 512, 128).shortfall(10.0)
    assert "S = 128 shared pages are more than the largest DNN, 'd0', has (120)" in too_many
    assert too_many.endswith("leave --shared-pages unset (S = 120: at most 10.00x) or ask for at most 9.38x")
    assert "drop" not in too_many  # the store, not a DNN, is in the way
    assert reach(TINYML, 512, 438).shortfall(3.0, reached=1.2).startswith("ratio 3 asked, 1.20x reached: DNN 'mobilenet'")
    alone = reach({"solo": 5 * 512}, 512, 5).shortfall(2.0)  # one DNN packs to 1x at most: nothing to drop
    assert alone.endswith("must hold them, so at most 1.00x; pack more DNNs with it or ask for at most 1.00x")


def test_a_ratio_within_the_tolerance_counts_as_reached():
    most = reach(TINYML, 512, 438).ratio
    assert reach(TINYML, 512, 438).shortfall(most) is None
    assert reach(TINYML, 512, 438).shortfall(most / (1 - RATIO_TOLERANCE) * 0.999) is None
    assert reach(TINYML, 512, 438).shortfall(most / (1 - RATIO_TOLERANCE) * 1.001) is not None


@pytest.mark.parametrize("ratio", [1.2, 1.9, 2.5, 4.0, 6.0, 9.0])
@pytest.mark.parametrize("n_shared", [40, 100, 128, 200])
def test_the_reach_says_what_the_budget_plan_packs(ratio, n_shared):
    """One rule: the budget and its allotment pack to at least the ratio asked, or fall more than 5% short
    exactly when `shortfall` says so, and then to `reach`'s ratio."""
    sizes = {"a": 60_000, "b": 20_000, "c": 90_000, "d": 7_000, "e": 65_000}
    pages = {name: n_pages(n, 512) for name, n in sizes.items()}
    budget = exclusive_budget(list(sizes.values()), 512, n_shared, ratio)
    counts, spare = allot(budget, pages, n_shared, at_packing=0.5)
    packed = sum(sizes.values()) / (512 * (n_shared + sum(counts.values()) + spare))  # every spare page promoted
    found = reach(sizes, 512, n_shared)
    assert (found.shortfall(ratio) is None) == (packed >= (1 - RATIO_TOLERANCE) * ratio)
    assert packed >= ratio or packed == pytest.approx(found.ratio)
