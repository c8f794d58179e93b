"""Packing to an accuracy (`run --max-loss`, weightsep/bound.py): where the search starts, the checks on
the bounds, how it moves between ratios, promotion aimed at a bound, and what the table says."""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
from test_optimize import trained_pair

from weightsep import bound
from weightsep.optimize import OptimizeConfig, optimize
from weightsep.pack import PackConfig
from weightsep.pages import n_pages


def test_the_first_pass_is_the_main_jobs_ratio_where_reachable_else_the_smallest_store():
    from weightsep.packing import plan_budget

    sizes = {"a": 60_000, "b": 64_000, "c": 20_000}  # 3 DNNs, 282 pages: the smallest store (125 shared) is 2.25x
    config = bound.start(PackConfig(), sizes)
    largest = n_pages(64_000, 512)
    plan = plan_budget(sizes, config, largest)  # S unset: the largest DNN's pages
    assert config.separation == "budget" and plan.exclusive_pages <= 0 and sum(plan.counts.values()) == 0
    plan = plan_budget(sizes, bound.start(PackConfig(n_shared=100), sizes), 100)
    assert plan.counts == {"a": n_pages(60_000, 512) - 100, "b": largest - 100, "c": 0} and plan.spare == 0
    many = {f"d{i}": 60_000 for i in range(10)}  # 10 x 118 pages: 6x is reachable, so the search starts there
    assert bound.start(PackConfig(), many).ratio == PackConfig().ratio
    top, bottom = bound.limits(PackConfig(), many)
    assert top > PackConfig().ratio and bottom == pytest.approx(600_000 / (512 * (118 + 1180)))


def test_each_dnn_gets_its_own_bound_else_the_common_one_else_the_default():
    assert bound.losses(["a", "b"], None, {}) == {"a": bound.DEFAULT_MAX_LOSS_PP, "b": bound.DEFAULT_MAX_LOSS_PP}
    assert bound.losses(["a", "b"], 0.5, {"b": 2.0}) == {"a": 0.5, "b": 2.0}


@pytest.mark.parametrize("max_loss, by_dnn, control, changes, message", [
    (-1.0, {}, True, {}, "--max-loss -1.0"),
    (math.nan, {}, True, {}, "--max-loss nan"),
    (1.0, {"nope": 1.0}, True, {}, "not in the run: nope"),
    (1.0, {"a": math.inf}, True, {}, "--max-loss a=inf"),
    (1.0, {}, False, {}, "--no-control"),
    (1.0, {}, True, {"optimizer": "round-robin"}, "joint optimiser"),
])
def test_a_bound_that_cannot_be_used_is_refused_naming_the_flag(max_loss, by_dnn, control, changes, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        bound.check(max_loss, by_dnn, ["a", "b"], control, OptimizeConfig(**changes), PackConfig())
    with pytest.raises(ValueError, match="--mode ws"):
        bound.check(1.0, {}, ["a"], True, OptimizeConfig(), PackConfig(mode="nwv"))


def test_promotion_aimed_at_a_bound_grows_only_the_dnns_below_it_and_keeps_the_check_it_starts_from():
    state, tasks = trained_pair()
    config = OptimizeConfig(steps=1, eval_every=1, batch_size=50, promote_pages=4, promote_start=0.0, promote_end=0.0)
    result, history = optimize(state, tasks, config, progress=False, targets={"a": 2.0, "b": 0.0})  # a: out of reach
    assert {n for _, n, _ in history.promoted} == {"a"} and len(history.promoted) == 4
    assert all(step == 0 for step, _, _ in history.promoted)  # handed out at the check before the first step
    assert result.vnns["a"].n_exclusive == state.vnns["a"].n_exclusive + 4  # kept, whichever check is best
    assert result.vnns["b"].n_exclusive == state.vnns["b"].n_exclusive
    _, none = optimize(state, tasks, config, progress=False, targets={"a": 0.0, "b": 0.0})  # both above their bound
    assert none.promoted == []


def test_promoted_pages_start_as_their_shared_content_so_the_first_check_still_holds():
    from weightsep.evaluate import packed_theta

    state, tasks = trained_pair()
    config = OptimizeConfig(steps=1, eval_every=1, batch_size=50, promote_pages=3, promote_start=0.0, promote_end=0.0,
                            lr=1e-12)  # a step moves nothing that shows: either check is check 0's state, grown
    result, history = optimize(state, tasks, config, progress=False, targets={"a": 2.0, "b": 2.0})
    assert len(history.promoted) == 3
    for name in ("a", "b"):
        torch.testing.assert_close(packed_theta(result, name), packed_theta(state, name), atol=1e-6, rtol=0)


def test_the_table_names_the_bounds_the_sizes_tried_the_one_kept_and_a_dnn_left_outside_its_bound():
    search = {"max_loss_pp": {"a": 1.0, "b": 0.5}, "noise_pp": {"a": 0.4, "b": 1.25}, "rounds": [
        {"ratio": 6.0, "exclusive_pages": 0, "packed_weights": 64_000, "over_pp": {"a": 1.5, "b": 0.2}},
        {"ratio": 4.0, "exclusive_pages": 5, "packed_weights": 66_560, "over_pp": {"a": -0.1, "b": -0.4}}]}
    text = bound.described(search)
    assert "within 0.5 / 1 pp" in text and "plus 1 standard error of the control's validation accuracy (0.40-1.25 pp)" in text
    assert "ratios tried: 6.00 -> 4.00 (worst DNN +1.50, -0.10 pp" in text
    assert "kept:        ratio 4.00 (5 exclusive pages)" in text and "warning" not in text
    search["rounds"][-1]["over_pp"]["b"] = 0.31
    assert "warning:     after 2 pass(es) b missed its bound by 0.31 pp on validation at the largest store" in (
        bound.described(search))


def test_the_noise_allowance_is_one_binomial_standard_error_of_the_controls_validation_accuracy():
    from weightsep.group import Group

    records = {"small": SimpleNamespace(data=SimpleNamespace(val=SimpleNamespace(y=[0] * 200))),
               "large": SimpleNamespace(data=SimpleNamespace(val=SimpleNamespace(y=[0] * 5000))),
               "elsewhere": SimpleNamespace(data=None)}  # another rank's DNN: its rank says
    allowance = bound.noise(records, {"small": 0.95, "large": 0.88}, Group.current())
    assert allowance == pytest.approx({"small": bound.NOISE_SE * 100 * (0.95 * 0.05 / 200) ** 0.5,
                                       "large": bound.NOISE_SE * 100 * (0.88 * 0.12 / 5000) ** 0.5})
    assert 1.5 < allowance["small"] < 1.6 and allowance["large"] < 0.5


TOP, BOTTOM = 9.59, 1.0


def test_a_miss_grows_the_store_by_the_miss_over_the_slope_within_the_step_limits():
    assert bound.next_ratio([(6.0, 1.2)], TOP, BOTTOM) == pytest.approx(6.0 * math.exp(-1.2 / bound.PP_PER_LOG_RATIO))
    assert bound.next_ratio([(6.0, 0.01)], TOP, BOTTOM) == pytest.approx(6.0 * math.exp(-bound.STEP[0]))
    assert bound.next_ratio([(6.0, 50.0)], TOP, BOTTOM) == pytest.approx(6.0 * math.exp(-bound.STEP[1]))
    assert bound.next_ratio([(1.5, 50.0)], TOP, BOTTOM) == BOTTOM  # never past every page exclusive
    assert bound.next_ratio([(BOTTOM, 3.0)], TOP, BOTTOM) is None  # nothing larger to try


def test_two_misses_grow_the_store_along_the_secant_through_them():
    # 6x missed by 3 pp, 4x by 1: 2 pp per ln(1.5); the bound crosses at 4 / 1.5 ** (1 / 2)
    assert bound.next_ratio([(6.0, 3.0), (4.0, 1.0)], TOP, BOTTOM) == pytest.approx(4.0 / 1.5 ** 0.5)
    # the smaller store missed by less (noise): the prior slope
    assert bound.next_ratio([(6.0, 0.4), (4.0, 0.5)], TOP, BOTTOM) == pytest.approx(
        4.0 * math.exp(-0.5 / bound.PP_PER_LOG_RATIO))


def test_a_kept_size_shrinks_towards_the_smallest_store_and_a_bracket_is_split_where_the_line_crosses():
    assert bound.next_ratio([(6.0, -0.9)], TOP, BOTTOM) == pytest.approx(6.0 * math.exp(0.9 / bound.PP_PER_LOG_RATIO))
    assert bound.next_ratio([(9.0, -5.0)], TOP, BOTTOM) == TOP
    assert bound.next_ratio([(TOP, -0.2)], TOP, BOTTOM) is None  # the smallest store keeps: nothing smaller
    # kept at 4x with 0.2 pp room, missed at 6x by 0.6: a quarter of the way in ln(ratio)
    assert bound.next_ratio([(6.0, 0.6), (4.0, -0.2)], TOP, BOTTOM) == pytest.approx(4.0 * 1.5 ** 0.25)
    assert bound.next_ratio([(6.0, 0.1), (4.0, -5.0)], TOP, BOTTOM) == pytest.approx(4.0 * 1.5 ** 0.75)  # clamped
    assert bound.next_ratio([(4.3, 0.6), (4.0, -0.2)], TOP, BOTTOM) is None  # within 10%: done
    # a smaller store kept than one that missed (noise): the smallest kept leads
    assert bound.next_ratio([(4.0, 0.3), (6.0, -0.3)], TOP, BOTTOM) == pytest.approx(6.0 * math.exp(bound.STEP[0]))


@dataclass(frozen=True)
class FakeConfig:
    budget: dict


class FakeState:
    """What `search` reads of a packed state: page size, shared pages, each DNN's exclusive pages, the config."""

    def __init__(self, exclusive: dict[str, int]):
        self.page_size, self.n_shared = 512, 128
        self.vnns = {n: SimpleNamespace(n_exclusive=e, n_weights=60_000) for n, e in exclusive.items()}
        self.config = FakeConfig({"ratio": 1.0, "exclusive_pages": sum(exclusive.values())})

    def replace(self, config):
        self.config = config
        return self


@pytest.mark.parametrize("worst, kept", [
    ([1.2, -0.3, -0.1], 2),  # 6x missed, the next kept, the one between kept too: the smallest
    ([1.2, -0.3, 0.4], 1),  # the one between missed: the second
    ([1.2, 0.5, 0.2], 2),  # none kept: the largest store tried
    ([-0.2, 0.3, 0.1], 0),  # the first kept, the smaller two missed
])
def test_the_search_packs_each_ratio_next_ratio_picks_and_keeps_the_smallest_store_that_keeps_every_bound(
        monkeypatch, worst, kept):
    """Ten DNNs of 60,000 weights, one of them ("d0") at the bound's edge: 6x is reachable, so the search starts there."""
    names, calls, worst = [f"d{i}" for i in range(10)], [], iter(worst)

    def packed(ratio: float) -> FakeState:
        state = FakeState({n: round(60_000 / (512 * ratio)) for n in names})  # a larger store for a lower ratio
        over[id(state)] = {n: next(worst) if n == "d0" else -1.0 for n in names}
        return state

    def pack_and_optimize_records(records, pack_config, fisher_config, optimize_config, precision, group):
        calls.append(pack_config.ratio)
        return packed(pack_config.ratio), len(calls), optimize_config, {}

    over = {}
    first = packed(6.0)
    monkeypatch.setattr(bound, "pack_and_optimize_records", pack_and_optimize_records)
    monkeypatch.setattr(bound, "over", lambda state, records, bounds, group: over[id(state)])
    records = {n: SimpleNamespace(model=SimpleNamespace(n_weights=60_000)) for n in names}
    config = bound.start(PackConfig(n_shared=128), {n: 60_000 for n in names})
    state, history, rounds = bound.search(records, dict.fromkeys(names, 0.9), (first, 0), config, None,
                                          OptimizeConfig(), group=object())
    tried = [(r.ratio, r.worst) for r in rounds]
    assert len(rounds) == bound.MAX_PASSES and [r.ratio for r in rounds] == [6.0, *calls]
    assert all(bound.next_ratio(tried[:k], *bound.limits(config, {n: 60_000 for n in names})) == tried[k][0]
               for k in range(1, len(tried)))
    assert history == kept and state.config.budget["ratio"] == pytest.approx(
        600_000 / rounds[kept].packed_weights)


def test_a_run_packed_to_a_ratio_names_each_dnn_beyond_the_default_bound_and_the_flags_that_keep_it():
    def seed(*changes):
        return {"rows": [{"name": n, "packed_minus_control_pp": pp} for n, pp in changes]}

    assert bound.notes(seed(("a", -0.4), ("b", +0.3))) == ""
    assert bound.notes(seed(("a", None))) == ""  # no control: nothing to compare with
    text = bound.notes(seed(("a", -1.2), ("b", -0.9), ("c", -2.5)))
    assert text.startswith("warning:     c -2.50 pp, a -1.20 pp against the no-sharing control on test: beyond 1 pp")
    assert "b " not in text and "--ratio" in text and "--max-loss 1 " in text
    search = {"max_loss_pp": {"a": 1.0}, "noise_pp": {"a": 0.5},
              "rounds": [{"ratio": 2.0, "exclusive_pages": 3, "packed_weights": 67_072, "over_pp": {"a": -0.2}}]}
    assert bound.notes(seed(("a", -3.0)) | {"max_loss": search}) == bound.described(search)  # the search says it


def test_the_summary_markdown_carries_the_warning_under_its_table(tmp_path):
    """A real run's summary (the committed headline's), one DNN moved 2 pp below its control."""
    import json
    from pathlib import Path

    from weightsep.pipeline import write_summary

    summary = json.loads((Path(__file__).resolve().parent.parent / "results/headline/summary.json").read_text())
    one = summary["seeds"][0]
    one["rows"][0]["packed_minus_control_pp"] = -2.0
    write_summary({**one, "seeds": [one]}, tmp_path, commit={"sha": "0" * 40, "dirty": False})
    text = (tmp_path / "summary.md").read_text()
    name = one["rows"][0]["name"]
    assert f"\n\nwarning:     {name} -2.00 pp" in text and "against the no-sharing control on test" in text
    assert text.index("warning:") > text.index(f"| {name} ")
