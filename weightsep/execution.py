"""Two-level execution of a packed store and fast DNN switching (docs/algorithms.md §3.7).

Placement:

* level 1, the **shared pages** `[S, P]`: copied ONCE into the first `S` rows of a preallocated
  device page store `[S + E_max, P]` (`E_max`: the most exclusive pages any DNN has);
* level 2, the **exclusive pages** of every DNN: kept in host memory (pinned when the device is
  CUDA, so the copy is a true asynchronous DMA), never all on the device at once;
* a device page-table buffer `[n_pages_max]` and, in "gather" mode, a flat weight buffer
  `[n_pages_max * P]` (room for the largest DNN's weights), both preallocated: a switch allocates
  nothing.

`kernel="ops"` (default) gathers with `weightsep.ops.gather_pages_into` (the C++/CUDA extension when
built, else plain indexing); `kernel="index_select"` with `torch.index_select(..., out=buffer)`,
the stock ATen gather, for comparison (docs/execution.md). Both write the weight buffer in place.

`switch(name)` copies the DNN's exclusive pages host -> device into rows `S .. S+E` of the page
store (the rows its page table's entries `S + e` name) and its page table into the table buffer
(on CPU, where host memory is the device, the host table is used in place: no copy); then, by mode:

* `"gather"` (the published method): resolve the page table into the flat weight buffer with ONE
  `weightsep.ops.gather_pages_into` call (the C++/CUDA kernel when built). `forward` then runs the
  model on that flat vector, exactly as `evaluate.packed_theta` + `model(x, theta)` does.
* `"zero-copy"`: nothing is materialised at switch time. `forward` resolves each weight tensor
  lazily from the page store just before the layer uses it. A tensor whose pages are consecutive
  rows of the page store (e.g. it lies inside one page, or the matcher left its pages in order) is
  a true zero-copy *view* of the store; any other tensor is gathered page by page into a temporary
  (only its own pages). What it saves: the switch (no full gather, no flat weight buffer on the
  device: `n_weights_max * 4` bytes less). What it does NOT save: PyTorch's conv/matmul kernels
  need a dense strided tensor, so non-contiguous tensors are still copied, now at EVERY forward
  (one small gather per such tensor per call) instead of once per switch; peak transient memory is
  the largest such tensor. A real zero-copy forward (kernels reading weights through the page
  table) needs custom conv/GEMM kernels; this module does not pretend to have them.
  `view_fraction(name)` says how many of a DNN's weights are served as views.

Both modes give bit-identical weights to `evaluate.packed_theta` (gathering copies floats), so
accuracies equal `python -m weightsep eval` exactly when inputs are batched the same way.

Where the pages go is the page format's choice (`state.format.placement`, formats.py). A quantised
state is placed in its formats: one device buffer holding a block per format (its shared rows,
then room for the most exclusive rows of that format any DNN has) and one of the int formats'
scales (`ops.dequant_operands`), and per DNN, in host memory, its exclusive rows per format, their
scales and its page table in the dequantising gather's encoding (quant.table_entries: format code
and row in that format's block). A switch copies those, then ONE `ops.gather_dequant_into` call
resolves and dequantises the table into the weight buffer (gather mode); zero-copy mode dequantises
each weight tensor's pages just before its layer (only float32 pages can be views). The weights are
bit-identical to `evaluate.packed_theta` of the same state (the state holds the dequantised values).

    pm = PackedModel(Store("state").load(), {n: item.model for n, item in loaded.items()})
    pm.switch("mnist10k")
    logits = pm.predict(x, batch=2000)
"""
from __future__ import annotations

import copy
from collections.abc import Mapping

import torch

from . import quant
from .evaluate import not_scored
from .flat import as_flat, check_parameters, load_buffer_state
from .state import PAGE_TABLE_DTYPE, PackedState

MODES = ("gather", "zero-copy")


class _LazyTensors(Mapping):
    """The current DNN's weight tensors by name (`model.layout`), each resolved from the page store on
    access: a `TemplateNet` resolves them layer by layer, a `FlatModule` all at once before its forward."""

    def __init__(self, owner: PackedModel, name: str):
        self.owner, self.name = owner, name
        self.plan = owner._plans[name]

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.owner._resolve(self.plan[key])

    def __iter__(self):
        return iter(self.plan)

    def __len__(self) -> int:
        return len(self.plan)


class PackedModel:
    """A packed store placed on a device in two levels, running one DNN at a time (see the module doc).

    `models` are templates: each is copied (`copy.deepcopy`), and only the copies are re-pointed at
    the pages, given the store's buffers and moved to `device`; the caller's modules stay as they were."""

    def __init__(self, state: PackedState, models: Mapping[str, torch.nn.Module], device: str | torch.device = "cpu",
                 mode: str = "gather", kernel: str = "ops"):
        if not isinstance(state, PackedState):
            raise ValueError(f"PackedModel runs a PackedState (Store(...).load(), api.pack(...)), got {type(state).__name__}")
        if not isinstance(models, Mapping):
            raise ValueError(f"models must map each packed DNN's name to its nn.Module, got {type(models).__name__}")
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"device {device!r} is not a torch device: {str(e).splitlines()[0]}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r}: this machine has no CUDA GPU (or this torch has no CUDA); "
                             "use device='cpu'")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        state.format.check_kernel(kernel)
        self.kernel = kernel
        missing = [n for n in state.vnns if n not in models]
        if missing:
            raise ValueError(f"no model given for packed DNN(s) {missing}")
        state.validate()  # page-table rows on the host, once: on CUDA a bad row would only trip a device assert
        # the caller's modules are left as they were: PackedModel runs its own copies, whose parameters
        # it re-points (a flat vector), whose buffers it loads from the store and which it moves to `device`
        models = {n: as_flat(copy.deepcopy(models[n])) for n in state.vnns}
        for name, vnn in state.vnns.items():
            check_parameters(models[name], vnn.n_weights, vnn.provenance.parameters, f"DNN {name!r}")
        self.device = torch.device(device)
        self.mode = mode
        for name, vnn in state.vnns.items():  # each DNN's own buffers (batch-norm statistics), loaded once
            load_buffer_state(models[name], vnn.buffers, f"DNN {name!r} in the store")
        self.models = {n: models[n].to(self.device).eval() for n in state.vnns}
        self.page_size, self.n_shared = state.page_size, state.n_shared
        self.vnns = {n: (v.n_weights, v.n_pages, v.n_exclusive) for n, v in state.vnns.items()}
        cuda = self.device.type == "cuda"
        self.e_max = max((v.n_exclusive for v in state.vnns.values()), default=0)
        self.pages_max = max((v.n_pages for v in state.vnns.values()), default=0)
        self.n_max = max((v.n_weights for v in state.vnns.values()), default=0)

        # level 2 + page tables: host memory (pinned for asynchronous DMA on CUDA)
        def host(t: torch.Tensor) -> torch.Tensor:
            t = t.detach().contiguous().clone()
            return t.pin_memory() if cuda else t

        # level 1 on the device once, level 2 in host memory, as the state's page format places them
        self.pages = state.format.placement(state, self.device, host, kernel)
        self._tables = self.pages.tables
        self._host_tables = self.device.type == "cpu"
        self.table = torch.zeros(0 if self._host_tables else self.pages_max, dtype=PAGE_TABLE_DTYPE, device=self.device)
        self._table = self.table
        self.weights = torch.empty(self.pages_max * self.page_size if mode == "gather" else 0, device=self.device)
        self._plans = {n: self._plan(n, models[n]) for n in state.vnns} if mode == "zero-copy" else {}
        self._views = {n: self._switch_views(*self.vnns[n]) for n in state.vnns}  # per-DNN views, made once
        self.current: str | None = None
        self.theta: torch.Tensor | None = None
        # CUDA streams: the one the last switch wrote on, and those forwards have read on since. A
        # switch waits for those readers before overwriting the device buffers; a forward on another
        # stream waits for the switch. On one stream (the usual case) no wait is ever added.
        self._writer = None
        self._readers: set = set()

    # -- switching

    def switch(self, name: str) -> None:
        """Make DNN `name` current: exclusive pages and page table host -> device, then (gather) resolve."""
        if name not in self.vnns:
            raise KeyError(f"DNN {name!r} is not packed; packed: {', '.join(self.vnns)}")
        table_dst, pages_out, theta_out = self._views[name]
        if self.device.type == "cuda":
            stream = torch.cuda.current_stream(self.device)
            for reader in self._readers - {stream}:
                stream.wait_stream(reader)
            self._readers.clear()
            self._writer = stream
        self.pages.switch_copies(name)
        if table_dst is None:  # CPU: host memory IS the device; the table is used where it lies
            table = self._tables[name]
        else:
            table = table_dst
            table.copy_(self._tables[name], non_blocking=True)
        self._table = table
        if self.mode == "gather":
            self.pages.gather(table, pages_out, theta_out)
            self.theta = theta_out
        self.current = name

    def bytes_moved_per_switch(self, name: str) -> int:
        """Bytes host -> device when switching to `name`: its exclusive pages plus its page table.

        On CPU the table is read where it lies (host memory is the device), so the bytes actually
        copied are the exclusive pages only; the figure keeps the table, as on a GPU."""
        return self.pages.bytes_moved(name)

    def device_bytes(self) -> int:
        """Bytes held on the device: page store (shared + E_max rows), page-table buffer and, in gather
        mode, the flat weight buffer (n_pages_max * P floats); a quantised store its blocks and scales."""
        return sum(self.device_bytes_by_format().values())

    def device_bytes_by_format(self) -> dict[str, int]:
        """`device_bytes` by part: the pages of each format (values and scales), the page-table
        buffer and the flat float32 weight buffer."""
        return {**self.pages.device_bytes_by_format(), "page_table": self.table.numel() * self.table.element_size(),
                "weight_buffer": self.weights.numel() * self.weights.element_size()}

    def host_bytes(self) -> int:
        """Bytes of level-2 memory (every DNN's exclusive pages and page table) in host memory."""
        return self.pages.host_bytes()

    def view_fraction(self, name: str) -> float:
        """zero-copy mode: the fraction of `name`'s weights its forward reads as views of the page store."""
        plan = self._plans[name]
        views = sum(p[3] for p in plan.values() if p[0] == "view")
        return views / sum(p[3] for p in plan.values())

    # -- running

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the current DNN for a batch `x` (on the device)."""
        if self.current is None:
            raise RuntimeError("no DNN is current: call switch(name) first")
        if self._writer is not None:
            stream = torch.cuda.current_stream(self.device)
            if stream != self._writer:
                stream.wait_stream(self._writer)
            self._readers.add(stream)
        model = self.models[self.current]
        if self.mode == "gather":
            return model(x, self.theta)
        return model.forward_with(x, _LazyTensors(self, self.current))  # weights resolved per layer

    __call__ = forward

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch: int = 2000) -> torch.Tensor:
        """Logits for all of `x` in batches of `batch` (2000 = evaluate.accuracy's batching)."""
        return torch.cat([self.forward(x[i : i + batch].to(self.device)) for i in range(0, len(x), batch)])

    @torch.no_grad()
    def correct(self, x: torch.Tensor, y: torch.Tensor, batch: int = 2000) -> int:
        """Correct argmax predictions of the current DNN on (x, y); an input with NaN or inf logits
        is a FloatingPointError naming the DNN (reported, never scored as a prediction)."""
        total = 0
        for i in range(0, len(x), batch):
            logits = self.forward(x[i : i + batch].to(self.device))
            broken = int((~torch.isfinite(logits).all(1)).sum())
            if broken:
                raise not_scored(f"DNN {self.current!r}", broken, len(logits))
            total += int((logits.argmax(1) == y[i : i + batch].to(self.device)).sum())
        return total

    def _switch_views(self, n: int, n_pages: int, E: int) -> tuple:
        """Views of the preallocated buffers one DNN's switch writes (slicing costs us per call)."""
        gather = self.mode == "gather"
        return (None if self._host_tables else self.table[:n_pages],
                self.weights[: n_pages * self.page_size].view(n_pages, self.page_size) if gather else None,
                self.weights[:n] if gather else None)

    # -- zero-copy internals

    def _plan(self, name: str, model: torch.nn.Module) -> dict[str, tuple]:
        """Per weight tensor: ("view", first row, offset, numel, shape) if its pages are consecutive rows
        of the page store, else ("gather", first logical page, last + 1, numel, shape, offset)."""
        if not hasattr(model, "layout"):
            raise ValueError(f"zero-copy mode needs a model with a `layout` (weightsep.flat.as_flat); {name!r} has none")
        P, table = self.page_size, self._tables[name].cpu()
        plan = {}
        for spec in model.layout:
            p0, p1 = spec.offset // P, (spec.offset + spec.numel - 1) // P + 1
            rows = table[p0:p1]
            a = spec.offset - p0 * P
            # float32 entries are plain rows (quant.table_entries), of the float32 block when quantised
            if bool((rows[1:] - rows[:-1] == 1).all()) and bool((rows >> quant.TABLE_SHIFT == 0).all()):
                plan[spec.name] = ("view", int(rows[0]), a, spec.numel, spec.shape)
            else:
                plan[spec.name] = ("gather", p0, p1, spec.numel, spec.shape, a)
        return plan

    def _resolve(self, step: tuple) -> torch.Tensor:
        if step[0] == "view":
            _, row, a, numel, shape = step
            rows = -(-(a + numel) // self.page_size)
            return self.pages.float_rows[row : row + rows].reshape(-1)[a : a + numel].view(shape)
        _, p0, p1, numel, shape, a = step
        return self.pages.gather_part(self._table[p0:p1], a + numel)[a:].view(shape)

