"""Formation: a DNN's flat weight vector <-> fixed-size weight pages, and page tables.

Takes a 1-D vector of `n` weights (a `TemplateNet.theta`, TF order) and returns `[ceil(n / P), P]`
pages, the last one zero-padded; `from_pages` inverts it bit-exactly. A page table maps each
logical page of a DNN to a row of `cat([shared_pages, exclusive_pages])` (the rule: state.py).
Formation sits on the gather op: `materialize` calls weightsep.ops (the custom op, one layer down),
which knows nothing of pages.py; the stages above (state, separation, pack, optimize) come here.

    pages = to_pages(net.theta.detach(), 512)
    theta = materialize(shared_pages, exclusive_pages, page_table, n)
"""
from __future__ import annotations

import torch

from .ops import gather_pages


def n_pages(n_weights: int, page_size: int) -> int:
    """Logical pages of a DNN with `n_weights` weights: ceil(n / P)."""
    return -(-n_weights // page_size)


def to_pages(flat: torch.Tensor, page_size: int) -> torch.Tensor:
    """Cut a 1-D vector into `[ceil(n / P), P]` pages, zero-padding the last one."""
    if flat.dim() != 1:
        raise ValueError(f"to_pages wants a 1-D weight vector, got shape {tuple(flat.shape)}")
    if page_size < 1:
        raise ValueError(f"page size must be positive, got {page_size}")
    n = flat.numel()
    padded = flat.new_zeros(n_pages(n, page_size) * page_size)
    padded[:n] = flat
    return padded.view(-1, page_size)


def from_pages(pages: torch.Tensor, n_weights: int) -> torch.Tensor:
    """Pages back to the first `n_weights` entries of the flat vector (drops the padding)."""
    return pages.reshape(-1)[:n_weights]


def materialize(
    shared_pages: torch.Tensor, exclusive_pages: torch.Tensor, page_table: torch.Tensor, n_weights: int
) -> torch.Tensor:
    """Resolve a page table into a DNN's flat weight vector (differentiable w.r.t. both page stores).

    One `ops.gather_pages` call: the C++/CUDA kernel with its scatter-add backward when the extension
    is built (gather + gradient faster than plain indexing on CPU: docs/results.md#code-notes),
    else plain indexing."""
    store = torch.cat([shared_pages, exclusive_pages]) if exclusive_pages.numel() else shared_pages
    return gather_pages(store, page_table, n_weights)
