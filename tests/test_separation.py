import pytest
import torch

from weightsep.separation import allot, contribution_density, exclusive_budget, separate, target_performance_rate

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
