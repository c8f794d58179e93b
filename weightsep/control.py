"""The no-sharing control: each DNN given the same extra training it gets when packed, but alone.

Each DNN (its stand-alone reference weights and buffers) becomes its own one-DNN store with all
pages exclusive and is optimised with the same optimiser, batch size, learning rate and number of
its own batches (its `batches` per step, as the packed set's rule gave it); so any gain the packed
DNNs show over the control comes from sharing, not from the extra training. `run` starts it in a
worker process beside the joint optimisation (`control_worker`).

    test, val = no_sharing_control(records, OptimizeConfig(steps=1500), page_size=512)
"""
from __future__ import annotations

from dataclasses import asdict

import torch

from .evaluate import packed_theta
from .optimize import OptimizeConfig, optimize
from .pack import solo_state
from .records import DNNRecord, Reference, load
from .train import set_single_thread


def no_sharing_control(records: dict[str, DNNRecord], config: OptimizeConfig,
                       page_size: int) -> tuple[dict[str, float], dict[str, float]]:
    """Test and validation accuracy per DNN after training alone (see the module docstring): what
    the extra training gains on validation is what it could see; on test, what it carried over."""
    config = config.alone(len(records))
    test, val = {}, {}
    for name, record in records.items():
        theta = trained_alone(record, config, page_size)
        test[name], val[name] = record.test_accuracy(theta), record.accuracy(theta, "val")
    return test, val


def trained_alone(record: DNNRecord, config: OptimizeConfig, page_size: int) -> torch.Tensor:
    """One DNN's weights after the control's training: its reference as a one-DNN store, every page
    exclusive, optimised by `config` (already `alone`) on its `batches` per step; its buffers are left
    in `record.model`."""
    alone = solo_state(record.name, record.reference.theta, page_size, record.reference.buffers)
    result, _ = optimize(alone, {record.name: record.task(batches=record.batches or 1)}, config, progress=False)
    return packed_theta(result, record.name, record.model)


def job(records: dict[str, DNNRecord], config: OptimizeConfig, page_size: int) -> tuple:
    """`control_worker`'s arguments for these records: plain arrays and folders, to pickle."""
    return ([str(r.source.path) for r in records.values()],
            [(r.reference.theta.numpy(), {k: b.numpy() for k, b in r.reference.buffers.items()}) for r in records.values()],
            asdict(config), page_size, {n: r.batches for n, r in records.items()})


def control_worker(folders: list[str], references: list[tuple], config: dict, page_size: int,
                   batches: dict[str, int]) -> tuple[dict[str, float], dict[str, float]]:
    """`no_sharing_control` in a worker process (it runs beside the joint optimisation)."""
    set_single_thread()
    records = load(folders)
    for (name, record), (theta, buffers) in zip(records.items(), references):
        record.reference = Reference(torch.as_tensor(theta), {k: torch.as_tensor(b) for k, b in buffers.items()})
        record.batches = batches[name]
    return no_sharing_control(records, OptimizeConfig(**config), page_size)
