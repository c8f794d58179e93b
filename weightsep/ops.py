"""The page-table gather as a custom op: flat weights = pages[page_table].reshape(-1)[:n_weights].

Two backends, chosen once on first use: "extension" (custom_op/gather.cpp, plus gather_cuda.cu when
CUDA is available, built with torch.utils.cpp_extension into `cache_dir()/build` and registered as
`torch.ops.weightsep.gather_pages` / `scatter_add_pages`) or "torch" (plain indexing, native
autograd). The setting is auto | torch | extension, from `set_backend` or WEIGHTSEP_OPS_BACKEND;
"auto" falls back to "torch" when the build fails and logs why, once.

    from weightsep.ops import gather_pages
    theta = gather_pages(torch.cat([shared_pages, exclusive_pages]), page_table, n_weights)
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import torch

from weightsep.dnn import cache_dir

log = logging.getLogger("weightsep")

SETTINGS = ("auto", "torch", "extension")
SOURCE_DIR = Path(__file__).resolve().parent.parent / "custom_op"
CUDA_ARCH_FLAGS = ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90"]

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

    sources = [str(SOURCE_DIR / "gather.cpp")]
    if torch.cuda.is_available():
        sources.append(str(SOURCE_DIR / "gather_cuda.cu"))
    build = cache_dir() / "build"
    build.mkdir(parents=True, exist_ok=True)
    load(name="weightsep_ops", sources=sources, is_python_module=False, build_directory=str(build), verbose=False,
         extra_cuda_cflags=CUDA_ARCH_FLAGS)
    _register_python_parts()
    _loaded = True


def _register_python_parts() -> None:
    torch.library.register_fake("weightsep::gather_pages")(_gather_fake)
    torch.library.register_fake("weightsep::scatter_add_pages")(_scatter_fake)
    torch.library.register_autograd("weightsep::gather_pages", _gather_backward, setup_context=_gather_setup)
    torch.library.register_autograd("weightsep::scatter_add_pages", _scatter_backward, setup_context=_scatter_setup)


def _gather_fake(pages, page_table, n_weights):
    torch._check(pages.dim() == 2, lambda: "gather_pages: pages must be [rows, page_size]")
    torch._check(page_table.dtype == torch.int64, lambda: "gather_pages: page_table must be int64")
    return pages.new_empty(n_weights)


def _scatter_fake(grad_flat, page_table, n_rows, page_size):
    torch._check(page_table.dtype == torch.int64, lambda: "scatter_add_pages: page_table must be int64")
    return grad_flat.new_empty(n_rows, page_size)


def _gather_setup(ctx, inputs, output):
    pages, page_table, _ = inputs
    ctx.save_for_backward(page_table)
    ctx.n_rows, ctx.page_size = pages.shape


def _gather_backward(ctx, grad):
    (page_table,) = ctx.saved_tensors
    return torch.ops.weightsep.scatter_add_pages(grad, page_table, ctx.n_rows, ctx.page_size), None, None


def _scatter_setup(ctx, inputs, output):
    grad_flat, page_table, _, _ = inputs
    ctx.save_for_backward(page_table)
    ctx.n_weights = grad_flat.shape[0]


def _scatter_backward(ctx, grad):
    (page_table,) = ctx.saved_tensors
    return torch.ops.weightsep.gather_pages(grad, page_table, ctx.n_weights), None, None, None


def _summary(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[-1] if text else ''}"
