"""weightsep/alone.py: each DNN compressed alone (per-channel int8/int4, magnitude pruning, vector k-means),
the weights it runs with, its straight-through gradient and the bytes it is stored in."""
import math

import pytest
import torch
from conftest import REPO

from weightsep import alone
from weightsep import dnn as dnn_mod
from weightsep.model import TemplateNet


def small_net() -> TemplateNet:
    return TemplateNet((1, 8, 8), [], dense=[16], classes=3)  # weight_0 [64, 16], bias_0, weight_1 [16, 3], bias_1


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_per_channel_quantises_each_output_channel_and_leaves_biases(fmt):
    net = small_net()
    theta = net.theta.detach().clone().requires_grad_(True)
    q = alone.per_channel(theta, net, fmt)
    tensors, original = net.tensors(q.detach()), net.tensors(theta.detach())
    assert torch.equal(tensors["bias_0"], original["bias_0"])  # biases stay float32
    w, qmax = tensors["weight_0"], {"int8": 127, "int4": 7}[fmt]  # [in, out]: one scale per output column (TF layout)
    steps = w / (original["weight_0"].abs().amax(0) / qmax)
    assert torch.allclose(steps, steps.round(), atol=1e-4) and steps.abs().max() <= qmax + 1e-4
    assert (w - original["weight_0"]).abs().max() > 0
    assert all(len(w[:, c].unique()) <= 2 * qmax + 1 for c in range(w.shape[1]))
    q.sum().backward()
    assert torch.equal(theta.grad, torch.ones_like(theta))  # straight through
    values = {"int8": 64 * 16 + 16 * 3, "int4": 64 * 16 // 2 + math.ceil(16 * 3 / 2)}[fmt]
    assert alone.per_channel_bytes(net, fmt) == values + 4 * (16 + 3) + 4 * (16 + 3)  # + scales + biases


def test_per_channel_takes_pytorchs_output_axis_for_an_nn_module():
    model = dnn_mod.get(str(REPO / "examples" / "dscnn_keywords")).build_model()
    q = alone.per_channel(model.theta.detach(), model, "int4")
    conv = model.tensors(q)["conv.weight"]  # [out, in, kh, kw]
    assert all(len(conv[c].unique()) <= 15 for c in range(conv.shape[0]))
    assert alone.per_channel_bytes(model, "int4") < alone.per_channel_bytes(model, "int8") < 4 * model.n_weights


def test_pruning_keeps_the_largest_weights_of_each_tensor_and_trains_only_those():
    net = small_net()
    theta = net.theta.detach().clone()
    mask = alone.prune_mask(theta, net, keep=0.25)
    m = net.tensors(mask)
    assert m["weight_0"].sum() == 256 and m["weight_1"].sum() == 12 and m["bias_0"].all()
    w = net.tensors(theta)["weight_0"]
    assert w[m["weight_0"] == 1].abs().min() >= w[m["weight_0"] == 0].abs().max()
    theta.requires_grad_(True)
    out = alone.pruned(theta, net, mask, "int8")
    assert (net.tensors(out.detach())["weight_0"][m["weight_0"] == 0] == 0).all()
    out.sum().backward()
    assert torch.equal(theta.grad, mask)  # pruned weights get no gradient
    with pytest.raises(ValueError, match="keep"):
        alone.prune_mask(theta, net, keep=0.0)


def test_sparse_bytes_take_the_smaller_of_a_bitmap_and_relative_indices_with_fillers():
    kept = torch.zeros(1000, dtype=torch.bool)
    kept[[0, 300, 999]] = True  # gaps 1, 300 (one filler), 699 (two fillers)
    assert alone.sparse_index_bytes(kept) == (3 + 3, 3)
    net = TemplateNet((1, 8, 8), [], dense=[16], classes=3)
    dense = torch.ones(net.n_weights)
    bitmap = 64 * 16 // 8 + 64 * 16 + 16 * 3 // 8 + 16 * 3  # every weight kept: the bitmap is smaller
    assert alone.pruned_bytes(dense, net, "int8") == bitmap + 4 * (16 + 3) + 4 * (16 + 3)
    sparse = alone.prune_mask(net.theta.detach(), net, keep=0.05)  # 51 of 1024 and 2 of 48 kept
    size = alone.pruned_bytes(sparse, net, "int8")
    assert size < 64 * 16 // 8 + 4 * (16 + 3) + 4 * (16 + 3) + 48  # below a bitmap's index alone


def test_keep_for_bytes_is_the_largest_fraction_that_fits():
    net = small_net()
    theta = net.theta.detach()
    budget = alone.per_channel_bytes(net, "int8") // 3
    keep = alone.keep_for_bytes(theta, net, budget, "int8")
    assert alone.pruned_bytes(alone.prune_mask(theta, net, keep), net, "int8") <= budget
    assert alone.pruned_bytes(alone.prune_mask(theta, net, keep + 0.01), net, "int8") > budget
    assert alone.keep_for_bytes(theta, net, 10 ** 9) == 1.0
    with pytest.raises(ValueError, match="cannot hold"):
        alone.keep_for_bytes(theta, net, 100)


def test_a_codebook_holds_at_most_its_size_of_runs_and_trains_its_means():
    net = small_net()
    theta = net.theta.detach().clone()
    book = alone.Codebook.fit(theta, net, dim=4, size=16, seed=0)
    assert torch.equal(book.labels, alone.Codebook.fit(theta, net, dim=4, size=16, seed=0).labels)  # seeded
    q = net.tensors(book(theta))
    runs = torch.cat([q["weight_0"].reshape(-1, 4), q["weight_1"].reshape(-1, 4)])
    assert len(runs.unique(dim=0)) <= 16 and torch.equal(q["bias_0"], net.tensors(theta)["bias_0"])
    error = (book(theta) - theta).norm()
    assert error < (alone.Codebook.fit(theta, net, dim=4, size=2, seed=0)(theta) - theta).norm()  # more entries: closer
    theta.requires_grad_(True)
    loss = (book(theta) ** 2).sum()
    loss.backward()
    assert theta.grad.abs().sum() > 0
    runs_total = (64 * 16 + 16 * 3) // 4
    assert book.n_bytes == runs_total * 4 // 8 + 4 * 16 * 4 + 4 * (16 + 3)  # 4-bit labels, 16 float32 runs, biases


def test_codebook_shapes_fit_the_budget_and_give_each_run_length_its_largest_codebook():
    net = small_net()
    budget = alone.per_channel_bytes(net, "int4") // 2
    shapes = alone.codebook_shapes(net, budget)
    assert shapes and all(d in (1, 2, 4, 8) for d, _ in shapes)
    layout = tuple((s.shape, s.numel) for s in net.layout)
    for dim, size in shapes:
        runs = sum(math.ceil(n / dim) for shape, n in layout if len(shape) >= 2)
        assert alone.Codebook(dim, size, torch.empty(runs, dtype=torch.int64), layout).n_bytes <= budget
        if 2 * size <= runs:
            assert alone.Codebook(dim, 2 * size, torch.empty(runs, dtype=torch.int64), layout).n_bytes > budget


def test_a_setting_names_each_dnns_compression_alone_and_its_bytes_fit_the_ratio():
    import types

    from experiments import runs

    net = small_net()
    theta = net.theta.detach().clone()
    record = types.SimpleNamespace(name="tiny", model=net, reference=types.SimpleNamespace(theta=theta, buffers={}),
                                   accuracy=lambda weights, split: float((weights > 0).float().mean()))
    for spec, most in (("prune-int8-8x", 4 * net.n_weights / 8), ("prune-int4-16x", 4 * net.n_weights / 16),
                       ("codebook-8x", 4 * net.n_weights / 8)):
        transform, n_bytes = runs.compressed_alone(spec, record, seed=0)
        assert n_bytes <= most and transform(theta).shape == theta.shape
    transform, n_bytes = runs.compressed_alone("int4", record, seed=0)
    assert n_bytes == alone.per_channel_bytes(net, "int4")
    assert torch.equal(transform(theta), alone.per_channel(theta, net, "int4"))
    with pytest.raises(ValueError, match="unknown"):
        runs.compressed_alone("hash-8x", record, seed=0)
