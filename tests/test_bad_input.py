"""Bad input: every user error is one line `error: ...` on stderr, exit status 2 (130 on Ctrl-C), no
traceback, and is caught before the work starts. The messages are checked in process, through the
function each entry point's process runs (`cli.main`, a root script's `guarded(main)`): the same code
path without a second interpreter's start-up; a few cases per entry point run as real subprocesses
(marked e2e), where the process itself is under test (its exit status, its stderr, Ctrl-C)."""
import errno
import importlib
import math
import os
import re
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from bench import bad_input
from weightsep import api, cli, guarded, ops
from weightsep.fisher import FisherConfig
from weightsep.optimize import OptimizeConfig, unused_fields
from weightsep.pack import PackConfig
from weightsep.pipeline import RunConfig
from weightsep.store import Store
from weightsep.train import TrainConfig

REPO = Path(__file__).resolve().parent.parent
M = ("-m", "weightsep")

# a DNN folder whose data is made here: tiny, dense, 3 classes; BAD=nan puts a NaN into the inputs
PLUGIN = """
import numpy as np
from weightsep.dnn import Dataset, Split
from weightsep.model import TemplateNet
META = dict(task='tiny', source='made by the test', real=False)
TRAIN = dict(steps=40, eval_every=20)
BAD = {bad!r}
def build_model():
    return TemplateNet((8,), [], dense=[16], classes=3)
def prepare(data_dir):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1).astype(np.int64)
    if BAD == 'nan':
        x[7, 3] = np.nan
    np.savez(data_dir / '{name}.npz', x=x, y=y)
def load_data(data_dir):
    d = np.load(data_dir / '{name}.npz')
    x, y = d['x'], d['y']
    return Dataset(Split(x[:200], y[:200]), Split(x[200:250], y[200:250]), Split(x[250:], y[250:]))
"""


def plugin(root: Path, name: str, bad: str | None = None) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "dnn.py").write_text(PLUGIN.format(name=name, bad=bad))
    return folder


@pytest.fixture
def env(tmp_path):
    """A private cache (own data and build folders): nothing here touches the shared cache."""
    cache = tmp_path / "cache"
    (cache / "data").mkdir(parents=True)
    return {**os.environ, "WEIGHTSEP_CACHE": str(cache), "OMP_NUM_THREADS": "1"}


def call(env, *args, script=M, timeout=120):
    return subprocess.run([sys.executable, *script, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)


def entry_point(script):
    """The function the script's process runs (what its `if __name__ == "__main__":` calls)."""
    if script == M:
        return cli.main
    if script == EXP:
        return importlib.import_module("experiments.__main__").main
    module = importlib.import_module(script[0].removesuffix(".py"))
    if script == LEGACY:
        return lambda argv: cli.main(module.translate(argv))
    return lambda argv: guarded(module.main, argv)


@pytest.fixture
def main(tmp_path, monkeypatch, capsys):
    """`main(*args, script=...)`: an entry point run in this process, as `call` runs it in a subprocess
    (the same private cache; the torch ops backend, as bench/bad_input.py's in-process runs, so no
    extension build), its exit status and captured output in a CompletedProcess-like result; an
    exception escaping the entry point fails the test (a traceback on the command line)."""
    (tmp_path / "cache" / "data").mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("WEIGHTSEP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("WEIGHTSEP_OPS_BACKEND", "torch")
    ops.set_backend("torch")  # conftest's no_global_state_leaks undoes it after the test
    monkeypatch.chdir(REPO)
    monkeypatch.syspath_prepend(str(REPO))

    def run(*args, script=M):
        capsys.readouterr()
        try:
            status = entry_point(script)([str(a) for a in args])
        except SystemExit as e:  # argparse, and the `interruptible` guard
            status = 0 if e.code is None else e.code
        out = capsys.readouterr()
        return types.SimpleNamespace(returncode=status, stdout=out.out, stderr=out.err)
    return run


def assert_user_error(result, *words, status=2):
    assert result.returncode == status, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line[line.index("error:"):] for line in re.split(r"[\r\n]", result.stderr) if "error:" in line]  # past tqdm's \r
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


WS, BASE, LEGACY = ("ws_execution.py",), ("baseline_execution.py",), ("WeightSeparation.py",)
PAGE, VNN, EXP = ("weight_page.py",), ("vnn.py",), ("-m", "experiments")
# (script, args, words the message must hold); {file} is a plain file, {store} a path not yet made.
# The reported problems: each in process (below); these few also as real subprocesses, one per kind of
# entry point (the catalogue's subprocess test runs one case of every entry point besides):
CASES = [
    (M, ["run", "--alpha", "7"], ["--alpha", "[0, 1]", "7"]),
    (M, ["add", "satellite", "--store", "{file}"], ["--store", "is a file"]),
    (WS, ["--store", "{file}"], ["--store", "is a file"]),
    (LEGACY, ["-mode=a", "-network_path=satellite", "-alpha=7", "--store", "{store}"], ["--alpha", "[0, 1]"]),
]
# in process (cli.main, the scripts' guarded main): the same code path, no start-up cost; the reported
# problems first (the CASES too), then more of the same rules
IN_PROCESS = [
    *CASES,
    (PAGE, ["letters", "--page-size", "0"], ["--page-size", "got 0"]),
    (PAGE, ["letters", "--page-size", "-5"], ["--page-size", "got -5"]),
    (PAGE, ["letters", "--margin", "7"], ["--margin", "[0, 1]", "7"]),
    (VNN, ["x", "--store", "{store}", "--plot", "/proc/weightsep-bad-input/x.png"], ["--plot", "cannot write"]),
    (EXP, ["matching", "--dnns", "nope", "--results", "{store}"], ["unknown DNN 'nope'"]),
    (WS, ["--batch", "-5"], ["--batch", ">= 1"]),
    (WS, ["--batch", "0"], ["--batch", ">= 1"]),
    (WS, ["--switches", "-1"], ["--switches", ">= 0"]),
    (M, ["joint", "--optimizer", "round-robin"], ["--optimizer", "joint"]),
    (M, ["train", "satellite", "--rounds", "3"], ["--rounds", "train"]),
    (M, ["run", "--train-steps", "0"], ["--train-steps", ">= 1", "0"]),
    (M, ["run", "--lam", "nan", "--optimizer", "round-robin"], ["--lam", "finite", "nan"]),
    (M, ["run", "--page-size", "1000000000"], ["--page-size", "1000000000"]),
    (M, ["report", "--results", "{file}"], ["--results", "is a file"]),
    (M, ["add", "satellite", "--margin", "-0.5", "--store", "{store}"], ["--margin", "[0, 1]"]),
    (M, ["run", "--target-accuracy", "2"], ["--target-accuracy"]),
    (M, ["run", "--ratio", "0"], ["--ratio", "positive"]),
    (M, ["run", "--ratio", "inf"], ["--ratio", "finite"]),
    (M, ["add", "satellite", "--train-steps", "-3", "--store", "{store}"], ["--train-steps", ">= 1"]),
    (M, ["run", "--workers", "0"], ["--workers", ">= 1"]),
    (M, ["train", "satellite", "--lam", "-1"], ["--lam", ">= 0"]),
    (M, ["train", "satellite", "--optimizer", "joint"], ["--optimizer", "train"]),
    (M, ["train", "satellite", "--steps-per-turn", "3"], ["--steps-per-turn", "--iter"]),
    (M, ["train", "satellite", "--iter", "0"], ["--iter", ">= 1"]),
    (M, ["joint", "--lam", "0.5"], ["--lam", "no effect", "joint"]),
    (M, ["run", "--optimizer", "round-robin", "--steps", "10"], ["--steps", "no effect", "round-robin"]),
    (M, ["run", "--promote-pages", "4"], ["--promote-pages", "budget"]),
    (M, ["run", "--steps", "0"], ["--steps", ">= 1"]),
    (M, ["run", "--balance-decay", "1"], ["--balance-decay", "[0, 1)"]),
    (M, ["run", "--fisher-samples", "0"], ["--fisher-samples", ">= 1"]),
    (M, ["run", "--page-size", "1000000", "--shared-pages", "100000"], ["--shared-pages", "--page-size", "limit"]),
    (M, ["run", "--seeds", "1", "1"], ["--seeds", "distinct"]),
    (M, ["run", "--store", "{file}"], ["--store", "is a file"]),
    (M, ["list", "--store", "{file}"], ["--store", "is a file"]),
    (M, ["add", "satellite", "--store", "{file}/sub"], ["--store", "is a file"]),
    (M, ["joint", "--store", "{file}"], ["--store", "is a file"]),
    (M, ["run", "--results", "{file}"], ["--results", "is a file"]),
    (BASE, ["--batch", "0"], ["--batch"]),
    (BASE, ["--train-steps", "0"], ["--train-steps"]),
    (LEGACY, ["-mode=t", "-vnn_name=satellite", "-iter=0"], ["-iter", ">= 1"]),
    (LEGACY, ["-mode=x"], ["-mode=x"]),
]


def _ids(cases):
    return [" ".join([s[-1], *a]) for s, a, _ in cases]


@pytest.mark.e2e
@pytest.mark.parametrize("script,args,words", CASES, ids=_ids(CASES))
def test_bad_flag_is_one_line_error_before_any_work(env, tmp_path, script, args, words):
    (tmp_path / "afile").write_text("not a directory\n")
    args = [a.format(file=tmp_path / "afile", store=tmp_path / "store") for a in args]
    start = time.perf_counter()
    assert_user_error(call(env, *args, script=script), *words)
    assert time.perf_counter() - start < 60  # refused before the work, not after it
    assert not (tmp_path / "store").exists()  # nothing was written


@pytest.mark.parametrize("script,args,words", IN_PROCESS, ids=_ids(IN_PROCESS))
def test_bad_flag_in_process(main, tmp_path, script, args, words):
    (tmp_path / "afile").write_text("not a directory\n")
    args = [a.format(file=tmp_path / "afile", store=tmp_path / "store") for a in args]
    start = time.perf_counter()
    assert_user_error(main(*args, script=script), *words)
    assert time.perf_counter() - start < 60  # refused before the work, not after it
    assert not (tmp_path / "store").exists()  # nothing was written


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the message on a machine without CUDA")
@pytest.mark.parametrize("script", [WS, BASE])
def test_device_cuda_without_cuda(main, script):
    assert_user_error(main("--device", "cuda", script=script), "--device cuda", "CUDA")


def test_read_only_store_is_refused_before_the_work(main, tmp_path):
    """A directory this user cannot write (chmod 555; root writes through that, so as root a store
    under /proc, which no one can create files in, stands in for it)."""
    if os.geteuid() == 0:
        store, restore = Path("/proc/weightsep-read-only-store"), None
    else:
        store = tmp_path / "ro"
        store.mkdir()
        store.chmod(0o555)
        restore = store
    try:
        for args in (["add", "satellite"], ["joint"], ["remove", "satellite"]):
            assert_user_error(main(*args, "--store", store), "--store", "cannot write")
    finally:
        if restore is not None:
            restore.chmod(0o755)


def test_nan_in_a_dnns_data_names_the_dnn_and_the_cause(main, tmp_path):
    plugin(tmp_path / "plugins", "nandnn", bad="nan")
    folder = ["--dnn-folder", tmp_path / "plugins"]
    ok = main("prepare", *folder)
    assert ok.returncode == 0 and "preparing nandnn" in ok.stdout, ok.stderr
    bad = main("add", "nandnn", *folder, "--store", tmp_path / "s", "--workers", "1")
    assert_user_error(bad, "nandnn", "non-finite", "NaN")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("split", ["train", "val"])
def test_an_empty_split_is_refused_naming_the_dnn_and_the_split(main, tmp_path, split):
    """An empty validation split was packed with validation 0.0000, an empty training split gave a traceback."""
    folder = plugin(tmp_path / "plugins", "emptysplit")
    splits = "Split(x[:200], y[:200]), Split(x[200:250], y[200:250])"
    empty = {"train": "Split(x[:0], y[:0]), Split(x[200:250], y[200:250])",
             "val": "Split(x[:200], y[:200]), Split(x[:0], y[:0])"}[split]
    (folder / "dnn.py").write_text((folder / "dnn.py").read_text().replace(splits, empty))
    assert main("prepare", "--dnn-folder", tmp_path / "plugins").returncode == 0
    bad = main("add", "emptysplit", "--dnn-folder", tmp_path / "plugins", "--store", tmp_path / "s", "--workers", "1")
    assert_user_error(bad, "emptysplit", f"its {split} split is empty")
    assert not (tmp_path / "s").exists()


def test_missing_data_hint_is_the_exact_command_that_prepares_it(main, tmp_path):
    plugin(tmp_path / "plugins", "tinyp")
    folder = ["--dnn-folder", str(tmp_path / "plugins")]
    missing = main("add", "tinyp", *folder, "--store", tmp_path / "s")
    assert_user_error(missing, "tinyp", "data file missing", "prepare tinyp --dnn-folder")
    command = missing.stderr.split("run: python -m weightsep ")[1].split(";")[0].split()
    assert command == ["prepare", "tinyp", "--dnn-folder", str(tmp_path / "plugins" / "tinyp")]  # its own folder
    assert main(*command).returncode == 0  # the hint works as given
    assert (tmp_path / "cache" / "data" / "tinyp.npz").is_file()


def test_add_into_a_store_with_other_dnns_hints_at_training(main, tmp_path):
    plugin(tmp_path / "plugins", "tinya")
    plugin(tmp_path / "plugins", "tinyb")
    common = ["--dnn-folder", tmp_path / "plugins", "--store", tmp_path / "s", "--workers", "1",
              "--fisher-samples", "16", "--page-size", "64", "--shared-pages", "4"]
    assert main("prepare", "--dnn-folder", tmp_path / "plugins").returncode == 0
    first = main("add", "tinya", *common)
    assert first.returncode == 0 and "hint:" not in first.stdout, first.stderr
    second = main("add", "tinyb", *common)
    assert second.returncode == 0, second.stderr
    assert "hint:" in second.stdout and "weightsep train tinyb" in second.stdout and "joint" in second.stdout


@pytest.mark.e2e
def test_ctrl_c_is_a_message_and_exit_130(env, main, tmp_path):
    folder = plugin(tmp_path / "plugins", "slow")
    (folder / "dnn.py").write_text((folder / "dnn.py").read_text().replace("steps=40", "steps=10**7") + (
        "_load = load_data\n"
        "def load_data(data_dir):\n"
        "    (data_dir.parent / 'loaded').touch()\n"
        "    return _load(data_dir)\n"))
    assert main("prepare", "--dnn-folder", tmp_path / "plugins").returncode == 0
    proc = subprocess.Popen([sys.executable, *M, "add", "slow", "--dnn-folder", str(tmp_path / "plugins"), "--store",
                             str(tmp_path / "s"), "--workers", "1"], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            # as from a terminal: a shell starts background jobs (CI, nohup ... &) with
                            # SIGINT ignored, and Python keeps an inherited SIG_IGN
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    marker = Path(env["WEIGHTSEP_CACHE"]) / "loaded"
    deadline = time.time() + 60
    while not marker.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(2)  # into the stand-alone training
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=60)
    finally:  # never leave it training (its worker ends with it)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (out, err)
    assert "interrupted" in err and "last good state" in err and "Traceback" not in err, err


# ---- in process: errors that are hard to cause for real -------------------------------------------

def test_disk_full_during_save_is_a_message(tmp_path, monkeypatch, capsys):
    def full(self):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "s" / "manifest.json"))

    monkeypatch.setattr(Store, "restore_previous", full)
    assert cli.main(["restore", "--store", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "No space left on device" in err and "manifest.json" in err
    assert "last good state" in err


def test_keyboard_interrupt_in_process(tmp_path, monkeypatch, capsys):
    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Store, "restore_previous", interrupted)
    assert cli.main(["restore", "--store", str(tmp_path / "s")]) == 130
    assert "interrupted" in capsys.readouterr().err


# ---- the configs' own rules (the library and the command line share them) ------------------------

@pytest.mark.parametrize("cls,kwargs,words", [
    (PackConfig, dict(alpha=7.0), "--alpha must be in [0, 1], got 7"),
    (PackConfig, dict(alpha=-0.1), "--alpha"),
    (PackConfig, dict(margin=math.nan), "--margin must be a finite number"),
    (PackConfig, dict(target_accuracy=1.5), "--target-accuracy"),
    (PackConfig, dict(page_size=10**9), "--page-size must be in [1, 1048576]"),
    (PackConfig, dict(n_shared=0), "--shared-pages must be >= 1"),
    (PackConfig, dict(n_shared=10**6, page_size=10**6), "limit"),
    (PackConfig, dict(ratio=-1.0), "--ratio must be positive"),
    (PackConfig, dict(mode="x"), "unknown mode 'x' (--mode)"),
    (FisherConfig, dict(samples=0), "--fisher-samples (K) must be >= 1"),
    (FisherConfig, dict(chunk=0), "--fisher-chunk"),
    (FisherConfig, dict(estimator="x"), "(--fisher)"),
    (OptimizeConfig, dict(lam=math.nan), "--lam must be a finite number"),
    (OptimizeConfig, dict(lam=-1.0), "--lam must be >= 0"),
    (OptimizeConfig, dict(lr=0.0), "--lr must be positive"),
    (OptimizeConfig, dict(lr=math.inf), "--lr must be a finite"),
    (OptimizeConfig, dict(extra_compute=math.nan), "--extra-compute"),
    (OptimizeConfig, dict(steps=0), "--steps must be >= 1"),
    (OptimizeConfig, dict(max_batches=0), "--max-batches"),
    (OptimizeConfig, dict(promote_start=0.7, promote_end=0.5), "--promote-start"),
    (OptimizeConfig, dict(balance_decay=1.0), "--balance-decay must be in [0, 1)"),
    (TrainConfig, dict(steps=0), "--train-steps"),
    (TrainConfig, dict(lr=math.nan), "lr"),
    (RunConfig, dict(train_steps=0), "--train-steps must be >= 1"),
    (RunConfig, dict(workers=0), "--workers"),
    (RunConfig, dict(seeds=[]), "--seeds"),
    (RunConfig, dict(dnns=["a", "a"]), "--dnns"),
])
def test_config_rules_name_the_flag(cls, kwargs, words):
    with pytest.raises(ValueError) as info:
        cls(**kwargs)
    assert words in str(info.value)


def test_defaults_and_published_values_pass():
    for cls in (PackConfig, FisherConfig, OptimizeConfig, TrainConfig, RunConfig):
        cls()
    PackConfig(separation="margin", margin=0.1, alpha=0.5, target_accuracy=0.9, mode="nwv")
    OptimizeConfig(optimizer="round-robin", lam=10.0, lr=1e-3, schedule="constant", balance="sum", extra_compute=0.0)
    RunConfig(store=Path("no-such-dir-yet"), train_steps=1)


def test_run_config_store_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(ValueError, match="--store .* is a file"):
        RunConfig(store=tmp_path / "f")


def test_unused_fields_are_the_other_optimizers():
    assert "lam" in unused_fields("joint") and "steps" not in unused_fields("joint")
    assert "steps" in unused_fields("round-robin") and "lam" not in unused_fields("round-robin")
    assert "rounds" in unused_fields("sequential")


# ---- DNN folders: found by name, imported only when used, and told apart from a wrong path --------


def test_dnn_lookup_messages_and_a_broken_folder_blocks_only_itself(tmp_path):
    from weightsep import dnn as dnn_mod

    plugins = tmp_path / "plugins"
    (plugins / "broken").mkdir(parents=True)
    (plugins / "broken" / "dnn.py").write_text("raise RuntimeError('this folder is broken')\n")
    (plugins / "empty").mkdir()
    assert "broken" in dnn_mod.folders([plugins])  # listed without importing anything
    assert dnn_mod.get("letters", [plugins]).name == "letters"  # the broken neighbour does not block it
    with pytest.raises(dnn_mod.DNNError, match="broken.*importing dnn.py failed: RuntimeError: this folder is broken"):
        dnn_mod.get("broken", [plugins])
    with pytest.raises(dnn_mod.DNNError, match="unknown DNN 'nope'"):
        dnn_mod.get("nope", [plugins])
    with pytest.raises(dnn_mod.DNNError, match="no such DNN folder"):
        dnn_mod.get(str(tmp_path / "missing"))
    with pytest.raises(dnn_mod.DNNError, match="not a DNN folder: it has no dnn.py"):
        dnn_mod.get(str(plugins / "empty"))
    with pytest.raises(dnn_mod.DNNError, match="--dnn-folder .*: no such folder"):
        dnn_mod.folders([tmp_path / "missing"])


# ---- the catalogues of bench/bad_input.py: every entry point, every command, the library ---------

# cases that still fail, each in a file another change is fixing (a fix turns its xfail into a failure:
# then drop it from here)
def _params(cases):
    return [pytest.param(case, id=case.label) for case in cases]


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    """The bench's fixtures: stores good and bad, broken DNN folders, a private cache (about 5 s)."""
    return bad_input.build(tmp_path_factory.mktemp("bad_input"))


def test_the_catalogues_are_as_large_as_the_issue_asks():
    cli_labels, api_labels = [c.label for c in bad_input.CLI_CASES], [c.label for c in bad_input.API_CASES]
    assert len(set(cli_labels)) == len(cli_labels) >= bad_input.TARGETS["cli_cases"]
    assert len(set(api_labels)) == len(api_labels) >= bad_input.TARGETS["api_cases"]
    assert {c.entry for c in bad_input.CLI_CASES} == set(bad_input.ENTRIES)


@pytest.mark.parametrize("case", _params(bad_input.CLI_CASES))
def test_every_bad_command_line_is_one_error_line_in_process(catalogue, case):
    with bad_input.environment(catalogue):
        [row] = bad_input.check_cli(case, catalogue)
    assert row["ok"], row


@pytest.mark.e2e
@pytest.mark.parametrize("case", _params([next(c for c in bad_input.CLI_CASES if c.entry == e) for e in bad_input.ENTRIES]))
def test_a_bad_command_line_of_each_entry_point_as_a_subprocess(catalogue, case):
    [row] = bad_input.check_cli(case, catalogue, in_process=False, subprocess_too=True)
    assert row["ok"], row


@pytest.mark.parametrize("case", _params(bad_input.API_CASES))
def test_every_bad_library_call_raises_a_documented_exception(catalogue, case):
    with bad_input.environment(catalogue):
        row = bad_input.check_api(case, catalogue)
    assert row["ok"], row


@pytest.mark.e2e
def test_ctrl_c_during_start_up_is_interrupted_and_130_at_every_entry_point(catalogue):
    """Two random moments per entry point, mostly inside its imports: after the interpreter's own
    first ~15 ms (site, runpy), which no code of the project can guard, and before 1.5 s."""
    rows = bad_input.run_interrupts(catalogue, per_entry=2, seed=1, earliest=0.05, progress=False)
    assert all(r["ok"] for r in rows), [r for r in rows if not r["ok"]]
    assert any(r["outcome"] == "interrupted, 130" for r in rows)


# ---- the reported library and viewer problems, one by one ---------------------------------------

def test_a_module_that_does_not_fit_its_data_is_a_value_error_naming_the_dnn():
    x, y = torch.randn(20, 5), torch.randint(0, 3, (20,))
    with pytest.raises(ValueError, match="DNN 'kws': forward on 2 validation inputs of shape \\(5,\\) fails"):
        api.pack({"kws": (nn.Linear(8, 3), (x, y), (x, y))})
    with pytest.raises(ValueError, match="DNN 'kws': forward must return logits .* tuple"):
        api.pack({"kws": (bad_input.TupleOut(), (torch.randn(20, 6), y), (torch.randn(20, 6), y))})


def test_pack_takes_a_module_that_packed_model_has_run():
    """PackedModel wraps the caller's module without input shape and classes; packing it again must
    not reuse that wrapper (it did: a TypeError deep in the pipeline)."""
    x, y = bad_input.X, bad_input.Y
    module = bad_input._mlp()
    state = api.pack({"kws": (module, (x, y), (x, y))}, **bad_input.SMALL)
    api.PackedModel(state, {"kws": module})
    assert list(api.pack({"kws": (module, (x, y), (x, y))}, **bad_input.SMALL).vnns) == ["kws"]


def test_store_save_of_something_not_a_state_is_a_value_error(tmp_path):
    for thing in ("state", None, {"vnns": {}}):
        with pytest.raises(ValueError, match="Store.save takes a PackedState"):
            Store(tmp_path / "s").save(thing)
    assert not (tmp_path / "s").exists()


def test_vnn_default_plot_stays_in_results_whatever_the_stored_name(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    import vnn

    for name in ("x/../../../pwned", "..", "/etc/passwd", "a\x00b", "\u00e9" * 300, "mnist10k"):
        path = vnn.default_plot(name)
        assert path.parent == vnn.RESULTS and path.name.startswith("vnn_") and len(path.name) < 100, path
    assert vnn.default_plot("mnist10k").name == "vnn_mnist10k.png"
