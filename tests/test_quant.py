"""Quantised pages: formats, the fake quantiser, precision policies, the store, the optimiser, execution."""
import copy
import json

import pytest
import torch
from test_cli import SMALL, cli
from test_optimize import packed_pair

from weightsep import quant
from weightsep.evaluate import accuracy, packed_theta
from weightsep.execution import PackedModel
from weightsep.formats import FLOAT32, QuantizedPages
from weightsep.optimize import OptimizeConfig, optimize
from weightsep.pack import PackConfig, add_vnn, remove_vnn
from weightsep.page_optimizer import PageOptimizer, validation_subset
from weightsep.precision import PrecisionConfig, assign, format_counts, in_formats, packed_bytes, page_fisher
from weightsep.store import Store, StoreError


def pages(rows=40, P=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, P, generator=g) * 0.05
    x[3] = 0  # an all-zero page: scale 1, values 0
    return x


def codes_for(rows, seed=0):
    return torch.randint(0, len(quant.FORMATS), (rows,), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


@pytest.mark.parametrize("P, group", [(512, 64), (37, 8), (5, 2), (64, 64)])
def test_fake_quantiser_equals_the_stored_format_bit_for_bit_with_a_straight_through_gradient(P, group):
    x, codes = pages(40, P), codes_for(40)
    values, scales = quant.quantize(x, codes, group)
    w = x.clone().requires_grad_(True)
    fq = quant.fake_quantize(w, codes, group)
    assert torch.equal(fq.detach(), values)  # what the optimiser trains with is what the store keeps
    fq.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))
    assert bool(quant.is_exact(values, codes, scales, group).all())
    again, same = quant.decode(quant.encode(values, codes, scales, group), codes, P, group)
    assert torch.equal(again, values) and torch.equal(same, scales)
    float32 = codes == quant.CODE["float32"]
    assert torch.equal(values[float32], x[float32]) and not bool(scales[float32].any())


def test_formats_round_as_documented():
    x = torch.tensor([[0.5, -1.0, 0.26, 0.0] * 4])
    one = lambda fmt: torch.full((1,), quant.CODE[fmt], dtype=torch.uint8)  # noqa: E731
    v, s = quant.quantize(x, one("int8"), 4)
    assert s[0, 0] == pytest.approx(1 / 127) and bool((s == s[0, 0]).all())  # one scale per page
    assert torch.equal(v, torch.round(x * 127) / 127 * 1.0) or (v - x).abs().max() <= 0.5 / 127 + 1e-7
    v, s = quant.quantize(x, one("int4"), 4)
    assert s.shape == (1, 4) and (v - x).abs().max() <= 0.5 / 7 + 1e-6
    q, _ = quant.encode(v, one("int4"), s, 4)["int4"]
    assert q.dtype == torch.uint8 and q.shape == (1, 8)  # two weights a byte
    assert quant.page_bytes("int8", 512, 64) == 516 and quant.page_bytes("int4", 512, 64) == 256 + 8 * 4
    assert quant.page_bytes("float16", 512, 64) == 1024 and quant.page_bytes("float32", 512, 64) == 2048
    assert quant.table_entries(torch.tensor([0, 3]), torch.tensor([5, 7])).tolist() == [5, (3 << quant.TABLE_SHIFT) | 7]


def test_decode_names_what_does_not_fit():
    values, scales = quant.quantize(pages(6, 16), torch.full((6,), quant.CODE["int8"], dtype=torch.uint8), 8)
    codes = torch.full((6,), quant.CODE["int8"], dtype=torch.uint8)
    blocks = quant.encode(values, codes, scales, 8)
    with pytest.raises(ValueError, match="int8 rows"):
        quant.decode({"int8": (blocks["int8"][0][:5], blocks["int8"][1][:5])}, codes, 16, 8)
    with pytest.raises(ValueError, match="no float16 rows"):
        quant.decode(blocks, torch.full((6,), quant.CODE["float16"], dtype=torch.uint8), 16, 8)


def test_config_rules():
    with pytest.raises(ValueError, match="needs --budget-kib"):
        PrecisionConfig(precision="fisher")
    with pytest.raises(ValueError, match="--budget-kib is for --precision fisher"):
        PrecisionConfig(precision="int8", budget_kib=10.0)
    with pytest.raises(ValueError, match="--fisher-formats"):
        PrecisionConfig(precision="fisher", budget_kib=10.0, fisher_formats="int8,int3")
    with pytest.raises(ValueError, match="--precision"):
        PrecisionConfig(precision="int2")
    assert PrecisionConfig().is_float32 and not PrecisionConfig(shared_dtype="int8").is_float32


def test_uniform_and_per_class_policies():
    state, _ = packed_pair()
    assert assign(state, PrecisionConfig()) is state  # float32: today's state, untouched
    q = assign(state, PrecisionConfig(precision="int8", exclusive_dtype="float16"))
    assert set(q.format.shared_codes.tolist()) == {quant.CODE["int8"]}
    assert all(set(c.tolist()) <= {quant.CODE["float16"]} for c in q.format.exclusive_codes.values())
    assert state.format is FLOAT32  # the input is not modified
    counts = format_counts(q)
    assert counts["int8"] == state.n_shared and counts.get("float16", 0) == sum(v.n_exclusive for v in state.vnns.values())
    with pytest.raises(ValueError, match="quantised already"):
        assign(q, PrecisionConfig(precision="int4"))


def test_fisher_policy_stays_in_budget_gives_bits_by_fisher_and_gains_with_budget():
    state, _ = packed_pair()
    shared_f, exclusive_f = page_fisher(state)
    fisher = torch.cat([shared_f, *exclusive_f.values()])
    values = torch.cat([state.shared_pages, *(v.exclusive_pages for v in state.vnns.values())])
    floor = sum(packed_bytes(assign(state, PrecisionConfig(precision="int4", group=16))).values())
    errors = []
    for kib in (floor / 1024 + 0.2, floor / 1024 + 1.0, floor / 1024 + 3.0, 100.0):
        q = assign(state, PrecisionConfig(precision="fisher", budget_kib=kib, group=16), spare_pages=2)
        codes = torch.cat([q.format.shared_codes, *q.format.exclusive_codes.values()])
        dearest_shared = max(quant.page_bytes(quant.FORMATS[c], state.page_size, 16) for c in q.format.shared_codes)
        assert sum(packed_bytes(q).values()) + 2 * dearest_shared <= kib * 1024  # spare pages reserved too
        rounded = torch.cat([q.shared_pages, *(v.exclusive_pages for v in q.vnns.values())])
        errors.append(float((fisher * (rounded - values) ** 2).sum()))
        bits = torch.tensor([quant.BITS[quant.FORMATS[c]] for c in codes])
        mass = fisher.sum(1)
        # a page never gets fewer bits than a page with less Fisher and the same values' range
        assert bits[mass.argmax()] >= bits[mass.argmin()]
    assert errors == sorted(errors, reverse=True) and errors[-1] < errors[0]
    with pytest.raises(ValueError, match="needs at least"):
        assign(state, PrecisionConfig(precision="fisher", budget_kib=0.1), spare_pages=2)


def test_fisher_policy_prefers_the_page_with_more_fisher():
    state, _ = packed_pair()
    twin = copy.copy(state)
    twin.shared_pages = state.shared_pages.clone()
    twin.shared_pages[1] = twin.shared_pages[0]  # two shared pages with the same values ...
    twin.shared_fisher = torch.zeros_like(state.shared_fisher)
    twin.shared_fisher[0], twin.shared_fisher[1] = 10.0, 0.1  # ... and very different Fisher
    floor = sum(packed_bytes(assign(twin, PrecisionConfig(precision="int4", group=16))).values())
    q = assign(twin, PrecisionConfig(precision="fisher", budget_kib=(floor + 40) / 1024, group=16))
    bits = [quant.BITS[quant.FORMATS[int(c)]] for c in q.format.shared_codes[:2]]
    assert bits[0] > bits[1]


def test_quantised_store_round_trips_bit_for_bit_in_its_formats(tmp_path):
    state, _ = packed_pair()
    f32 = sum(packed_bytes(state).values())
    codes = {n: codes_for(v.n_exclusive, 1) for n, v in state.vnns.items()}
    q = in_formats(state, codes_for(state.n_shared, 2), codes, 16, {"precision": "test"})
    manifest = Store(tmp_path / "s").save(q)
    back = Store(tmp_path / "s").load()
    assert torch.equal(back.shared_pages, q.shared_pages) and torch.equal(back.format.shared_codes,
                                                                         q.format.shared_codes)
    assert torch.equal(back.format.shared_scales, q.format.shared_scales)
    for n, v in q.vnns.items():
        assert torch.equal(back.vnns[n].exclusive_pages, v.exclusive_pages)
        assert torch.equal(back.format.exclusive_scales[n], q.format.exclusive_scales[n])
    assert back.format.group == 16 and back.format.policy == {"precision": "test"}
    assert manifest["format_version"] == 3 and manifest["precision"]["group"] == 16
    stored = manifest["shared"]["tensors"]
    assert "shared_pages" not in stored and stored["shared.int8"]["dtype"] == "int8"
    assert sum(packed_bytes(q).values()) < f32
    # a state edited off its formats' grid is refused on save, nothing written
    bad = copy.copy(back)
    bad.shared_pages = back.shared_pages + 1e-3 * (back.format.shared_codes != 0).float().unsqueeze(1)
    with pytest.raises(ValueError, match="cannot represent"):
        bad.validate()
    # removing a DNN keeps the others' formats; adding to a quantised store is refused
    less = remove_vnn(back, "a")
    assert set(less.format.exclusive_codes) == {"b"}
    less.validate()
    with pytest.raises(ValueError, match="quantised store"):
        add_vnn(less, "c", torch.zeros(100), torch.ones(100), PackConfig(page_size=64, n_shared=6))


def test_store_with_missing_format_rows_is_refused(tmp_path):
    state, _ = packed_pair()
    q = assign(state, PrecisionConfig(precision="int8"))
    Store(tmp_path / "s").save(q)
    path = tmp_path / "s" / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["precision"]  # the files hold int8 blocks; a float32 reading must not accept them
    manifest.pop("checksum")
    path.write_text(json.dumps(manifest))
    with pytest.raises(StoreError):
        Store(tmp_path / "s").load()


@pytest.mark.parametrize("optimizer", ["joint", "round-robin"])
def test_optimiser_trains_for_the_formats_and_scores_what_runs(optimizer):
    state, tasks = packed_pair()
    q = assign(state, PrecisionConfig(precision="int4", exclusive_dtype="int8", group=16))
    config = OptimizeConfig(optimizer=optimizer, steps=60, eval_every=20, rounds=2, steps_per_turn=20, lr=5e-3,
                            promote_pages=2 if optimizer == "joint" else 0, promote_start=0.0)
    for name, t in tasks.items():  # the float32 weights: the reference every lagging DNN is promoted towards
        t.standalone = packed_theta(state, name, t.model)
    result, history = optimize(q, tasks, config, progress=False)
    result.validate()  # every page on its format's grid
    assert isinstance(result.format, QuantizedPages) and result.format.policy == q.format.policy
    best = history.val_accuracy[history.best_index]
    for name, task in tasks.items():
        x, y = validation_subset(task, config.val_samples, config.seed)
        assert accuracy(task.model, packed_theta(result, name, task.model), x, y) == best[name]
        assert best[name] > history.val_accuracy[0][name] or best[name] == 1.0


def test_a_promoted_page_keeps_its_shared_pages_format():
    state, tasks = packed_pair()
    q = assign(state, PrecisionConfig(precision="int4", exclusive_dtype="int8", group=16))
    for name, t in tasks.items():
        t.standalone = packed_theta(state, name, t.model)
    po = PageOptimizer(q, tasks, OptimizeConfig(steps=10, promote_pages=2), progress=False)
    before = q.vnns["a"].n_exclusive
    po.promote("a", 2, 0)
    result = po.result()  # the snapshot before the promotion: its pages and formats
    result.validate()
    po.best = po.snapshot()
    result = po.result()
    result.validate()
    codes = result.format.exclusive_codes["a"]
    assert codes.numel() == before + 2 == result.vnns["a"].n_exclusive
    assert bool((codes[:before] == quant.CODE["int8"]).all()) and bool((codes[before:] == quant.CODE["int4"]).all())


def test_execution_dequantises_bit_for_bit_in_both_modes():
    state, tasks = packed_pair()
    codes = {n: codes_for(v.n_exclusive, 3) for n, v in state.vnns.items()}
    q = in_formats(state, codes_for(state.n_shared, 4), codes, 16, {})
    models = {n: t.model for n, t in tasks.items()}
    gather, zero = PackedModel(q, models), PackedModel(q, models, mode="zero-copy")
    float32 = PackedModel(state, models)
    for name, task in tasks.items():
        gather.switch(name)
        zero.switch(name)
        float32.switch(name)
        theta = packed_theta(q, name, task.model)
        assert torch.equal(gather.theta, theta)
        with torch.no_grad():
            assert torch.equal(gather(task.x_val), task.model(task.x_val, theta))
            assert torch.equal(zero(task.x_val), gather(task.x_val))
        assert gather.bytes_moved_per_switch(name) <= float32.bytes_moved_per_switch(name)
    assert set(gather.device_bytes_by_format()) >= {"page_table", "weight_buffer"}
    with pytest.raises(ValueError, match="dequantising"):
        PackedModel(q, models, kernel="index_select")


@pytest.mark.slow
@pytest.mark.e2e
def test_cli_packs_in_int8_and_refuses_bad_precision_flags(cache_with_data, tmp_path):
    store, results = tmp_path / "state", tmp_path / "results"
    out = cli("run", "--dnns", "satellite", "letters", *SMALL, "--steps", "60", "--eval-every", "30",
              "--precision", "int8", "--store", store, "--results", results, "--no-control").stdout
    assert "int8" in out and "by bytes" in out
    summary = json.loads((results / "summary.json").read_text())
    assert set(summary["totals"]["page_formats"]) == {"int8"}
    assert summary["totals"]["ratio_by_bytes"] > 3.5 * summary["totals"]["ratio_by_count"]
    assert "packed test accuracy" in cli("eval", "letters", "--store", store).stdout
    cli("joint", "--store", store, "--steps", "5")  # re-optimising keeps the formats
    assert "int8)" in cli("report", "--store", store, "--results", results).stdout
    again = cli("quantize", "--precision", "int4", "--store", store, check=False)
    assert again.returncode == 2 and "quantised already" in again.stderr
    for flags, message in ((["--precision", "fisher"], "--budget-kib"),
                           (["--precision", "fisher", "--budget-kib", "1"], "needs at least")):
        bad = cli("run", "--dnns", "satellite", "letters", *SMALL, "--steps", "5", "--store", tmp_path / "bad",
                  "--results", results, *flags, check=False)
        assert bad.returncode != 0 and message in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "bad").exists()
