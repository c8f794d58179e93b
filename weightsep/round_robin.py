"""The published optimisers: "round-robin" (docs/algorithms.md §3.5) and "sequential" (one round).

For `rounds` rounds, each DNN in turn materialises its weights, trains `steps_per_turn` Adam steps
on cross-entropy + lambda * overlap loss (the other DNNs' Fisher times the squared distance to their
last weights on the pages they share), then writes its weights back into its shared and exclusive
pages. One DNN at a time, each turn on the pages the last one left: it runs on one process.

Round-robin turns keep the DNNs that are not trained safe: DNNs given in `tasks` but not in
`dnns` are *watched*. A turn after which a watched DNN's validation accuracy lies more than
`max_harm` percentage points below where it was before the first turn is undone and logged in
`History.rejected` (`train X` trains X alone and watches every DNN it shares pages with: an
update that helps X by wrecking them is not kept).

    round_robin(PageOptimizer(state, tasks, OptimizeConfig(optimizer="round-robin", rounds=2)))
"""
from __future__ import annotations

import warnings

import torch

from .page_optimizer import PageOptimizer, StepUndo, _finite
from .pages import to_pages
from .progress import tqdm
from .state import exclusive_slots, is_shared


def _overlap_terms(po: PageOptimizer, name: str, last: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Per weight of `name`'s flat vector: sums over the other DNNs sharing that position of F_o,
    F_o w_o and F_o w_o^2, and how many of them have F_o > 0.

    The overlap loss sum_i mean_o F_o[i] (w[i] - w_o[i])^2 (zero terms left out of the mean, as
    the published code computes it) expands into these, so they are computed once per turn.
    """
    S, P = po.state.n_shared, po.state.page_size
    me = po.vnns[name]
    on_shared = is_shared(me.page_table, S)
    sums = torch.zeros(4, me.page_table.numel(), P)
    for other, vnn in po.vnns.items():
        if other == name:
            continue
        by_shared = torch.zeros(2, S, P)  # the other DNN's Fisher and weights, at their shared pages
        theirs = is_shared(vnn.page_table, S)
        by_shared[0, vnn.page_table[theirs]] = to_pages(vnn.fisher, P)[theirs]
        by_shared[1, vnn.page_table[theirs]] = to_pages(last[other], P)[theirs]
        f, w = torch.zeros(2, me.page_table.numel(), P)
        f[on_shared], w[on_shared] = by_shared[:, me.page_table[on_shared]]
        sums += torch.stack([f, f * w, f * w * w, (f > 0).float()])
    return tuple(s.reshape(-1)[: me.n_weights] for s in sums)


def overlap_loss(w: torch.Tensor, terms: tuple[torch.Tensor, ...], lam: float) -> torch.Tensor:
    """lam * sum_i mean_o F_o[i] (w[i] - w_o[i])^2 over the other DNNs o sharing position i (with
    F_o[i] > 0), from `_overlap_terms`, expanded so the others' terms are computed once per turn."""
    f_sum, fw_sum, fw2_sum, count = terms
    return (lam / count.clamp_min(1.0) * (f_sum * w * w - 2 * fw_sum * w + fw2_sum)).sum()


def _harmed(po: PageOptimizer, before: dict[str, float]) -> dict[str, list[float]]:
    """The watched DNNs whose validation accuracy fell more than `max_harm` pp below `before`."""
    now = {n: po.val_accuracy(n, po.theta(n)) for n in po.watched}
    return {n: [before[n], now[n]] for n in po.watched if 100 * (before[n] - now[n]) > po.config.max_harm}


def round_robin(po: PageOptimizer) -> None:
    """Validation is checked after each round; with one round (sequential) after each turn, so the
    curve shows every DNN's turn and what it did to the DNNs trained before it."""
    cfg, names = po.config, po.names
    check_each_turn = cfg.rounds == 1
    last = {n: po.theta(n).detach().clone() for n in po.vnns}  # each DNN's weights after its last turn
    dnn_batches = 0
    po.validate(0)
    watched = {n: po.val_accuracy(n, po.theta(n)) for n in po.watched}
    bar = tqdm(total=cfg.rounds * len(names), desc=f"{cfg.optimizer} optimisation", unit="turn", leave=False,
               disable=not po.progress)
    for _ in range(cfg.rounds):
        overlap = 0.0
        for name in names:
            terms = _overlap_terms(po, name, last)
            w = po.theta(name).detach().clone().requires_grad_(True)
            opt = torch.optim.Adam([w], lr=cfg.learning_rate)  # a fresh Adam per turn, as the published -mode=t
            before_turn = po.snapshot() if po.watched else None
            for _ in range(cfg.steps_per_turn):
                loss = po.task_loss(name, po.deployed(name, w)) + overlap_loss(w, terms, cfg.lam)
                if not torch.isfinite(loss):
                    po.drop(name, "loss")
                    continue
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if not _finite(w.grad):
                    po.drop(name, "gradient")
                    continue
                undo = StepUndo(opt)
                opt.step()
                if not _finite(w):
                    undo.undo()
                    po.history.rolled_back += 1
                    warnings.warn(f"DNN {name!r}: weights became non-finite; step rolled back",
                                  RuntimeWarning, stacklevel=2)
            dnn_batches += cfg.steps_per_turn * po.batches_per_step[name]
            overlap += float(overlap_loss(w.detach(), terms, 1.0)) / len(names)
            write_back(po, name, w.detach())
            harmed = _harmed(po, watched)
            if harmed:
                po.restore(before_turn)
                po.history.rejected.append((name, harmed))
            else:
                last[name] = w.detach().clone()
            bar.update()
            if check_each_turn:
                po.validate(dnn_batches)
        po.history.overlap.append(overlap)
        if not check_each_turn:
            po.validate(dnn_batches)
    bar.close()


@torch.no_grad()
def write_back(po: PageOptimizer, name: str, theta: torch.Tensor) -> None:
    """Store a DNN's trained weights into its shared and exclusive pages (overwriting shared content).

    The padding of a DNN's last page keeps the page's current content: on a shared page those
    positions may hold another DNN's weights.
    """
    vnn, S = po.vnns[name], po.state.n_shared
    flat = torch.cat([po.shared, po.exclusive[name]])[vnn.page_table].reshape(-1)
    flat[: vnn.n_weights] = theta
    pages = flat.view(-1, po.state.page_size)
    on_shared = is_shared(vnn.page_table, S)
    po.shared[vnn.page_table[on_shared]] = pages[on_shared]
    po.exclusive[name][exclusive_slots(vnn.page_table[~on_shared], S)] = pages[~on_shared]

