"""Export a packed store as a self-contained C99 library for microcontrollers (`export --format c`).

The library is the store's two levels as const arrays in named sections, so that a linker script
can place them in different memories (docs/deploy.md): `.ws_level1`, the shared pages (and their
scales); `.ws_level2`, each DNN's exclusive pages, scales and page table. Beside them, the runtime
(c_runtime/: `ws_switch` resolves a page table into page pointers, `ws_run` runs the papers'
template network reading each weight through them, dequantising int8 pages on the fly, with no
dynamic allocation) and a driver (`ws_main.c`) that checks an export on files of inputs. Pages are
exported as the store holds them: float32, or int8 with one scale a page (a store whose every page
is int8: `quantize --precision int8`, then `joint`); weights are written exactly (hex floats).

Only `TemplateNet` DNNs (VALID convs, max pooling, leaky ReLU, dense layers) run in the C runtime; a
DNN of any other module is refused, naming its first layer the runtime lacks.

    report = export_c(state, models, Path("out"))   # out/: ws_model.h, ws_model.c, the runtime, memory.json
"""
from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import torch

from .files import atomic_write_text
from .formats import Float32Pages, QuantizedPages
from .model import TemplateNet
from .quant import CODE
from .state import PackedState

_HERE = Path(__file__).resolve().parent
# the repository's c_runtime/; a wheel carries it as weightsep/c_runtime (pyproject.toml)
RUNTIME_DIR = next((d for d in (_HERE / "c_runtime", _HERE.parent / "c_runtime") if (d / "ws_runtime.c").is_file()),
                   _HERE.parent / "c_runtime")
RUNTIME_FILES = ("ws_runtime.h", "ws_runtime.c", "ws_main.c", "ws_count.c", "mps2_startup.c", "mps2_an386.ld")
LIBRARY = ("ws_runtime.c", "ws_model.c")
# one flag set for every build, so that host and Cortex-M builds round alike (no fused multiply-add)
C_FLAGS = ("-std=c99", "-O2", "-ffp-contract=off", "-Wall", "-Wextra")
TARGETS = {  # compiler and flags per target; "mps2-an386": QEMU's Cortex-M4F board, files and argv by semihosting
    "host": ("cc", ()),
    "mps2-an386": ("arm-none-eabi-gcc", ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16",
                                          "--specs=rdimon.specs", "-T", "mps2_an386.ld", "mps2_startup.c")),
}
QEMU = ("qemu-system-arm", "-M", "mps2-an386", "-nographic", "-monitor", "none", "-serial", "none")
ACT_CODES = {"leaky_relu": 0, "sigmoid": 1, "relu": 2}  # ws_runtime.h's WS_LEAKY_RELU, WS_SIGMOID, WS_RELU
POINTER_BYTES = 4  # a page pointer on a 32-bit microcontroller (the RAM report)
TABLE_ENTRY_BYTES = 2  # uint16_t page-table entries
MAX_TABLE_ENTRY = 2 ** 16 - 1


def page_format(state: PackedState) -> str:
    """"float32" or "int8": what the C runtime holds; a ValueError naming the formats of any other store."""
    fmt = state.format
    if isinstance(fmt, Float32Pages):
        return "float32"
    if isinstance(fmt, QuantizedPages):
        codes = torch.cat([fmt.shared_codes, *fmt.exclusive_codes.values()])
        if bool((codes == CODE["int8"]).all()):
            return "int8"
        held = sorted({name for name, code in CODE.items() if bool((codes == code).any())})
        raise ValueError(f"the C runtime holds float32 or int8 pages; this store holds {', '.join(held)} "
                         "(quantize --precision int8, then joint, makes an int8 store)")
    raise ValueError(f"the C runtime cannot hold pages of format {type(fmt).__name__}")


def check_template(name: str, model: torch.nn.Module) -> TemplateNet:
    """`model` if the C runtime runs it; else a ValueError naming the DNN and its first layer the runtime lacks."""
    if isinstance(model, TemplateNet):
        if model.hidden_act not in ACT_CODES:
            raise ValueError(f"DNN {name!r}: hidden activation {model.hidden_act!r} is not in the C runtime "
                             f"({', '.join(ACT_CODES)})")
        return model
    inner = getattr(model, "module", model)
    leaves = [(n, m) for n, m in inner.named_modules() if not list(m.children())]
    lacking = next(((n, m) for n, m in leaves if not isinstance(m, (torch.nn.Linear, torch.nn.LeakyReLU))), None)
    layer = f"layer {lacking[0]!r} ({type(lacking[1]).__name__})" if lacking else f"module {type(inner).__name__}"
    raise ValueError(f"DNN {name!r}: the C runtime runs only the template network (VALID convs, max pooling, "
                     f"leaky ReLU, dense layers); {layer} is not one of them")


def export_c(state: PackedState, models: dict[str, torch.nn.Module], out: Path) -> dict:
    """Write the C library of `state` (its DNNs' `models` give the architectures) into `out`; returns the
    memory report (also written as out/memory.json)."""
    fmt = page_format(state)
    missing = [name for name in state.vnns if name not in models]
    if missing:
        raise ValueError(f"no model given for packed DNN(s) {', '.join(missing)}: export needs each one's architecture")
    nets = {name: check_template(name, models[name]) for name in state.vnns}
    largest = max((int(v.page_table.max()) for v in state.vnns.values() if v.n_pages), default=0)
    if largest > MAX_TABLE_ENTRY:
        raise ValueError(f"a page-table entry of {largest} does not fit the C runtime's uint16_t entries")
    out.mkdir(parents=True, exist_ok=True)
    idents = c_identifiers(list(state.vnns))
    atomic_write_text(out / "ws_model.h", header(state, nets, fmt, idents))
    atomic_write_text(out / "ws_model.c", source(state, nets, fmt, idents))
    for f in RUNTIME_FILES:
        shutil.copyfile(RUNTIME_DIR / f, out / f)
    report = memory(state, nets, fmt)
    atomic_write_text(out / "memory.json", json.dumps(report, indent=1) + "\n")
    return report


def build(out: Path, target: str = "host", driver: str = "ws_main.c") -> Path:
    """Compile an export in `out` with `driver` for `target` (TARGETS); the binary's path. A missing compiler or
    a failed build is a RuntimeError with the compiler's message."""
    cc, flags = TARGETS[target]
    binary = out / f"{Path(driver).stem}-{target}{'' if target == 'host' else '.elf'}"
    cmd = [cc, *C_FLAGS, *flags, "-o", binary.name, driver, *LIBRARY, "-lm"]
    try:
        done = subprocess.run(cmd, cwd=out, capture_output=True, text=True)
    except FileNotFoundError:
        raise RuntimeError(f"{cc} is not installed (./setup.sh --mcu installs the Cortex-M tools)") from None
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed in {out}: {done.stderr.strip()[-2000:]}")
    return binary


def run_binary(binary: Path, args: list[str], target: str = "host", icount: bool = False) -> str:
    """Run a built driver in its folder (under QEMU for a Cortex-M target; `icount`: one virtual nanosecond an
    instruction, for ws_count); its standard output. A non-zero exit is a RuntimeError."""
    if target == "host":
        cmd = [str(binary), *args]
    else:
        argv = ",".join(f"arg={a}" for a in [binary.stem, *args])
        cmd = [*QEMU, *(["-icount", "shift=0"] if icount else []), "-semihosting-config",
               f"enable=on,target=native,{argv}", "-kernel", binary.name]
    done = subprocess.run(cmd, cwd=binary.parent, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}: {(done.stderr or done.stdout).strip()[-2000:]}")
    return done.stdout


def c_identifiers(names: list[str]) -> dict[str, str]:
    """Each DNN name as a C identifier suffix (other characters as _), distinct."""
    out: dict[str, str] = {}
    for name in names:
        ident = re.sub(r"\W", "_", name, flags=re.ASCII)
        while ident in out.values():
            ident += "_"
        out[name] = ident
    return out


def activations(net: TemplateNet) -> list[int]:
    """The sizes (floats) of every activation `ws_run` holds for `net`: its input, each conv's output before
    and after pooling, each dense layer's output."""
    sizes = [math.prod(net.input_shape)]
    if net.convs:
        c, h, w = net.input_shape
        for conv in net.convs:
            h, w, c = h - conv.kh + 1, w - conv.kw + 1, conv.out
            sizes.append(h * w * c)
            h, w = h // conv.pool[0], w // conv.pool[1]
            sizes.append(h * w * c)
    return sizes + [*net.dense, net.classes]


def scratch_floats(nets: dict[str, TemplateNet]) -> int:
    """`ws_run`'s scratch: two buffers (ping-pong), each the largest activation of any DNN."""
    return 2 * max(max(activations(net)) for net in nets.values())


def memory(state: PackedState, nets: dict[str, TemplateNet], fmt: str) -> dict:
    """Flash for the data of each level, and RAM, in bytes; and the same DNNs exported alone (each DNN's
    weights in `fmt`, one scale a page of int8, no table): what the pack saves."""
    value, scale = (1, 4) if fmt == "int8" else (4, 0)
    P, S = state.page_size, state.n_shared
    level1 = S * (P * value + scale)
    exclusive = sum(v.n_exclusive * (P * value + scale) for v in state.vnns.values())
    tables = TABLE_ENTRY_BYTES * sum(v.n_pages for v in state.vnns.values())
    max_pages = max(v.n_pages for v in state.vnns.values())
    alone = sum(v.n_weights * value + v.n_pages * scale for v in state.vnns.values())
    return {"format": fmt, "page_size": P, "dnns": len(nets),
            "flash_bytes": {"level1_shared_pages": level1, "level2_exclusive_pages": exclusive, "level2_page_tables": tables,
                            "weights_total": level1 + exclusive + tables},
            "ram_bytes": {"page_pointers": max_pages * (POINTER_BYTES + scale), "scratch": 4 * scratch_floats(nets)},
            "alone_flash_bytes": alone}


def _floats(values: torch.Tensor) -> str:
    """float32 values as exact C hex literals."""
    return ",".join(f"{v.hex()}f" for v in values.double().tolist())


def _ints(values: torch.Tensor) -> str:
    return ",".join(str(v) for v in values.tolist())


def _pages(values: torch.Tensor, scales: torch.Tensor | None, fmt: str) -> tuple[str, str]:
    """A block of pages [R, P] as C initialisers: int8 codes (values / scale, exact on the grid) and their
    scales, or float32 values."""
    if fmt == "float32":
        return ",\n".join("{" + _floats(row) + "}" for row in values), ""
    s = scales[:, 0]
    codes = torch.round(values / s[:, None]).to(torch.int8)
    if not torch.equal(codes.float() * s[:, None], values):
        raise ValueError("int8 pages are not on their scale's grid: the store is damaged")
    return ",\n".join("{" + _ints(row) + "}" for row in codes), _floats(s)


def header(state: PackedState, nets: dict[str, TemplateNet], fmt: str, idents: dict[str, str]) -> str:
    lines = ["/* Generated by `python -m weightsep export --format c`: the store's constants. */",
             "#ifndef WS_MODEL_H", "#define WS_MODEL_H",
             f"#define WS_INT8 {int(fmt == 'int8')}",
             f"#define WS_PAGE_SIZE {state.page_size}",
             f"#define WS_N_SHARED {state.n_shared}",
             f"#define WS_N_DNNS {len(nets)}",
             f"#define WS_MAX_PAGES {max(v.n_pages for v in state.vnns.values())}",
             f"#define WS_SCRATCH_FLOATS {scratch_floats(nets)}",
             f"#define WS_MAX_INPUT {max(activations(net)[0] for net in nets.values())}",
             f"#define WS_MAX_CLASSES {max(net.classes for net in nets.values())}",
             "#if defined(__GNUC__)",
             '#define WS_LEVEL1 __attribute__((section(".ws_level1")))',
             '#define WS_LEVEL2 __attribute__((section(".ws_level2")))',
             "#else", "#define WS_LEVEL1", "#define WS_LEVEL2", "#endif",
             "enum {" + ", ".join(f"WS_DNN_{idents[n]} = {i}" for i, n in enumerate(nets)) + "};",
             "#endif", ""]
    return "\n".join(lines)


def source(state: PackedState, nets: dict[str, TemplateNet], fmt: str, idents: dict[str, str]) -> str:
    ctype = "int8_t" if fmt == "int8" else "float"
    held = state.format
    shared_scales = held.shared_scales if fmt == "int8" else None
    pages, scales = _pages(state.shared_pages, shared_scales, fmt)
    out = ["/* Generated by `python -m weightsep export --format c`: the store's pages, tables and DNNs. */",
           '#include "ws_runtime.h"', "",
           f"WS_LEVEL1 const {ctype} ws_shared_pages[WS_N_SHARED][WS_PAGE_SIZE] = {{\n{pages}}};"]
    if fmt == "int8":
        out.append(f"WS_LEVEL1 const float ws_shared_scales[WS_N_SHARED] = {{{scales}}};")
    descriptors = []
    for name, net in nets.items():
        vnn, ident = state.vnns[name], idents[name]
        E = vnn.n_exclusive
        exclusive, excl_scales = (_pages(vnn.exclusive_pages, held.exclusive_scales[name] if fmt == "int8" else None, fmt)
                                  if E else ("{0}", "0"))
        rows = max(E, 1)  # C has no empty arrays
        out.append(f"WS_LEVEL2 static const {ctype} exclusive_{ident}[{rows}][WS_PAGE_SIZE] = {{\n{exclusive}}};")
        if fmt == "int8":
            out.append(f"WS_LEVEL2 static const float exclusive_scales_{ident}[{rows}] = {{{excl_scales}}};")
        out.append(f"WS_LEVEL2 static const uint16_t table_{ident}[{vnn.n_pages}] = {{{_ints(vnn.page_table)}}};")
        convs = ",".join(f"{{{c.kh},{c.kw},{c.out},{c.pool[0]},{c.pool[1]}}}" for c in net.convs) or "{0,0,0,0,0}"
        out.append(f"static const ws_conv convs_{ident}[] = {{{convs}}};")
        out.append(f"static const int16_t dense_{ident}[] = {{{','.join(map(str, net.dense)) or '0'}}};")
        c, h, w = net.input_shape if net.convs else (activations(net)[0], 1, 1)
        descriptors.append(
            f'{{"{name}", {c}, {h}, {w}, {len(net.convs)}, {len(net.dense)}, {net.classes}, {ACT_CODES[net.hidden_act]}, '
            f"convs_{ident}, dense_{ident}, {vnn.n_weights}, {vnn.n_pages}, table_{ident}, exclusive_{ident}, "
            + (f"exclusive_scales_{ident}" if fmt == "int8" else "0") + "}")
    out.append("const ws_dnn ws_dnns[WS_N_DNNS] = {\n" + ",\n".join(descriptors) + "};")
    return "\n".join(out) + "\n"
