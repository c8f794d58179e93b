"""One record per packed DNN, and loading records from DNN folders.

A `DNNRecord` is what the pipeline passes around for one DNN: where its code came from (a DNN
folder, or a module handed over in memory: `InMemory`), its model and data, its stand-alone
`Reference` (the weights packing starts from and the accuracies it is held to), its Fisher vector
and its batches per joint step. `load` builds records from DNN folders by name; `load_packed`
from the folders of the DNNs a store holds, refusing a folder whose code changed since packing.

    records = load(["mnist", "letters"])        # {"mnist": DNNRecord(...), ...}
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import dnn as dnn_mod
from .evaluate import reported_accuracy
from .page_optimizer import Task
from .state import PackedState


@dataclass(frozen=True)
class InMemory:
    """The source of a module packed from memory (`weightsep.api`): no folder, no code hash, no META."""

    name: str
    path: None = None
    meta: dict = field(default_factory=dict)

    def code_hash(self) -> None:
        return None

    @property
    def facts(self) -> dnn_mod.Meta:
        return dnn_mod.Meta.of(self.meta)


@dataclass(frozen=True)
class Reference:
    """A DNN's stand-alone weights (flat, the model's order), buffers and accuracies (fractions; None
    where nothing reads them: the no-sharing control's worker)."""

    theta: torch.Tensor
    buffers: dict[str, torch.Tensor]
    val_accuracy: float | None = None
    test_accuracy: float | None = None
    training: dict | None = None  # how it was trained (`train.Trained.training`; None: imported)

    @classmethod
    def of(cls, trained) -> Reference:
        """From stand-alone training's result (`train.Trained`)."""
        return cls(trained.theta, trained.buffers, trained.val_accuracy, trained.test_accuracy, trained.training)


@dataclass
class DNNRecord:
    """One DNN through the pipeline. Over several ranks only the rank that trains the DNN loads its
    data and has its reference: `data` and `reference` are None on the others."""

    source: dnn_mod.DNN | InMemory
    model: torch.nn.Module
    data: dnn_mod.Dataset | None
    reference: Reference | None = None
    fisher: torch.Tensor | None = None  # computed with the run's FisherConfig on the reference weights
    batches: int | None = None  # batches per joint step (None: the optimiser's rule decides)

    @property
    def name(self) -> str:
        return self.source.name

    def task(self, standalone: torch.Tensor | None = None, batches: int | None = None) -> Task:
        d = self.data
        return Task(self.model, torch.from_numpy(d.train.x), torch.from_numpy(d.train.y),
                    torch.from_numpy(d.val.x), torch.from_numpy(d.val.y), standalone, batches)

    def test_accuracy(self, theta: torch.Tensor) -> float:
        """Test accuracy with weights `theta`; NaN or inf logits are a FloatingPointError naming the DNN."""
        return self.accuracy(theta, "test")

    def accuracy(self, theta: torch.Tensor, split: str) -> float:
        """Accuracy on the "train", "val" or "test" split with weights `theta` (as `test_accuracy`)."""
        part = getattr(self.data, split)
        return reported_accuracy(self.model, theta, torch.from_numpy(part.x), torch.from_numpy(part.y), f"DNN {self.name!r}")


def load(names: list[str], extra: list[Path] = (), data: bool = True) -> dict[str, DNNRecord]:
    """DNN folders by name (or path), each with a fresh model and (unless `data` is False) its data."""
    out = {}
    for name in names:
        dnn = dnn_mod.get(name, extra)
        out[dnn.name] = DNNRecord(dnn, dnn.build_model(), dnn.load_data() if data else None)
    return out


def load_packed(state: PackedState, names: list[str] | None = None, extra: list[Path] = (),
                allow_changed_code: bool = False, data: bool = True) -> dict[str, DNNRecord]:
    """The packed DNNs with their folders' models and data, keyed by packed name.

    Code comes only from the DNN folders discovered or named on the command line (`extra`), found
    by the packed DNN's name, never from a path the store names; a folder whose dnn.py no longer
    has the hash recorded at packing is refused before any of its code runs, unless
    `allow_changed_code`."""
    names = list(state.vnns) if names is None else names
    unknown = [n for n in names if n not in state.vnns]
    if unknown:
        raise ValueError(f"DNN(s) {', '.join(unknown)} are not packed; packed: {', '.join(state.vnns) or 'none'}")
    out = {}
    known = dnn_mod.folders(extra)  # nothing imported yet; a bad --dnn-folder says what is wrong with it
    for name in names:
        recorded = state.vnns[name].provenance
        if name not in known:
            where = (f"; the store says it was packed from {recorded.folder!r}, a hint only: a store never "
                     "chooses the code that runs" if recorded.folder else "")
            raise dnn_mod.DNNError(f"DNN {name!r} is packed in this store, but no DNN folder of that name is known "
                                   "(searched: the repository's DNN folders, suite/ and --dnn-folder"
                                   f"{' ' + ', '.join(map(str, extra)) if extra else ''}): name the folder that holds "
                                   f"its code with --dnn-folder{where}")
        try:
            dnn = dnn_mod.load_folder(known[name], None if allow_changed_code else recorded.code_hash)
        except dnn_mod.ChangedCode as e:
            raise dnn_mod.DNNError(
                f"DNN {name!r}: {e}, so its model or data may not match the store; re-pack it (`remove {name}`, "
                f"then `add {name}` and `joint`), or pass --allow-changed-code to use it anyway") from None
        out[name] = DNNRecord(dnn, dnn.build_model(), dnn.load_data() if data else None)
    return out
