"""The packed state: the data model every stage works on, and the page-table rules, in one place.

`PackedState` holds the page size P, the S shared pages (level 1) with their accumulated Fisher, the
registered DNNs as `VNN`s (page table, exclusive pages, Fisher, `Provenance`), a `StateConfig` and,
for a quantised state, its `Precision` (each page's format and scales, quant.py; None: all float32).
They validate themselves on construction; `store.py` reads and writes them and does nothing else.

The page-table rule: a DNN's page table maps each logical page to a row of
`cat([shared_pages, exclusive_pages])`. An entry below S names a shared page; the entry `S + e`
names the DNN's exclusive page `e`. `is_shared`, `exclusive_entries` and `exclusive_slots` are the
only code that knows this; everything else asks them.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from . import quant
from .pages import n_pages as pages_needed
from .pages import to_pages

PAGE_TABLE_DTYPE = torch.int64  # in the store and on the device (execution gathers with it)
MAX_NAME = 128  # characters of a DNN name


# ---------------------------------------------------------------- the page-table rule


def is_shared(page_table: torch.Tensor, n_shared: int) -> torch.Tensor:
    """bool, per logical page: does it live on a shared page (entry < S)?"""
    return page_table < n_shared


def exclusive_entries(n_shared: int, first: int, count: int) -> torch.Tensor:
    """Page-table entries of exclusive pages `first .. first + count - 1` (S + e)."""
    return n_shared + torch.arange(first, first + count, dtype=PAGE_TABLE_DTYPE)


def exclusive_slots(entries: torch.Tensor, n_shared: int) -> torch.Tensor:
    """The exclusive page indices `e` named by page-table entries `S + e`."""
    return entries - n_shared


# ---------------------------------------------------------------- provenance and config


def _json_kinds(hint) -> tuple[type, ...]:
    """The JSON types a field of type `hint` may hold: a nested dataclass is an object, a float may be
    written as an int, None is left out (an absent field)."""
    kinds: list[type] = []
    for arg in [a for a in typing.get_args(hint) if a is not type(None)] or [hint]:
        kinds += [dict] if dataclasses.is_dataclass(arg) else [float, int] if arg is float else [arg]
    return tuple(kinds)


def _typed(cls, obj: Any, what: str):
    """A dataclass from its JSON dict; unknown or mistyped fields are ValueErrors naming them."""
    if not isinstance(obj, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(obj).__name__}")
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(obj) - set(hints))
    if unknown:
        raise ValueError(f"{what}: unknown field(s) {', '.join(unknown)}")
    for name, value in obj.items():
        kinds = _json_kinds(hints[name])
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise ValueError(f"{what}: field {name!r} is {type(value).__name__}, expected "
                             + " or ".join(k.__name__ for k in kinds))
    return cls(**obj)


@dataclass
class Standalone:
    """A DNN's accuracies trained alone (fractions), the reference its packed accuracy is held to."""

    val_accuracy: float
    test_accuracy: float

    def __post_init__(self) -> None:
        for name in ("val_accuracy", "test_accuracy"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise ValueError(f"stand-alone {name.replace('_', ' ')} must be a fraction in [0, 1], got {value!r}")


@dataclass
class Provenance:
    """Where a packed DNN came from. Names and hashes only: a store is data, never code.

    `folder` is a hint for error messages (relative to the repository for its own folders), never
    a path to import from: code comes from the DNN folders discovered or named on the command line,
    found by the DNN's name, and `code_hash` (of its dnn.py) must still match."""

    folder: str | None = None
    code_hash: str | None = None
    architecture: str | None = None
    fisher: dict | None = None  # the FisherConfig used
    standalone: Standalone | None = None
    pack: dict | None = None  # what packing reported: exclusive/sharable pages, matching, cost
    parameters: list | None = None  # [[name, numel], ...] in flat order: labels pages without the DNN's code

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, obj: Any, what: str = "provenance") -> Provenance:
        p = _typed(cls, obj, what)
        if p.standalone is not None:
            try:
                p.standalone = _typed(Standalone, p.standalone, f"{what}: standalone")
            except ValueError as e:
                raise ValueError(f"{what}: {e}") from None
        return p


@dataclass
class StateConfig:
    """How the state was made: the pack config and, once optimised, the optimiser's config and history.

    JSON dicts of the stage configs (`PackConfig`, `OptimizeConfig`); `pack.pack_config(state)` reads
    the pack config back, typed."""

    pack: dict | None = None
    budget: dict | None = None  # the budget separation's plan (exclusive pages, spare pages)
    optimize: dict | None = None
    history: dict | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, obj: Any, what: str = "config") -> StateConfig:
        return _typed(cls, obj, what)


# ---------------------------------------------------------------- checks


def _check_tensor(t: Any, what: str, dtype: torch.dtype, dim: int) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != dtype or t.dim() != dim:
        raise ValueError(f"{what} must be a {dim}-D {dtype} tensor, got {t.dim()}-D {t.dtype} {list(t.shape)}")


def _check_values(t: torch.Tensor, what: str, nonnegative: bool = False) -> None:
    bad = ~torch.isfinite(t)
    if nonnegative:
        bad |= t < 0
    if bad.any():
        first = int(bad.flatten().nonzero()[0])
        kind = "NaN/inf or negative" if nonnegative else "NaN/inf"
        raise ValueError(f"{what} has {int(bad.sum())} {kind} values (first at flat index {first})")


def _check_json(obj: Any, what: str) -> None:
    if not isinstance(obj, dict):
        raise ValueError(f"{what} must be a dict, got {type(obj).__name__}")
    try:
        json.dumps(obj, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} is not JSON-able: {e}") from None


def check_name(name: Any) -> None:
    """A DNN name becomes part of file names (the store's, plots', results'): a plain name only, so a
    name from a received store can never reach outside a directory (no separators, no leading dot)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a DNN name must be a non-empty string, got {name!r}")
    bad = [c for c in name if c in "/\\" or not c.isprintable()]
    if bad or name.startswith(".") or len(name) > MAX_NAME:
        why = (f"holds {bad[0]!r}" if bad else "starts with '.'" if name.startswith(".") else
               f"is longer than {MAX_NAME} characters")
        raise ValueError(f"DNN name {name[:80]!r} {why}: a name may not hold path separators or control "
                         "characters, start with '.', or be that long")


def _check_count(value: Any, what: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an int >= {minimum}, got {value!r}")


@dataclass(eq=False)  # tensors have no single truth value: compare fields explicitly
class VNN:
    """One registered DNN ("virtual neural network" in the originals' words)."""

    name: str
    n_weights: int
    page_table: torch.Tensor  # PAGE_TABLE_DTYPE [n_pages]: entry < S -> shared page; S + e -> exclusive_pages[e]
    exclusive_pages: torch.Tensor  # float32 [E, P], level-2 pages (E may be 0)
    fisher: torch.Tensor  # float32 [n_weights], >= 0: the Fisher used for separation and matching
    provenance: Provenance = field(default_factory=Provenance)
    # the model's buffers by name (batch-norm running statistics...): the DNN's own, never paged or shared
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def n_pages(self) -> int:
        return self.page_table.numel()

    @property
    def n_exclusive(self) -> int:
        return self.exclusive_pages.shape[0]

    def validate(self, page_size: int | None = None, n_shared: int | None = None) -> None:
        """Check dtypes, shapes, values and meta; given the state's P and S, the page table too (ValueError)."""
        check_name(self.name)
        who = f"VNN {self.name!r}"
        _check_count(self.n_weights, f"{who}: n_weights", 1)
        _check_tensor(self.page_table, f"{who}: page_table", PAGE_TABLE_DTYPE, 1)
        _check_tensor(self.exclusive_pages, f"{who}: exclusive_pages", torch.float32, 2)
        _check_tensor(self.fisher, f"{who}: fisher", torch.float32, 1)
        if self.fisher.numel() != self.n_weights:
            raise ValueError(f"{who}: fisher has {self.fisher.numel()} entries, n_weights is {self.n_weights}")
        _check_values(self.exclusive_pages, f"{who}: exclusive_pages")
        _check_values(self.fisher, f"{who}: fisher", nonnegative=True)
        if not isinstance(self.buffers, dict):
            raise ValueError(f"{who}: buffers must be a dict name -> tensor, got {type(self.buffers).__name__}")
        for key, b in self.buffers.items():
            if not isinstance(key, str) or not isinstance(b, torch.Tensor):
                raise ValueError(f"{who}: buffers must map names to tensors, got {key!r}: {type(b).__name__}")
            if b.is_floating_point():
                _check_values(b, f"{who}: buffer {key!r}")
        if not isinstance(self.provenance, Provenance):
            raise ValueError(f"{who}: provenance must be a Provenance, got {type(self.provenance).__name__}")
        _check_json(self.provenance.to_json(), f"{who}: provenance")
        if page_size is not None and n_shared is not None:
            self._check_page_table(page_size, n_shared)

    def _check_page_table(self, page_size: int, n_shared: int) -> None:
        who, S, E = f"VNN {self.name!r}", n_shared, self.n_exclusive
        if self.exclusive_pages.shape[1] != page_size:
            raise ValueError(f"{who}: exclusive_pages are {list(self.exclusive_pages.shape)}, pages hold {page_size}")
        need = pages_needed(self.n_weights, page_size)
        if self.n_pages != need:
            raise ValueError(f"{who}: page table has {self.n_pages} entries; {self.n_weights} weights "
                             f"in pages of {page_size} need {need}")
        table = self.page_table.cpu()
        out = (table < 0) | (table >= S + E)
        if out.any():
            j = int(out.nonzero()[0])
            raise ValueError(f"{who}: page table entry {int(table[j])} at logical page {j} is outside "
                             f"[0, {S + E}) ({S} shared + {E} exclusive pages)")
        counts = torch.bincount(table, minlength=S + E)
        if (counts > 1).any():
            v = int((counts > 1).nonzero()[0])
            slot = f"shared page {v}" if v < S else f"exclusive slot {v - S}"
            raise ValueError(f"{who}: {slot} is used by logical pages {(table == v).nonzero().flatten().tolist()}; "
                             "a DNN maps at most one page onto each shared page or exclusive slot")
        unused = (counts[S:] == 0).nonzero().flatten()
        if len(unused):
            raise ValueError(f"{who}: exclusive slots {unused.tolist()} are not in the page table (dead memory)")


@dataclass(eq=False)  # tensors have no single truth value: compare fields explicitly
class Precision:
    """Each page's format (a `quant.FORMATS` code) and scales, for the shared pages and every DNN's
    exclusive pages. The state's page tensors hold the dequantised float32 values, exactly on their
    formats' grids (checked): what every stage reads is what the device runs."""

    group: int  # int4: weights per scale
    shared_codes: torch.Tensor  # uint8 [S]
    shared_scales: torch.Tensor  # float32 [S, G], G = ceil(P / group) (quant.py: which columns mean what)
    exclusive_codes: dict[str, torch.Tensor] = field(default_factory=dict)  # DNN -> uint8 [E]
    exclusive_scales: dict[str, torch.Tensor] = field(default_factory=dict)  # DNN -> float32 [E, G]
    policy: dict = field(default_factory=dict)  # how the formats were chosen (precision.PrecisionConfig, JSON)

    def blocks(self, state: PackedState) -> list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(what, values, codes, scales) of the shared block and each DNN's exclusive block."""
        return [("shared pages", state.shared_pages, self.shared_codes, self.shared_scales),
                *((f"DNN {n!r}: exclusive pages", v.exclusive_pages, self.exclusive_codes.get(n),
                   self.exclusive_scales.get(n)) for n, v in state.vnns.items())]

    def validate(self, state: PackedState) -> None:
        _check_count(self.group, "precision: group", 1)
        if set(self.exclusive_codes) != set(state.vnns) or set(self.exclusive_scales) != set(state.vnns):
            raise ValueError(f"precision: exclusive formats are given for {sorted(self.exclusive_codes)}, "
                             f"scales for {sorted(self.exclusive_scales)}; the DNNs are {sorted(state.vnns)}")
        _check_json(self.policy, "precision: policy")
        G = quant.n_groups(state.page_size, self.group)
        for what, values, codes, scales in self.blocks(state):
            _check_tensor(codes, f"precision: {what}: codes", torch.uint8, 1)
            _check_tensor(scales, f"precision: {what}: scales", torch.float32, 2)
            if codes.numel() != values.shape[0] or list(scales.shape) != [values.shape[0], G]:
                raise ValueError(f"precision: {what}: {values.shape[0]} pages, {codes.numel()} codes and scales "
                                 f"{list(scales.shape)} (expected [{values.shape[0]}, {G}])")
            if codes.numel() and int(codes.max()) >= len(quant.FORMATS):
                raise ValueError(f"precision: {what}: format code {int(codes.max())} is not one of "
                                 f"{len(quant.FORMATS)} ({', '.join(quant.FORMATS)})")
            _check_values(scales, f"precision: {what}: scales", nonnegative=True)
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


@dataclass(eq=False)  # tensors have no single truth value: compare fields explicitly
class PackedState:
    """Everything a packing holds: shared pages (level 1) and the registered DNNs (level 2 + tables)."""

    page_size: int
    shared_pages: torch.Tensor  # float32 [S, P]
    shared_fisher: torch.Tensor  # float32 [S, P], >= 0: accumulated Fisher of the pages mapped on each page
    vnns: dict[str, VNN] = field(default_factory=dict)  # insertion order = registration order
    config: StateConfig = field(default_factory=StateConfig)
    generation: int | None = None  # the store generation it was loaded from (None: never saved); save checks it
    precision: Precision | None = None  # quantised pages: each page's format and scales (None: all float32)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def n_shared(self) -> int:
        return self.shared_pages.shape[0]

    def n_pages(self, name: str) -> int:
        """Logical pages of DNN `name`."""
        return self.vnns[name].n_pages

    def occupancy(self) -> torch.Tensor:
        """int64 [S]: how many VNNs map a page onto each shared page."""
        counts = torch.zeros(self.n_shared, dtype=torch.int64)
        for vnn in self.vnns.values():
            table = vnn.page_table.cpu()
            counts += torch.bincount(table[is_shared(table, self.n_shared)], minlength=self.n_shared)
        return counts

    def sharing(self, name: str) -> list[str]:
        """The other DNNs that map a page onto a shared page DNN `name` maps onto (training `name`
        changes their weights too), in registration order."""
        mine = self.vnns[name].page_table
        mine = set(mine[is_shared(mine, self.n_shared)].tolist())
        return [n for n, v in self.vnns.items() if n != name
                and mine & set(v.page_table[is_shared(v.page_table, self.n_shared)].tolist())]

    def summed_fisher(self) -> torch.Tensor:
        """float32 [S, P]: each shared page's Fisher summed afresh from the pages its DNNs map onto it
        (what `shared_fisher` accumulates as DNNs are added, promoted and removed)."""
        total = torch.zeros_like(self.shared_fisher)
        for vnn in self.vnns.values():
            on_shared = is_shared(vnn.page_table, self.n_shared)
            total.index_add_(0, vnn.page_table[on_shared], to_pages(vnn.fisher, self.page_size)[on_shared])
        return total

    def validate(self) -> None:
        """Check every invariant the pipeline and the store rely on; ValueError names the culprit."""
        _check_count(self.page_size, "page_size", 1)
        _check_tensor(self.shared_pages, "shared_pages", torch.float32, 2)
        _check_tensor(self.shared_fisher, "shared_fisher", torch.float32, 2)
        if self.shared_pages.shape[1] != self.page_size:
            raise ValueError(f"shared_pages are {list(self.shared_pages.shape)}, page_size is {self.page_size}")
        if self.shared_fisher.shape != self.shared_pages.shape:
            raise ValueError(f"shared_fisher is {list(self.shared_fisher.shape)}, "
                             f"shared_pages are {list(self.shared_pages.shape)}")
        _check_values(self.shared_pages, "shared_pages")
        _check_values(self.shared_fisher, "shared_fisher", nonnegative=True)
        if not isinstance(self.vnns, dict):
            raise ValueError(f"vnns must be a dict name -> VNN, got {type(self.vnns).__name__}")
        for key, vnn in self.vnns.items():
            if not isinstance(vnn, VNN):
                raise ValueError(f"vnns[{key!r}] is a {type(vnn).__name__}, not a VNN")
            if key != vnn.name:
                raise ValueError(f"vnns[{key!r}] holds VNN {vnn.name!r}: key and name must agree")
            vnn.validate(self.page_size, self.n_shared)
        if not isinstance(self.config, StateConfig):
            raise ValueError(f"config must be a StateConfig, got {type(self.config).__name__}")
        _check_json(self.config.to_json(), "config")
        if self.precision is not None:
            if not isinstance(self.precision, Precision):
                raise ValueError(f"precision must be a Precision, got {type(self.precision).__name__}")
            self.precision.validate(self)


