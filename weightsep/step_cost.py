"""How much each DNN trains per joint step: its FLOPs per sample, its batches per step (cheap DNNs
take extra ones, water-filling on FLOPs) and the per-step cost the ranks are balanced on.

    per_step = step_batches(tasks, OptimizeConfig())   # {"mnist": 1, "letters": 3, ...}
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.utils.flop_counter import FlopCounterMode

from .flat import evaluating
from .group import Group

if TYPE_CHECKING:
    from .optimize import OptimizeConfig
    from .page_optimizer import Task


def flops_per_sample(model: torch.nn.Module) -> int:
    """FLOPs of one sample's forward pass, counted by torch (not timed, so the same on every machine,
    and without data: a rank can count DNNs whose data it does not hold)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad(), evaluating(model):
        model(torch.zeros(1, *model.input_shape))
    return counter.get_total_flops()


def batches_per_step(flops: dict[str, int], extra_compute: float, max_batches: int) -> dict[str, int]:
    """One batch per step for each DNN, plus extra ones for the cheapest: water-filling on FLOPs
    (`flops`: FLOPs per sample by DNN).

    Each extra batch goes to the DNN with the fewest FLOPs per step so far (ties by name), while
    the extra FLOPs stay within `extra_compute` of one batch of every DNN and no DNN takes more than
    `max_batches`. A DNN's batches in one step form one larger batch."""
    count = {name: 1 for name in flops}
    allowance = extra_compute * sum(flops.values())
    while open_ := [n for n in flops if count[n] < max_batches]:
        name = min(open_, key=lambda n: (count[n] * flops[n], n))
        if flops[name] > allowance:
            break
        allowance -= flops[name]
        count[name] += 1
    return count


def step_batches(tasks: dict[str, Task], config: OptimizeConfig, group: Group | None = None) -> dict[str, int]:
    """Each DNN's batches per step: its task's own `batches` if set, else `batches_per_step` for an
    optimiser with that rule (the joint one) and one for the others. FLOPs are counted only when some task
    needs the rule. Over several ranks `tasks` are this rank's and the answer covers every rank's DNNs."""
    group = group or Group.current()
    needed = group.any(config.spec.batches_rule and any(task.batches is None for task in tasks.values()))
    flops = group.all_merged({n: flops_per_sample(t.model) for n, t in tasks.items()}) if needed else {}
    rule = batches_per_step(flops, config.extra_compute, config.max_batches) if needed else {}
    return group.all_merged({n: t.batches or rule.get(n, 1) for n, t in tasks.items()})


def planned_batches(models: dict[str, torch.nn.Module], config: OptimizeConfig) -> tuple[dict[str, int], dict[str, float]]:
    """Each DNN's batches per step by the optimiser's rule (`batches_per_step`, or one each), and the
    forward FLOPs it adds to a step (per sample x samples per step): what `distributed.assign` balances.
    Counted, not timed, so every rank and every run computes the same split, and a command gives the
    same pages each time it runs (a timed split follows the machine's noise; docs/distributed.md)."""
    flops = {name: flops_per_sample(model) for name, model in models.items()}
    per_step = batches_per_step(flops, config.extra_compute, config.max_batches) if config.spec.batches_rule else {}
    per_step = {name: per_step.get(name, 1) for name in flops}
    return per_step, {name: float(f * config.batch_size * per_step[name]) for name, f in flops.items()}
