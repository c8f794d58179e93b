"""Page formats: how a packed state's pages are held, one class per representation.

A `PackedState` holds one `PageFormat` as `state.format`: `Float32Pages` (every page float32, the
store as it always was) or `QuantizedPages` (each page in a `quant.FORMATS` format, with its
scales; the state's page tensors hold the dequantised float32 values, exactly on their formats'
grids). Both answer the same interface, so no stage asks which one it has:

* weights as run: `as_run` (the optimiser's training view: pages fake-quantised to their formats),
  `deployed` (flat weights rounded to the formats of the pages they live on), `promoted` (a shared
  page copied to a DNN's exclusive pages keeps its format), `rounded` (master pages -> the pages
  stored and run, with their scales), `logical_codes` (each of a DNN's logical pages' format);
* store encoding: `encode` / `file_tensors` / `decode` for a page block's tensors in a file, and
  `manifest` for the manifest's fields (`from_manifest` reads them back);
* execution placement: `placement` puts the pages on a device for `execution.PackedModel`;
* byte counts: `counts` (pages per format) and `bytes_by_format`;
* bookkeeping: `validate`, `without` (a DNN removed), `shard` (a rank's part), `check_float32`
  (what only a float32 store allows), `check_kernel`.

    fmt = QuantizedPages.of(shared_codes, exclusive_codes, group=64, policy={})
    shared, exclusive, fmt = fmt.rounded(state.shared_pages, {n: v.exclusive_pages for n, v in state.vnns.items()})
    state = state.with_pages(shared, exclusive, format=fmt)
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch

from . import quant
from .invariants import check_count, check_json, check_tensor, check_values
from .ops import dequant_operands, gather_dequant_function, gather_into_function, gather_pages
from .pages import from_pages, to_pages

if TYPE_CHECKING:
    from .state import PackedState

KERNELS = ("ops", "index_select")  # the float32 gather: weightsep.ops.gather_pages_into, or torch.index_select(out=)
FLOAT_TENSORS = {"shared_pages": "shared", "exclusive_pages": "exclusive"}  # a page block's file tensor -> block name
MANIFEST_KEY = "precision"  # the manifest field of a quantised store (format 3): int4 group and policy
QUANTISED_SINCE = 3  # the store format version that may hold quantised pages


class PageFormat(ABC):
    """How a state's pages are held (see the module doc). Shared pages are "block" `None`, a DNN's
    exclusive pages the block of its name."""

    group: int  # int4: weights per scale

    # -- bookkeeping

    @abstractmethod
    def validate(self, state: PackedState) -> None:
        """ValueError unless the state's page values fit this format (after the state's own checks)."""

    @abstractmethod
    def without(self, name: str) -> PageFormat:
        """This format less DNN `name`'s block."""

    @abstractmethod
    def shard(self, held: Collection[str]) -> PageFormat:
        """A rank's part: the blocks of the DNNs not `held` emptied (their pages are not held)."""

    @abstractmethod
    def check_float32(self, refusal: str) -> None:
        """ValueError(`refusal`) unless every page is float32 (adding a DNN, assigning formats)."""

    @abstractmethod
    def check_kernel(self, kernel: str) -> None:
        """ValueError unless execution can gather these pages with `kernel` (`KERNELS`)."""

    # -- weights as run

    @abstractmethod
    def as_run(self, shared: torch.Tensor, exclusive: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(shared, exclusive) master pages as DNN `name` runs them: its training view
        (fake-quantised: rounded forward, straight-through backward)."""

    @abstractmethod
    def logical_codes(self, name: str, page_table: torch.Tensor) -> torch.Tensor:
        """The format code (quant.CODE) of each of DNN `name`'s logical pages, by its page table."""

    @abstractmethod
    def deployed(self, name: str, w: torch.Tensor, page_table: torch.Tensor, page_size: int) -> torch.Tensor:
        """DNN `name`'s flat weights `w` rounded page by page to the formats of the pages they live on
        (a last page's padding is taken as zeros)."""

    @abstractmethod
    def promoted(self, name: str, shared_rows: torch.Tensor) -> PageFormat:
        """The format after shared pages `shared_rows` are copied to new exclusive pages of `name`:
        a promoted page keeps its shared page's format (a training format: `rounded` makes scales)."""

    @abstractmethod
    def rounded(self, shared: torch.Tensor, exclusive: dict[str, torch.Tensor]
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor], PageFormat]:
        """(shared, exclusive, format): master pages rounded to their formats, and the format that
        describes them (scales included). A DNN's formats beyond its pages (a shard's DNN not held) are
        dropped."""

    # -- store encoding

    @abstractmethod
    def encode(self, tensor: str, values: torch.Tensor, block: str | None = None) -> dict[str, torch.Tensor]:
        """A page block's tensors in a store file: `tensor` ("shared_pages"/"exclusive_pages") as held."""

    @abstractmethod
    def file_tensors(self, names: tuple[str, ...], entry: dict) -> tuple[str, ...]:
        """The tensor names a file of `names` holds in this format (`entry`: its manifest entry)."""

    @abstractmethod
    def decode(self, tensor: str, tensors: dict[str, torch.Tensor], page_size: int, what: str,
               block: str | None = None) -> torch.Tensor:
        """Inverse of `encode`: the block's float32 values; a format being read records its codes and
        scales (ValueError naming `what` if they do not fit)."""

    @abstractmethod
    def manifest(self) -> dict:
        """The manifest's fields for this format (none for float32)."""

    # -- bytes

    @abstractmethod
    def counts(self, state: PackedState) -> dict[str, int]:
        """Pages per format, over the shared pages and every DNN's exclusive pages."""

    def bytes_by_format(self, state: PackedState) -> dict[str, int]:
        """Page values and scales per format, as the store holds them."""
        return {f: n * quant.page_bytes(f, state.page_size, self.group) for f, n in self.counts(state).items()}

    # -- execution

    @abstractmethod
    def placement(self, state: PackedState, device: torch.device, host: Callable, kernel: str) -> Placement:
        """The pages on `device` (level 1 there once, each DNN's level 2 in host memory via `host`)."""


@dataclass(frozen=True)
class Float32Pages(PageFormat):
    """Every page float32: what the optimiser trains is what is stored and run."""

    group: ClassVar[int] = quant.DEFAULT_GROUP  # no scales: page bytes do not depend on it

    def validate(self, state: PackedState) -> None:
        return None

    def without(self, name: str) -> Float32Pages:
        return self

    def shard(self, held: Collection[str]) -> Float32Pages:
        return self

    def check_float32(self, refusal: str) -> None:
        return None

    def check_kernel(self, kernel: str) -> None:
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")

    def as_run(self, shared, exclusive, name):
        return shared, exclusive

    def logical_codes(self, name, page_table):
        return torch.full((len(page_table),), quant.CODE["float32"], dtype=torch.uint8)

    def deployed(self, name, w, page_table, page_size):
        return w

    def promoted(self, name, shared_rows):
        return self

    def rounded(self, shared, exclusive):
        return shared, exclusive, self

    def encode(self, tensor, values, block=None):
        return {tensor: values}

    def file_tensors(self, names, entry):
        return names

    def decode(self, tensor, tensors, page_size, what, block=None):
        return tensors[tensor]

    def manifest(self) -> dict:
        return {}

    def counts(self, state):
        return {"float32": state.n_shared + sum(v.n_exclusive for v in state.vnns.values())}

    def placement(self, state, device, host, kernel):
        return Float32Placement(state, device, host, kernel)


FLOAT32 = Float32Pages()


@dataclass(eq=False)  # tensors have no single truth value: compare fields explicitly
class QuantizedPages(PageFormat):
    """Each page's format (a `quant.FORMATS` code) and scales, for the shared pages and every DNN's
    exclusive pages. The state's page tensors hold the dequantised float32 values, exactly on their
    formats' grids (checked): what every stage reads is what the device runs."""

    group: int  # int4: weights per scale
    shared_codes: torch.Tensor | None  # uint8 [S] (None only while a store is read)
    shared_scales: torch.Tensor | None  # float32 [S, G], G = ceil(P / group) (quant.py: which columns mean what)
    exclusive_codes: dict[str, torch.Tensor] = field(default_factory=dict)  # DNN -> uint8 [E]
    exclusive_scales: dict[str, torch.Tensor] = field(default_factory=dict)  # DNN -> float32 [E, G]
    policy: dict = field(default_factory=dict)  # how the formats were chosen (precision.PrecisionConfig, JSON)

    @classmethod
    def of(cls, shared_codes: torch.Tensor, exclusive_codes: dict[str, torch.Tensor], group: int,
           policy: dict) -> QuantizedPages:
        """A training format (codes, no scales yet): `rounded` gives the pages and their scales."""
        return cls(group, shared_codes, None, dict(exclusive_codes), {}, policy)

    # -- bookkeeping

    def blocks(self, state: PackedState) -> list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(what, values, codes, scales) of the shared block and each DNN's exclusive block."""
        return [("shared pages", state.shared_pages, self.shared_codes, self.shared_scales),
                *((f"DNN {n!r}: exclusive pages", v.exclusive_pages, self.exclusive_codes.get(n),
                   self.exclusive_scales.get(n)) for n, v in state.vnns.items())]

    def validate(self, state: PackedState) -> None:
        check_count(self.group, "precision: group", 1)
        if set(self.exclusive_codes) != set(state.vnns) or set(self.exclusive_scales) != set(state.vnns):
            raise ValueError(f"precision: exclusive formats are given for {sorted(self.exclusive_codes)}, "
                             f"scales for {sorted(self.exclusive_scales)}; the DNNs are {sorted(state.vnns)}")
        check_json(self.policy, "precision: policy")
        G = quant.n_groups(state.page_size, self.group)
        for what, values, codes, scales in self.blocks(state):
            check_tensor(codes, f"precision: {what}: codes", torch.uint8, 1)
            check_tensor(scales, f"precision: {what}: scales", torch.float32, 2)
            if codes.numel() != values.shape[0] or list(scales.shape) != [values.shape[0], G]:
                raise ValueError(f"precision: {what}: {values.shape[0]} pages, {codes.numel()} codes and scales "
                                 f"{list(scales.shape)} (expected [{values.shape[0]}, {G}])")
            if codes.numel() and int(codes.max()) >= len(quant.FORMATS):
                raise ValueError(f"precision: {what}: format code {int(codes.max())} is not one of "
                                 f"{len(quant.FORMATS)} ({', '.join(quant.FORMATS)})")
            check_values(scales, f"precision: {what}: scales", nonnegative=True)
            largest = (scales.amax(1) * torch.tensor([quant.QMAX.get(f, 0) for f in quant.FORMATS])[codes.long()]
                       if codes.numel() else scales.new_zeros(0))
            if (largest > quant.MAX_WEIGHT).any():
                page = int((largest > quant.MAX_WEIGHT).nonzero()[0])
                raise ValueError(f"precision: {what}: page {page}'s scale {float(scales[page].max()):.4g} puts its "
                                 f"weights up to {float(largest[page]):.4g}, beyond the +-{quant.MAX_WEIGHT:g} any "
                                 "weight may reach: damaged")
            if codes.numel() and not bool(quant.is_exact(values, codes, scales, self.group).all()):
                page = int((~quant.is_exact(values, codes, scales, self.group)).nonzero()[0])
                raise ValueError(f"precision: {what}: page {page} ({quant.FORMATS[int(codes[page])]}) holds values "
                                 "its format cannot represent with its scales")

    def without(self, name: str) -> QuantizedPages:
        return QuantizedPages(self.group, self.shared_codes, self.shared_scales,
                              {n: c for n, c in self.exclusive_codes.items() if n != name},
                              {n: s for n, s in self.exclusive_scales.items() if n != name}, self.policy)

    def shard(self, held: Collection[str]) -> QuantizedPages:
        keep = {n: slice(None) if n in held else slice(0) for n in self.exclusive_codes}
        return QuantizedPages(self.group, self.shared_codes, self.shared_scales,
                              {n: c[keep[n]] for n, c in self.exclusive_codes.items()},
                              {n: s[keep[n]] for n, s in self.exclusive_scales.items()}, self.policy)

    def check_float32(self, refusal: str) -> None:
        raise ValueError(refusal)

    def check_kernel(self, kernel: str) -> None:
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        if kernel != "ops":
            raise ValueError(f"kernel {kernel!r} gathers float32 pages only; a quantised store runs the dequantising "
                             "gather (kernel='ops')")

    # -- weights as run

    def as_run(self, shared, exclusive, name):
        return (quant.fake_quantize(shared, self.shared_codes, self.group),
                quant.fake_quantize(exclusive, self.exclusive_codes[name], self.group))

    def logical_codes(self, name, page_table):
        return torch.cat([self.shared_codes, self.exclusive_codes[name]])[page_table]

    def deployed(self, name, w, page_table, page_size):
        codes = self.logical_codes(name, page_table)
        return from_pages(quant.fake_quantize(to_pages(w, page_size), codes, self.group), w.numel())

    def promoted(self, name, shared_rows):
        codes = {**self.exclusive_codes, name: torch.cat([self.exclusive_codes[name], self.shared_codes[shared_rows]])}
        return QuantizedPages(self.group, self.shared_codes, self.shared_scales, codes, self.exclusive_scales,
                              self.policy)

    def rounded(self, shared, exclusive):
        values, shared_scales = quant.quantize(shared, self.shared_codes, self.group)
        rounded, codes, scales = {}, {}, {}
        for name, pages in exclusive.items():
            codes[name] = self.exclusive_codes[name][: pages.shape[0]]
            rounded[name], scales[name] = quant.quantize(pages, codes[name], self.group)
        return values, rounded, QuantizedPages(self.group, self.shared_codes, shared_scales, codes, scales, self.policy)

    # -- store encoding

    def _codes(self, block: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        if block is None:
            return self.shared_codes, self.shared_scales
        return self.exclusive_codes[block], self.exclusive_scales[block]

    def encode(self, tensor, values, block=None):
        prefix = FLOAT_TENSORS[tensor]
        codes, scales = self._codes(block)
        out = {f"{prefix}_codes": codes}
        for fmt, (rows, s) in quant.encode(values, codes, scales, self.group).items():
            out[f"{prefix}.{fmt}"] = rows
            if s is not None:
                out[f"{prefix}_scales.{fmt}"] = s
        return out

    def file_tensors(self, names, entry):
        out = []
        for name in names:
            if name not in FLOAT_TENSORS:
                out.append(name)
                continue
            prefix = FLOAT_TENSORS[name]
            known = {f"{prefix}{part}.{f}" for f in quant.FORMATS for part in ("", "_scales")}
            out += [f"{prefix}_codes", *sorted(k for k in entry["tensors"] if k in known)]
        return tuple(out)

    def decode(self, tensor, tensors, page_size, what, block=None):
        prefix = FLOAT_TENSORS[tensor]
        codes = tensors[f"{prefix}_codes"]
        if codes.dtype != torch.uint8 or codes.dim() != 1:
            raise ValueError(f"{what}: codes are {codes.dtype} {list(codes.shape)}, expected uint8 1-D")
        rows = {f: (tensors[f"{prefix}.{f}"], tensors.get(f"{prefix}_scales.{f}")) for f in quant.FORMATS
                if f"{prefix}.{f}" in tensors}
        try:
            values, scales = quant.decode(rows, codes, page_size, self.group)
        except ValueError as e:
            raise ValueError(f"{what}: {e}") from None
        if block is None:
            self.shared_codes, self.shared_scales = codes, scales
        else:
            self.exclusive_codes[block], self.exclusive_scales[block] = codes, scales
        return values

    def manifest(self) -> dict:
        return {MANIFEST_KEY: {"group": self.group, "policy": self.policy}}

    # -- bytes

    def counts(self, state):
        codes = torch.cat([self.shared_codes, *self.exclusive_codes.values()])
        counts = torch.bincount(codes.long(), minlength=len(quant.FORMATS)).tolist()
        return {f: c for f, c in zip(quant.FORMATS, counts) if c}

    # -- execution

    def placement(self, state, device, host, kernel):
        return QuantizedPlacement(state, device, host, kernel)


def manifest_problem(m: dict, max_group: int) -> str | None:
    """The first structural problem of a manifest's format fields, or None."""
    if MANIFEST_KEY not in m:
        return None
    q = m[MANIFEST_KEY]
    if not isinstance(q, dict):
        return f"{MANIFEST_KEY}: field 'group' missing or mistyped"
    for key, kind in (("group", int), ("policy", dict)):
        if not isinstance(q.get(key), kind) or isinstance(q.get(key), bool):
            return f"{MANIFEST_KEY}: field {key!r} missing or mistyped"
    if not 1 <= q["group"] <= max_group:
        return f"{MANIFEST_KEY}: int4 group {q['group']} is not in [1, {max_group}]"
    if m["format_version"] < QUANTISED_SINCE:
        return f"quantised pages (its {MANIFEST_KEY!r}) in a format_version {m['format_version']} manifest (since 3)"
    return None


def from_manifest(m: dict) -> PageFormat:
    """The format a manifest records, ready to `decode` its blocks (a quantised one records them)."""
    if MANIFEST_KEY not in m:
        return FLOAT32
    return QuantizedPages(m[MANIFEST_KEY]["group"], None, None, policy=m[MANIFEST_KEY]["policy"])


# ---------------------------------------------------------------- execution placement


class Placement:
    """A state's pages on a device, for `execution.PackedModel`: level 1 copied there once, each DNN's
    level 2 in host memory with the (device view, host tensor) pairs a switch copies (`copies`) and
    its page table in the gather's encoding (`tables`)."""

    tables: dict[str, torch.Tensor]
    copies: dict[str, list[tuple[torch.Tensor, torch.Tensor]]]
    float_rows: torch.Tensor  # the float32 rows zero-copy mode may view (plain entries of a table)

    def switch_copies(self, name: str) -> None:
        """The DNN's exclusive rows (and scales) host -> device."""
        for dst, src in self.copies[name]:
            dst.copy_(src, non_blocking=True)

    def bytes_moved(self, name: str) -> int:
        """Exclusive rows and scales (every format) and the page table."""
        return sum(src.nbytes for _, src in self.copies[name]) + self.tables[name].nbytes

    def host_bytes(self) -> int:
        """Every DNN's exclusive rows, scales and page table."""
        return sum(self.bytes_moved(name) for name in self.tables)

    def device_bytes_by_format(self) -> dict[str, int]:
        raise NotImplementedError

    def gather(self, table: torch.Tensor, pages_out: torch.Tensor, theta_out: torch.Tensor) -> None:
        """Resolve a DNN's whole table into the weight buffer (`pages_out` is its [n_pages, P] view)."""
        raise NotImplementedError

    def gather_part(self, table: torch.Tensor, n: int) -> torch.Tensor:
        """The first `n` weights of `table`'s pages, in a fresh tensor (zero-copy mode's per-layer gather)."""
        raise NotImplementedError


class Float32Placement(Placement):
    """A page store [S + E_max, P]: the shared pages, then room for the most exclusive pages any DNN has."""

    def __init__(self, state: PackedState, device: torch.device, host: Callable, kernel: str):
        S, P = state.n_shared, state.page_size
        exclusive = {n: host(v.exclusive_pages) for n, v in state.vnns.items()}
        self.tables = {n: host(v.page_table) for n, v in state.vnns.items()}
        e_max = max((v.n_exclusive for v in state.vnns.values()), default=0)
        self.store = torch.empty(S + e_max, P, device=device)
        self.store[:S].copy_(state.shared_pages)
        self.store[S:].zero_()
        self.copies = {n: [(self.store[S : S + v.n_exclusive], exclusive[n])] if v.n_exclusive else []
                       for n, v in state.vnns.items()}
        self.float_rows = self.store
        self.kernel = kernel
        self._gather_into = gather_into_function()  # bound once: per-call look-ups are costly (docs/results.md#code-notes)

    def device_bytes_by_format(self) -> dict[str, int]:
        return {"float32": self.store.numel() * self.store.element_size()}

    def gather(self, table, pages_out, theta_out):
        if self.kernel == "index_select":
            torch.index_select(self.store, 0, table, out=pages_out)
        else:
            self._gather_into(self.store, table, theta_out)

    def gather_part(self, table, n):
        return gather_pages(self.store, table, n)


class QuantizedPlacement(Placement):
    """A quantised state's pages on the device, every format's block in one buffer (`ops.dequant_operands`:
    its shared rows, then room for the most exclusive rows of that format any DNN has), and each DNN's
    level-2 part (exclusive rows and scales per format, the encoded page table) in host memory."""

    def __init__(self, state: PackedState, device: torch.device, host: Callable, kernel: str):
        q = state.format
        exclusive, self.tables = {}, {}
        for name, vnn in state.vnns.items():
            codes = q.exclusive_codes[name]
            exclusive[name] = {f: (host(rows), None if sc is None else host(sc)) for f, (rows, sc) in
                               quant.encode(vnn.exclusive_pages, codes, q.exclusive_scales[name], q.group).items()}
            # rows of [shared; exclusive] in their formats' blocks: shared rows first, the DNN's after them
            every = torch.cat([q.shared_codes, codes])
            self.tables[name] = host(quant.table_entries(every[vnn.page_table], self._local_rows(every)[vnn.page_table]))
        shared = quant.encode(state.shared_pages, q.shared_codes, q.shared_scales, q.group)
        room = {f: max((len(e[f][0]) for e in exclusive.values() if f in e), default=0) for f in quant.FORMATS}
        self.operands = dequant_operands(shared, state.page_size, q.group, room, device)
        self.copies = {}
        for name, parts in exclusive.items():
            self.copies[name] = []
            for fmt, (rows, scales) in parts.items():
                first = len(shared[fmt][0]) if fmt in shared else 0
                self.copies[name].append((self.operands.rows[fmt][first : first + len(rows)], rows))
                if scales is not None:
                    self.copies[name].append((self.operands.row_scales[fmt][first : first + len(rows)], scales))
        self.float_rows = self.operands.rows["float32"]
        self.device = device
        self._gather_dequant = gather_dequant_function()

    @staticmethod
    def _local_rows(codes: torch.Tensor) -> torch.Tensor:
        """Each page's row within its format's block: its rank among the pages of that format."""
        rows = torch.zeros_like(codes, dtype=torch.int64)
        for code in range(len(quant.FORMATS)):
            where = (codes == code).nonzero().flatten()
            rows[where] = torch.arange(len(where))
        return rows

    def device_bytes_by_format(self) -> dict[str, int]:
        """Each format's rows and scales (not the < 64 bytes aligning each block)."""
        o = self.operands
        return {fmt: rows.nbytes + (o.row_scales[fmt].nbytes if fmt in o.row_scales else 0)
                for fmt, rows in o.rows.items() if len(rows)}

    def gather(self, table, pages_out, theta_out):
        q = self.operands
        self._gather_dequant(q.pages, q.scales, q.layout, table, theta_out)

    def gather_part(self, table, n):
        q, out = self.operands, torch.empty(n, device=self.device)  # dequantised per layer
        self._gather_dequant(q.pages, q.scales, q.layout, table, out)
        return out
