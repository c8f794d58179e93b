"""Pack trained modules held in memory: weightsep as a library in an engineer's own project.

No DNN folder, no cache, no disk: each DNN is a trained `nn.Module` with its own training and
validation data, as tensors `(x, y)` or any iterable of `(x, y)` batches (a `DataLoader`), which is
read into memory once (the optimiser draws its own seeded batches). The modules' current weights and
buffers are the stand-alone reference. The stages are the CLI's (Fisher, separation, matching, joint
optimisation, docs/pipeline.md) with the same defaults; the result is a `PackedState`, which
`PackedModel` runs and `Store` saves.

    from weightsep.api import PackedModel, Store, pack
    state = pack({"kws": (kws, (x_train, y_train), (x_val, y_val)),
                  "har": (har, train_loader, val_loader)})
    packed = PackedModel(state, {"kws": kws, "har": har})
    packed.switch("kws")
    logits = packed(x)
    Store("packed").save(state)        # and Store("packed").load() in another process

Packing works on copies of the modules: the caller's are never changed. `PackedModel` runs the
caller's modules on the packed weights, loading each DNN's packed buffers into its module.
"""
from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from . import flat
from .dnn import Dataset, Split
from .evaluate import accuracy, ratio_warning
from .execution import PackedModel
from .fisher import FisherConfig
from .optimize import OptimizeConfig
from .pack import PackConfig
from .packing import pack_and_optimize_records
from .precision import PrecisionConfig
from .records import DNNRecord, InMemory, Reference
from .state import PackedState, check_name
from .store import Store

__all__ = ["pack", "PackedModel", "PackedState", "Store", "PackConfig", "FisherConfig", "OptimizeConfig",
           "PrecisionConfig"]

Data = tuple[torch.Tensor, torch.Tensor] | Iterable


def _as_arrays(data: Data, who: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) tensors or arrays, or an iterable of (x, y) batches, as numpy arrays (checked)."""
    expected = "expected (x, y) tensors or an iterable of (x, y) batches (e.g. a DataLoader)"
    if isinstance(data, tuple | list) and len(data) == 2 and all(isinstance(t, torch.Tensor | np.ndarray) for t in data):
        parts = [[data[0]], [data[1]]]
    else:
        try:
            batches = [(b[0], b[1]) for b in data]
        except (TypeError, IndexError, KeyError) as e:
            raise ValueError(f"{who}: {expected}, got {type(data).__name__} ({e})") from None
        if not batches:
            raise ValueError(f"{who}: the data is empty")
        parts = [[b[0] for b in batches], [b[1] for b in batches]]
    try:  # one array as it is (no copy), batches concatenated
        x, y = (torch.as_tensor(ts[0]) if len(ts) == 1 else torch.cat([torch.as_tensor(t) for t in ts]) for ts in parts)
    except (TypeError, ValueError, RuntimeError) as e:  # not numbers, or batches that do not fit together
        raise ValueError(f"{who}: {expected}, of numbers ({e})") from None
    if x.dim() == 0 or x.is_complex():
        raise ValueError(f"{who}: inputs must be real numbers with a batch dimension, got {x.dtype} {list(x.shape)}")
    if y.is_floating_point() or y.is_complex() or y.dim() != 1:
        raise ValueError(f"{who}: labels must be a 1-D integer tensor of class indices, got {y.dtype} {list(y.shape)}")
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"{who}: {len(x)} inputs and {len(y)} labels (need the same number, at least one)")
    if not torch.isfinite(x.float()).all():
        raise ValueError(f"{who}: the inputs hold NaN or inf")
    return x.detach().cpu().numpy(), y.detach().cpu().numpy()


def _classes(module: nn.Module, x: np.ndarray) -> int:
    """The number of classes: the width of the logits the module gives for a few of its inputs."""
    try:
        with torch.no_grad(), flat.evaluating(module):
            out = module(torch.from_numpy(x).float())  # its parameters are float32 (checked before)
    except Exception as e:  # the caller's forward on the caller's data: whatever it raises is bad input
        raise flat.FlatError(f"forward on {len(x)} validation inputs of shape {tuple(x.shape[1:])} fails: "
                             f"{type(e).__name__}: {e}") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or len(out) != len(x):
        got = f"a tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise flat.FlatError(f"forward must return logits of shape (batch, classes); on {len(x)} inputs it returns {got}")
    return int(out.shape[1])


def _record(name: str, entry: tuple) -> DNNRecord:
    """The record of a module packed from memory: its own source, its current weights as the reference."""
    if not isinstance(entry, tuple | list) or len(entry) not in (3, 4):
        raise ValueError(f"DNN {name!r}: expected (module, train data, validation data[, test data]), "
                         f"got {type(entry).__name__} of {len(entry) if isinstance(entry, tuple | list) else 1}")
    module, *splits = entry
    if not isinstance(module, nn.Module):
        raise ValueError(f"DNN {name!r}: {type(module).__name__} is not a torch.nn.Module")
    parts = ("training", "validation", "test")
    arrays = [_as_arrays(data, f"DNN {name!r}, {part} data") for data, part in zip(splits, parts)]
    shapes = {part: tuple(x.shape[1:]) for (x, _), part in zip(arrays, parts)}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"DNN {name!r}: one input shape is needed, got " + ", ".join(f"{p} {s}" for p, s in shapes.items()))
    try:
        module = copy.deepcopy(module)  # packing trains buffers (batch norm): never the caller's module
        if isinstance(module, flat.TemplateNet | flat.FlatModule):
            model = module
        else:
            flat.as_flat(module)  # its parameters checked first (the message names the one refused)
            model = flat.as_flat(module, shapes["training"], _classes(module, arrays[1][0][:2]))
    except flat.FlatError as e:
        raise ValueError(f"DNN {name!r}: {e}") from None
    dataset = Dataset(*(Split(*a) for a in (arrays + [arrays[1]])[:3]))  # without test data, validation stands in
    splits = (dataset.train, dataset.val, dataset.test)
    if max(int(s.y.max()) for s in splits) >= model.classes or min(int(s.y.min()) for s in splits) < 0:
        raise ValueError(f"DNN {name!r}: labels outside 0..{model.classes - 1} (the module gives {model.classes} logits)")
    theta = model.theta.detach().clone()
    score = {part: accuracy(model, theta, torch.from_numpy(s.x), torch.from_numpy(s.y))
             for part, s in (("val", dataset.val), ("test", dataset.test))}
    return DNNRecord(InMemory(name), model, dataset,
                     reference=Reference(theta, flat.buffer_state(model), score["val"], score["test"]))


def pack(dnns: Mapping[str, tuple], pack_config: PackConfig | None = None, fisher_config: FisherConfig | None = None,
         optimize_config: OptimizeConfig | None = None, seed: int = 0,
         precision_config: PrecisionConfig | None = None) -> PackedState:
    """Pack trained modules: `dnns` maps a name to `(module, train, val)` or `(module, train, val, test)`
    (data: `(x, y)` tensors or an iterable of `(x, y)` batches). Returns the optimised `PackedState`;
    each DNN's stand-alone accuracy (on its test data, else validation data) is in its provenance.
    Configs default to the CLI's (`precision_config`: float32 pages; e.g. `PrecisionConfig(precision="int8")`).
    Bad input is a ValueError naming the DNN (or the argument), raised before any work; a ratio asked
    (`PackConfig.ratio`) that these DNNs cannot reach is a UserWarning naming the DNN that prevents it."""
    if not isinstance(dnns, Mapping) or not dnns:
        raise ValueError(f"expected a dict of DNN name -> (module, train data, validation data), got "
                         f"{'an empty one' if isinstance(dnns, Mapping) else type(dnns).__name__}: no DNNs to pack")
    for config, cls in ((pack_config, PackConfig), (fisher_config, FisherConfig), (optimize_config, OptimizeConfig),
                        (precision_config, PrecisionConfig)):
        if config is not None and not isinstance(config, cls):
            raise ValueError(f"expected a {cls.__name__} or None, got {type(config).__name__} {config!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
    for name in dnns:
        check_name(name)
    records = {name: _record(name, entry) for name, entry in dnns.items()}
    configs = [replace(c or default(), seed=seed) for c, default in
               ((pack_config, PackConfig), (fisher_config, FisherConfig), (optimize_config, OptimizeConfig))]
    state, *_ = pack_and_optimize_records(records, *configs, precision_config=precision_config)
    warning = ratio_warning(state)
    if warning:
        warnings.warn(warning, UserWarning, stacklevel=2)
    return state
