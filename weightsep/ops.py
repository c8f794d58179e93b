"""The page-table gathers as custom ops: flat weights = pages[page_table].reshape(-1)[:n_weights], and
the same over quantised pages, dequantising as it copies (`gather_dequant_into`).

Two backends, chosen once on first use: "extension" (custom_op/gather.cpp and gather_dequant.cpp,
plus gather_cuda.cu when CUDA is available, built with torch.utils.cpp_extension into
`cache_dir()/build` and registered as `torch.ops.weightsep.gather_pages` / `scatter_add_pages` /
`gather_pages_into` / `gather_dequant_into`) or "torch" (plain indexing, native autograd). The
setting is auto | torch | extension, from `set_backend` or WEIGHTSEP_OPS_BACKEND; "auto" falls back
to "torch" when the build fails and logs why, once. The op layer: below formation (pages.py calls
it), above quant (the formats it dequantises) and paths (where it builds); it imports nothing else.

The dequantising gather reads quantised pages (weightsep.quant's formats) from three buffers that
`dequant_operands` builds: `pages` (uint8: every format's block of rows), `scales` (float32) and
`layout` (int64, on the host: the page size, the int4 group, where each block lies); each page-table
entry is quant.table_entries' (code << TABLE_SHIFT) | row-in-its-block.

    from weightsep.ops import dequant_operands, gather_dequant_into, gather_pages, gather_pages_into
    theta = gather_pages(torch.cat([shared_pages, exclusive_pages]), page_table, n_weights)
    gather_pages_into(page_store, page_table, weight_buffer[:n_weights])   # in place: the switch path
    q = dequant_operands(quant.encode(values, codes, page_scales, group), page_size, group)
    entries = quant.table_entries(page_codes, rows_in_their_blocks)
    gather_dequant_into(q.pages, q.scales, q.layout, entries, weight_buffer[:n_weights])
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from weightsep import quant
from weightsep.paths import cache_dir

log = logging.getLogger("weightsep")

SETTINGS = ("auto", "torch", "extension")
# the repository's custom_op/; a wheel carries it as weightsep/custom_op (pyproject.toml)
_HERE = Path(__file__).resolve().parent
SOURCE_DIR = next((d for d in (_HERE / "custom_op", _HERE.parent / "custom_op") if (d / "gather.cpp").is_file()),
                  _HERE.parent / "custom_op")
CUDA_ARCH_FLAGS = ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90",
                   "-gencode=arch=compute_90,code=compute_90"]  # PTX: newer GPUs JIT it

_setting = os.environ.get("WEIGHTSEP_OPS_BACKEND", "auto")
_backend: str | None = None  # resolved on first use; read it as `ops.BACKEND`
_loaded = False
_lock = threading.Lock()


class ExtensionError(RuntimeError):
    """The extension backend was asked for explicitly and could not be built or loaded."""


def set_backend(name: str) -> None:
    """Choose the backend: "auto" (extension if it builds, else torch), "torch" or "extension".

    "extension" builds now and raises ExtensionError if it cannot."""
    global _setting, _backend
    if name not in SETTINGS:
        raise ValueError(f"unknown ops backend {name!r}; choose one of {SETTINGS}")
    with _lock:
        _setting, _backend = name, None
    _resolve()


def gather_pages(pages: torch.Tensor, page_table: torch.Tensor, n_weights: int) -> torch.Tensor:
    """pages [R, P] (shared rows, then the DNN's exclusive rows), page_table int64 [n_pages] of row
    indices -> flat [n_weights] = pages[page_table].reshape(-1)[:n_weights].

    Differentiable w.r.t. pages; the backward scatter-adds into pages (rows mapped twice get both)."""
    if _resolve() == "extension":
        return torch.ops.weightsep.gather_pages(pages, page_table, n_weights)
    return gather_pages_reference(pages, page_table, n_weights)


def gather_pages_reference(pages: torch.Tensor, page_table: torch.Tensor, n_weights: int) -> torch.Tensor:
    """The pure-torch path (the "torch" backend, and the tests' reference)."""
    return pages[page_table].reshape(-1)[:n_weights]


def gather_pages_into(pages: torch.Tensor, page_table: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """gather_pages(pages, page_table, out.numel()) written into `out` (1-D, contiguous), returned.

    No allocation, so a DNN switch writes a preallocated weight buffer; not differentiable (use
    gather_pages to train). Hot loops bind `gather_into_function()` once instead."""
    gather_into_function()(pages, page_table, out)
    return out


def gather_into_function() -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]:
    """The backend's in-place gather as a bare callable (the op handle itself for the extension):
    the lookups gather_pages_into does per call are a real share of a switch on CPU (docs/results.md#code-notes)."""
    if _resolve() == "extension":
        return torch.ops.weightsep.gather_pages_into.default
    return _gather_into_reference


def _gather_into_reference(pages: torch.Tensor, page_table: torch.Tensor, out: torch.Tensor) -> None:
    n, page_size = out.numel(), pages.shape[1]
    if n > page_table.numel() * page_size:
        raise ValueError(f"gather_pages_into: out has {n} weights, more than {page_table.numel()} pages of {page_size}")
    full = n // page_size
    torch.index_select(pages, 0, page_table[:full], out=out[: full * page_size].view(full, page_size))
    if n > full * page_size:  # a partial last page
        out[full * page_size :].copy_(pages[page_table[full], : n - full * page_size])


ALIGN = 64  # bytes: where each block starts in `pages` (typed views, aligned vector loads)
LAYOUT_SIZE = 2 + 3 * len(quant.FORMATS)  # custom_op/dequant.h's kLayoutSize


@dataclass(frozen=True, eq=False)  # tensors: compared by identity
class DequantOperands:
    """gather_dequant_into's buffers, and typed views into them of each format's rows and scales."""

    pages: torch.Tensor  # uint8: every format's block in quant.FORMATS order, each at a multiple of ALIGN bytes
    scales: torch.Tensor  # float32: the int8 block's one scale a row, then the int4 block's G a row
    layout: torch.Tensor  # int64 [LAYOUT_SIZE] on the host: page_size, group, then (offset, rows, first scale) a format
    rows: dict[str, torch.Tensor]  # every format: [R_f, quant.row_width] of quant.STORAGE[fmt], views of `pages`
    row_scales: dict[str, torch.Tensor]  # int8 [R, 1], int4 [R, G]: views of `scales`


def dequant_operands(encoded: dict[str, tuple], page_size: int, group: int, room: dict[str, int] | None = None,
                     device: torch.device | str | None = None) -> DequantOperands:
    """quant.encode's dict as gather_dequant_into's buffers on `device` (the layout on the host): each
    format's block holds its encoded rows and scales, then `room[fmt]` rows of zeros (where
    execution writes a DNN's exclusive rows, through `rows` and `row_scales`, at a switch)."""
    room = room or {}
    layout, offset, first = [page_size, group], 0, 0
    for fmt in quant.FORMATS:
        n = (len(encoded[fmt][0]) if fmt in encoded else 0) + room.get(fmt, 0)
        layout += [offset, n, first]
        offset += -(-n * quant.row_bytes(fmt, page_size) // ALIGN) * ALIGN
        first += n * quant.scale_count(fmt, page_size, group)
    pages = torch.zeros(offset, dtype=torch.uint8, device=device)
    scales = torch.zeros(first, dtype=torch.float32, device=device)
    layout = torch.tensor(layout, dtype=torch.int64)
    operands = DequantOperands(pages, scales, layout, *dequant_views(pages, scales, layout))
    for fmt, (rows, s) in encoded.items():
        operands.rows[fmt][: len(rows)].copy_(rows)
        if s is not None:
            operands.row_scales[fmt][: len(s)].copy_(s)
    return operands


def dequant_views(pages: torch.Tensor, scales: torch.Tensor,
                  layout: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(rows, row_scales) of DequantOperands: each format's block and scales where `layout` places them."""
    page_size, group, *blocks = layout.tolist()
    rows, row_scales = {}, {}
    for code, fmt in enumerate(quant.FORMATS):
        offset, n, first = blocks[3 * code : 3 * code + 3]
        rows[fmt] = (pages[offset : offset + n * quant.row_bytes(fmt, page_size)].view(quant.STORAGE[fmt])
                     .view(n, quant.row_width(fmt, page_size)))
        count = quant.scale_count(fmt, page_size, group)
        if count:
            row_scales[fmt] = scales[first : first + n * count].view(n, count)
    return rows, row_scales


def gather_dequant_reference(pages: torch.Tensor, scales: torch.Tensor, layout: torch.Tensor, page_table: torch.Tensor,
                             n_weights: int) -> torch.Tensor:
    """float32 [n_weights]: the pages the table names, each dequantised by quant.dequantize_rows (the
    pure-torch path: the "torch" backend, and the tests' reference). Only the used pages are read."""
    page_size, group = layout[:2].tolist()
    if n_weights > page_table.numel() * page_size:
        raise ValueError(f"gather_dequant_into: {n_weights} weights do not fit in {page_table.numel()} pages of {page_size}")
    entries = page_table[: -(-n_weights // page_size)]
    codes, rows = entries >> quant.TABLE_SHIFT, entries & ((1 << quant.TABLE_SHIFT) - 1)
    if bool(((codes < 0) | (codes >= len(quant.FORMATS))).any()):
        raise ValueError(f"gather_dequant_into: page-table codes must be 0..{len(quant.FORMATS) - 1} ({quant.FORMATS})")
    blocks, block_scales = dequant_views(pages, scales, layout)
    out = torch.empty(len(entries), page_size, device=page_table.device)
    for code, fmt in enumerate(quant.FORMATS):
        where = (codes == code).nonzero().flatten()
        if len(where):
            r = rows[where]
            s = block_scales[fmt][r] if fmt in block_scales else None
            out[where] = quant.dequantize_rows(fmt, blocks[fmt][r], s, page_size, group)
    return out.reshape(-1)[:n_weights]


def gather_dequant_into(pages: torch.Tensor, scales: torch.Tensor, layout: torch.Tensor, page_table: torch.Tensor,
                        out: torch.Tensor) -> torch.Tensor:
    """gather_dequant_reference(..., out.numel()) written into `out` (float32, 1-D, contiguous), returned.

    pages, scales, layout: a DequantOperands' (`dequant_operands`); page_table: int64
    quant.table_entries. Not differentiable; hot loops bind `gather_dequant_function()` once."""
    gather_dequant_function()(pages, scales, layout, page_table, out)
    return out


def gather_dequant_function() -> Callable[..., None]:
    """The backend's dequantising in-place gather as a bare callable (the op handle for the extension)."""
    if _resolve() == "extension":
        return torch.ops.weightsep.gather_dequant_into.default
    return _gather_dequant_into_reference


def _gather_dequant_into_reference(pages, scales, layout, page_table, out) -> None:
    out.copy_(gather_dequant_reference(pages, scales, layout, page_table, out.numel()))


def __getattr__(name: str):
    if name == "BACKEND":
        return _resolve()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _resolve() -> str:
    global _backend
    if _backend is not None:
        return _backend
    with _lock:
        if _backend is None:
            _backend = _choose(_setting)
    return _backend


def _choose(setting: str) -> str:
    if setting not in SETTINGS:
        raise ValueError(f"WEIGHTSEP_OPS_BACKEND={setting!r}; choose one of {SETTINGS}")
    if setting == "torch":
        log.info("weightsep ops: torch backend (set explicitly)")
        return "torch"
    try:
        _load_extension()
    except Exception as exc:  # a missing compiler or ninja, a compile error, a failed dlopen
        if setting == "extension":
            raise ExtensionError(f"cannot build the weightsep_ops extension: {exc}") from exc
        log.warning("weightsep ops: torch backend (extension unavailable: %s)", _summary(exc))
        return "torch"
    return "extension"


def _load_extension() -> None:
    global _loaded
    if _loaded:
        return
    from torch.utils.cpp_extension import load

    sources = [str(SOURCE_DIR / "gather.cpp"), str(SOURCE_DIR / "gather_dequant.cpp")]
    if torch.cuda.is_available():
        sources.append(str(SOURCE_DIR / "gather_cuda.cu"))
    build = cache_dir() / "build"
    build.mkdir(parents=True, exist_ok=True)
    if not (build / "weightsep_ops.so").exists():  # a minute's silence otherwise; rebuilds after edits stay quiet
        log.warning("weightsep ops: building custom_op/ into %s (~1 min, once)", build)
    load(name="weightsep_ops", sources=sources, is_python_module=False, build_directory=str(build), verbose=False,
         extra_cflags=["-O3"], extra_cuda_cflags=["-O3", *CUDA_ARCH_FLAGS])  # cpp_extension.load adds no -O
    _register_python_parts()
    _loaded = True


def _register_python_parts() -> None:
    torch.library.register_fake("weightsep::gather_pages")(_gather_fake)
    torch.library.register_fake("weightsep::scatter_add_pages")(_scatter_fake)
    torch.library.register_fake("weightsep::gather_pages_into")(_gather_into_fake)
    torch.library.register_fake("weightsep::gather_dequant_into")(_gather_dequant_into_fake)


def _gather_fake(pages, page_table, n_weights):
    torch._check(pages.dim() == 2, lambda: "gather_pages: pages must be [rows, page_size]")
    torch._check(page_table.dtype == torch.int64, lambda: "gather_pages: page_table must be int64")
    return pages.new_empty(n_weights)


def _gather_into_fake(pages, page_table, out):
    torch._check(pages.dim() == 2, lambda: "gather_pages_into: pages must be [rows, page_size]")
    torch._check(out.dim() == 1, lambda: "gather_pages_into: out must be 1-D")


def _gather_dequant_into_fake(pages, scales, layout, page_table, out):
    torch._check(layout.numel() == LAYOUT_SIZE, lambda: f"gather_dequant_into: layout must hold {LAYOUT_SIZE} values")
    torch._check(pages.dim() == scales.dim() == out.dim() == 1,
                 lambda: "gather_dequant_into: pages, scales and out must be 1-D")


def _scatter_fake(grad_flat, page_table, n_rows, page_size):
    torch._check(page_table.dtype == torch.int64, lambda: "scatter_add_pages: page_table must be int64")
    return grad_flat.new_empty(n_rows, page_size)


def _summary(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[-1] if text else ''}"
