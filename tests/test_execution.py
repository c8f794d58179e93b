import copy
import os
import re
import subprocess
import sys

import pytest
import torch

from weightsep.evaluate import packed_theta
from weightsep.execution import PackedModel
from weightsep.flat import as_flat, buffer_state
from weightsep.model import Conv, TemplateNet
from weightsep.pack import PackConfig, add_vnn, new_state, solo_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
P, S = 64, 12
MODES = [("gather", "ops"), ("gather", "index_select"), ("zero-copy", "ops")]


def packed_two():
    """A conv DNN and a dense DNN packed into 12 shared pages of 64, with exclusive pages."""
    nets = {"conv": TemplateNet((1, 8, 8), [Conv(3, 3, 4)], dense=[16], classes=3),
            "dense": TemplateNet((8,), [], dense=[48], classes=3)}
    config = PackConfig(page_size=P, n_shared=S, margin=0.5)
    state = new_state(config, S)
    for seed, (name, net) in enumerate(nets.items()):
        torch.manual_seed(seed)
        net.reset_parameters()
        theta = net.theta.detach().clone()
        state, _ = add_vnn(state, name, theta, torch.rand_like(theta), config)
    g = torch.Generator().manual_seed(0)
    inputs = {"conv": torch.randn(37, 1, 8, 8, generator=g), "dense": torch.randn(37, 8, generator=g)}
    return state, nets, inputs


@pytest.mark.parametrize("mode,kernel", MODES)
def test_outputs_equal_the_reference_forward_with_packed_theta(mode, kernel):
    state, nets, inputs = packed_two()
    assert all(v.n_exclusive > 0 for v in state.vnns.values())  # both levels are exercised
    pm = PackedModel(state, nets, mode=mode, kernel=kernel)
    for name in state.vnns:
        pm.switch(name)
        with torch.no_grad():
            ref = nets[name](inputs[name], packed_theta(state, name))
        assert torch.equal(pm.predict(inputs[name], batch=10), ref)
        if mode == "gather":
            assert torch.equal(pm.theta, packed_theta(state, name))


@pytest.mark.parametrize("mode,kernel", MODES)
def test_switching_back_and_forth_gives_the_same_outputs(mode, kernel):
    state, nets, inputs = packed_two()
    pm = PackedModel(state, nets, mode=mode, kernel=kernel)
    first = {}
    for name in ["conv", "dense", "conv", "conv", "dense", "conv", "dense"]:
        pm.switch(name)
        out = pm.predict(inputs[name])
        assert torch.equal(first.setdefault(name, out), out)
        assert pm.current == name


def test_bytes_accounting():
    state, nets, _ = packed_two()
    e_max = max(v.n_exclusive for v in state.vnns.values())
    n_max = max(v.n_weights for v in state.vnns.values())
    for mode, kernel in MODES:
        pm = PackedModel(state, nets, mode=mode, kernel=kernel)
        for name, v in state.vnns.items():
            assert pm.bytes_moved_per_switch(name) == v.n_exclusive * P * 4 + v.n_pages * 8
        flat = 0 if mode == "zero-copy" else max(pm.weights.numel(), n_max) * 4
        assert pm.device_bytes() == (S + e_max) * P * 4 + flat  # CPU: page tables stay in host memory
        assert pm.host_bytes() == sum(v.n_exclusive * P * 4 + v.n_pages * 8 for v in state.vnns.values())
        if mode == "zero-copy":
            assert all(0.0 <= pm.view_fraction(n) <= 1.0 for n in state.vnns)


def test_zero_copy_reads_consecutive_pages_as_views():
    net = TemplateNet((1, 8, 8), [Conv(3, 3, 4)], dense=[16], classes=3)
    state = solo_state("solo", net.theta.detach().clone(), P)  # all pages exclusive, in order
    pm = PackedModel(state, {"solo": net}, mode="zero-copy")
    pm.switch("solo")
    assert pm.view_fraction("solo") == 1.0
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(pm(x), net(x, packed_theta(state, "solo")))


def test_errors():
    state, nets, inputs = packed_two()
    pm = PackedModel(state, nets)
    with pytest.raises(RuntimeError, match="switch"):
        pm(inputs["conv"])
    with pytest.raises(KeyError, match="nope"):
        pm.switch("nope")
    with pytest.raises(ValueError, match="mode"):
        PackedModel(state, nets, mode="mmap")
    with pytest.raises(ValueError, match="no model"):
        PackedModel(state, {"conv": nets["conv"]})


def _run(args, env, timeout=240):
    r = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{args} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout


@pytest.mark.slow
@pytest.mark.e2e
def test_ws_and_baseline_execution_end_to_end(cache_with_data, tmp_path):
    # the stand-in torch backend of weightsep.ops: an extension build inside the temporary cache
    # would dominate the test's time, and both backends copy the same floats
    env = {**os.environ, "WEIGHTSEP_OPS_BACKEND": "torch", "OMP_NUM_THREADS": "1"}
    store = str(tmp_path / "st")
    _run(["-m", "weightsep", "run", "--dnns", "satellite", "letters", "--train-steps", "200", "--steps", "20",
          "--store", store, "--results", str(tmp_path / "results"), "--no-control"], env)
    evals = {}
    for name in ("satellite", "letters"):
        out = _run(["-m", "weightsep", "eval", name, "--store", store], env)
        m = re.search(rf"{name}: packed test accuracy ([\d.]+)%, stand-alone ([\d.]+)%", out)
        assert m, out
        evals[name] = m.groups()
    for mode in ("gather", "zero-copy"):
        out = _run(["ws_execution.py", "--store", store, "--switches", "5", "--mode", mode], env)
        assert re.search(r"5 switches, total switching time [\d.]+ ms .*total inference time [\d.]+ s", out), out
        for name, (packed, _) in evals.items():
            assert f"{name}: packed test accuracy {packed}%" in out, out
    out = _run(["baseline_execution.py", "--store", store, "--switches", "5", "--train-steps", "200"], env)
    assert re.search(r"5 switches, total switching time [\d.]+ ms .*total inference time [\d.]+ s", out), out
    for name, (_, alone) in evals.items():
        assert f"{name}: stand-alone test accuracy {alone}%" in out, out

    # exactly, not only to two decimals: the evaluate.packed_theta path in this process
    from weightsep.records import load
    from weightsep.store import Store

    state = Store(store).load()
    out = _run(["ws_execution.py", "--store", store, "--switches", "3"], env)
    for name, item in load(list(state.vnns)).items():
        exact = item.test_accuracy(packed_theta(state, name))
        assert f"{name}: packed test accuracy {100 * exact:.2f}% ({exact!r})" in out, out


def test_help(monkeypatch, capsys):
    """In process: the script's main, as its process runs it (exit status 0, the help on stdout)."""
    import importlib

    monkeypatch.syspath_prepend(REPO)
    for script in ("ws_execution.py", "baseline_execution.py"):
        with pytest.raises(SystemExit) as exited:
            importlib.import_module(script.removesuffix(".py")).main(["--help"])
        assert exited.value.code == 0
        assert "--switches" in capsys.readouterr().out


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode,kernel", MODES)
def test_cuda_placement_weights_and_outputs(mode, kernel, monkeypatch):
    """On CUDA: level 2 pinned in host memory, level 1 on the GPU, the same weights bit for bit.
    TF32 is off, so cuDNN's and cuBLAS's float32 results can be held to the CPU reference."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    if kernel == "ops":
        from weightsep import ops
        assert ops.BACKEND == "extension", "the CUDA execution test must run the extension's kernel"
    state, nets, inputs = packed_two()
    pm = PackedModel(state, {n: TemplateNet(m.input_shape, m.convs, m.dense, m.classes) for n, m in nets.items()},
                     device="cuda", mode=mode, kernel=kernel)
    assert pm.pages.store.is_cuda and all(src.is_pinned() for c in pm.pages.copies.values() for _, src in c)
    for name in ["conv", "dense", "conv"]:
        pm.switch(name)
        if mode == "gather":
            assert torch.equal(pm.theta.cpu(), packed_theta(state, name))
        with torch.no_grad():
            ref = nets[name](inputs[name], packed_theta(state, name))
        torch.testing.assert_close(pm.predict(inputs[name]).cpu(), ref, rtol=1e-4, atol=1e-5)


def test_a_bad_page_table_row_is_caught_on_the_host_before_any_kernel():
    state, nets, _ = packed_two()
    state.vnns["dense"].page_table[0] = state.n_shared + 99  # changed after the state was validated
    with pytest.raises(ValueError, match="'dense'.*page table"):
        PackedModel(state, nets)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_forward_on_another_stream_sees_the_switched_weights():
    """Switch on one stream, run on another, switch again: each forward sees its own DNN's weights."""
    state, nets, inputs = packed_two()
    pm = PackedModel(state, {n: TemplateNet(m.input_shape, m.convs, m.dense, m.classes) for n, m in nets.items()},
                     device="cuda")
    side = torch.cuda.Stream()
    outputs = {}
    for name in ["conv", "dense", "conv", "dense"]:
        pm.switch(name)
        with torch.cuda.stream(side):
            outputs[name] = pm.predict(inputs[name])
        torch.cuda.current_stream().wait_stream(side)
    for name, out in outputs.items():
        with torch.no_grad():
            ref = nets[name](inputs[name], packed_theta(state, name))
        torch.testing.assert_close(out.cpu(), ref, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("mode", ["gather", "zero-copy"])
def test_packed_model_leaves_the_callers_module_as_it_was(mode):
    """PackedModel runs copies: the caller's parameters are not re-pointed, its buffers not loaded from
    the store, the module not moved, its mode not changed."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    module.train()
    params = {n: (p, p.data_ptr(), p.detach().clone()) for n, p in module.named_parameters()}
    buffers = buffer_state(module)
    theta = torch.cat([p.detach().reshape(-1) for p in module.parameters()])
    # the store's statistics differ from the module's (named as the flat wrapper holds them)
    stored = {k: b + 1 for k, b in buffer_state(as_flat(copy.deepcopy(module))).items()}
    state = solo_state("m", theta * 2, 16, stored)
    pm = PackedModel(state, {"m": module}, mode=mode)
    pm.switch("m")
    x = torch.randn(5, 6)
    out = pm.predict(x)
    assert torch.isfinite(out).all()
    assert module.training and not hasattr(module, "_weightsep_flat")
    for n, p in module.named_parameters():
        same, ptr, value = params[n]
        assert p is same and p.data_ptr() == ptr and torch.equal(p.detach(), value)
    for k, b in buffer_state(module).items():
        assert torch.equal(b, buffers[k])
    reference = copy.deepcopy(module).eval()  # the module with the store's weights and statistics
    torch.nn.utils.vector_to_parameters(theta * 2, reference.parameters())
    for k, b in reference.named_buffers():
        b.copy_(stored[f"module.{k}"])
    with torch.no_grad():
        assert torch.allclose(reference(x), out, rtol=0, atol=1e-6)
