"""Packing to an accuracy (`run --max-loss`, weightsep/bound.py): the smallest store, the checks on the
bounds, the growth by promotion aimed at the bounds, and what the table says."""
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


def test_the_smallest_store_keeps_exclusive_only_what_cannot_be_shared():
    from weightsep.packing import plan_budget

    sizes = {"a": 60_000, "b": 64_000, "c": 20_000}
    config = bound.smallest(PackConfig(), sizes)
    largest = n_pages(64_000, 512)
    plan = plan_budget(sizes, config, largest)  # S unset: the largest DNN's pages
    assert config.separation == "budget" and plan.exclusive_pages <= 0 and sum(plan.counts.values()) == 0
    plan = plan_budget(sizes, bound.smallest(PackConfig(n_shared=100), sizes), 100)
    assert plan.counts == {"a": n_pages(60_000, 512) - 100, "b": largest - 100, "c": 0} and plan.spare == 0


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
    search = {"max_loss_pp": {"a": 1.0, "b": 0.5}, "rounds": [
        {"exclusive_pages": 0, "packed_weights": 64_000, "missed_pp": {"a": 1.5, "b": 0.2}},
        {"exclusive_pages": 5, "packed_weights": 66_560, "missed_pp": {"a": 0.0, "b": 0.0}}]}
    text = bound.described(search)
    assert "within 0.5 / 1 pp" in text and "0 -> 5" in text and "warning" not in text
    assert "kept:        5 exclusive pages" in text
    search["rounds"][-1]["missed_pp"]["b"] = 0.31
    assert "warning:     after 2 pass(es) b missed its bound by 0.31 pp" in bound.described(search)


def test_the_ratio_for_a_size_gives_a_budget_of_exactly_that_many_exclusive_pages():
    from weightsep.separation import exclusive_budget

    sizes = {"a": 63_875, "b": 65_076, "c": 59_650}
    for pages in range(0, 400, 7):
        ratio = bound._ratio_for(sizes, 512, 128, pages)
        assert exclusive_budget(list(sizes.values()), 512, 128, ratio) == pages


@dataclass(frozen=True)
class FakeConfig:
    budget: dict


class FakeState:
    """What `search` reads of a packed state: page size, shared pages, each DNN's exclusive pages, the config."""

    def __init__(self, exclusive: dict[str, int]):
        self.page_size, self.n_shared = 512, 128
        self.vnns = {n: SimpleNamespace(n_exclusive=e, n_weights=60_000) for n, e in exclusive.items()}
        self.config = FakeConfig({"ratio": 1.0})

    def replace(self, config):
        self.config = config
        return self


@pytest.mark.parametrize("outcomes, kept", [
    ([({"a": 4, "b": 0}, {"a": 0.5, "b": 0.0}), ({"a": 9, "b": 0}, {"a": 0.0, "b": 0.0})], 2),
    ([({"a": 4, "b": 0}, {"a": 0.0, "b": 0.0})], 1),  # the first growing pass holds: no third
    ([({"a": 4, "b": 0}, {"a": 0.5, "b": 0.0}), ({"a": 9, "b": 0}, {"a": 0.1, "b": 0.0})], 2),  # none holds: the last
])
def test_the_search_packs_afresh_giving_pages_only_to_the_dnns_that_missed_and_keeps_the_smallest_that_holds(
        monkeypatch, outcomes, kept):
    """Each pass is a fresh packing whose budget is the pages offered to the DNNs that missed, all exclusive
    at packing (`extra`); it stops at the first size that keeps every bound."""
    from weightsep.separation import exclusive_budget

    calls, outcomes = [], iter(outcomes)
    first = FakeState({"a": 0, "b": 0})
    missed = {id(first): {"a": 1.2, "b": 0.0}}

    def pack_and_optimize_records(records, pack_config, fisher_config, optimize_config, precision, group, extra):
        exclusive, miss = next(outcomes)
        calls.append((pack_config, dict(extra)))
        state = FakeState(exclusive)
        missed[id(state)] = miss
        return state, len(calls), optimize_config, {}

    monkeypatch.setattr(bound, "pack_and_optimize_records", pack_and_optimize_records)
    monkeypatch.setattr(bound, "misses", lambda state, records, bounds, group: missed[id(state)])
    records = {n: SimpleNamespace(model=SimpleNamespace(n_weights=60_000)) for n in ("a", "b")}
    state, history, rounds = bound.search(records, {"a": 0.9, "b": 0.8}, (first, 0), PackConfig(), None,
                                          OptimizeConfig(), group=object())
    first_offer = math.ceil(bound.PAGES_PER_PP * 1.2)
    offered = [first_offer, first_offer + math.ceil(bound.PAGES_PER_PP * 2 * 0.5)][:len(calls)]
    assert [exclusive_budget([60_000] * 2, 512, 128, c.ratio) for c, _ in calls] == offered
    assert len(rounds) == 1 + len(calls) <= bound.MAX_PASSES
    assert [e for _, e in calls] == [{"a": n} for n in offered]  # at packing, to a alone: b kept its bound
    assert history == kept and state.config.budget["exclusive_pages"] == rounds[kept].exclusive_pages


def test_a_run_packed_to_a_ratio_names_each_dnn_beyond_the_default_bound_and_the_flags_that_keep_it():
    def seed(*changes):
        return {"rows": [{"name": n, "packed_minus_control_pp": pp} for n, pp in changes]}

    assert bound.notes(seed(("a", -0.4), ("b", +0.3))) == ""
    assert bound.notes(seed(("a", None))) == ""  # no control: nothing to compare with
    text = bound.notes(seed(("a", -1.2), ("b", -0.9), ("c", -2.5)))
    assert text.startswith("warning:     c -2.50 pp, a -1.20 pp against the no-sharing control on test: beyond 1 pp")
    assert "b " not in text and "--ratio" in text and "--max-loss 1 " in text
    search = {"max_loss_pp": {"a": 1.0}, "rounds": [{"exclusive_pages": 3, "packed_weights": 67_072, "missed_pp": {"a": 0.0}}]}
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


def test_extra_pages_are_claimed_first_and_the_rest_of_the_budget_is_shared_as_before():
    from weightsep.separation import allot

    pages = {"a": 130, "b": 100, "c": 120}
    assert allot(13, pages, 128, 0.5, {"b": 5}) == ({"a": 2 + 1, "b": 5 + 1, "c": 1}, 3)  # 2 + 5 first, 3 even, 3 spare
    assert allot(7, pages, 128, 1.0, {"b": 5}) == ({"a": 2, "b": 5, "c": 0}, 0)  # exactly the claims: nothing to promote
    assert allot(7, pages, 128, 1.0, {"c": 500})[0]["c"] == 120  # never more than the DNN's pages
    assert allot(12, pages, 128, 0.5) == allot(12, pages, 128, 0.5, {})
