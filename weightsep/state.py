"""The packed state: the data model every stage works on, and the page-table rules, in one place.

`PackedState` holds the page size P, the S shared pages (level 1) with their accumulated Fisher, the
registered DNNs as `VNN`s (page table, exclusive pages, Fisher, `Provenance`), a `StateConfig` and
its page format (formats.py: `Float32Pages`, or `QuantizedPages` with each page's format and scales).
They validate themselves on construction, and change only through methods that return a new,
validated state (`with_vnn`, `without_vnn`, `with_pages`, `with_format`, `replace`; a VNN's
`replace`, `with_page_table`); `store.py` reads and writes them and does nothing else.

A rank's part of a state (`PackedState.shard(names)`) holds every page table and Fisher and the
shared pages, but only the `held` DNNs' exclusive pages: the validator accepts the others' as empty.

The page-table rule: a DNN's page table maps each logical page to a row of
`cat([shared_pages, exclusive_pages])`. An entry below S names a shared page; the entry `S + e`
names the DNN's exclusive page `e`. `is_shared`, `exclusive_entries` and `exclusive_slots` are the
only code that knows this; everything else asks them.
"""
from __future__ import annotations

import dataclasses
import typing
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .formats import FLOAT32, PageFormat
from .invariants import check_count, check_json, check_tensor, check_values
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
    training: dict | None = None  # the TrainConfig, best_step and steps_run (None: imported weights, or an older store)

    def __post_init__(self) -> None:
        for name in ("val_accuracy", "test_accuracy"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise ValueError(f"stand-alone {name.replace('_', ' ')} must be a fraction in [0, 1], got {value!r}")


PACK_INFO_VERSION = 1


@dataclass(kw_only=True)
class PackInfo:
    """What packing reported for one DNN (`pack.add_vnn`), kept in its provenance. Stored as a JSON
    object in this field order, without the fields that do not apply; a record without a version
    (written before records had one) is version 1."""

    tpr: float | None = None  # WS: the target performance rate the separation used
    n_overflow: int | None = None  # WS: exclusive pages added only because the sharable ones did not fit
    matching: str  # the matcher, or "identity" (the first DNN is mapped as published)
    matching_cost: float
    matching_seconds: float
    layout: dict | None = None  # the matcher's report (not for the first DNN)
    n_exclusive: int
    n_sharable: int
    version: int = PACK_INFO_VERSION

    def __post_init__(self) -> None:
        if self.version != PACK_INFO_VERSION:
            raise ValueError(f"pack info version {self.version} is not this code's version {PACK_INFO_VERSION}")

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, obj: Any, what: str = "pack info") -> PackInfo:
        try:
            return _typed(cls, obj, what)
        except TypeError as e:  # a required field missing
            raise ValueError(f"{what}: {e}") from None


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
    pack: dict | None = None  # what packing reported (`PackInfo`'s JSON; `pack_info` reads it typed)
    parameters: list | None = None  # [[name, numel], ...] in flat order: labels pages without the DNN's code

    def __post_init__(self) -> None:
        if isinstance(self.pack, PackInfo):
            self.pack = self.pack.to_json()

    @property
    def pack_info(self) -> PackInfo | None:
        """What packing reported, typed (ValueError if the record is not a `PackInfo`)."""
        return None if self.pack is None else PackInfo.from_json(self.pack, "provenance: pack")

    def to_json(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if v is not None}
        if "standalone" in out:  # a store written before stand-alone training was recorded reads the same
            out["standalone"] = {k: v for k, v in out["standalone"].items() if v is not None}
        return out

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

    def replace(self, **changes: Any) -> VNN:
        """A copy with `changes` (field name -> value), validated (ValueError)."""
        return dataclasses.replace(self, **changes)

    def with_page_table(self, page_table: torch.Tensor) -> VNN:
        """A copy with this page table (checked against P and S when it joins a state)."""
        return self.replace(page_table=page_table)

    def validate(self, page_size: int | None = None, n_shared: int | None = None, held: bool = True) -> None:
        """Check dtypes, shapes, values and meta; given the state's P and S, the page table too (ValueError).

        `held=False`: a shard's DNN whose exclusive pages this rank does not hold (they must be empty)."""
        check_name(self.name)
        who = f"VNN {self.name!r}"
        check_count(self.n_weights, f"{who}: n_weights", 1)
        check_tensor(self.page_table, f"{who}: page_table", PAGE_TABLE_DTYPE, 1)
        check_tensor(self.exclusive_pages, f"{who}: exclusive_pages", torch.float32, 2)
        check_tensor(self.fisher, f"{who}: fisher", torch.float32, 1)
        if self.fisher.numel() != self.n_weights:
            raise ValueError(f"{who}: fisher has {self.fisher.numel()} entries, n_weights is {self.n_weights}")
        check_values(self.exclusive_pages, f"{who}: exclusive_pages")
        check_values(self.fisher, f"{who}: fisher", nonnegative=True)
        if not isinstance(self.buffers, dict):
            raise ValueError(f"{who}: buffers must be a dict name -> tensor, got {type(self.buffers).__name__}")
        for key, b in self.buffers.items():
            if not isinstance(key, str) or not isinstance(b, torch.Tensor):
                raise ValueError(f"{who}: buffers must map names to tensors, got {key!r}: {type(b).__name__}")
            if b.is_floating_point():
                check_values(b, f"{who}: buffer {key!r}")
        if not isinstance(self.provenance, Provenance):
            raise ValueError(f"{who}: provenance must be a Provenance, got {type(self.provenance).__name__}")
        check_json(self.provenance.to_json(), f"{who}: provenance")
        if page_size is not None and n_shared is not None:
            self._check_page_table(page_size, n_shared, held)

    def _check_page_table(self, page_size: int, n_shared: int, held: bool) -> None:
        who, S, E = f"VNN {self.name!r}", n_shared, self.n_exclusive
        if not held:  # the table still names its exclusive slots, which must be 0 .. E-1 as in the whole state
            if E:
                raise ValueError(f"{who}: a shard holds no exclusive pages of a DNN it does not hold, got {E}")
            E = int((self.page_table >= S).sum())
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
class PackedState:
    """Everything a packing holds: shared pages (level 1) and the registered DNNs (level 2 + tables)."""

    page_size: int
    shared_pages: torch.Tensor  # float32 [S, P]
    shared_fisher: torch.Tensor  # float32 [S, P], >= 0: accumulated Fisher of the pages mapped on each page
    vnns: dict[str, VNN] = field(default_factory=dict)  # insertion order = registration order
    config: StateConfig = field(default_factory=StateConfig)
    generation: int | None = None  # the store generation it was loaded from (None: never saved); save checks it
    format: PageFormat = FLOAT32  # how the pages are held (formats.py): float32, or quantised with scales
    held: tuple[str, ...] | None = None  # a rank's shard: the DNNs whose exclusive pages it holds (None: all)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def n_shared(self) -> int:
        return self.shared_pages.shape[0]

    @property
    def is_shard(self) -> bool:
        return self.held is not None

    # -- changes: each returns a new state, validated (ValueError); the state itself is never modified

    def replace(self, **changes: Any) -> PackedState:
        """A copy with `changes` (field name -> value), validated."""
        return dataclasses.replace(self, **changes)

    def with_vnn(self, vnn: VNN, **changes: Any) -> PackedState:
        """`vnn` registered (last) or, if its name is packed, replacing that DNN in its place."""
        return self.replace(vnns={**self.vnns, vnn.name: vnn}, **changes)

    def without_vnn(self, name: str, **changes: Any) -> PackedState:
        """DNN `name` dropped, with its pages' formats (the shared pages' Fisher is the caller's: `changes`)."""
        if name not in self.vnns:
            raise ValueError(f"DNN {name!r} is not packed; packed: {', '.join(self.vnns) or 'none'}")
        return self.replace(vnns={n: v for n, v in self.vnns.items() if n != name},
                            format=self.format.without(name), **changes)

    def with_pages(self, shared_pages: torch.Tensor | None = None, exclusive: dict[str, torch.Tensor] | None = None,
                   page_tables: dict[str, torch.Tensor] | None = None,
                   buffers: dict[str, dict[str, torch.Tensor]] | None = None, **changes: Any) -> PackedState:
        """New page contents: the shared pages, DNNs' exclusive pages, page tables and buffers given
        (by DNN name; the others kept), and any state field in `changes` (e.g. the `format` that
        describes the new pages)."""
        exclusive, page_tables, buffers = exclusive or {}, page_tables or {}, buffers or {}
        vnns = {}
        for n, v in self.vnns.items():
            parts = {k: d[n] for k, d in (("exclusive_pages", exclusive), ("page_table", page_tables),
                                          ("buffers", buffers)) if n in d}
            vnns[n] = dataclasses.replace(v, **parts) if parts else v
        if shared_pages is not None:
            changes["shared_pages"] = shared_pages
        return self.replace(vnns=vnns, **changes)

    def with_format(self, format: PageFormat) -> PackedState:
        """The same pages described by `format` (they must fit it)."""
        return self.replace(format=format)

    def shard(self, names: Collection[str]) -> PackedState:
        """One rank's part: every page table and Fisher, the shared pages, and only `names`' exclusive
        pages (the others' are emptied, so the memory is not held); `held` says which, and `validate`
        knows. A shard is never saved (`store.Store.save` refuses it)."""
        held = tuple(n for n in self.vnns if n in names)
        vnns = {n: v if n in held else dataclasses.replace(v, exclusive_pages=v.exclusive_pages[:0])
                for n, v in self.vnns.items()}
        return self.replace(vnns=vnns, format=self.format.shard(held), held=held)

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
        check_count(self.page_size, "page_size", 1)
        check_tensor(self.shared_pages, "shared_pages", torch.float32, 2)
        check_tensor(self.shared_fisher, "shared_fisher", torch.float32, 2)
        if self.shared_pages.shape[1] != self.page_size:
            raise ValueError(f"shared_pages are {list(self.shared_pages.shape)}, page_size is {self.page_size}")
        if self.shared_fisher.shape != self.shared_pages.shape:
            raise ValueError(f"shared_fisher is {list(self.shared_fisher.shape)}, "
                             f"shared_pages are {list(self.shared_pages.shape)}")
        check_values(self.shared_pages, "shared_pages")
        check_values(self.shared_fisher, "shared_fisher", nonnegative=True)
        if not isinstance(self.vnns, dict):
            raise ValueError(f"vnns must be a dict name -> VNN, got {type(self.vnns).__name__}")
        for key, vnn in self.vnns.items():
            if not isinstance(vnn, VNN):
                raise ValueError(f"vnns[{key!r}] is a {type(vnn).__name__}, not a VNN")
            if key != vnn.name:
                raise ValueError(f"vnns[{key!r}] holds VNN {vnn.name!r}: key and name must agree")
            vnn.validate(self.page_size, self.n_shared, self.held is None or key in self.held)
        if self.held is not None and (not isinstance(self.held, tuple) or not set(self.held) <= set(self.vnns)):
            raise ValueError(f"a shard's held DNNs must be a tuple of packed names, got {self.held!r}")
        if not isinstance(self.config, StateConfig):
            raise ValueError(f"config must be a StateConfig, got {type(self.config).__name__}")
        check_json(self.config.to_json(), "config")
        if not isinstance(self.format, PageFormat):
            raise ValueError(f"format must be a PageFormat (formats.py), got {type(self.format).__name__}")
        self.format.validate(self)


