"""Any nn.Module as one flat weight vector (weightsep.flat), over the example folders and TemplateNet."""
import json
import subprocess
import sys
import warnings

import pytest
import torch
from conftest import REPO, accuracy_from_store
from torch import nn

from weightsep import dnn as dnn_mod
from weightsep.evaluate import packed_theta
from weightsep.execution import PackedModel
from weightsep.fisher import ESTIMATORS
from weightsep.flat import FlatError, FlatModule, as_flat, buffer_state, load_buffer_state, page_labels, parameter_sizes
from weightsep.pack import PackConfig, add_vnn, new_state
from weightsep.store import Store

FOLDERS = ["examples/dscnn_keywords", "examples/resnet_syndigits", "examples/gru_watch", "examples/mobilenet_signs",
           "suite/keywords"]


def built(folder: str, seed: int = 0):
    """The folder's model, initialised from `seed`, with non-trivial buffers (a few train-mode forwards)."""
    model = dnn_mod.get(str(REPO / folder)).build_model()
    model.reset_parameters(torch.Generator().manual_seed(seed))
    x = torch.randn(8, *model.input_shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for _ in range(3):
            model.train()(x)
    return model.eval(), x


@pytest.mark.parametrize("folder", FOLDERS)
def test_the_flat_vector_round_trips_bit_for_bit_and_is_the_modules_own_storage(folder):
    model, _ = built(folder)
    theta = model.theta.detach()
    assert torch.equal(model.flatten(model.tensors(theta)), theta)
    assert model.n_weights == theta.numel() == sum(s.numel for s in model.layout)
    if isinstance(model, FlatModule):  # the module's parameters are views of theta: no copy, one truth
        params = dict(model.module.named_parameters())
        assert [s.name for s in model.layout] == list(params)
        for s in model.layout:
            assert params[s.name].untyped_storage().data_ptr() == model.theta.untyped_storage().data_ptr()
            assert torch.equal(params[s.name], model.tensors()[s.name])


@pytest.mark.parametrize("folder", FOLDERS)
def test_the_functional_forward_equals_the_modules_own_forward(folder):
    model, x = built(folder)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (len(x), model.classes)
        if isinstance(model, FlatModule):
            assert torch.equal(out, model.module(x))
        other = torch.randn(model.n_weights, generator=torch.Generator().manual_seed(1)) * 0.05
        assert not torch.equal(model(x, other), out)  # the weights handed in are the ones used


@pytest.mark.parametrize("folder", FOLDERS)
def test_batched_fisher_equals_the_per_sample_loop(folder):
    model, x = built(folder)
    theta = model.theta.detach()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the batched path must batch, not fall back to the loop
        batched = ESTIMATORS["predicted"].fn(model, theta, x, torch.zeros(len(x), dtype=torch.long), 4)
    loop = ESTIMATORS["paper"].fn(model, theta, x, torch.zeros(len(x), dtype=torch.long), 4)
    torch.testing.assert_close(batched, loop, rtol=1e-4, atol=1e-9 * float(loop.max()))
    assert float(batched.max()) > 0


def packed(model: nn.Module, name: str = "net"):
    """`model` packed with a second copy of itself onto shared pages, with exclusive pages too."""
    config = PackConfig(page_size=256, n_shared=max(4, model.n_weights // 256 // 2), margin=0.5)
    state = new_state(config, config.n_shared)
    theta = model.theta.detach().clone()
    for i, n in enumerate([name, "twin"]):
        fisher = torch.rand(theta.numel(), generator=torch.Generator().manual_seed(i))
        state, _ = add_vnn(state, n, theta + 0.01 * i, fisher, config)
        state.vnns[n].buffers = buffer_state(model)
    return state


@pytest.mark.parametrize("mode", ["gather", "zero-copy"])
@pytest.mark.parametrize("folder", FOLDERS)
def test_gather_and_zero_copy_switch_equal_the_dense_forward(folder, mode):
    model, x = built(folder)
    state = packed(model)
    assert state.vnns["net"].n_exclusive > 0 and state.vnns["net"].n_exclusive < state.vnns["net"].n_pages
    with torch.no_grad():
        dense = model(x, packed_theta(state, "net", model))
    fresh, _ = built(folder, seed=5)  # another instance: the store's pages and buffers make it the packed DNN
    pm = PackedModel(state, {"net": fresh, "twin": built(folder, seed=6)[0]}, mode=mode)
    pm.switch("twin")
    pm.switch("net")
    assert torch.equal(pm.predict(x), dense)


@pytest.mark.parametrize("folder", FOLDERS)
def test_a_store_round_trip_keeps_buffers(folder, tmp_path):
    model, x = built(folder)
    state = packed(model)
    Store(tmp_path / "s").save(state)
    back = Store(tmp_path / "s").load()
    for name, vnn in state.vnns.items():
        assert list(back.vnns[name].buffers) == list(vnn.buffers)
        for k, b in vnn.buffers.items():
            assert back.vnns[name].buffers[k].dtype == b.dtype and torch.equal(back.vnns[name].buffers[k], b)
    fresh, _ = built(folder, seed=3)
    with torch.no_grad():
        assert torch.equal(fresh(x, packed_theta(back, "net", fresh)), model(x, packed_theta(state, "net", model)))


def test_buffers_that_do_not_fit_the_model_are_refused_by_name():
    model, _ = built("examples/dscnn_keywords")
    saved = buffer_state(model)
    name = next(iter(saved))
    with pytest.raises(ValueError, match="do not match"):
        load_buffer_state(model, {k: v for k, v in saved.items() if k != name}, "DNN 'x'")
    with pytest.raises(ValueError, match=f"buffer '{name}'"):
        load_buffer_state(model, {**saved, name: torch.zeros(3)}, "DNN 'x'")


def test_pages_are_labelled_with_the_parameters_they_cover():
    model, _ = built("examples/dscnn_keywords")
    sizes = parameter_sizes(model)
    labels = page_labels(sizes, 512)
    assert len(labels) == -(-model.n_weights // 512)
    assert labels[0].startswith(sizes[0][0])
    assert labels[-1].endswith("fc.bias (2)") or labels[-1] == sizes[-1][0] or sizes[-1][0] in labels[-1]


# ---------------------------------------------------------------- checks, each naming the parameter


class Dense(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, x):
        return self.out(torch.relu(self.a(x)))


def test_tied_parameters_count_once_and_stay_tied():
    net = Dense()
    net.b = nn.Linear(4, 4)
    net.b.weight = net.a.weight  # tied
    flat = as_flat(net, (4,), 3)
    assert [s.name for s in flat.layout] == ["a.weight", "a.bias", "out.weight", "out.bias", "b.bias"]
    assert flat.n_weights == 16 + 4 + 12 + 3 + 4
    theta = torch.randn(flat.n_weights)
    assert torch.equal(flat.tensors(theta)["a.weight"], flat.tensors(theta)["a.weight"])
    assert net.b.weight is net.a.weight


def _double(m):
    m.a.weight.data = m.a.weight.data.double()


def _complex(m):
    m.z = nn.Parameter(torch.zeros(2, dtype=torch.complex64))


def _integer(m):
    m.k = nn.Parameter(torch.zeros(2, dtype=torch.int32), requires_grad=False)


def _frozen(m):
    m.a.weight.requires_grad_(False)


@pytest.mark.parametrize("spoil, says", [(_double, "mix dtypes"), (_complex, "parameter 'z' is torch.complex64"),
                                         (_integer, "parameter 'k' is torch.int32"), (_frozen, "parameter 'a.weight' is frozen")])
def test_parameters_that_cannot_be_paged_are_refused_by_name(spoil, says):
    net = Dense()
    spoil(net)
    with pytest.raises(FlatError, match=says):
        as_flat(net, (4,), 3)


def test_a_forward_that_changes_a_parameter_in_place_is_refused_by_name():
    class Clamping(Dense):
        def forward(self, x):
            self.out.bias.add_(1.0)
            return super().forward(x)

    with pytest.raises(FlatError, match="changes parameter 'out.bias' in place"):
        as_flat(Clamping(), (4,), 3)


def test_a_wrong_number_of_logits_is_refused():
    with pytest.raises(FlatError, match=r"expected \(2, 5\) logits"):
        as_flat(Dense(), (4,), 5)


def test_a_recurrent_layer_vmap_cannot_batch_falls_back_to_the_loop_with_a_warning():
    class GRUZeroState(nn.Module):  # nn.GRU makes its zero state inside forward: vmap cannot batch that
        def __init__(self):
            super().__init__()
            self.gru = nn.GRU(3, 8, batch_first=True)
            self.out = nn.Linear(8, 2)

        def forward(self, x):
            return self.out(self.gru(x)[0].mean(1))

    model = as_flat(GRUZeroState(), (5, 3), 2)
    x = torch.randn(6, 5, 3)
    with pytest.warns(RuntimeWarning, match="one sample at a time"):
        batched = ESTIMATORS["predicted"].fn(model, model.theta.detach(), x, torch.zeros(6, dtype=torch.long), 4)
    loop = ESTIMATORS["paper"].fn(model, model.theta.detach(), x, torch.zeros(6, dtype=torch.long), 4)
    torch.testing.assert_close(batched, loop, rtol=1e-4, atol=1e-10)


def test_a_dnn_folder_whose_model_changes_between_builds_is_refused(tmp_path):
    folder = tmp_path / "wobbly"
    folder.mkdir()
    (folder / "dnn.py").write_text(
        "import itertools\nfrom torch import nn\nMETA = {'task': 't', 'source': 's', 'real': False, 'input': (4,), "
        "'classes': 3}\n_width = itertools.count(4)\n"
        "def build_model():\n    w = next(_width)\n    return nn.Sequential(nn.Linear(4, w), nn.ReLU(), nn.Linear(w, 3))\n"
        "def load_data(d):\n    raise FileNotFoundError(d)\n")
    with pytest.raises(dnn_mod.DNNError, match="wobbly.*different model on another build.*0.weight"):
        dnn_mod.get(str(folder)).build_model()


@pytest.mark.slow
@pytest.mark.e2e
def test_an_example_module_packs_with_a_suite_dnn_end_to_end(cache_with_data, tmp_path):
    watch_file = dnn_mod.get("watch").module.FILE
    if not (cache_with_data / "data" / watch_file).exists():
        pytest.skip(f"offline data not prepared: {watch_file} (run ./setup.sh)")
    store, results, examples = tmp_path / "state", tmp_path / "results", REPO / "examples"

    def cli(*args):
        result = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    cli("-m", "weightsep", "run", "--dnn-folder", examples, "--dnns", "gru_watch", "letters", "--train-steps", "200",
        "--fisher-samples", "64", "--steps", "100", "--eval-every", "25", "--store", store, "--results", results, "--no-control")
    summary = json.loads((results / "summary.json").read_text())
    for row in summary["rows"]:  # the table's packed accuracy is the store's, buffers included
        assert row["packed_accuracy"] == pytest.approx(accuracy_from_store(store, row["name"], (examples,)), abs=1e-9)
        assert row["difference_pp"] > -10 and row["packed_accuracy"] > 0.5, row
    state = Store(store).load()
    buffers = state.vnns["gru_watch"].buffers
    assert set(buffers) == {"module.bn.running_mean", "module.bn.running_var", "module.bn.num_batches_tracked"}
    assert int(buffers["module.bn.num_batches_tracked"]) > 200  # trained stand-alone, then on with its pages
    assert state.vnns["letters"].buffers == {}
    assert [p[0] for p in state.vnns["gru_watch"].provenance.parameters][:3] == ["conv.weight", "bn.weight", "bn.bias"]

    row = next(r for r in summary["rows"] if r["name"] == "gru_watch")
    said = cli("-m", "weightsep", "eval", "gru_watch", "--dnn-folder", examples, "--store", store, "--results", results)
    assert f"{100 * row['packed_accuracy']:.2f}" in said
    shown = cli("vnn.py", "gru_watch", "--store", store, "--no-plot")
    assert "gru.weight_hh_l0" in shown and "parameters by logical page" in shown


class BNDense(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, 3))

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("optimizer", ["joint", "round-robin", "sequential"])
def test_optimizers_train_batch_norm_buffers_and_keep_the_best_checks(optimizer):
    from test_optimize import blobs

    from weightsep.optimize import OptimizeConfig, optimize
    from weightsep.page_optimizer import Task

    config = PackConfig(page_size=64, n_shared=6, margin=0.5)
    state, tasks, nets = new_state(config, 6), {}, {}
    for seed, (name, hidden) in enumerate([("a", 40), ("b", 32)]):
        torch.manual_seed(seed)
        nets[name] = as_flat(BNDense(hidden), (8,), 3)
        x, y = blobs(seed, spread=1.0)
        theta = nets[name].theta.detach().clone()
        state, _ = add_vnn(state, name, theta, torch.rand_like(theta), config)
        state.vnns[name].buffers = buffer_state(nets[name])
        tasks[name] = Task(nets[name], x[:300], y[:300], x[300:], y[300:])
    before = {n: buffer_state(m) for n, m in nets.items()}
    # a constant, high learning rate: later checks score lower, so the best check is not the last one
    result, history = optimize(state, tasks, OptimizeConfig(optimizer=optimizer, steps=150, rounds=3, steps_per_turn=50,
                                                            eval_every=25, batch_size=50, lr=0.05, schedule="constant"))
    assert history.mean(history.best_index) > history.mean(0) + 0.2
    if optimizer != "sequential":  # a check after each of its two turns: the second DNN's may be the best
        assert history.best_index < len(history.steps) - 1  # else this could not tell the best check's buffers from the last's
    for name, task in tasks.items():
        assert not torch.equal(result.vnns[name].buffers["module.net.1.running_mean"], before[name]["module.net.1.running_mean"])
        assert torch.equal(state.vnns[name].buffers["module.net.1.running_mean"], before[name]["module.net.1.running_mean"])
        fresh = as_flat(BNDense(32 if name == "b" else 40), (8,), 3).eval()
        with torch.no_grad():  # the best check's pages AND buffers give the best check's accuracy
            acc = (fresh(task.x_val, packed_theta(result, name, fresh)).argmax(1) == task.y_val).float().mean()
        assert acc == pytest.approx(history.val_accuracy[history.best_index][name], abs=1e-6)
