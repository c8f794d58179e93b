"""Quantised weight pages: the page formats, the quantiser, its fake-quantised twin for training, bytes.

A page is held in one of `FORMATS` (its *code* is the index):

* "float32" (code 0): today's pages, 4 bytes a weight;
* "float16", "bfloat16": 2 bytes a weight (round to nearest even);
* "int8": symmetric, ONE scale per page: q = clamp(round(w / s), -127, 127), s = max|w| / 127;
* "int4": symmetric, one scale per GROUP of `group` weights of the page: q in [-7, 7],
  s = max|w_group| / 7; two weights a byte (nibble = q + 8, the even weight in the low nibble).

round() is to nearest even and w / s is computed as w * (1 / s) in float32, exactly as
`torch.fake_quantize_per_channel_affine` computes it: the fake-quantised weights a DNN trains with
equal, bit for bit, the weights it runs with after `dequantize(encode(...))`. An all-zero page or
group has scale 1 (its q are 0).

In memory a block of R pages carries its float32 values (the dequantised ones: what every stage
reads), `codes` uint8 [R] and `scales` float32 [R, G], G = ceil(P / group): an int4 row holds one
scale per group, an int8 row its one page scale in all G columns, a float row zeros. On disk and on
the device each format keeps only its own rows (`encode`/`decode`): int8 one scale per row, int4 G.

    codes = torch.full((R,), CODE["int8"], dtype=torch.uint8)
    values, scales = quantize(pages, codes, group=64)      # values: float32, exactly representable
    blocks = encode(values, codes, scales, group=64)       # {"int8": (q int8 [R, P], scales [R, 1])}
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

FORMATS = ("float32", "float16", "bfloat16", "int8", "int4")
CODE = {name: code for code, name in enumerate(FORMATS)}
FLOATS = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
STORAGE = {**FLOATS, "int8": torch.int8, "int4": torch.uint8}  # the dtype of a format's compact rows (`encode`)
QMAX = {"int8": 127, "int4": 7}  # symmetric: q in [-QMAX, QMAX]
# the largest |weight| an integer page's scale may put on its grid: trained weights are O(1), and a
# scale beyond this (an edited manifest's 1e30) would load as finite garbage, so it is damage
MAX_WEIGHT = 1e4
BITS = {"float32": 32, "float16": 16, "bfloat16": 16, "int8": 8, "int4": 4}
SCALE_BYTES = 4  # a float32 scale
DEFAULT_GROUP = 64  # int4: weights per scale
TABLE_SHIFT = 40  # execution: a page-table entry (code << TABLE_SHIFT) | row names row `row` of format `code`'s block


def n_groups(page_size: int, group: int) -> int:
    """Scale columns G of a page of `page_size` weights in groups of `group`: ceil(P / group)."""
    return -(-page_size // group)


def row_bytes(fmt: str, page_size: int) -> int:
    """Bytes of one page's values in `fmt` (int4: two a byte, rounded up)."""
    return -(-page_size * BITS[fmt] // 8)


def row_width(fmt: str, page_size: int) -> int:
    """Elements of STORAGE[fmt] in one page's compact row: P, or ceil(P/2) bytes for int4."""
    return row_bytes(fmt, page_size) // STORAGE[fmt].itemsize


def scale_count(fmt: str, page_size: int, group: int) -> int:
    """Scales one page of `fmt` carries: int8 one, int4 one per group, floats none."""
    return {"int8": 1, "int4": n_groups(page_size, group)}.get(fmt, 0)


def page_bytes(fmt: str, page_size: int, group: int) -> int:
    """Bytes one page of `fmt` takes in the store and on the device: values plus scales."""
    return row_bytes(fmt, page_size) + SCALE_BYTES * scale_count(fmt, page_size, group)


def _grouped(pages: torch.Tensor, group: int) -> torch.Tensor:
    """[R, P] -> [R, G, group], zero-padded (padding never changes a group's max)."""
    R, P = pages.shape
    G = n_groups(P, group)
    return F.pad(pages, (0, G * group - P)).view(R, G, group)


def _ungrouped(grouped: torch.Tensor, page_size: int) -> torch.Tensor:
    return grouped.reshape(grouped.shape[0], -1)[:, :page_size]


def page_scales(pages: torch.Tensor, codes: torch.Tensor, group: int) -> torch.Tensor:
    """float32 [R, G]: the symmetric scales of each page for its format (see the module doc)."""
    pages = pages.detach()
    amax = _grouped(pages, group).abs().amax(2)  # [R, G]
    scales = torch.zeros_like(amax)
    for fmt, qmax in QMAX.items():
        rows = codes == CODE[fmt]
        if rows.any():
            a = amax[rows] if fmt == "int4" else amax[rows].amax(1, keepdim=True).expand(-1, amax.shape[1])
            scales[rows] = torch.where(a > 0, a / qmax, torch.ones_like(a))
    return scales


def _integer(x: torch.Tensor, scales: torch.Tensor, qmax: int) -> torch.Tensor:
    """round(x * (1 / s)) clamped to [-qmax, qmax], per group ([R, G, group] and [R, G])."""
    return torch.clamp(torch.round(x * torch.reciprocal(scales).unsqueeze(2)), -qmax, qmax)


def quantize(pages: torch.Tensor, codes: torch.Tensor, group: int,
             scales: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, scales): float32 [R, P] pages rounded to their formats (dequantised), and the scales.

    `scales` (default: `page_scales`) are used as given, so values already on a grid stay on it."""
    pages = pages.detach().to(torch.float32)
    scales = page_scales(pages, codes, group) if scales is None else scales
    values = pages.clone()
    for fmt, dtype in FLOATS.items():
        rows = codes == CODE[fmt]
        if fmt != "float32" and rows.any():
            values[rows] = pages[rows].to(dtype).to(torch.float32)
    for fmt, qmax in QMAX.items():
        rows = codes == CODE[fmt]
        if rows.any():
            s = scales[rows]
            q = _integer(_grouped(pages[rows], group), s, qmax)
            values[rows] = _ungrouped(q * s.unsqueeze(2), pages.shape[1])
    return values, scales


class _RoundToFloat(torch.autograd.Function):
    """w -> w rounded to a narrower float and back, with a straight-through gradient (the cast's own
    backward would round the gradient to that float too, and small gradients would vanish)."""

    @staticmethod
    def forward(ctx, pages, dtype):
        return pages.to(dtype).to(torch.float32)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def fake_quantize(pages: torch.Tensor, codes: torch.Tensor, group: int) -> torch.Tensor:
    """`quantize(pages, codes, group)[0]` with a straight-through gradient, for training.

    int8 and int4 rows go through torch's `fake_quantize_per_channel_affine` (one channel per group,
    scales detached); float16/bfloat16 rows through a rounding cast. Float32 rows pass unchanged."""
    if not bool((codes != CODE["float32"]).any()):
        return pages
    out = pages
    scales = page_scales(pages, codes, group)
    R, P = pages.shape
    for fmt, code in CODE.items():
        rows = (codes == code).nonzero().flatten()
        if fmt == "float32" or not len(rows):
            continue
        part = pages.index_select(0, rows)
        if fmt in FLOATS:
            part = _RoundToFloat.apply(part, FLOATS[fmt])
        else:
            grouped = _grouped(part, group)
            s = scales[rows].reshape(-1)
            flat = torch.fake_quantize_per_channel_affine(
                grouped.reshape(-1, group), s, torch.zeros_like(s, dtype=torch.int32), 0, -QMAX[fmt], QMAX[fmt])
            part = _ungrouped(flat.view(grouped.shape), P)
        out = out.index_copy(0, rows, part)
    return out


def is_exact(values: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, group: int) -> torch.Tensor:
    """bool [R]: does each page hold values its format represents exactly with these scales?"""
    again, _ = quantize(values, codes, group, scales)
    return (again == values).all(1)


# ---------------------------------------------------------------- on disk and on the device


def table_entries(codes: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """int64 entries of the dequantising gather's page table: (code << TABLE_SHIFT) | row-in-its-block.
    A float32 page's entry is its row, so a float32-only table is an ordinary page table."""
    return (codes.to(torch.int64) << TABLE_SHIFT) | rows.to(torch.int64)


def encode(values: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, group: int) -> dict[str, tuple]:
    """The compact form of a block, per format present: fmt -> (rows, scales).

    float32/float16/bfloat16: rows [R_f, P] of that dtype, scales None; int8: rows int8 [R_f, P],
    scales [R_f, 1]; int4: rows uint8 [R_f, ceil(P/2)] (two weights a byte), scales [R_f, G]. Rows
    keep the block's order. `values` must be exact for their formats (`is_exact`)."""
    P = values.shape[1]
    out = {}
    for fmt, code in CODE.items():
        rows = codes == code
        if not rows.any():
            continue
        part = values[rows]
        if fmt in FLOATS:
            out[fmt] = (part.to(FLOATS[fmt]), None)
            continue
        s = scales[rows]
        q = _ungrouped(_integer(_grouped(part, group), s, QMAX[fmt]), P).to(torch.int8)
        if fmt == "int8":
            out[fmt] = (q, s[:, :1].contiguous())
        else:
            nibbles = F.pad((q + 8).to(torch.uint8), (0, P % 2))
            out[fmt] = (nibbles[:, 0::2] | (nibbles[:, 1::2] << 4), s.contiguous())
    return out


def dequantize_rows(fmt: str, rows: torch.Tensor, scales: torch.Tensor | None, page_size: int,
                    group: int) -> torch.Tensor:
    """float32 [R_f, P] from one format's compact rows (`encode`'s output for that format): the
    pure-torch dequantisation the kernels are tested against (w = q * s, one float32 multiply)."""
    if fmt in FLOATS:
        return rows.to(torch.float32)
    if fmt == "int4":
        q = torch.stack([rows & 0xF, rows >> 4], 2).reshape(rows.shape[0], -1)[:, :page_size].to(torch.float32) - 8
    else:
        q = rows.to(torch.float32)
    if fmt == "int8":
        return q * scales
    return q * scales.repeat_interleave(group, 1)[:, :page_size]


def decode(blocks: dict[str, tuple], codes: torch.Tensor, page_size: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of `encode`: (values float32 [R, P], scales float32 [R, G]). Blocks whose rows, widths,
    dtypes or scales do not fit the codes are a ValueError naming the format."""
    R, G = codes.numel(), n_groups(page_size, group)
    values = torch.zeros(R, page_size)
    scales = torch.zeros(R, G)
    counts = torch.bincount(codes.long(), minlength=len(FORMATS)).tolist() if R else [0] * len(FORMATS)
    if len(counts) > len(FORMATS):
        raise ValueError(f"format code {len(counts) - 1} is not one of {len(FORMATS)} ({', '.join(FORMATS)})")
    for fmt, count in zip(FORMATS, counts):
        rows, s = blocks.get(fmt, (None, None))
        if rows is None:
            if count:
                raise ValueError(f"{count} pages are {fmt} but no {fmt} rows are stored")
            continue
        dtype, width, n_scales = STORAGE[fmt], row_width(fmt, page_size), scale_count(fmt, page_size, group)
        if rows.dtype != dtype or list(rows.shape) != [count, width]:
            raise ValueError(f"{fmt} rows are {rows.dtype} {list(rows.shape)}, expected {dtype} [{count}, {width}]")
        if n_scales and (s is None or s.dtype != torch.float32 or list(s.shape) != [count, n_scales]):
            found = "none" if s is None else f"{s.dtype} {list(s.shape)}"
            raise ValueError(f"{fmt} scales are {found}, expected float32 [{count}, {n_scales}]")
        where = codes == CODE[fmt]
        values[where] = dequantize_rows(fmt, rows, s, page_size, group)
        if s is not None:
            scales[where] = s.expand(-1, G) if fmt == "int8" else s
    return values, scales
