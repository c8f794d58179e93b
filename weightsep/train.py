"""Stand-alone training of DNN folders, in worker processes, cached by content.

Takes DNN folders; returns each one's trained flat weight vector (`model.theta`'s order), its
buffers (batch-norm statistics, as the module's own code updated them; none for `TemplateNet`) and
its validation and test accuracy. The checkpoint kept is the one with the best validation accuracy (the test set is
only scored once, on that checkpoint). Training is bounded by steps, never by wall time, so a busy
machine gives the same result, only later. Each worker uses ONE torch thread: on small shared
machines torch's default thread count makes these small models several times slower (docs/results.md#code-notes).

Trained weights are cached under `<cache>/models/NAME-KEY.safetensors`, KEY hashing everything
that changes the trained weights: the folder's dnn.py, the model and training code
(`TRAINING_CODE`), the training config and the data files' contents. Anything else (a rebuilt but
identical data file, another module) reuses the cache.

    models = standalone_models([weightsep.dnn.get("mnist10k")], workers=2)
"""
from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import multiprocessing.pool
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import dnn as dnn_mod
from .checks import at_least, typed
from .config_help import opt
from .evaluate import accuracy
from .files import file_hash
from .flat import buffer_state, load_buffer_state
from .prepared import stored_digest  # .npz files written by weightsep carry their arrays' sha256
from .progress import tqdm
from .store import BUFFER, StoreError, load_tensors, save_tensors


@dataclass(frozen=True)
class TrainConfig:
    """Stand-alone training budget; a DNN folder's TRAIN dict overrides these fields."""

    steps: int = opt(10000, "the most stand-alone training steps (--train-steps, or the folder's TRAIN); with "
                            "patience the plateau rule usually stops sooner")
    batch_size: int = opt(100, "training samples per batch")
    lr: float = opt(1e-3, "Adam learning rate")
    eval_every: int = opt(200, "steps between validation checks (the best-validation weights are kept)")
    patience: int | None = opt(10, "validation checks in a row without a new best that end a learning rate "
                                  "(`steps` is then the cap); None: train all `steps` at `lr` (the originals)")
    lr_drops: int = opt(2, "with patience: times the learning rate is divided by 10 at a plateau before training stops "
                            "(experiments/standalone.py chose the rule on validation accuracy)")
    restore_best: bool = opt(True, "with patience: each learning-rate drop restarts from the best-validation checkpoint "
                                   "(weights, buffers, a fresh Adam) instead of the weights the plateau ended on "
                                   "(experiments/standalone.py: the control's extra training then gains least)")
    seed: int = opt(0, "seeds the initialisation and the batches")

    def __post_init__(self):
        typed(self)
        # steps comes from --train-steps or a folder's TRAIN dict, the others from TRAIN only
        at_least(self, "steps", 1, "--train-steps (stand-alone training steps)")
        at_least(self, "lr_drops", 0, "TRAIN['lr_drops'] (stand-alone training)")
        for name in ("batch_size", "eval_every", "patience"):
            at_least(self, name, 1, f"TRAIN[{name!r}] (stand-alone training)")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"TRAIN['lr'] (stand-alone training) must be a positive finite number, got {self.lr}")


@dataclass
class Trained:
    """A DNN's stand-alone weights and how they came: trained here (`best_step`, `seconds` and `history`
    are that training run's; `cached`: read back from the model cache), or `imported` from the folder's
    own weights (its load_weights: no training run, so those three are None and empty)."""

    name: str
    theta: torch.Tensor  # float32 [n_weights], the model's flat order
    val_accuracy: float
    test_accuracy: float
    best_step: int | None
    seconds: float | None
    cached: bool = False
    history: list = field(default_factory=list)
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)  # the model's buffers at the kept checkpoint
    imported: bool = False
    config: dict | None = None  # the TrainConfig it was trained with (None: imported)

    @property
    def training(self) -> dict | None:
        """How it was trained, for the store's provenance: the config, the kept step and the steps run."""
        if self.config is None:
            return None
        return {**self.config, "best_step": self.best_step, "steps_run": self.history[-1][0] if self.history else 0}


def set_single_thread() -> None:
    """One intra-op thread: see the module docstring for why."""
    torch.set_num_threads(1)


def batches(n: int, batch_size: int, generator: torch.Generator):
    """Endless random mini-batch index tensors, reshuffled each epoch, sampled without replacement."""
    while True:
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            yield perm[start : start + batch_size]


def train_theta(model, data: dnn_mod.Dataset, config: TrainConfig) -> Trained:
    """Adam on per-sample cross-entropy, the model in train mode; keeps the best-validation
    checkpoint (weights and buffers) and leaves its buffers in the model."""
    gen = torch.Generator().manual_seed(config.seed)
    model.reset_parameters(gen)
    model.train()
    x, y = torch.from_numpy(data.train.x), torch.from_numpy(data.train.y)
    xv, yv = torch.from_numpy(data.val.x), torch.from_numpy(data.val.y)
    adam = torch.optim.Adam([model.theta], lr=config.lr)
    best = (-1.0, 0, model.theta.detach().clone(), buffer_state(model))
    history, since_best, drops = [], 0, 0  # validation checks since the last new best; learning-rate drops so far
    start = time.perf_counter()
    for step, idx in enumerate(batches(len(x), config.batch_size, gen), start=1):
        loss = F.cross_entropy(model(x[idx]), y[idx])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss at step {step} (learning rate {config.lr:g}: too high?)")
        adam.zero_grad(set_to_none=True)
        loss.backward()
        adam.step()
        if step % config.eval_every == 0 or step == config.steps:
            val = accuracy(model, model.theta, xv, yv)
            history.append((step, val))
            if val > best[0]:
                best, since_best = (val, step, model.theta.detach().clone(), buffer_state(model)), 0
            else:
                since_best += 1
        if config.patience is not None and since_best >= config.patience:  # a plateau at this learning rate
            if drops == config.lr_drops:
                break
            drops, since_best = drops + 1, 0
            if config.restore_best:  # fine-tune the best weights, not where the plateau wandered to
                with torch.no_grad():
                    model.theta.copy_(best[2])
                load_buffer_state(model, best[3], "the best checkpoint")
                adam = torch.optim.Adam([model.theta], lr=config.lr / 10 ** drops)
            else:
                for group in adam.param_groups:
                    group["lr"] /= 10
        if step == config.steps:
            break
    seconds = time.perf_counter() - start
    theta, buffers = best[2], best[3]
    load_buffer_state(model, buffers, "the best checkpoint")
    test = accuracy(model, theta, torch.from_numpy(data.test.x), torch.from_numpy(data.test.y))
    return Trained("", theta, best[0], test, best[1], seconds, history=history, buffers=buffers, config=asdict(config))


def config_for(dnn: dnn_mod.DNN, steps: int | None = None, seed: int = 0) -> TrainConfig:
    """Defaults, then the folder's TRAIN overrides, then a step budget and seed from the command line."""
    overrides = dnn.train_overrides
    unknown = sorted(set(overrides) - set(asdict(TrainConfig())) if isinstance(overrides, dict) else ["(not a dict)"])
    if unknown:
        raise dnn_mod.DNNError(f"DNN {dnn.name!r}: its TRAIN has unknown field(s) {', '.join(unknown)}; known: "
                               f"{', '.join(asdict(TrainConfig()))} ({dnn.path / 'dnn.py'})")
    try:
        return TrainConfig(**{**asdict(TrainConfig()), **overrides, **({"steps": steps} if steps is not None else {}),
                              "seed": seed})
    except ValueError as e:
        where = "--train-steps" if steps is not None and "--train-steps" in str(e) else "its TRAIN"
        raise dnn_mod.DNNError(f"DNN {dnn.name!r} ({where}): {e}") from None


TRAINING_CODE = tuple(Path(__file__).with_name(f) for f in ("model.py", "flat.py", "train.py", "evaluate.py"))


def cache_path(dnn: dnn_mod.DNN, config: TrainConfig) -> Path:
    # keyed on the data's content: the stored digest costs a read of the zip's end, hashing the
    # file (anything else in data_dir named <name>.*) reads all of it
    owners = {dnn.name, *([Path(dnn.facts.data_from).name] if dnn.facts.data_from else [])}
    files = sorted({p for owner in owners for p in dnn_mod.data_dir().glob(f"{owner}.*")})
    data = [(p.name, stored_digest(p) or file_hash(p)) for p in files]
    code = [file_hash(p) for p in TRAINING_CODE]
    key = json.dumps([dnn.code_hash(), code, asdict(config), data], sort_keys=True)
    return dnn_mod.cache_dir() / "models" / f"{dnn.name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.safetensors"


def _imported(dnn: dnn_mod.DNN) -> Trained | None:
    """A folder's own weights (its load_weights), scored on its validation and test data."""
    model = dnn.build_model()
    theta = dnn.load_weights(model)
    if theta is None:
        return None
    if theta.shape != (model.n_weights,):
        raise dnn_mod.DNNError(f"DNN {dnn.name!r}: load_weights gave {tuple(theta.shape)}, the model has {model.n_weights:,}")
    data = dnn.load_data()
    val = accuracy(model, theta, torch.from_numpy(data.val.x), torch.from_numpy(data.val.y))
    test = accuracy(model, theta, torch.from_numpy(data.test.x), torch.from_numpy(data.test.y))
    return Trained(dnn.name, theta, val, test, best_step=None, seconds=None, buffers=buffer_state(model), imported=True)


def worker_pool(processes: int) -> mp.pool.Pool:
    """A pool of spawned worker processes that leave Ctrl-C to the parent (no traceback from every
    worker) and end when the parent does, however it ends (an orphan would keep training and hold
    the parent's output pipes open)."""
    return mp.get_context("spawn").Pool(processes, initializer=_worker_init, initargs=(os.getpid(),))


def _worker_init(parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _train_worker(args: tuple[str, dict]) -> tuple[str, dict, np.ndarray, dict[str, np.ndarray]]:
    path, config = args
    set_single_thread()
    dnn = dnn_mod.load_folder(Path(path))
    data = dnn.load_data()
    try:
        result = train_theta(dnn.build_model(), data, TrainConfig(**config))
    except FloatingPointError as e:
        raise dnn_mod.DNNError(f"DNN {dnn.name!r}: stand-alone training failed: {e}") from None
    info = {k: getattr(result, k) for k in ("val_accuracy", "test_accuracy", "best_step", "seconds", "history", "config")}
    return dnn.name, info, result.theta.numpy(), {k: b.numpy() for k, b in result.buffers.items()}


def standalone_models(dnns: list[dnn_mod.DNN], workers: int = 2, steps: int | None = None,
                      retrain: bool = False, seed: int = 0) -> dict[str, Trained]:
    """Trained weights for each DNN: from the cache, else trained in `workers` processes (seeded)."""
    results: dict[str, Trained] = {}
    todo = []
    for dnn in dnns:
        imported = _imported(dnn)
        if imported is not None:
            results[dnn.name] = imported
            continue
        config = config_for(dnn, steps, seed)
        path = cache_path(dnn, config)
        if path.exists() and not retrain:
            try:
                tensors, meta = load_tensors(path)
                buffers = {k.removeprefix(BUFFER): t for k, t in tensors.items() if k.startswith(BUFFER)}
                results[dnn.name] = Trained(dnn.name, tensors["theta"], meta["val_accuracy"], meta["test_accuracy"],
                                            meta["best_step"], meta["seconds"], cached=True, history=meta["history"],
                                            buffers=buffers, config=meta.get("config"))
                continue
            except (StoreError, KeyError) as e:
                tqdm.write(f"retraining {dnn.name}: cached model unusable ({e})")
        todo.append((dnn, config, path))
    if todo:
        jobs = [(str(d.path), asdict(c)) for d, c, _ in todo]
        paths = {d.name: p for d, _, p in todo}
        bar = tqdm(total=len(jobs), desc="stand-alone training", unit="DNN")
        with worker_pool(min(workers, len(jobs))) as pool:
            for name, info, theta, buffers in pool.imap_unordered(_train_worker, jobs):
                theta, buffers = torch.from_numpy(theta), {k: torch.from_numpy(b) for k, b in buffers.items()}
                save_tensors(paths[name], {"theta": theta, **{BUFFER + k: b for k, b in buffers.items()}}, info)
                results[name] = Trained(name, theta, **info, buffers=buffers)
                bar.set_postfix_str(f"{name}: val {info['val_accuracy']:.4f} in {info['seconds']:.0f}s")
                bar.update()
        bar.close()
    for name, trained in results.items():
        trained.name = name
    return {d.name: results[d.name] for d in dnns}
