"""weightsep.ops' dequantising gather (custom_op/gather_dequant.cpp) against the pure-torch reference.

Buffers are built by weightsep.quant (quantize, encode, table_entries) and ops.dequant_operands, so
the tests check the real encoding; outputs must match the reference and what quantize promised, bit
for bit. `ext` (the built extension) is conftest.py's."""
from typing import NamedTuple

import pytest
import torch

from weightsep import ops, quant
from weightsep.ops import DequantOperands, dequant_operands, gather_dequant_reference

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class Case(NamedTuple):
    q: DequantOperands
    table: torch.Tensor
    n: int
    expected: torch.Tensor  # float32 [n]: quantize's values of the pages the table names

    @property
    def args(self) -> tuple:
        """The op's inputs but `out`."""
        return self.q.pages, self.q.scales, self.q.layout, self.table


def case(counts=(3, 2, 2, 3, 3), page_size=37, group=8, n_pages=9, n_weights=None, seed=0, room=None, device="cpu"):
    """Blocks of counts[code] random pages per format, and a table of `n_pages` random entries into them
    (the formats with rows only). Default: odd P, a group not dividing it, a partial last page."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.cat([torch.full((c,), code, dtype=torch.uint8) for code, c in enumerate(counts)])
    pages = torch.randn(len(codes), page_size, generator=g) * torch.rand(len(codes), 1, generator=g)
    values, scales = quant.quantize(pages, codes, group)
    q = dequant_operands(quant.encode(values, codes, scales, group), page_size, group, room, device)
    present = torch.tensor([code for code, c in enumerate(counts) if c])
    table_codes = present[torch.randint(0, len(present), (n_pages,), generator=g)]
    rows = (torch.rand(n_pages, generator=g) * torch.tensor(counts)[table_codes]).long()
    n = n_pages * page_size - 5 if n_weights is None else n_weights
    first = torch.tensor([0, *counts]).cumsum(0)  # each format's first row among `values`
    expected = values[first[table_codes] + rows].reshape(-1)[:n]
    return Case(q, quant.table_entries(table_codes, rows).to(device), n, expected.to(device))


def run(ext, c: Case) -> torch.Tensor:
    """The extension into a NaN-filled buffer's prefix; checks that nothing past n is written."""
    buffer = torch.full((c.n + 7,), float("nan"), device=c.table.device)
    ext.gather_dequant_into(*c.args, buffer[: c.n])
    assert buffer[c.n :].isnan().all()
    return buffer[: c.n]


def assert_matches_reference(ext, c: Case):
    out = run(ext, c)
    ref = gather_dequant_reference(*c.args, c.n)
    assert ref.dtype == torch.float32 and not ref.isnan().any()
    assert torch.equal(out, ref)
    assert torch.equal(out, c.expected)


@pytest.mark.parametrize("fmt", quant.FORMATS)
@pytest.mark.parametrize("page_size, group", [(37, 8), (512, 64), (16, 5), (37, 7)])
def test_each_format_alone_matches_reference(ext, fmt, page_size, group):
    """Every other block empty: the format's own pages, odd and even page sizes, partial last page."""
    counts = tuple(4 if f == fmt else 0 for f in quant.FORMATS)
    assert_matches_reference(ext, case(counts, page_size, group))


MIXED = [dict(), dict(seed=1, n_weights=9 * 37), dict(seed=2, n_weights=0), dict(seed=3, n_weights=1),
         dict(page_size=512, group=64, n_pages=40), dict(page_size=64, group=64, seed=4),
         dict(page_size=1, group=1, n_pages=11), dict(page_size=2, group=3, n_pages=5, n_weights=9),
         dict(room={"float16": 2, "int4": 1, "int8": 5}, seed=7)]


@pytest.mark.parametrize("shape", MIXED)
def test_mixed_table_matches_reference(ext, shape):
    assert_matches_reference(ext, case(**shape))


def test_parallel_chunks_match_reference(ext):
    """Enough pages for several at::parallel_for chunks (64 pages of 512 a chunk) on two threads."""
    torch.set_num_threads(2)  # conftest restores it
    assert_matches_reference(ext, case(page_size=512, group=64, n_pages=300, seed=5))


def test_operands_layout_room_and_views(ext):
    """Blocks start at multiples of ALIGN bytes in FORMATS order; the room after each format's rows is
    zeros; rows written through the views (as execution writes a DNN's exclusive rows) are gathered."""
    c = case(counts=(1, 2, 0, 3, 2), page_size=37, group=8, room={"bfloat16": 1, "int8": 2, "int4": 1})
    layout = c.q.layout.tolist()
    assert layout[:2] == [37, 8] and len(layout) == ops.LAYOUT_SIZE
    offsets, rows, firsts = layout[2::3], layout[3::3], layout[4::3]
    assert rows == [1, 2, 1, 5, 3] and offsets == sorted(offsets) and all(o % ops.ALIGN == 0 for o in offsets)
    assert firsts[3:] == [0, 5] and c.q.scales.numel() == 5 + 3 * 5
    for fmt, view in c.q.rows.items():
        assert view.dtype == quant.STORAGE[fmt] and view.shape == (rows[quant.CODE[fmt]], quant.row_width(fmt, 37))
    assert not c.q.rows["int8"][3:].any() and not c.q.row_scales["int8"][3:].any()
    assert not c.q.rows["bfloat16"].any() and not c.q.row_scales["int4"][2:].any()
    c.q.rows["int8"][4] = torch.arange(-18, 19, dtype=torch.int8)
    c.q.row_scales["int8"][4] = 0.5
    table = quant.table_entries(torch.tensor([3, 0]), torch.tensor([4, 0]))
    out = torch.empty(40)
    ext.gather_dequant_into(c.q.pages, c.q.scales, c.q.layout, table, out)
    assert torch.equal(out[:37], torch.arange(-18, 19) * 0.5)
    assert torch.equal(out[37:], c.q.rows["float32"][0, :3])


def test_int4_covers_every_value_and_is_q_times_scale(ext):
    """Groups holding exactly -7..7 (times a step), so every nibble 1..15 decodes; out == q * s."""
    P, group = 37, 16
    q = torch.arange(-7, 8, dtype=torch.float32)
    pages = torch.stack([torch.cat([q, -q.flip(0), q[:7]]) * step for step in (0.5, 0.25, 3.0)])
    codes = torch.full((3,), quant.CODE["int4"], dtype=torch.uint8)
    values, scales = quant.quantize(pages, codes, group)
    operands = dequant_operands(quant.encode(values, codes, scales, group), P, group)
    packed, packed_scales = operands.rows["int4"], operands.row_scales["int4"]
    nibbles = torch.stack([packed & 15, packed >> 4], 2).reshape(3, -1)[:, :P]
    assert set(nibbles.unique().tolist()) == set(range(1, 16))
    table = quant.table_entries(codes, torch.tensor([2, 0, 1]))
    out = run(ext, Case(operands, table, 3 * P, values[[2, 0, 1]].reshape(-1)))
    expected = (nibbles[[2, 0, 1]].float() - 8) * packed_scales[[2, 0, 1]].repeat_interleave(group, 1)[:, :P]
    assert torch.equal(out.view(3, P), expected)
    assert torch.equal(out.view(3, P), values[[2, 0, 1]])  # what quantize promised


def test_float32_table_is_an_ordinary_page_table(ext):
    """A float32 entry is just its row: the result equals gather_pages_into's on the float32 block."""
    c = case(counts=(6, 0, 0, 0, 0))
    table = torch.tensor([5, 0, 5, 2])
    out = run(ext, c._replace(table=table, n=4 * 37 - 3))
    assert torch.equal(out, ext.gather_pages(c.q.rows["float32"], table, 4 * 37 - 3))


def test_public_function_follows_backend(ext):
    c = case(seed=6)
    assert ops.gather_dequant_function() is ext.gather_dequant_into.default
    assert torch.equal(ops.gather_dequant_into(*c.args, torch.empty(c.n)), c.expected)
    ops.set_backend("torch")
    try:
        assert ops.gather_dequant_function() is ops._gather_dequant_into_reference
        assert torch.equal(ops.gather_dequant_into(*c.args, torch.empty(c.n)), c.expected)
    finally:
        ops.set_backend("extension")


def test_reference_rejects_bad_codes_and_sizes():
    pages, scales, layout, table = case().args
    with pytest.raises(ValueError, match="codes must be 0..4"):
        gather_dequant_reference(pages, scales, layout, table | (7 << quant.TABLE_SHIFT), 9 * 37)
    with pytest.raises(ValueError, match="do not fit in 9 pages of 37"):
        gather_dequant_reference(pages, scales, layout, table, 9 * 37 + 1)


def test_opcheck(ext):
    c = case()
    torch.library.opcheck(ext.gather_dequant_into.default, (*c.args, torch.empty(c.n)))


def _set(t: torch.Tensor, i: int, value: int) -> torch.Tensor:
    t = t.clone()
    t[i] = value
    return t


def _field(fmt: str, field: str) -> int:
    """Index in the layout of a format's "offset", "rows" or "first" (scale)."""
    return 2 + 3 * quant.CODE[fmt] + ("offset", "rows", "first").index(field)


# (pages, scales, layout, table, out) -> bad ones, and the error. Rows (2, 3, 3, 3, 3), P = 37, group = 8:
# blocks at bytes 0, 320, 576, 832, 960 of 1024; int8 scales 0-2, int4 3-17 of 18.
BAD = [
    (lambda p, s, lay, t, o: (p.float(), s, lay, t, o), "pages must be a contiguous 1-D uint8 buffer, got float32"),
    (lambda p, s, lay, t, o: (p.view(16, 64), s, lay, t, o), r"pages must be .*, got uint8 \[16, 64\]"),
    (lambda p, s, lay, t, o: (torch.zeros(2048, dtype=torch.uint8)[::2], s, lay, t, o), r"pages .*\(not contiguous\)"),
    (lambda p, s, lay, t, o: (p, s.double(), lay, t, o), "scales must be a contiguous 1-D float32 buffer, got float64"),
    (lambda p, s, lay, t, o: (p, s, lay.int(), t, o),
     r"layout must be a contiguous int64 CPU tensor of 17 values .*, got int32 \[17\] on cpu"),
    (lambda p, s, lay, t, o: (p, s, lay[:16], t, o), r"layout must be .*, got int64 \[16\]"),
    (lambda p, s, lay, t, o: (p, s, _set(lay, 0, 0), t, o), "page_size and group must be > 0, got 0 and 8"),
    (lambda p, s, lay, t, o: (p, s, _set(lay, 1, -2), t, o), "page_size and group must be > 0, got 37 and -2"),
    (lambda p, s, lay, t, o: (p, s, _set(lay, _field("int8", "rows"), 10), t, o),
     r"layout's int8 block, 10 rows of 37 bytes at byte offset 832, does not fit in pages \(1024 bytes\)"),
    (lambda p, s, lay, t, o: (p, s, _set(lay, _field("int4", "offset"), -64), t, o),
     r"layout's int4 block, 3 rows of 19 bytes at byte offset -64, does not fit"),
    (lambda p, s, lay, t, o: (p, s, _set(lay, _field("float16", "offset"), 321), t, o),
     "layout's float16 block at byte offset 321 is not aligned to its 2-byte elements"),
    (lambda p, s, lay, t, o: (p, s, _set(lay, _field("int4", "first"), 4), t, o),
     r"layout's int4 scales, 3 rows of 5 from scale 4, do not fit in scales \(18 floats\)"),
    (lambda p, s, lay, t, o: (p, s, _set(lay, _field("int8", "first"), -1), t, o), "layout's int8 scales, 3 rows of 1"),
    (lambda p, s, lay, t, o: (p, s, lay, t.int(), o), "page_table must be int64, got Int"),
    (lambda p, s, lay, t, o: (p, s, lay, t.view(3, 3), o), "page_table must be 1-D"),
    (lambda p, s, lay, t, o: (p, s, lay, _set(t, 4, 5 << 40), o),
     r"page_table\[4\] = 5497558138880 has format code 5; codes are 0..4"),
    (lambda p, s, lay, t, o: (p, s, lay, _set(t, 0, -1), o), r"page_table\[0\] = -1 has format code -1"),
    (lambda p, s, lay, t, o: (p, s, lay, _set(t, 2, (3 << 40) | 3), o),
     r"page_table\[2\] names int8 row 3, but the int8 block has 3 rows"),
    (lambda p, s, lay, t, o: (p, s, lay, _set(t, 8, 2), o), r"page_table\[8\] names float32 row 2, but the float32 block has 2"),
    (lambda p, s, lay, t, o: (p, s, lay, t, torch.empty(9 * 37 + 1)), "n_weights = 334 does not fit in 9 pages of 37"),
    (lambda p, s, lay, t, o: (p, s, lay, t, o.double()), "out must be a contiguous 1-D float32 buffer, got float64"),
    (lambda p, s, lay, t, o: (p, s, lay, t, torch.empty(2 * len(o))[::2]), r"out must be .*\(not contiguous\)"),
    (lambda p, s, lay, t, o: (p, s, lay, t, o[:36].view(4, 9)), r"contiguous 1-D float32 buffer, got float32 \[4, 9\]"),
]


@pytest.mark.parametrize("i", range(len(BAD)))
def test_bad_input_raises_clear_error(ext, i):
    bad, match = BAD[i]
    c = case(counts=(2, 3, 3, 3, 3))
    assert c.q.layout.tolist()[2::3] == [0, 320, 576, 832, 960] and c.q.pages.numel() == 1024  # as BAD assumes
    with pytest.raises(RuntimeError, match=match):
        ext.gather_dequant_into(*bad(*c.args, torch.empty(c.n)))


@pytest.mark.cuda
@CUDA
@pytest.mark.parametrize("shape", [*MIXED, dict(page_size=512, group=64, n_pages=3000, counts=(50, 50, 50, 50, 50))])
def test_cuda_matches_reference(ext, shape):
    """Bit for bit against the CPU reference (the 3000-page case: more pages than blocks in the grid)."""
    out = run(ext, case(**shape, device="cuda"))
    assert torch.equal(out.cpu(), gather_dequant_reference(*case(**shape).args, out.numel()))


@pytest.mark.cuda
@CUDA
def test_cuda_opcheck_stream_and_device_mismatch(ext):
    c = case(device="cuda")
    assert c.q.pages.is_cuda and c.q.scales.is_cuda and not c.q.layout.is_cuda  # the layout stays on the host
    torch.library.opcheck(ext.gather_dequant_into.default, (*c.args, torch.empty(c.n, device="cuda")))
    stream, out = torch.cuda.Stream(), torch.empty(c.n, device="cuda")
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        ext.gather_dequant_into(*c.args, out)
    stream.synchronize()
    assert torch.equal(out, c.expected)
    pages, scales, layout, table = c.args
    with pytest.raises(RuntimeError, match="pages is on cpu but out on cuda:0"):
        ext.gather_dequant_into(pages.cpu(), scales, layout, table, out)
    with pytest.raises(RuntimeError, match=r"layout must be a contiguous int64 CPU tensor .* on cuda:0"):
        ext.gather_dequant_into(pages, scales, layout.cuda(), table, out)
