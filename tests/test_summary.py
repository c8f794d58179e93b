"""summary.json byte for byte: the run summary of three runs (float32; a control over two ranks with the
papers' figures; int8 pages) against fixtures written by the code before the summary was typed."""
import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_evaluate import state_of_two

from weightsep import pipeline
from weightsep.precision import PrecisionConfig, assign
from weightsep.records import InMemory
from weightsep.state import Provenance, Standalone

FIXTURES = Path(__file__).resolve().parent / "summary_fixtures"
PAPER = [{"stand_alone": 98.61, "separated": 98.45}, {"stand_alone": 90.0, "separated": 89.5}]


def records(published=(None, None)):
    return {n: SimpleNamespace(source=InMemory(n, meta={"published_accuracy": p} if p else {}))
            for n, p in zip("ab", published)}


def packed_state():
    state, _ = state_of_two()
    for name, accuracy in zip("ab", (0.9, 0.8)):
        provenance = dataclasses.replace(state.vnns[name].provenance or Provenance(),
                                         standalone=Standalone(accuracy - 0.01, accuracy))
        state = state.with_vnn(state.vnns[name].replace(provenance=provenance))
    return state


def summary(case: str) -> dict:
    state = packed_state()
    times = dict(standalone_seconds=1.5, fisher_seconds=0.25, matching_seconds=0.125, pack_seconds=0.5,
                 optimize_seconds=2.0, communication_seconds=0.0)
    fields = dict(seed=0, store="stores/seed0", config={"pack": {"page_size": 64}, "dnns": ["a", "b"]},
                  best_validation={"a": 0.9, "b": 0.8}, promoted=2)
    if case == "plain":
        return pipeline._summary(records(), state, [pipeline.RankPart({"a": 0.88, "b": 0.81}, None, None, 123.0)],
                                 pipeline.Timings(**times), **fields)
    if case == "control_two_ranks":
        ranks = [pipeline.RankPart({"a": 0.88}, {"a": 0.91}, None, 100.0),
                 pipeline.RankPart({"b": 0.81}, {"b": 0.8}, None, 140.0)]
        return pipeline._summary(records(PAPER), state, ranks,
                                 pipeline.Timings(**times, no_sharing_wait_seconds=3.0), **fields)
    return pipeline._summary(records(), assign(state, PrecisionConfig(precision="int8"), 0),
                             [pipeline.RankPart({"a": 0.87, "b": 0.8}, None, None, 99.5)], pipeline.Timings(**times), **fields)


@pytest.mark.parametrize("case", ["plain", "control_two_ranks", "int8"])
def test_the_summary_json_is_byte_for_byte_the_one_before(case):
    text = json.dumps(summary(case).to_json(), indent=2) + "\n"
    assert text == (FIXTURES / f"{case}.json").read_text()


def test_a_folders_meta_is_read_through_its_typed_fields():
    from weightsep import dnn as dnn_mod

    meta = {"task": "t", "input": (1, 28, 28), "classes": 10, "paper": "WS", "published_accuracy": PAPER[0], "x": 1}
    assert dnn_mod.Meta.of(meta) == dnn_mod.Meta((1, 28, 28), 10, "WS", PAPER[0])
    assert InMemory("kws").facts == dnn_mod.Meta()
