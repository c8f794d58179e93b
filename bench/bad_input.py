"""Bad input at scale (issue 24): no traceback, ever, from a bad command line or a bad library call.

Three catalogues, every case distinct, run on fixtures made for the purpose in a temporary directory
(a private WEIGHTSEP_CACHE that sees the prepared data; ops backend `torch`, so nothing is built):

* CLI (`CLI_CASES`): bad command lines over every entry point: `python -m weightsep` with each
  command, the root scripts (WeightSeparation.py, ws_execution.py, baseline_execution.py, vnn.py,
  weight_page.py) and `python -m experiments`. Bad numbers (NaN, inf, negative, zero, huge, not a
  number), unknown DNNs, commands and flags, paths that are files, missing or unwritable, stores that
  are damaged, truncated, foreign, made by the library or by code that changed since, and DNN folders
  broken in each way a dnn.py can be. A case passes when it exits 2 with exactly one `error:` line
  that holds the words the case names (its flag, file or DNN), prints no traceback and leaves every
  fixture as it was (nothing written, nothing lost). The `python -m weightsep` cases run in process
  (`weightsep.cli.main(argv)` with stderr captured; an exception escaping it counts as a traceback)
  and every `--every`th of them also as a subprocess; the other entry points run as subprocesses.
* API (`API_CASES`): bad calls of the library (`weightsep.api`): `pack` with bad modules, data,
  configs, names and seeds; the configs' own checks; `Store` load, save and restore of bad things;
  `PackedModel` with bad arguments. The rule: bad input raises ValueError (what docs/library.md
  promises; `FlatError` is one), a store on disk that cannot be read `StoreError`, a DNN name looked up
  that is not packed `KeyError` (`PackedModel.switch`), and an argument of a type Python itself
  refuses `TypeError`. Any other exception (torch's RuntimeError, AttributeError, IndexError,
  AssertionError, ...) or none at all fails the case.
* Ctrl-C (`--interrupts N`): each entry point started N times with SIGINT at its default (as from a
  terminal) and sent SIGINT after a uniform random delay in [0, 1.5] s, mostly during its imports. A
  run passes when it prints no traceback and exits 130 with `interrupted`, or was killed by the signal
  before Python installed its handler, or ended with its own status as the signal came (its work done:
  `weightsep.exit_with`), or had ended before the signal. The
  interpreter's own start-up after its handler is installed (site, runpy, before any code of the
  project runs; docs/results.md#code-notes) prints a traceback that nothing in the project can prevent; it counts.

    python -m bench.bad_input                          # everything -> results/bad_input.json (~4 min)
    python -m bench.bad_input --every 1 --interrupts 40
    python -m bench.bad_input --parts api              # the library calls only (seconds)
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import fcntl
import hashlib
import importlib
import io
import math
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from bench.timing import write_result
from weightsep import api, guarded, ops
from weightsep.dnn import cache_dir
from weightsep.store import StoreError

REPO = Path(__file__).resolve().parent.parent
WS, LEGACY, EXEC, BASE, VNN, PAGE, EXP = ("weightsep", "WeightSeparation.py", "ws_execution.py", "baseline_execution.py",
                                          "vnn.py", "weight_page.py", "experiments")
ENTRIES = (WS, LEGACY, EXEC, BASE, VNN, PAGE, EXP)
TARGETS = {"cli_cases": 115, "api_cases": 40, "tracebacks": 0}
ACCEPTED = (ValueError, StoreError, KeyError, TypeError)  # the API rule (module doc)
CASE_TIMEOUT_S = 120  # a bad input is refused in seconds; a case still running after this did work instead


# ---------------------------------------------------------------- DNN folders, good and broken

TINY = '''
import numpy as np
from weightsep.dnn import Dataset, Split
from weightsep.model import TemplateNet
META = dict(task="tiny", source="made by bench/bad_input.py", real=False)
TRAIN = dict(steps=40, eval_every=20)
def build_model():
    return TemplateNet((8,), [], dense=[16], classes=3)
def load_data(data_dir):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1).astype(np.int64)
    return Dataset(Split(x[:200], y[:200]), Split(x[200:250], y[200:250]), Split(x[250:], y[250:]))
'''
MODULE = TINY + '''
import torch
from torch import nn
META = dict(task="tiny", source="made by bench/bad_input.py", real=False, input=(8,), classes=3)
'''
# each a dnn.py broken in one way: TINY or MODULE with a definition replaced (the later one wins)
BROKEN = {
    "b_import": TINY + "raise RuntimeError('broken on purpose')\n",
    "b_syntax": TINY + "def build_model(:\n",
    "b_lacks": "META = dict(task='tiny')\n",
    "b_build_raises": TINY + "def build_model():\n    raise KeyError('no such layer')\n",
    "b_build_none": TINY + "def build_model():\n    return None\n",
    "b_build_double": MODULE + "def build_model():\n    return nn.Linear(8, 3).double()\n",
    "b_forward_tuple": MODULE + ("class Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                                 "        self.fc = nn.Linear(8, 3)\n    def forward(self, x):\n        return self.fc(x), x\n"
                                 "def build_model():\n    return Net()\n"),
    "b_forward_width": MODULE + "def build_model():\n    return nn.Linear(5, 3)\n",
    "b_no_meta": MODULE + "META = dict(task='tiny')\ndef build_model():\n    return nn.Linear(8, 3)\n",
    "b_meta_input": MODULE + "META['input'] = 'eight'\ndef build_model():\n    return nn.Linear(8, 3)\n",
    "b_load_raises": TINY + "def load_data(data_dir):\n    raise KeyError('x_train')\n",
    "b_load_none": TINY + "def load_data(data_dir):\n    return None\n",
    "b_shape": TINY + ("_good = load_data\ndef load_data(data_dir):\n    d = _good(data_dir)\n"
                       "    d.train = Split(d.train.x[:, :7], d.train.y)\n    return d\n"),
    "b_labels": TINY + ("_good = load_data\ndef load_data(data_dir):\n    d = _good(data_dir)\n"
                        "    d.val = Split(d.val.x, d.val.y + 5)\n    return d\n"),
    "b_nan": TINY + ("_good = load_data\ndef load_data(data_dir):\n    d = _good(data_dir)\n"
                     "    d.train.x[3, 2] = float('nan')\n    return d\n"),
    "b_nodata": TINY + "def load_data(data_dir):\n    return np.load(data_dir / 'b_nodata.npz')\n"
                       "def prepare(data_dir):\n    raise RuntimeError('the download failed')\n",
    "b_train": TINY + "TRAIN = dict(steps=-1)\n",
    "b_train_field": TINY + "TRAIN = dict(no_such_field=1)\n",
}


def write_folder(folder: Path, source: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dnn.py").write_text(source)
    return folder


# ---------------------------------------------------------------- fixtures


@dataclass
class Fixtures:
    """Paths the cases name by `{placeholder}`, a packed state and its modules for the API cases."""

    root: Path
    paths: dict[str, Path]
    state: api.PackedState | None = None
    models: dict[str, nn.Module] = field(default_factory=dict)

    PROTECTED = ("store", "changed", "library", "damaged", "truncated", "orphans", "foreign", "empty", "plugins",
                 "broken", "file", "locked")  # must be the same after every case
    ABSENT = ("missing", "new")  # must not exist after any case

    def fill(self, text: str) -> str:
        return text.format(**{k: str(v) for k, v in self.paths.items()})

    def env(self) -> dict[str, str]:
        return {**os.environ, "WEIGHTSEP_CACHE": str(self.paths["cache"]), "WEIGHTSEP_OPS_BACKEND": "torch",
                "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}

    def snapshot(self) -> dict[str, str]:
        """A digest of each protected fixture (names, sizes, bytes; a store's `.lock` left out)."""
        out = {}
        for key in self.PROTECTED:
            h, top = hashlib.sha256(), self.paths[key]
            for p in sorted(top.rglob("*")) if top.is_dir() else [top]:
                if p.name == ".lock" or "__pycache__" in p.parts:
                    continue
                h.update(str(p.relative_to(top.parent)).encode())
                if p.is_file():
                    h.update(p.read_bytes())
            out[key] = h.hexdigest()
        return out

    def changes(self, before: dict[str, str]) -> list[str]:
        """What a case changed (restored from the pristine copies, so the next case sees the same)."""
        changed = [k for k, v in self.snapshot().items() if v != before[k]]
        for key in changed:
            target, source = self.paths[key], self.root / "pristine" / key
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
            if source.is_dir():
                shutil.copytree(source, target, symlinks=True)
            else:
                shutil.copy2(source, target)
        for key in self.ABSENT:
            if self.paths[key].exists():
                changed.append(f"{key} (made)")
                shutil.rmtree(self.paths[key], ignore_errors=True)
        return changed


@contextlib.contextmanager
def environment(fx: Fixtures) -> Iterator[None]:
    """In-process runs see the private cache, the torch ops backend and an empty working directory
    (commands without --store would otherwise find ./state)."""
    saved = {k: os.environ.get(k) for k in ("WEIGHTSEP_CACHE", "WEIGHTSEP_OPS_BACKEND")}
    cwd = os.getcwd()
    os.environ.update(WEIGHTSEP_CACHE=str(fx.paths["cache"]), WEIGHTSEP_OPS_BACKEND="torch")
    ops.set_backend("torch")
    os.chdir(fx.paths["work"])
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # the root scripts, imported as modules
    try:
        yield
    finally:
        os.chdir(cwd)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _data(n: int = 60, features: int = 6, classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, features, generator=g), torch.randint(0, classes, (n,), generator=g)


def _mlp(features: int = 6, classes: int = 3) -> nn.Module:
    with torch.random.fork_rng(devices=[]):  # the same weights every time, the caller's RNG untouched
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(features, 8), nn.ReLU(), nn.Linear(8, classes))


SMALL = dict(pack_config=api.PackConfig(page_size=16, n_shared=8), optimize_config=api.OptimizeConfig(steps=2, eval_every=1))
LAYOUT = ("--workers", "1", "--page-size", "64", "--shared-pages", "8", "--fisher-samples", "16")


def build(root: Path) -> Fixtures:
    """Every fixture, in `root` (about 5 s: two `add`s of a tiny DNN and one library `pack`)."""
    from weightsep import cli

    root.mkdir(parents=True, exist_ok=True)
    names = ("cache", "work", "plugins", "broken", "store", "changed", "library", "damaged", "truncated", "orphans",
             "foreign", "empty", "locked", "missing", "new", "file")
    paths = {n: root / n for n in names}
    paths["unwritable"] = Path("/proc/weightsep-bad-input") if os.geteuid() == 0 else root / "read-only" / "store"
    fx = Fixtures(root, paths)
    data = paths["cache"] / "data"
    data.mkdir(parents=True)
    for f in (cache_dir() / "data").glob("*"):  # the prepared data, seen but never written
        (data / f.name).symlink_to(f.resolve())
    for d in ("work", "foreign", "empty", "locked"):
        paths[d].mkdir()
    (paths["foreign"] / "notes.txt").write_text("someone's notes, not a store\n")
    paths["file"].write_text("a plain file, not a directory\n")
    (paths["locked"] / ".lock").touch()
    if os.geteuid() != 0:
        paths["unwritable"].parent.mkdir()
        paths["unwritable"].parent.chmod(0o555)
    write_folder(paths["plugins"] / "tiny", TINY)
    write_folder(paths["plugins"] / "tinyc", TINY)
    for name, source in BROKEN.items():
        write_folder(paths["broken"] / name, source)
    with environment(fx), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        for name, store in (("tiny", "store"), ("tinyc", "changed")):
            if cli.main(["add", name, "--dnn-folder", str(paths["plugins"]), "--store", str(paths[store]), *LAYOUT]):
                raise RuntimeError(f"building the fixture store failed:\n{err.getvalue()[-3000:]}")
        x, y = _data()
        fx.models = {"kws": _mlp()}
        fx.state = api.pack({"kws": (fx.models["kws"], (x, y), (x, y))}, **SMALL)
        api.Store(paths["library"]).save(fx.state)
    with (paths["plugins"] / "tinyc" / "dnn.py").open("a") as f:
        f.write("# edited after packing\n")
    shutil.copytree(paths["store"], paths["damaged"])
    (paths["damaged"] / "manifest.json").write_text("{ this is not json")
    shutil.copytree(paths["store"], paths["truncated"])
    tensors = sorted(paths["truncated"].glob("vnn-*.safetensors"))[0]
    tensors.write_bytes(tensors.read_bytes()[: tensors.stat().st_size // 2])
    shutil.copytree(paths["store"], paths["orphans"])
    (paths["orphans"] / "manifest.json").unlink()
    (root / "pristine").mkdir()
    for key in Fixtures.PROTECTED:
        if paths[key].is_dir():
            shutil.copytree(paths[key], root / "pristine" / key, symlinks=True)
        else:
            shutil.copy2(paths[key], root / "pristine" / key)
    return fx


# ---------------------------------------------------------------- the CLI catalogue


@dataclass(frozen=True)
class CliCase:
    entry: str  # one of ENTRIES
    args: tuple[str, ...]  # with {placeholders} for the fixtures' paths
    words: tuple[str, ...] = ()  # the error line must hold each

    @property
    def label(self) -> str:
        return f"{self.entry} {shlex.join(self.args)}".strip()


def c(entry: str, line: str, *words: str) -> CliCase:
    return CliCase(entry, tuple(shlex.split(line)), words)


NEW, PLUG, BRK = "--store {new}", "--dnn-folder {plugins}", "--dnn-folder {broken}"
CLI_CASES = [
    # python -m weightsep run: every kind of bad number, name, flag and path
    c(WS, "run --alpha 7", "--alpha", "[0, 1]"),
    c(WS, "run --alpha nan", "--alpha", "finite"),
    c(WS, "run --alpha inf", "--alpha"),
    c(WS, "run --alpha one", "--alpha", "'one'"),
    c(WS, "run --margin -0.5", "--margin"),
    c(WS, "run --page-size 0", "--page-size"),
    c(WS, "run --page-size -5", "--page-size"),
    c(WS, "run --page-size 1e3", "--page-size"),
    c(WS, "run --page-size 99999999999999999999999", "--page-size"),
    c(WS, "run --shared-pages 0", "--shared-pages"),
    c(WS, "run --ratio -1", "--ratio"),
    c(WS, "run --ratio nan", "--ratio"),
    c(WS, "run --at-packing 1.5", "--at-packing"),
    c(WS, "run --lr 0", "--lr"),
    c(WS, "run --lr inf", "--lr"),
    c(WS, "run --lam -1 --optimizer round-robin", "--lam"),
    c(WS, "run --steps 0", "--steps"),
    c(WS, "run --steps ten", "--steps"),
    c(WS, "run --batch-size 0", "--batch-size"),
    c(WS, "run --workers 0", "--workers"),
    c(WS, "run --workers -1", "--workers"),
    c(WS, "run --train-steps 0", "--train-steps"),
    c(WS, "run --seeds 1 1", "--seeds"),
    c(WS, "run --seed x", "--seed"),
    c(WS, "run --dnns nope --store {new}", "nope"),
    c(WS, "run --dnns letters letters", "--dnns"),
    c(WS, "run --mode x", "--mode"),
    c(WS, "run --fisher x", "--fisher"),
    c(WS, "run --optimizer x", "--optimizer"),
    c(WS, "run --precision x", "--precision"),
    c(WS, "run --precision fisher", "--budget-kib"),
    c(WS, "run --no-such-flag", "--no-such-flag"),
    c(WS, "run --store {file}", "--store", "is a file"),
    c(WS, "run --results {file}", "--results", "is a file"),
    c(WS, "run --results {unwritable}", "--results"),
    c(WS, "run --store {unwritable}", "--store"),
    c(WS, "run --dnn-folder {missing} --store {new}", "--dnn-folder", "no such folder"),
    c(WS, "run --dnn-folder {file} --store {new}", "--dnn-folder", "a file"),
    c(WS, "run --procs 0", "--procs"),
    c(WS, "run --backend x", "--backend"),
    c(WS, "run --fisher-samples -1", "--fisher-samples"),
    c(WS, "run --balance-decay 1", "--balance-decay"),
    c(WS, "run --target-accuracy 2", "--target-accuracy"),
    c(WS, "run --promote-start 0.7 --promote-end 0.5", "--promote-start"),
    # add: names, folders and stores
    c(WS, "add", "network_path"),
    c(WS, "add nope --store {new}", "nope"),
    c(WS, "add {missing} --store {new}", "missing"),
    c(WS, "add {file} --store {new}", "file"),
    c(WS, "add tiny " + PLUG + " --store {store}", "tiny", "already packed"),
    c(WS, "add tiny --store {damaged}", "manifest.json"),
    c(WS, "add tiny --store {foreign}", "not a store"),
    c(WS, "add tiny --store {orphans}", "damaged"),
    c(WS, "add tiny --store {file}", "--store", "is a file"),
    c(WS, "add tiny --store {unwritable}", "--store"),
    c(WS, "add tiny --store {file}/sub", "--store", "is a file"),
    c(WS, "add letters --store {store} --page-size 32", "page_size"),
    c(WS, "add tiny --dnn-folder {store} --store {new}", "--dnn-folder", "store"),
    c(WS, "add tiny --fisher-chunk 0 --store {new}", "--fisher-chunk"),
    c(WS, "add tiny --margin 2 --store {new}", "--margin"),
    c(WS, "add tiny --shared-content x --store {new}", "--shared-content"),
    *[c(WS, f"add {name} {BRK} {NEW}", name) for name in BROKEN],
    # train, joint: stores and optimiser flags
    c(WS, "train", "vnn_name"),
    c(WS, "train tiny --store {missing}", "manifest.json"),
    c(WS, "train nope --store {store}", "nope"),
    c(WS, "train tiny --iter 0", "--iter"),
    c(WS, "train tiny --iter -3", "--iter"),
    c(WS, "train tiny --optimizer joint", "--optimizer"),
    c(WS, "train tiny --rounds 3", "--rounds"),
    c(WS, "train tiny --store {damaged}", "manifest.json"),
    c(WS, "train tiny --lr nan", "--lr"),
    c(WS, "train tiny --store {truncated} " + PLUG, "vnn-tiny"),
    c(WS, "joint --store {missing}", "manifest.json"),
    c(WS, "joint --store {damaged}", "manifest.json"),
    c(WS, "joint --lam 0.5", "--lam"),
    c(WS, "joint --optimizer round-robin", "--optimizer"),
    c(WS, "joint --procs 0", "--procs"),
    c(WS, "joint --store {foreign}", "not a store"),
    c(WS, "joint --store {truncated}", "vnn-tiny"),
    c(WS, "joint --store {library}", "kws"),
    # eval, report, list
    c(WS, "eval", "vnn_name"),
    c(WS, "eval nope --store {store}", "nope"),
    c(WS, "eval tiny --store {missing}", "manifest.json"),
    c(WS, "eval tiny --store {damaged}", "manifest.json"),
    c(WS, "eval tiny --store {truncated}", "vnn-tiny"),
    c(WS, "eval tiny --store {file}", "--store"),
    c(WS, "eval tinyc --store {changed} " + PLUG, "tinyc", "not the code"),
    c(WS, "eval kws --store {library}", "kws"),
    c(WS, "eval tiny --store {store} --dnn-folder {file}", "--dnn-folder"),
    c(WS, "report --store {missing}", "manifest.json"),
    c(WS, "report --results {file}", "--results"),
    c(WS, "report --results {unwritable}", "--results"),
    c(WS, "report --store {library}", "kws"),
    c(WS, "report --store {damaged}", "manifest.json"),
    c(WS, "list --store {missing}", "manifest.json"),
    c(WS, "list --store {file}", "--store", "is a file"),
    c(WS, "list --store {damaged}", "manifest.json"),
    c(WS, "list --store {foreign}", "manifest.json"),
    c(WS, "list --store {orphans}", "manifest.json"),
    c(WS, "list --names --store {empty}", "manifest.json"),
    c(WS, "list --bogus", "--bogus"),
    # remove, quantize, restore, prepare
    c(WS, "remove nope --store {store}", "nope"),
    c(WS, "remove tiny --store {unwritable}", "--store"),
    c(WS, "remove tiny --store {missing}", "manifest.json"),
    c(WS, "remove", "vnn_name"),
    c(WS, "remove tiny --store {damaged}", "manifest.json"),
    c(WS, "quantize --precision x", "--precision"),
    c(WS, "quantize --precision float32 --store {store}", "float32"),
    c(WS, "quantize --precision int8 --store {missing}", "manifest.json"),
    c(WS, "quantize --precision int8 --store {damaged}", "manifest.json"),
    c(WS, "quantize --precision int4 --int4-group 0 --store {store}", "--int4-group"),
    c(WS, "quantize --precision fisher --budget-kib -1 --store {store}", "--budget-kib"),
    c(WS, "restore --store {missing}", "missing"),
    c(WS, "restore --store {file}", "--store"),
    c(WS, "restore --store {store}", "previous"),
    c(WS, "restore --store {foreign}", "manifest"),
    c(WS, "restore --store {unwritable}", "--store"),
    c(WS, "prepare nope", "nope"),
    c(WS, "prepare --dnn-folder {missing}", "--dnn-folder"),
    c(WS, "prepare --dnn-folder {file}", "--dnn-folder"),
    c(WS, "prepare b_nodata " + BRK, "the download failed"),
    c(WS, "prepare b_import " + BRK, "b_import"),
    c(WS, "", "command"),
    c(WS, "nosuchcommand", "nosuchcommand"),
    c(WS, "run --seeds", "--seeds"),
    # the original command line
    c(LEGACY, "-mode=x", "-mode=x"),
    c(LEGACY, "-mode=a", "-network_path"),
    c(LEGACY, "-mode=t", "-vnn_name"),
    c(LEGACY, "-mode=t -vnn_name=tiny -iter=0", "-iter"),
    c(LEGACY, "-mode=t -vnn_name=tiny -iter=abc", "-iter"),
    c(LEGACY, "-mode=a -network_path=nope --store {new}", "nope"),
    c(LEGACY, "-mode=a -network_path=satellite -alpha=7 --store {new}", "--alpha"),
    c(LEGACY, "-mode=a -network_path=satellite -margin=nan --store {new}", "--margin"),
    c(LEGACY, "-mode=a -network_path=satellite -target_accuracy=5 --store {new}", "--target-accuracy"),
    c(LEGACY, "-mode=a -network_path=satellite -use_exclusive_page=0", "-use_exclusive_page"),
    c(LEGACY, "-mode=e -vnn_name=nope --store {store}", "nope"),
    c(LEGACY, "-mode=l --store {damaged}", "manifest.json"),
    c(LEGACY, "-mode=r -vnn_name=tiny --store {unwritable}", "--store"),
    c(LEGACY, "-mode=l --bogus", "--bogus"),
    # the execution benchmark's two sides
    c(EXEC, "--batch 0", "--batch"),
    c(EXEC, "--batch -5", "--batch"),
    c(EXEC, "--switches -1", "--switches"),
    c(EXEC, "--switches x", "--switches"),
    c(EXEC, "--store {file}", "--store"),
    c(EXEC, "--store {missing}", "manifest.json"),
    c(EXEC, "--store {damaged}", "manifest.json"),
    c(EXEC, "--store {library}", "kws"),
    c(EXEC, "--store {changed} " + PLUG, "tinyc", "not the code"),
    c(EXEC, "--device tpu", "--device"),
    c(EXEC, "--mode x", "--mode"),
    c(EXEC, "--kernel x", "--kernel"),
    c(EXEC, "--store {store} --dnn-folder {file}", "--dnn-folder"),
    c(EXEC, "--seed x", "--seed"),
    c(BASE, "--batch 0", "--batch"),
    c(BASE, "--train-steps 0", "--train-steps"),
    c(BASE, "--store {missing}", "manifest.json"),
    c(BASE, "--store {damaged}", "manifest.json"),
    c(BASE, "--switches -1", "--switches"),
    c(BASE, "--store {file}", "--store"),
    c(BASE, "--store {library}", "kws"),
    # the viewers
    c(VNN, "", "vnn_name"),
    c(VNN, "nope --store {store} --no-plot", "nope"),
    c(VNN, "tiny --store {missing}", "manifest.json"),
    c(VNN, "tiny --store {damaged} --no-plot", "manifest.json"),
    c(VNN, "tiny --store {file} --no-plot", "manifest.json"),
    c(VNN, "tiny --store {store} --plot /proc/weightsep-bad-input/x.png", "--plot"),
    c(VNN, "tiny --store {store} --plot {file}/x.png", "--plot", "is a file"),
    c(VNN, "tiny --store {store} --plot {empty}", "--plot", "directory"),
    c(VNN, "tiny --store {store} --plot {unwritable}/x.png", "--plot"),
    c(VNN, "tiny --bogus", "--bogus"),
    c(PAGE, "letters --page-size 0", "--page-size"),
    c(PAGE, "letters --page-size -5", "--page-size"),
    c(PAGE, "letters --margin 7", "--margin"),
    c(PAGE, "letters --margin nan", "--margin"),
    c(PAGE, "letters --shared-pages 0", "--shared-pages"),
    c(PAGE, "letters --fisher x", "--fisher"),
    c(PAGE, "letters --fisher-samples 0", "--fisher-samples"),
    c(PAGE, "letters --page-size abc", "--page-size"),
    c(PAGE, "nope --no-plot", "nope"),
    c(PAGE, "letters --dnn-folder {missing} --no-plot", "--dnn-folder"),
    c(PAGE, "letters --plot /proc/weightsep-bad-input/x.png", "--plot"),
    c(PAGE, "b_import --dnn-folder {broken} --no-plot", "b_import"),
    c(PAGE, "letters --plot {empty}", "--plot", "directory"),
    c(PAGE, "", "dnn"),
    # the experiments
    c(EXP, "nosuch", "nosuch"),
    c(EXP, "matching --steps 0", "--steps"),
    c(EXP, "matching --seeds 1 1", "--seeds"),
    c(EXP, "matching --quick --dnns nope --results {empty}", "nope"),
    c(EXP, "matching --dnns letters letters", "--dnns"),
    c(EXP, "matching --workers 0", "--workers"),
    c(EXP, "matching --results {file}", "--results"),
    c(EXP, "matching --results {unwritable}", "--results"),
    c(EXP, "report --results {empty}", "no experiment results"),
    c(EXP, "matching --train-steps -1", "--train-steps"),
    c(EXP, "matching --seeds x", "--seeds"),
    c(EXP, "all --bogus", "--bogus"),
]


@dataclass
class Outcome:
    status: int | str | None  # the exit status; "timeout" if it ran past CASE_TIMEOUT_S
    stderr: str
    traceback: bool
    seconds: float
    how: str  # "in process" or "subprocess"


class CaseTimeout(BaseException):
    """A case that ran on instead of refusing its input (BaseException: no handler of the CLI catches it)."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def expire(signum, frame):
        raise CaseTimeout(f"still running after {seconds:g} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def call_entry(entry: str, argv: list[str]) -> int:
    """An entry point's main in this process, as its `__main__` block runs it."""
    from weightsep import cli

    if entry == WS:
        return cli.main(argv)
    if entry == LEGACY:
        return cli.main(importlib.import_module("WeightSeparation").translate(argv))
    if entry == EXP:
        return importlib.import_module("experiments.__main__").main(argv)
    return guarded(importlib.import_module(entry.removesuffix(".py")).main, argv)


def run_in_process(case: CliCase, fx: Fixtures) -> Outcome:
    argv = [fx.fill(a) for a in case.args]
    err, start, tb = io.StringIO(), time.perf_counter(), False
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            with time_limit(CASE_TIMEOUT_S):
                status = call_entry(case.entry, argv)
        except SystemExit as e:  # argparse, and the `interruptible` guard
            status = e.code if isinstance(e.code, int) else 1
        except CaseTimeout:
            status = "timeout"
        except BaseException:  # noqa: BLE001 - escaping the entry point: a traceback on the command line
            status, tb = 1, True
            print(traceback.format_exc(), file=sys.stderr)
    return Outcome(status, err.getvalue(), tb, time.perf_counter() - start, "in process")


def command(entry: str) -> list[str]:
    return [sys.executable, *(("-m", entry) if entry in (WS, EXP) else (str(REPO / entry),))]


def run_subprocess(case: CliCase, fx: Fixtures) -> Outcome:
    start = time.perf_counter()
    try:
        r = subprocess.run([*command(case.entry), *(fx.fill(a) for a in case.args)], cwd=fx.paths["work"],
                           env=fx.env(), capture_output=True, text=True, timeout=CASE_TIMEOUT_S)
        status, stderr = r.returncode, r.stderr
    except subprocess.TimeoutExpired as e:  # its stderr so far may come as bytes even with text=True
        status, stderr = "timeout", e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr or ""
    return Outcome(status, stderr, "Traceback (most recent call last)" in stderr, time.perf_counter() - start, "subprocess")


def error_lines(stderr: str) -> list[str]:
    """The `error:` lines, each from `error:` on (a progress bar may share its line, past a \\r)."""
    return [line[line.index("error:"):] for line in re.split(r"[\r\n]", stderr) if "error:" in line]


def judge(case: CliCase, outcome: Outcome, fx: Fixtures, changed: list[str]) -> dict:
    lines = error_lines(outcome.stderr)
    words = [fx.fill(w) for w in case.words]
    problems = []
    if outcome.traceback:
        problems.append("traceback")
    if outcome.status != 2:
        problems.append(f"exit {outcome.status}")
    if len(lines) != 1:
        problems.append(f"{len(lines)} error lines")
    elif missing := [w for w in words if w not in lines[0]]:
        problems.append(f"message lacks {missing}")
    if changed:
        problems.append(f"changed {changed}")
    last = outcome.stderr.strip().splitlines()[-1] if outcome.stderr.strip() else ""
    return {"case": case.label, "entry": case.entry, "how": outcome.how, "status": outcome.status,
            "traceback": outcome.traceback, "error": lines[0] if len(lines) == 1 else last[-300:],
            "seconds": round(outcome.seconds, 2), "problems": problems, "ok": not problems}


def check_cli(case: CliCase, fx: Fixtures, in_process: bool = True, subprocess_too: bool = False) -> list[dict]:
    """One case in this process and/or as a subprocess; a row per run."""
    rows = []
    for way in [run_in_process] * in_process + [run_subprocess] * subprocess_too:
        before = fx.snapshot()
        outcome = way(case, fx)
        rows.append(judge(case, outcome, fx, fx.changes(before)))
    return rows


# ---------------------------------------------------------------- the API catalogue


class TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(x), x


class Raises(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        raise RuntimeError("this forward always fails")


class ScalarOut(TupleOut):
    def forward(self, x):
        return self.fc(x).sum()


class InPlace(TupleOut):
    def forward(self, x):
        self.fc.weight.data.add_(1.0)
        return self.fc(x)


class NoParams(nn.Module):
    def forward(self, x):
        return x[:, :3]


class Holds(nn.Module):
    """A Linear plus one extra parameter `p` (frozen, integer, complex or float64: each refused)."""

    def __init__(self, p: nn.Parameter):
        super().__init__()
        self.fc, self.p = nn.Linear(6, 3), p

    def forward(self, x):
        return self.fc(x)


def _frozen() -> nn.Module:
    m = _mlp()
    m[0].weight.requires_grad_(False)
    return m


def _nan_weights() -> nn.Module:
    m = _mlp()
    with torch.no_grad():
        m[2].bias[0] = math.nan
    return m


def _pack(module=None, train=None, val=None, name: str = "kws", **kw):
    """`api.pack` of one DNN (small configs: a case that wrongly passes ends in seconds)."""
    x, y = _data()
    entry = (module if module is not None else _mlp(), (x, y) if train is None else train, (x, y) if val is None else val)
    return api.pack({name: entry}, **{**SMALL, **kw})


def _bad_table(fx: Fixtures) -> api.PackedState:
    state = copy.deepcopy(fx.state)
    state.vnns["kws"].page_table[0] = 10**6
    return state


@dataclass(frozen=True)
class ApiCase:
    label: str
    call: Callable[[Fixtures], object]
    words: tuple[str, ...] = ()  # the message must hold each


def a(label: str, call: Callable[[Fixtures], object], *words: str) -> ApiCase:
    return ApiCase(label, call, words)


X, Y = _data()
API_CASES = [
    # pack: the mapping, each DNN's entry, its module, its data; configs, seed, names
    a("pack({})", lambda fx: api.pack({}), "no DNNs"),
    a("pack(None)", lambda fx: api.pack(None), "dict"),
    a("pack(list of pairs)", lambda fx: api.pack([("kws", (_mlp(), (X, Y), (X, Y)))]), "dict"),
    a("pack entry a string", lambda fx: api.pack({"kws": "model.pt"}), "'kws'"),
    a("pack entry of one", lambda fx: api.pack({"kws": (_mlp(),)}), "'kws'"),
    a("pack module a string", lambda fx: _pack("model.pt"), "'kws'", "nn.Module"),
    a("pack Linear(8, 3) given 5 features", lambda fx: _pack(nn.Linear(8, 3), *[_data(features=5)] * 2), "'kws'", "forward"),
    a("pack forward returns a tuple", lambda fx: _pack(TupleOut()), "'kws'", "tuple"),
    a("pack forward raises", lambda fx: _pack(Raises()), "'kws'", "always fails"),
    a("pack forward returns a scalar", lambda fx: _pack(ScalarOut()), "'kws'", "logits"),
    a("pack forward writes its weights", lambda fx: _pack(InPlace()), "'kws'", "in place"),
    a("pack module without parameters", lambda fx: _pack(NoParams()), "'kws'", "no trainable parameters"),
    a("pack frozen parameter", lambda fx: _pack(_frozen()), "'kws'", "frozen"),
    a("pack integer parameter", lambda fx: _pack(Holds(nn.Parameter(torch.zeros(3, dtype=torch.long), requires_grad=False))),
      "'kws'", "'p'"),
    a("pack complex parameter", lambda fx: _pack(Holds(nn.Parameter(torch.zeros(3, dtype=torch.cfloat)))), "'kws'", "'p'"),
    a("pack float64 and float32 parameters", lambda fx: _pack(Holds(nn.Parameter(torch.zeros(3, dtype=torch.double)))),
      "'kws'", "dtypes"),
    a("pack float64 module", lambda fx: _pack(_mlp().double()), "'kws'", "float64"),
    a("pack NaN weights", lambda fx: _pack(_nan_weights()), "'kws'", "NaN"),
    a("pack float labels", lambda fx: _pack(train=(X, Y.float())), "'kws'", "labels"),
    a("pack 2-D labels", lambda fx: _pack(train=(X, Y[:, None])), "'kws'", "labels"),
    a("pack labels past the logits", lambda fx: _pack(train=(X, Y + 3)), "'kws'", "labels"),
    a("pack negative labels", lambda fx: _pack(val=(X, Y - 3)), "'kws'", "labels"),
    a("pack NaN inputs", lambda fx: _pack(train=(X.masked_fill(X > 2, math.nan), Y)), "'kws'", "NaN"),
    a("pack inf inputs", lambda fx: _pack(val=(X.masked_fill(X > 2, math.inf), Y)), "'kws'", "inf"),
    a("pack 60 inputs and 59 labels", lambda fx: _pack(train=(X, Y[:-1])), "'kws'", "59 labels"),
    a("pack no samples", lambda fx: _pack(train=(X[:0], Y[:0])), "'kws'", "at least one"),
    a("pack data None", lambda fx: api.pack({"kws": (_mlp(), None, (X, Y))}), "'kws'"),
    a("pack data a list of ints", lambda fx: _pack(train=[1, 2, 3]), "'kws'"),
    a("pack data an empty loader", lambda fx: _pack(train=[]), "'kws'", "empty"),
    a("pack training and validation widths differ", lambda fx: _pack(val=_data(features=7)), "'kws'", "shape"),
    a("pack data of strings", lambda fx: _pack(train=(np.array(["a"] * 60), Y.numpy())), "'kws'"),
    a("pack scalar inputs", lambda fx: _pack(train=(torch.tensor(1.0), Y)), "'kws'"),
    a("pack pack_config a string", lambda fx: _pack(pack_config="ws"), "PackConfig"),
    a("pack optimize_config a PackConfig", lambda fx: _pack(optimize_config=api.PackConfig()), "OptimizeConfig"),
    a("pack precision_config a string", lambda fx: _pack(precision_config="int8"), "PrecisionConfig"),
    a("pack seed a string", lambda fx: _pack(seed="x"), "seed"),
    a("pack seed negative", lambda fx: _pack(seed=-1), "seed"),
    a("pack name an int", lambda fx: _pack(name=3), "name"),
    a("pack name with ../", lambda fx: _pack(name="x/../../pwned"), "name"),
    a("pack name empty", lambda fx: _pack(name=""), "name"),
    # the configs check themselves
    a("PackConfig(page_size=0)", lambda fx: api.PackConfig(page_size=0), "--page-size"),
    a("PackConfig(alpha=nan)", lambda fx: api.PackConfig(alpha=math.nan), "--alpha"),
    a("PackConfig(mode='x')", lambda fx: api.PackConfig(mode="x"), "--mode"),
    a("PackConfig(page_size='512')", lambda fx: api.PackConfig(page_size="512")),
    a("PackConfig(n_shared=10**9)", lambda fx: api.PackConfig(n_shared=10**9), "--shared-pages"),
    a("FisherConfig(samples=0)", lambda fx: api.FisherConfig(samples=0), "--fisher-samples"),
    a("FisherConfig(estimator='x')", lambda fx: api.FisherConfig(estimator="x"), "--fisher"),
    a("FisherConfig(chunk=-1)", lambda fx: api.FisherConfig(chunk=-1), "--fisher-chunk"),
    a("FisherConfig(version=99)", lambda fx: api.FisherConfig(version=99), "version"),
    a("OptimizeConfig(lr=0)", lambda fx: api.OptimizeConfig(lr=0.0), "--lr"),
    a("OptimizeConfig(lam=nan)", lambda fx: api.OptimizeConfig(lam=math.nan), "--lam"),
    a("OptimizeConfig(steps=0)", lambda fx: api.OptimizeConfig(steps=0), "--steps"),
    a("OptimizeConfig(optimizer='x')", lambda fx: api.OptimizeConfig(optimizer="x"), "--optimizer"),
    a("OptimizeConfig(steps=2.5)", lambda fx: api.OptimizeConfig(steps=2.5), "--steps"),
    a("PrecisionConfig(precision='x')", lambda fx: api.PrecisionConfig(precision="x"), "--precision"),
    a("PrecisionConfig(group=0)", lambda fx: api.PrecisionConfig(precision="int4", group=0), "--int4-group"),
    a("PrecisionConfig(precision='fisher') without a budget", lambda fx: api.PrecisionConfig(precision="fisher"),
      "--budget-kib"),
    a("PrecisionConfig(budget_kib=-1)", lambda fx: api.PrecisionConfig(precision="fisher", budget_kib=-1.0), "--budget-kib"),
    # the store: load, save, restore of bad things
    a("Store(missing).load()", lambda fx: api.Store(fx.paths["missing"]).load(), "manifest.json"),
    a("Store(a file).load()", lambda fx: api.Store(fx.paths["file"]).load()),
    a("Store(damaged).load()", lambda fx: api.Store(fx.paths["damaged"]).load(), "manifest.json"),
    a("Store(foreign).load()", lambda fx: api.Store(fx.paths["foreign"]).load(), "manifest.json"),
    a("Store(truncated).load()", lambda fx: api.Store(fx.paths["truncated"]).load(), "vnn-tiny"),
    a("Store(orphans).load()", lambda fx: api.Store(fx.paths["orphans"]).load(), "manifest.json"),
    a("Store(new).save('x')", lambda fx: api.Store(fx.paths["new"]).save("x"), "PackedState"),
    a("Store(new).save(None)", lambda fx: api.Store(fx.paths["new"]).save(None), "PackedState"),
    a("Store(new).save(a dict)", lambda fx: api.Store(fx.paths["new"]).save({"vnns": {}}), "PackedState"),
    a("Store(new).save(page table out of range)", lambda fx: api.Store(fx.paths["new"]).save(_bad_table(fx)), "kws"),
    a("Store(unwritable).save(state)", lambda fx: api.Store(fx.paths["unwritable"]).save(fx.state)),
    a("Store(a file).save(state)", lambda fx: api.Store(fx.paths["file"]).save(fx.state), "is a file"),
    a("Store(one generation).restore_previous()", lambda fx: api.Store(fx.paths["store"]).restore_previous(), "previous"),
    a("Store(missing).restore_previous()", lambda fx: api.Store(fx.paths["missing"]).restore_previous()),
    a("Store(None)", lambda fx: api.Store(None)),
    # PackedModel
    a("PackedModel(state, {})", lambda fx: api.PackedModel(fx.state, {}), "kws"),
    a("PackedModel(mode='x')", lambda fx: api.PackedModel(fx.state, fx.models, mode="x"), "mode"),
    a("PackedModel(kernel='x')", lambda fx: api.PackedModel(fx.state, fx.models, kernel="x"), "kernel"),
    a("PackedModel(device='nope')", lambda fx: api.PackedModel(fx.state, fx.models, device="nope"), "nope"),
    a("PackedModel('x', models)", lambda fx: api.PackedModel("x", fx.models), "PackedState"),
    a("PackedModel(another architecture)", lambda fx: api.PackedModel(fx.state, {"kws": nn.Linear(6, 3)}), "kws"),
    a("PackedModel(a string for a module)", lambda fx: api.PackedModel(fx.state, {"kws": "model.pt"}), "nn.Module"),
    a("PackedModel(page table out of range)", lambda fx: api.PackedModel(_bad_table(fx), fx.models), "kws"),
    a("PackedModel.switch('nope')", lambda fx: api.PackedModel(fx.state, fx.models).switch("nope"), "nope"),
    a("PackedModel.switch(None)", lambda fx: api.PackedModel(fx.state, fx.models).switch(None), "None"),
]
if not torch.cuda.is_available():
    API_CASES.append(a("PackedModel(device='cuda') without CUDA",
                       lambda fx: api.PackedModel(fx.state, fx.models, device="cuda"), "cuda"))


def check_api(case: ApiCase, fx: Fixtures) -> dict:
    before, start = fx.snapshot(), time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            with time_limit(CASE_TIMEOUT_S):
                case.call(fx)
            raised: BaseException | None = None
        except CaseTimeout as e:
            raised = e
        except Exception as e:  # noqa: BLE001 - judged below
            raised = e
    changed = fx.changes(before)
    message = "" if raised is None else str(raised).strip("'\"")
    problems = []
    if raised is None:
        problems.append("accepted (no exception)")
    elif not isinstance(raised, ACCEPTED):
        problems.append(f"{type(raised).__name__} is not a documented exception")
    elif missing := [w for w in case.words if w not in message]:
        problems.append(f"message lacks {missing}")
    if changed:
        problems.append(f"changed {changed}")
    return {"case": case.label, "raised": None if raised is None else type(raised).__name__,
            "documented": isinstance(raised, ACCEPTED), "message": message[:300],
            "seconds": round(time.perf_counter() - start, 2), "problems": problems, "ok": not problems}


# ---------------------------------------------------------------- Ctrl-C during start-up

INTERRUPTS = {  # a command per entry point: the first two wait on the store's writer lock the bench holds
    WS: "remove tiny --store {locked}",
    LEGACY: "-mode=r -vnn_name=tiny --store {locked}",
    EXEC: "--store {missing}",
    BASE: "--store {missing}",
    VNN: "tiny --store {missing}",
    PAGE: "letters --page-size 0",
    EXP: "report --results {empty}",
}


def after_the_guard(err: str) -> bool:
    """Whether a traceback passes through the project's code past the point where its Ctrl-C guard is
    up: a frame in one of its files other than the statement importing `interruptible` itself. The
    others come from the interpreter's start-up (site, runpy, the first import), before any guard."""
    lines = err.splitlines()
    return any(line.strip().startswith(f'File "{REPO}') and "interruptible" not in (lines[i + 1:i + 2] or [""])[0]
               for i, line in enumerate(lines))


def interrupt(entry: str, delay: float, fx: Fixtures) -> dict:
    """Start `entry`, send SIGINT after `delay` seconds; what it printed and how it ended."""
    proc = subprocess.Popen([*command(entry), *(fx.fill(a) for a in shlex.split(INTERRUPTS[entry]))],
                            cwd=fx.paths["work"], env=fx.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as from a terminal
    time.sleep(delay)
    sent = proc.poll() is None
    if sent:
        proc.send_signal(signal.SIGINT)
    signalled = time.perf_counter()
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    late = time.perf_counter() - signalled  # an exit right after the signal: it was ending anyway
    tb = any(w in err for w in ("Traceback (most recent call last)", "Exception ignored", "Fatal Python error",
                                "\nKeyboardInterrupt")) or err.startswith("KeyboardInterrupt")
    if tb:
        outcome = "traceback" if after_the_guard(err) else "traceback in Python's own start-up"
    elif not sent:
        outcome = "ended before the signal"
    elif proc.returncode == 130 and "interrupted" in err:
        outcome = "interrupted, 130"
    elif proc.returncode == -signal.SIGINT:  # the default action: before Python's handler, or as it ended
        outcome = "killed as it ended" if err.strip() else "killed before Python's handler"
    elif late < 0.05:
        outcome = "ended as the signal came"
    else:
        outcome = f"exit {proc.returncode} {late:.2f} s after the signal: the signal was lost"
    ok = not tb and "lost" not in outcome
    return {"entry": entry, "delay_s": round(delay, 3), "outcome": outcome, "traceback": tb, "ok": ok,
            "last_line": err.strip().splitlines()[-1][-200:] if err.strip() else "", "stderr": "" if ok else err[-1500:]}


def run_interrupts(fx: Fixtures, per_entry: int, seed: int, earliest: float = 0.0, progress: bool = True) -> list[dict]:
    """`per_entry` runs of each entry point, each interrupted at a random moment in [earliest, 1.5] s."""
    rng = random.Random(seed)
    plan = [(e, rng.uniform(earliest, 1.5)) for e in ENTRIES for _ in range(per_entry)]
    rng.shuffle(plan)
    with (fx.paths["locked"] / ".lock").open("r+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # `remove` waits for it: the signal always lands while it runs
        return [interrupt(e, d, fx) for e, d in tqdm(plan, desc="Ctrl-C", unit="run", disable=not progress)]


# ---------------------------------------------------------------- report


def summary(cli_rows: list[dict], api_rows: list[dict], int_rows: list[dict]) -> dict:
    by_entry = {}
    for entry in ENTRIES:
        rows = [r for r in cli_rows if r["entry"] == entry]
        if rows:
            by_entry[entry] = {"cases": len({r["case"] for r in rows}), "runs": len(rows),
                               "subprocess_runs": sum(r["how"] == "subprocess" for r in rows),
                               "passed": sum(r["ok"] for r in rows), "tracebacks": sum(r["traceback"] for r in rows)}
    interrupts = {}
    for entry in ENTRIES:
        rows = [r for r in int_rows if r["entry"] == entry]
        if rows:
            interrupts[entry] = {"runs": len(rows), "tracebacks": sum(r["traceback"] for r in rows),
                                 **Counter(r["outcome"] for r in rows if r["outcome"] != "traceback")}
    return {"cli": {"cases": len({r["case"] for r in cli_rows}), "runs": len(cli_rows),
                    "passed": sum(r["ok"] for r in cli_rows), "tracebacks": sum(r["traceback"] for r in cli_rows),
                    "by_entry": by_entry},
            "api": {"cases": len(api_rows), "passed": sum(r["ok"] for r in api_rows),
                    "unacceptable": sum(r["raised"] is not None and not r["documented"] for r in api_rows),
                    "accepted_silently": sum(r["raised"] is None for r in api_rows),
                    "raised": dict(Counter(r["raised"] or "nothing" for r in api_rows))},
            "interrupts": {"runs": len(int_rows), "tracebacks": sum(r["traceback"] for r in int_rows),
                           "tracebacks_in_pythons_start_up": sum(r["outcome"] == "traceback in Python's own start-up"
                                                                 for r in int_rows),
                           "passed": sum(r["ok"] for r in int_rows), "by_entry": interrupts}}


def table(result: dict) -> str:
    s = result["summary"]
    # API calls: "tracebacks" counts the exceptions outside the rule (module doc)
    lines = [f"{'entry point':<24}{'cases':>7}{'runs':>6}{'subproc':>9}{'passed':>8}{'tracebacks':>12}"]
    for entry, r in s["cli"]["by_entry"].items():
        lines.append(f"{entry:<24}{r['cases']:>7}{r['runs']:>6}{r['subprocess_runs']:>9}{r['passed']:>8}{r['tracebacks']:>12}")
    cli, api_ = s["cli"], s["api"]
    if cli["runs"]:
        lines.append(f"{'CLI, all':<24}{cli['cases']:>7}{cli['runs']:>6}{'':>9}{cli['passed']:>8}{cli['tracebacks']:>12}")
    if api_["cases"]:
        lines.append(f"{'API calls':<24}{api_['cases']:>7}{'':>6}{'':>9}{api_['passed']:>8}"
                     f"{api_['unacceptable']:>12}   raised: " + ", ".join(f"{k} {v}" for k, v in api_["raised"].items()))
    for entry, r in s["interrupts"]["by_entry"].items():
        kinds = ", ".join(f"{k} {v}" for k, v in r.items() if k not in ("runs", "tracebacks"))
        lines.append(f"{'Ctrl-C ' + entry:<24}{r['runs']:>7}{'':>6}{'':>9}{'':>8}{r['tracebacks']:>12}   {kinds}")
    bad = [f"  {r.get('how', 'API')}: {r['case']}: {'; '.join(r['problems'])}: {r.get('error') or r.get('message')}"
           for r in result["cli_rows"] + result["api_rows"] if not r["ok"]]
    bad += [f"  Ctrl-C {r['entry']} at {r['delay_s']} s: {r['outcome']}: {r['last_line']}"
            for r in result["interrupt_rows"] if not r["ok"]]
    return "\n".join(lines + (["failures:", *bad] if bad else ["no failures"]))


def run_all(root: Path, parts: set[str], every: int, interrupts: int, seed: int, progress: bool = True) -> dict:
    start = time.perf_counter()
    fx = build(root)
    cli_rows, api_rows, int_rows = [], [], []
    with environment(fx):
        if "cli" in parts:
            for i, case in enumerate(tqdm(CLI_CASES, desc="command lines", unit="case", disable=not progress)):
                in_process = case.entry == WS  # the scripts as the user runs them; weightsep's also every Nth
                cli_rows += check_cli(case, fx, in_process, not in_process or (every > 0 and i % every == 0))
        if "api" in parts:
            api_rows = [check_api(case, fx) for case in tqdm(API_CASES, desc="API calls", unit="case", disable=not progress)]
    if "interrupts" in parts and interrupts:
        int_rows = run_interrupts(fx, interrupts, seed, progress=progress)
    result = {"targets": TARGETS, "seed": seed, "every": every, "interrupts_per_entry": interrupts,
              "cli_rows": cli_rows, "api_rows": api_rows, "interrupt_rows": int_rows}
    result["summary"] = summary(cli_rows, api_rows, int_rows)
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bad_input", description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default="cli,api,interrupts", help="which catalogues (default cli,api,interrupts)")
    p.add_argument("--every", type=int, default=8,
                   help="every Nth `python -m weightsep` case also runs as a subprocess (default 8; 0: none)")
    p.add_argument("--interrupts", type=int, default=20, help="Ctrl-C runs per entry point (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the Ctrl-C delays")
    p.add_argument("--keep", action="store_true", help="keep the fixtures' temporary directory")
    args = p.parse_args(argv)
    parts = {x.strip() for x in args.parts.split(",") if x.strip()}
    root = Path(tempfile.mkdtemp(prefix="bad_input-"))
    try:
        print(f"fixtures in {root} ...", flush=True)
        result = run_all(root / "fixtures", parts, args.every, args.interrupts, args.seed)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print("\n" + table(result))
    path = write_result("bad_input", result)
    print(f"\n{result['seconds']:.0f} s; wrote {path}")
    return 0 if all(r["ok"] for r in result["cli_rows"] + result["api_rows"] + result["interrupt_rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
