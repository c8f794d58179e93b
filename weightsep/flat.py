"""Any `nn.Module` as one flat weight vector: the form every stage of weightsep works on.

Pages, Fisher vectors and page tables are index-aligned with ONE 1-D weight vector per DNN. The
papers' `TemplateNet` keeps its weights that way itself (TF order, so the authors' checkpoints
import index for index). `FlatModule` gives any other module the same interface:

* `theta`: its trainable parameters in `named_parameters()` order, each flattened row-major, in
  one `nn.Parameter`. Tied parameters (one tensor registered under two names) count once. The
  module's own parameters are re-pointed at views of `theta` (same storage, no copy), so
  `module.state_dict()` and the module's own `reset_parameters()` see and write the flat vector.
* `forward(x, theta=None)`: the module run through `torch.func.functional_call` with its
  parameters viewed out of any `[n_weights]` vector (gathered from pages, a Fisher probe, a
  joint-optimisation step): views, never copies.
* buffers (batch-norm running statistics and the like) stay the module's own: updated by its own
  code in train mode, never shared, saved with the DNN's exclusive state (`buffer_state`).

Checks name the parameter: parameters that are not float32, frozen ones, NaN or inf weights, and
forwards that fail, return something other than logits or change a parameter in place are refused
(`FlatError`, a ValueError, never torch's own error). `layout` lists `TensorSpec(name, shape,
offset)` per parameter, as `TemplateNet.layout` does, so pages can be labelled with the parameters
they cover.

    net = as_flat(my_module, input_shape=(13, 1, 101), classes=10)
    logits = net(x)                     # net.theta
    logits = net(x, theta=packed)       # any [n_weights] vector
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
from torch import nn
from torch.func import functional_call

from .model import TemplateNet, TensorSpec, flatten, views


class FlatError(ValueError):
    """A module that cannot be packed as it is; the message names the parameter."""


def _parameters(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Trainable parameters in `named_parameters()` order (tied ones once), checked."""
    found = []
    for name, p in module.named_parameters():
        if p.is_complex() or not p.is_floating_point():
            raise FlatError(f"parameter {name!r} is {p.dtype}: weight pages hold real float weights; "
                            "register it as a buffer if it is not trained")
        if not p.requires_grad:
            raise FlatError(f"parameter {name!r} is frozen (requires_grad=False): every packed weight is trained; "
                            "register it as a buffer instead")
        found.append((name, p))
    if not found:
        raise FlatError(f"{type(module).__name__} has no trainable parameters: nothing to pack")
    dtypes = {p.dtype for _, p in found}
    if len(dtypes) > 1:
        raise FlatError(f"parameters mix dtypes {sorted(map(str, dtypes))} (e.g. {found[0][0]!r} is {found[0][1].dtype}): "
                        "one flat vector holds one dtype")
    if dtypes != {torch.float32}:
        raise FlatError(f"parameters are {found[0][1].dtype}: weight pages hold float32 weights; "
                        "convert the module with .float() first")
    return found


def _owner(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, leaf = name.rpartition(".")
    return (module.get_submodule(path) if path else module), leaf


class FlatModule(nn.Module):
    """`module` with every trainable parameter in one flat vector `theta` (see the module doc)."""

    def __init__(self, module: nn.Module, input_shape: tuple[int, ...] | None = None, classes: int | None = None):
        super().__init__()
        params = _parameters(module)
        self.module = module
        self.input_shape = None if input_shape is None else tuple(input_shape)  # unknown: only runs packed weights
        self.classes = None if classes is None else int(classes)
        specs, offset = [], 0
        for name, p in params:
            specs.append(TensorSpec(name, tuple(p.shape), offset))
            offset += p.numel()
        self.layout: list[TensorSpec] = specs
        self.n_weights = offset
        self.theta = nn.Parameter(torch.cat([p.detach().reshape(-1) for _, p in params]))
        # every name a parameter is registered under, tied ones included: all re-pointed at theta
        self._aliases = [name for name, _ in module.named_parameters(remove_duplicate=False)]
        self._tie()

    def _tie(self) -> None:
        """Point the module's own parameters at views of `theta` (shared storage: no copy, one truth)."""
        parts = self.tensors(self.theta.detach())
        by_tensor = {id(p): parts[n] for n, p in self.module.named_parameters()}
        for alias in self._aliases:
            owner, leaf = _owner(self.module, alias)
            p = getattr(owner, leaf)
            p.data = by_tensor[id(p)]

    def _apply(self, fn, recurse=True):  # .to(device) etc. move theta and the module apart: tie again
        out = super()._apply(fn, recurse)
        self._tie()
        return out

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """The module's own initialisation (every submodule's `reset_parameters()`), seeded from
        `generator`, written into `theta` through the tied views; buffers reset too."""
        seed = int(torch.randint(0, 2**62, (1,), generator=generator)) if generator is not None else None
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            if seed is not None:
                torch.manual_seed(seed)
            for m in self.module.modules():
                for reset in ("reset_parameters", "reset_running_stats"):
                    if callable(getattr(m, reset, None)):
                        getattr(m, reset)()
        self._check_tied()

    def _check_tied(self) -> None:
        """A module whose reset_parameters replaces tensors (not in place) would leave `theta` behind."""
        base = self.theta.data_ptr()
        for name, p in self.module.named_parameters():
            if p.untyped_storage().data_ptr() != self.theta.untyped_storage().data_ptr():
                raise FlatError(f"parameter {name!r}: its module's reset_parameters() replaced the tensor instead of "
                                f"initialising it in place (storage {p.data_ptr():#x}, theta at {base:#x})")

    def tensors(self, theta: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Parameter-shaped views of a flat vector (default: `theta`), by parameter name."""
        return views(self.layout, self.theta if theta is None else theta)

    def flatten(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The inverse of `tensors`: parameters by name -> one flat vector, checking names and shapes."""
        return flatten(self.layout, tensors, self.theta.dtype)

    def forward(self, x: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_with(x, self.tensors(theta))

    def forward_with(self, x: torch.Tensor, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The module's forward with its parameters taken from `tensors` by name (views or resolved pages)."""
        x = x.to(self.theta.dtype)  # data may be stored at half precision (weightsep.prepared)
        return functional_call(self.module, dict(tensors), (x,))

    def describe(self) -> str:
        """A one-line summary for tables and the manifest."""
        buffers = sum(b.numel() for b in self.module.buffers())
        return (f"{type(self.module).__name__} ({len(self.layout)} parameter tensors"
                f"{f', {buffers:,} buffer values' if buffers else ''}), {self.n_weights:,} weights")

    def check_forward(self) -> None:
        """Run one forward on zeros and refuse a module that changes a parameter in place in forward
        (the pages would silently change under every DNN sharing them). Buffers are restored after."""
        bad = [s.name for s, t in zip(self.layout, self.tensors().values()) if not torch.isfinite(t).all()]
        if bad:
            raise FlatError(f"parameter {', '.join(map(repr, bad))} holds NaN or inf: a DNN to pack has finite weights")
        saved = buffer_state(self)
        probe = self.theta.detach().clone()
        version = probe._version
        with torch.no_grad(), evaluating(self):
            try:
                out = self(torch.zeros(2, *self.input_shape), probe)
            except Exception as e:  # the module's own code: whatever it raises, the module is what is refused
                raise FlatError(f"forward on a batch of 2 zero inputs of shape {self.input_shape} fails: "
                                f"{type(e).__name__}: {e}") from None
        load_buffer_state(self, saved, "the module")
        if probe._version != version or not torch.equal(probe, self.theta.detach()):
            changed = [s.name for s, a, b in zip(self.layout, self.tensors(probe).values(), self.tensors().values())
                       if not torch.equal(a, b)]
            raise FlatError(f"forward changes parameter {', '.join(map(repr, changed)) or '(one of them)'} in place: "
                            "packed weights are shared between DNNs and must be read-only in forward")
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, self.classes):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else f"a {type(out).__name__}, not a tensor"
            raise FlatError(f"forward on a batch of 2 inputs of shape {self.input_shape} gives {got}, "
                            f"expected (2, {self.classes}) logits")


def as_flat(module: nn.Module, input_shape: tuple[int, ...] | None = None, classes: int | None = None) -> nn.Module:
    """A model every stage can run: `TemplateNet` as it is, any other module wrapped in `FlatModule`
    (once: a module already wrapped gives its wrapper back). Given the input shape and the number of
    classes, one forward on zeros checks it (`FlatModule.check_forward`); without them the wrapper
    only runs weights it is given (e.g. `PackedModel` on a store's pages)."""
    if isinstance(module, TemplateNet | FlatModule):
        return module
    if not isinstance(module, nn.Module):
        raise FlatError(f"expected a torch.nn.Module, got {type(module).__name__}")
    wrapper = getattr(module, "_weightsep_flat", None)
    if wrapper is not None and (classes is None or wrapper.classes is not None):
        return wrapper  # one made without input shape and classes (`PackedModel`'s) is made again with them
    net = FlatModule(module, input_shape, classes)
    if input_shape is not None and classes is not None:
        net.check_forward()
    object.__setattr__(module, "_weightsep_flat", net)  # not a submodule: no cycle in modules()
    return net


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode (batch norm reads its running statistics, updates nothing), then back."""
    training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(training)


def signature(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """Parameter names and shapes in flat order: two builds of one DNN must agree on it."""
    return [(s.name, s.shape) for s in model.layout]


def parameter_sizes(model: nn.Module) -> list[list]:
    """[[name, numel], ...] in flat order (what a store records to label pages)."""
    return [[s.name, s.numel] for s in model.layout]


def check_parameters(model: nn.Module, n_weights: int, recorded: list | None, who: str) -> None:
    """The model's flat layout against a store's: its weight count and, where the store recorded them
    (`parameter_sizes`), the parameter names and sizes in order (ValueError names the first mismatch)."""
    if model.n_weights != n_weights:
        raise ValueError(f"{who}: the model has {model.n_weights:,} weights, the store {n_weights:,}")
    if recorded is not None and recorded != parameter_sizes(model):
        raise ValueError(f"{who}: the model's parameters are not the ones packed "
                         f"(store vs model: {first_difference(recorded, parameter_sizes(model))})")


def first_difference(expected: list, found: list) -> str:
    """Where two parameter lists (names with shapes or sizes, in flat order) first disagree, for messages."""
    return next((f"{a} vs {b}" for a, b in zip(expected, found) if a != b), f"{len(expected)} vs {len(found)} tensors")


def page_labels(sizes: list[list], page_size: int) -> list[str]:
    """For each page of the flat vector, the parameters it covers: "fc.weight", or "a.bias .. b.weight"."""
    labels, start = [], 0
    spans = []
    for name, numel in sizes:
        spans.append((start, start + numel, name))
        start += numel
    for first in range(0, start, page_size):
        names = [name for a, b, name in spans if a < first + page_size and b > first]
        labels.append(names[0] if len(names) == 1 else f"{names[0]} .. {names[-1]} ({len(names)})")
    return labels


def buffer_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's buffers by name (batch-norm statistics...); {} for `TemplateNet`."""
    return {name: b.detach().clone() for name, b in model.named_buffers()}


def load_buffer_state(model: nn.Module, buffers: Mapping[str, torch.Tensor], who: str) -> None:
    """Copy saved buffers into the model in place, checking names, shapes and dtypes (ValueError names them)."""
    own = dict(model.named_buffers())
    if set(own) != set(buffers):
        raise ValueError(f"{who}: buffers {sorted(buffers)} do not match the model's {sorted(own)}")
    with torch.no_grad():
        for name, b in own.items():
            src = buffers[name]
            if src.shape != b.shape or src.dtype != b.dtype:
                raise ValueError(f"{who}: buffer {name!r} is {src.dtype} {list(src.shape)}, the model's "
                                 f"{b.dtype} {list(b.shape)}")
            b.copy_(src)
