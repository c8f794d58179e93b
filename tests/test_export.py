"""weightsep/export.py and c_runtime/: a packed store exported to C, compiled with the system C compiler,
runs each DNN as PyTorch does (argmax identical, logits within 1e-4 relative, int8 pages dequantised
bit for bit); what the runtime cannot run is refused by name."""
import json
import shutil
import subprocess

import numpy as np
import pytest
import torch
from conftest import REPO

from weightsep import dnn as dnn_mod
from weightsep import export
from weightsep.evaluate import packed_theta
from weightsep.execution import PackedModel
from weightsep.model import ACTIVATIONS, Conv, TemplateNet
from weightsep.pack import PackConfig, add_vnn, new_state
from weightsep.precision import PrecisionConfig, assign

CC = shutil.which("cc")
needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler (cc) on this machine")
MCU_TOOLS = [t for t in ("arm-none-eabi-gcc", "qemu-system-arm") if shutil.which(t) is None]
needs_mcu = pytest.mark.skipif(bool(MCU_TOOLS), reason=f"Cortex-M tools missing ({', '.join(MCU_TOOLS)}): ./setup.sh --mcu")
NETS = {"conv": TemplateNet((2, 9, 11), [Conv(3, 3, 4), Conv(2, 2, 6, pool=(1, 2))], dense=[12], classes=5),
        "wide": TemplateNet((1, 1, 20), [Conv(1, 5, 3, pool=(1, 3))], dense=[10, 8], classes=4, hidden_act="sigmoid"),
        "dense": TemplateNet((7,), [], dense=[9], classes=3, hidden_act="relu")}


def packed_nets(page_size: int = 32) -> tuple:
    """The three nets packed onto shared pages, some pages exclusive; and their models."""
    sizes = [net.n_weights for net in NETS.values()]
    config = PackConfig(page_size=page_size, n_shared=-(-max(sizes) // page_size), margin=0.3)
    state = new_state(config, config.n_shared)
    for i, (name, net) in enumerate(NETS.items()):
        net.reset_parameters(torch.Generator().manual_seed(i))
        fisher = torch.rand(net.n_weights, generator=torch.Generator().manual_seed(10 + i))
        state, _ = add_vnn(state, name, net.theta.detach().clone(), fisher, config)
    return state, dict(NETS)


def compiled(state, models, out, target: str = "host") -> object:
    """The export of `state` built for `target`: a function (dnn index, inputs, classes) -> logits, with
    .weights(dnn index) -> the dequantised weights."""
    export.export_c(state, models, out)
    if target == "host":  # our own sources compile without a warning
        subprocess.run([CC, *export.C_FLAGS, "-Werror", "-c", "ws_runtime.c", "ws_model.c", "ws_main.c"], cwd=out, check=True)
    binary = export.build(out, target)

    def run(index: int, x: torch.Tensor, classes: int) -> np.ndarray:
        np.ascontiguousarray(x.numpy(), dtype=np.float32).tofile(out / "in.bin")
        export.run_binary(binary, [str(index), str(len(x)), "in.bin", "out.bin"], target)
        return np.fromfile(out / "out.bin", dtype=np.float32).reshape(len(x), classes)

    def weights(index: int) -> np.ndarray:
        export.run_binary(binary, [str(index), "--weights", "w.bin"], target)
        return np.fromfile(out / "w.bin", dtype=np.float32)

    run.weights = weights
    return run


@needs_cc
@pytest.mark.parametrize("precision", ["float32", "int8"])
def test_the_exported_library_runs_each_dnn_as_pytorch_does(tmp_path, precision):
    state, models = packed_nets()
    if precision == "int8":
        state = assign(state, PrecisionConfig(precision="int8"))
    assert any(v.n_exclusive for v in state.vnns.values()) and any(v.n_exclusive < v.n_pages for v in state.vnns.values())
    run = compiled(state, models, tmp_path)
    pm = PackedModel(state, models)
    for index, (name, net) in enumerate(models.items()):
        theta = packed_theta(state, name)
        assert np.array_equal(run.weights(index), theta.numpy())  # int8 dequantised bit for bit, float32 exact
        x = torch.randn(50, *net.input_shape, generator=torch.Generator().manual_seed(index))
        pm.switch(name)
        with torch.no_grad():
            want = pm.forward(x).numpy()
        got = run(index, x, net.classes)
        assert np.array_equal(got.argmax(1), want.argmax(1))
        assert np.allclose(got, want, rtol=1e-4, atol=1e-5)


def test_the_memory_report_counts_each_level_and_the_dnns_alone(tmp_path):
    state, models = packed_nets()
    for precision, value, scale in (("float32", 4, 0), ("int8", 1, 4)):
        s = state if precision == "float32" else assign(state, PrecisionConfig(precision="int8"))
        report = export.export_c(s, models, tmp_path / precision)
        assert json.loads((tmp_path / precision / "memory.json").read_text()) == report
        P, S = s.page_size, s.n_shared
        flash = report["flash_bytes"]
        assert flash["level1_shared_pages"] == S * (P * value + scale)
        assert flash["level2_exclusive_pages"] == sum(v.n_exclusive for v in s.vnns.values()) * (P * value + scale)
        assert flash["level2_page_tables"] == 2 * sum(v.n_pages for v in s.vnns.values())
        assert report["alone_flash_bytes"] == sum(v.n_weights * value + v.n_pages * scale for v in s.vnns.values())
        assert report["ram_bytes"]["scratch"] == 4 * 2 * max(max(export.activations(n)) for n in models.values())
        assert '__attribute__((section(".ws_level1")))' in (tmp_path / precision / "ws_model.h").read_text()


def test_every_activation_of_the_template_is_in_the_runtime():
    assert set(export.ACT_CODES) == set(ACTIVATIONS)


def test_what_the_runtime_cannot_run_is_refused_by_name(tmp_path):
    state, models = packed_nets()
    resnet = dnn_mod.get(str(REPO / "examples" / "resnet_syndigits")).build_model()
    with pytest.raises(ValueError, match=r"DNN 'conv'.*layer 'stem.0' \(Conv2d\)"):
        export.export_c(state, {**models, "conv": resnet}, tmp_path)
    int4 = assign(state, PrecisionConfig(precision="int4", group=16))
    with pytest.raises(ValueError, match="float32 or int8 pages; this store holds int4"):
        export.export_c(int4, models, tmp_path)
    with pytest.raises(ValueError, match="no model given for packed DNN.s. dense"):
        export.export_c(state, {n: m for n, m in models.items() if n != "dense"}, tmp_path)
    assert not (tmp_path / "ws_model.c").exists()  # refused before anything is written


def test_dnn_names_become_distinct_c_identifiers():
    assert export.c_identifiers(["a-b", "a_b", "x.1"]) == {"a-b": "a_b", "a_b": "a_b_", "x.1": "x_1"}


@needs_cc
@pytest.mark.slow
@pytest.mark.e2e
def test_export_from_the_command_line_runs_every_suite_dnn_on_its_whole_test_set(tmp_path, cache_with_data):
    """The ten suite DNNs packed (a short run), exported in float32 and, after int8 quantisation and joint
    training, in int8: the compiled library predicts every test sample of every DNN as PyTorch does, and
    (where the Cortex-M tools are) the emulated Cortex-M4F gives the host's logits."""
    import sys

    from weightsep.records import load_packed
    from weightsep.store import Store

    def cli(*args):
        done = subprocess.run([sys.executable, "-m", "weightsep", *map(str, args)], cwd=REPO, capture_output=True,
                              text=True, timeout=1200)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    store = tmp_path / "state"
    cli("run", "--store", store, "--results", tmp_path / "results", "--train-steps", "40", "--steps", "20",
        "--no-control", "--fisher-samples", "32")
    for precision in ("float32", "int8"):
        if precision == "int8":
            cli("quantize", "--store", store, "--precision", "int8")
            cli("joint", "--store", store, "--steps", "10")
        out = tmp_path / precision
        said = cli("export", "--store", store, out)
        assert f"10 DNNs, {precision} pages" in said
        host = export.build(out, "host")
        mcu = export.build(out, "mps2-an386") if not MCU_TOOLS else None  # CI has the tools (./setup.sh --mcu)
        state = Store(store).load()
        pm = PackedModel(state, {n: r.model for n, r in load_packed(state).items()})
        for index, (name, record) in enumerate(load_packed(state).items()):
            x = torch.from_numpy(np.asarray(record.data.test.x)).float()
            x.numpy().tofile(out / "in.bin")
            export.run_binary(host, [str(index), str(len(x)), "in.bin", "out.bin"])
            got = np.fromfile(out / "out.bin", dtype=np.float32).reshape(len(x), -1)
            if mcu is not None:  # a few dozen samples a DNN on the emulated Cortex-M4F: the host's logits, bit for bit
                export.run_binary(mcu, [str(index), "40", "in.bin", "mcu.bin"], "mps2-an386")
                assert np.array_equal(np.fromfile(out / "mcu.bin", dtype=np.float32).reshape(40, -1), got[:40]), name
            pm.switch(name)
            want = pm.predict(x).numpy()
            assert np.array_equal(got.argmax(1), want.argmax(1)), (precision, name)
            assert np.allclose(got, want, rtol=1e-4, atol=1e-4), (precision, name)


@pytest.mark.e2e
def test_export_refuses_a_module_the_runtime_cannot_run_without_a_traceback(tmp_path, cache_with_data):
    import sys

    store = tmp_path / "state"
    done = subprocess.run([sys.executable, "-m", "weightsep", "run", "--store", store, "--results", tmp_path / "r",
                           "--dnn-folder", REPO / "examples", "--dnns", "dscnn_keywords", "letters", "--train-steps", "20",
                           "--steps", "5", "--no-control", "--fisher-samples", "16"], cwd=REPO, capture_output=True, text=True,
                          timeout=1200)
    assert done.returncode == 0, done.stderr
    refused = subprocess.run([sys.executable, "-m", "weightsep", "export", "--store", store, "--dnn-folder",
                              REPO / "examples", tmp_path / "out"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "DNN 'dscnn_keywords'" in refused.stderr and "(Conv2d) is not one of them" in refused.stderr


@needs_mcu
@pytest.mark.parametrize("precision", ["float32", "int8"])
def test_the_library_cross_compiled_for_a_cortex_m4_runs_as_the_host_build_does(tmp_path, precision):
    """Under QEMU's mps2-an386 (Cortex-M4F): the same logits as the host build, bit for bit (both built
    without fused multiply-add), where the DNN's activations are exact in both C libraries (not sigmoid:
    glibc's and newlib's expf may differ in the last bit), and the same argmax everywhere."""
    state, models = packed_nets()
    if precision == "int8":
        state = assign(state, PrecisionConfig(precision="int8"))
    host = compiled(state, models, tmp_path / "host")
    mcu = compiled(state, models, tmp_path / "mcu", target="mps2-an386")
    for index, (name, net) in enumerate(models.items()):
        assert np.array_equal(mcu.weights(index), host.weights(index))
        x = torch.randn(20, *net.input_shape, generator=torch.Generator().manual_seed(index))
        got, want = mcu(index, x, net.classes), host(index, x, net.classes)
        assert np.array_equal(got.argmax(1), want.argmax(1))
        if net.hidden_act != "sigmoid":
            assert np.array_equal(got, want), name
        else:
            assert np.allclose(got, want, rtol=1e-6, atol=1e-6)


@needs_mcu
def test_instructions_are_counted_per_switch_inference_and_copy_under_qemu(tmp_path):
    state, models = packed_nets()
    export.export_c(state, models, tmp_path)
    binary = export.build(tmp_path, "mps2-an386", driver="ws_count.c")
    x = torch.randn(1, *models["conv"].input_shape)
    x.numpy().astype(np.float32).tofile(tmp_path / "in.bin")
    dnn, switch, inference, copy = map(float, export.run_binary(binary, ["0", "in.bin"], "mps2-an386", icount=True).split())
    assert dnn == 0 and 0 < switch < copy < inference  # a switch resolves 1 entry a page; a copy moves every weight
