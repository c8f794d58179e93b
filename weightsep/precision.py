"""Precision: which format (quant.py) each page of a packed state is held in, by a named policy.

A policy runs after packing and before optimisation, so the optimiser trains the pages for the
formats they will run in (optimize.py fake-quantises them). `POLICIES`:

* a format name ("float32", "float16", "bfloat16", "int8", "int4"): every page in it, unless the
  page class is given its own (`shared_dtype`, `exclusive_dtype`);
* "fisher": formats chosen page by page from `fisher_formats` under a byte budget (`budget_kib`:
  the whole packed store, i.e. page values, scales and page tables). Every page starts in the
  cheapest format; then, greedily, the upgrade that removes the most Fisher-weighted squared
  rounding error per byte it costs is taken while it fits:

      error(page, format) = sum_j F_j (q_format(w)_j - w_j)^2

  with F the page's Fisher (a shared page's accumulated Fisher, an exclusive page its DNN's): the
  second-order estimate of the loss a page's rounding adds. Pages that matter get more bits.

A page promoted from shared to exclusive during optimisation keeps the format of the shared page it
was copied from; the "fisher" policy reserves the spare pages' bytes at the dearest format it gives
a shared page.

    state = assign(state, PrecisionConfig(precision="fisher", budget_kib=200), spare_pages=10)
    packed_bytes(state)
"""
from __future__ import annotations

import heapq
from dataclasses import asdict, dataclass

import torch

from . import quant
from .checks import at_least, finite, one_of, positive, typed
from .config_help import opt
from .formats import QuantizedPages
from .pages import n_pages, to_pages
from .state import PAGE_TABLE_DTYPE, PackedState, exclusive_slots, is_shared

POLICIES = (*quant.FORMATS, "fisher")
VERSION = 1  # PrecisionConfig's: bump when a field's meaning changes
TABLE_ENTRY_BYTES = PAGE_TABLE_DTYPE.itemsize  # as the store and the execution hold them


@dataclass(frozen=True)
class PrecisionConfig:
    precision: str = opt("float32", 'a format for every page, or "fisher" (formats by Fisher under budget_kib)')
    shared_dtype: str | None = opt(None, "format policies: the shared pages' format (default: `precision`)")
    exclusive_dtype: str | None = opt(None, "format policies: the exclusive pages' format (default: `precision`)")
    budget_kib: float | None = opt(None, "fisher: the packed store's bytes (pages, scales, page tables), KiB")
    fisher_formats: str = opt("int4,int8,float16", "fisher: the formats it chooses among")
    group: int = opt(quant.DEFAULT_GROUP, "int4: weights per scale")
    version: int = opt(VERSION, "of the stored copy (a quantised format's `policy`); a copy without one is version 1")

    def __post_init__(self):
        typed(self)
        if self.version != VERSION:
            raise ValueError(f"PrecisionConfig version {self.version} is not this code's version {VERSION}")
        one_of(self, "precision", POLICIES)
        for name in ("shared_dtype", "exclusive_dtype"):
            if getattr(self, name) is not None:
                one_of(self, name, quant.FORMATS)
        finite(self)
        positive(self, "budget_kib")
        at_least(self, "group", 1)
        unknown = [f for f in self.formats if f not in quant.FORMATS]
        if unknown or not self.formats:
            raise ValueError(f"--fisher-formats {self.fisher_formats!r}: choose among {', '.join(quant.FORMATS)}")
        if self.precision == "fisher":
            if self.budget_kib is None:
                raise ValueError("--precision fisher needs --budget-kib (the packed store's size in KiB)")
            if self.shared_dtype or self.exclusive_dtype:
                raise ValueError("--shared-dtype/--exclusive-dtype go with a format --precision, not fisher")
        elif self.budget_kib is not None:
            raise ValueError(f"--budget-kib is for --precision fisher, not {self.precision}")

    @property
    def formats(self) -> tuple[str, ...]:
        return tuple(f.strip() for f in self.fisher_formats.split(",") if f.strip())

    @property
    def is_float32(self) -> bool:
        """Today's store: every page float32, no Precision at all."""
        return self.precision == "float32" and self.shared_dtype in (None, "float32") and \
            self.exclusive_dtype in (None, "float32")


def assign(state: PackedState, config: PrecisionConfig, spare_pages: int = 0) -> PackedState:
    """A copy of `state` with each page in the format `config` gives it, its values rounded to it
    (`state` is not modified). `spare_pages`: pages the optimiser may promote later (budget)."""
    if config.is_float32:
        return state
    state.format.check_float32("this packed state is quantised already; quantise a float32 store")
    if config.precision == "fisher":
        shared_codes, exclusive_codes = _fisher_codes(state, config, spare_pages)
    else:
        code = lambda fmt: quant.CODE[fmt or config.precision]  # noqa: E731
        shared_codes = torch.full((state.n_shared,), code(config.shared_dtype), dtype=torch.uint8)
        exclusive_codes = {n: torch.full((v.n_exclusive,), code(config.exclusive_dtype), dtype=torch.uint8)
                           for n, v in state.vnns.items()}
    return in_formats(state, shared_codes, exclusive_codes, config.group, asdict(config))


def in_formats(state: PackedState, shared_codes: torch.Tensor, exclusive_codes: dict[str, torch.Tensor],
               group: int, policy: dict) -> PackedState:
    """A new state: `state`'s pages rounded to these formats (a quant.FORMATS code per page), with their
    scales, validated; `policy` records how the formats were chosen."""
    fmt = QuantizedPages.of(shared_codes, exclusive_codes, group, policy)
    shared, exclusive, fmt = fmt.rounded(state.shared_pages, {n: v.exclusive_pages for n, v in state.vnns.items()})
    return state.with_pages(shared, exclusive, format=fmt)


def page_fisher(state: PackedState) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Fisher per weight of each page: the shared pages' accumulated Fisher [S, P]; each DNN's
    exclusive pages [E, P], from its own Fisher at the logical pages they hold."""
    P, S = state.page_size, state.n_shared
    exclusive = {}
    for name, vnn in state.vnns.items():
        fisher = torch.zeros(vnn.n_exclusive, P)
        mine = ~is_shared(vnn.page_table, S)
        fisher[exclusive_slots(vnn.page_table[mine], S)] = to_pages(vnn.fisher, P)[mine]
        exclusive[name] = fisher
    return state.shared_fisher, exclusive


def table_bytes(state: PackedState) -> int:
    """The bytes of a store's page tables: one entry per logical page of each DNN."""
    return sum(v.n_pages for v in state.vnns.values()) * TABLE_ENTRY_BYTES


def tables_bytes_for(sizes: list[int], page_size: int) -> int:
    """`table_bytes` of a store that would hold DNNs of `sizes` weights in pages of `page_size`."""
    return sum(n_pages(n, page_size) for n in sizes) * TABLE_ENTRY_BYTES


def _fisher_codes(state: PackedState, config: PrecisionConfig,
                  spare_pages: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    P, group = state.page_size, config.group
    formats = sorted(config.formats, key=lambda f: (quant.page_bytes(f, P, group), -quant.BITS[f]))
    shared_f, exclusive_f = page_fisher(state)
    values = torch.cat([state.shared_pages, *(v.exclusive_pages for v in state.vnns.values())])
    fisher = torch.cat([shared_f, *exclusive_f.values()])
    R = values.shape[0]
    cost = torch.stack([  # [formats, R]: Fisher-weighted squared rounding error of each page in each format
        (fisher * (quant.quantize(values, torch.full((R,), quant.CODE[f], dtype=torch.uint8), group)[0]
                   - values) ** 2).sum(1, dtype=torch.float64) for f in formats]).tolist()
    size = [quant.page_bytes(f, P, group) for f in formats]
    S = state.n_shared
    # a promoted page keeps its shared page's format: the spare pages are reserved at the dearest
    # format any shared page has, so an upgrade that raises that maximum pays for the spare pages too
    budget = config.budget_kib * 1024 - table_bytes(state)
    used = R * size[0] + spare_pages * size[0]
    if used > budget:
        need = (used + table_bytes(state)) / 1024
        raise ValueError(f"--budget-kib {config.budget_kib:g}: the packed store needs at least {need:,.1f} KiB "
                         f"with every page {formats[0]} ({R} pages and {spare_pages} spare pages to promote, "
                         "and the page tables)")
    level = [0] * R
    shared_max = 0  # the dearest level of any shared page

    def extra(r: int, j: int) -> int:
        """Bytes page r costs more at level j, the spare pages' reservation included."""
        more = size[j] - size[level[r]]
        if r < S and j > shared_max:
            more += spare_pages * (size[j] - size[shared_max])
        return more

    def best_upgrade(r: int):
        """The next format for page r with the most error removed per byte, as a heap entry."""
        k = level[r]
        gains = [((cost[k][r] - cost[j][r]) / extra(r, j), j) for j in range(k + 1, len(formats))
                 if size[j] > size[k] and cost[j][r] < cost[k][r]]
        if gains:
            gain, j = max(gains)
            return (-gain, r, j)
        return None

    heap = [e for r in range(R) if (e := best_upgrade(r))]
    heapq.heapify(heap)
    while heap:
        _, r, j = heapq.heappop(heap)
        if used + extra(r, j) > budget:
            continue  # too dear now; a smaller upgrade of another page may still fit
        used += extra(r, j)
        level[r] = j
        if r < S:
            shared_max = max(shared_max, j)
        if e := best_upgrade(r):
            heapq.heappush(heap, e)
    codes = torch.tensor([quant.CODE[formats[k]] for k in level], dtype=torch.uint8)
    out, start = {}, state.n_shared
    for name, vnn in state.vnns.items():
        out[name] = codes[start : start + vnn.n_exclusive]
        start += vnn.n_exclusive
    return codes[: state.n_shared], out


def format_counts(state: PackedState) -> dict[str, int]:
    """Pages per format, over the shared pages and every DNN's exclusive pages."""
    return state.format.counts(state)


def packed_bytes(state: PackedState) -> dict[str, int]:
    """The packed store's bytes: page values and scales per format, and the page tables."""
    return {**state.format.bytes_by_format(state), "page_tables": table_bytes(state)}
