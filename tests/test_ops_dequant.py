"""weightsep.ops' dequantising gather (custom_op/gather_dequant.cpp) against the pure-torch reference.

Blocks are built by weightsep.quant (quantize, encode, table_entries), so the tests check the real
encoding; outputs must match bit for bit. `ext` (the built extension) is conftest.py's."""
import pytest
import torch

from weightsep import ops, quant
from weightsep.ops import dequant_operands, gather_dequant_reference

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def case(counts=(3, 2, 2, 3, 3), page_size=37, group=8, n_pages=9, n_weights=None, seed=0, device="cpu"):
    """Blocks of counts[code] random pages per format, and a table of `n_pages` random entries into them
    (the formats with rows only). Default: odd P, a group not dividing it, a partial last page."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.cat([torch.full((c,), code, dtype=torch.uint8) for code, c in enumerate(counts)])
    pages = torch.randn(len(codes), page_size, generator=g) * torch.rand(len(codes), 1, generator=g)
    values, scales = quant.quantize(pages, codes, group)
    blocks, block_scales = dequant_operands(quant.encode(values, codes, scales, group), page_size, group)
    present = torch.tensor([code for code, c in enumerate(counts) if c])
    table_codes = present[torch.randint(0, len(present), (n_pages,), generator=g)]
    rows = (torch.rand(n_pages, generator=g) * torch.tensor(counts)[table_codes]).long()
    table = quant.table_entries(table_codes, rows)
    n = n_pages * page_size - 5 if n_weights is None else n_weights
    return ([b.to(device) for b in blocks], [s.to(device) for s in block_scales], table.to(device), page_size, group,
            n)


def run(ext, blocks, scales, table, page_size, group, n):
    """The extension into a NaN-filled buffer's prefix; checks that nothing past n is written."""
    buffer = torch.full((n + 7,), float("nan"), device=table.device)
    ext.gather_dequant_into(blocks, scales, table, page_size, group, buffer[:n])
    assert buffer[n:].isnan().all()
    return buffer[:n]


def assert_matches_reference(ext, blocks, scales, table, page_size, group, n):
    out = run(ext, blocks, scales, table, page_size, group, n)
    ref = gather_dequant_reference(blocks, scales, table, page_size, group, n)
    assert ref.dtype == torch.float32 and not ref.isnan().any()
    assert torch.equal(out, ref)


@pytest.mark.parametrize("fmt", quant.FORMATS)
@pytest.mark.parametrize("page_size, group", [(37, 8), (512, 64), (16, 5), (37, 7)])
def test_each_format_alone_matches_reference(ext, fmt, page_size, group):
    """Every other block empty: the format's own pages, odd and even page sizes, partial last page."""
    counts = tuple(4 if f == fmt else 0 for f in quant.FORMATS)
    assert_matches_reference(ext, *case(counts, page_size, group))


MIXED = [dict(), dict(seed=1, n_weights=9 * 37), dict(seed=2, n_weights=0), dict(seed=3, n_weights=1),
         dict(page_size=512, group=64, n_pages=40), dict(page_size=64, group=64, seed=4),
         dict(page_size=1, group=1, n_pages=11), dict(page_size=2, group=3, n_pages=5, n_weights=9)]


@pytest.mark.parametrize("shape", MIXED)
def test_mixed_table_matches_reference(ext, shape):
    assert_matches_reference(ext, *case(**shape))


def test_parallel_chunks_match_reference(ext):
    """Enough pages for several at::parallel_for chunks (64 pages of 512 a chunk) on two threads."""
    torch.set_num_threads(2)  # conftest restores it
    assert_matches_reference(ext, *case(page_size=512, group=64, n_pages=300, seed=5))


def test_int4_covers_every_value_and_is_q_times_scale(ext):
    """Groups holding exactly -7..7 (times a step), so every nibble 1..15 decodes; out == q * s."""
    P, group = 37, 16
    q = torch.arange(-7, 8, dtype=torch.float32)
    pages = torch.stack([torch.cat([q, -q.flip(0), q[:7]]) * step for step in (0.5, 0.25, 3.0)])
    codes = torch.full((3,), quant.CODE["int4"], dtype=torch.uint8)
    values, scales = quant.quantize(pages, codes, group)
    blocks, block_scales = dequant_operands(quant.encode(values, codes, scales, group), P, group)
    nibbles = torch.stack([blocks[4] & 15, blocks[4] >> 4], 2).reshape(3, -1)[:, :P]
    assert set(nibbles.unique().tolist()) == set(range(1, 16))
    table = quant.table_entries(codes, torch.tensor([2, 0, 1]))
    out = run(ext, blocks, block_scales, table, P, group, 3 * P)
    expected = (nibbles[[2, 0, 1]].float() - 8) * block_scales[4][[2, 0, 1]].repeat_interleave(group, 1)[:, :P]
    assert torch.equal(out.view(3, P), expected)
    assert torch.equal(out.view(3, P), values[[2, 0, 1]])  # what quantize promised


def test_float32_table_is_an_ordinary_page_table(ext):
    """A float32 entry is just its row: the result equals gather_pages_into's on the float32 block."""
    blocks, scales, _, P, group, _ = case(counts=(6, 0, 0, 0, 0))
    table = torch.tensor([5, 0, 5, 2])
    out = run(ext, blocks, scales, table, P, group, 4 * P - 3)
    assert torch.equal(out, ext.gather_pages(blocks[0], table, 4 * P - 3))


def test_public_function_follows_backend(ext):
    blocks, scales, table, P, group, n = case(seed=6)
    ref = gather_dequant_reference(blocks, scales, table, P, group, n)
    assert ops.gather_dequant_function() is ext.gather_dequant_into.default
    assert torch.equal(ops.gather_dequant_into(blocks, scales, table, P, group, torch.empty(n)), ref)
    ops.set_backend("torch")
    try:
        assert ops.gather_dequant_function() is ops._gather_dequant_into_reference
        assert torch.equal(ops.gather_dequant_into(blocks, scales, table, P, group, torch.empty(n)), ref)
    finally:
        ops.set_backend("extension")


def test_reference_rejects_bad_codes_and_sizes():
    blocks, scales, table, P, group, n = case()
    with pytest.raises(ValueError, match="codes must be 0..4"):
        gather_dequant_reference(blocks, scales, table | (7 << quant.TABLE_SHIFT), P, group, n)
    with pytest.raises(ValueError, match="do not fit in 9 pages of 37"):
        gather_dequant_reference(blocks, scales, table, P, group, 9 * P + 1)


def test_opcheck(ext):
    blocks, scales, table, P, group, n = case()
    torch.library.opcheck(ext.gather_dequant_into.default, (blocks, scales, table, P, group, torch.empty(n)))


def _replaced(items: list, i: int, value) -> list:
    return [value if j == i else t for j, t in enumerate(items)]


def _entry(table: torch.Tensor, i: int, value: int) -> torch.Tensor:
    table = table.clone()
    table[i] = value
    return table


# (blocks, scales, table, out) -> bad ones, and the error; blocks have rows (2, 3, 3, 3, 3), P = 37, group = 8
BAD = [
    (lambda b, s, t, o: (b[:4], s, t, o), "blocks and scales must be 5 tensors each"),
    (lambda b, s, t, o: (b, s[:4], t, o), "blocks and scales must be 5 tensors each, .* got 5 and 4"),
    (lambda b, s, t, o: (_replaced(b, 3, b[3].float()), s, t, o), r"blocks\[3\] \(int8\) must be int8, got float32"),
    (lambda b, s, t, o: (_replaced(b, 1, b[1].bfloat16()), s, t, o), r"blocks\[1\] \(float16\) must be float16"),
    (lambda b, s, t, o: (_replaced(b, 4, torch.zeros(3, 37, dtype=torch.uint8)), s, t, o),
     r"blocks\[4\] \(int4\) must be \[rows, 19\] for page size 37, got \[3, 37\]"),
    (lambda b, s, t, o: (_replaced(b, 0, b[0].reshape(-1)), s, t, o), r"blocks\[0\] \(float32\) must be \[rows, 37\]"),
    (lambda b, s, t, o: (b, _replaced(s, 3, s[3].expand(-1, 2)), t, o),
     r"scales\[3\] \(int8\) must be float32 \[3, 1\], got float32 \[3, 2\]"),
    (lambda b, s, t, o: (b, _replaced(s, 4, s[4].double()), t, o), r"scales\[4\] \(int4\) must be float32 \[3, 5\]"),
    (lambda b, s, t, o: (b, _replaced(s, 4, s[4][:2]), t, o), r"scales\[4\] \(int4\) must be float32 \[3, 5\]"),
    (lambda b, s, t, o: (b, s, t.int(), o), "page_table must be int64, got Int"),
    (lambda b, s, t, o: (b, s, t.view(3, 3), o), "page_table must be 1-D"),
    (lambda b, s, t, o: (b, s, _entry(t, 4, 5 << 40), o),
     r"page_table\[4\] = 5497558138880 has format code 5; codes are 0..4"),
    (lambda b, s, t, o: (b, s, _entry(t, 0, -1), o), r"page_table\[0\] = -1 has format code -1"),
    (lambda b, s, t, o: (b, s, _entry(t, 2, (3 << 40) | 3), o),
     r"page_table\[2\] names int8 row 3, but the int8 block has 3 rows"),
    (lambda b, s, t, o: (b, s, _entry(t, 8, 2), o), r"page_table\[8\] names float32 row 2, but the float32 block has 2"),
    (lambda b, s, t, o: (b, s, t, torch.empty(9 * 37 + 1)), "n_weights = 334 does not fit in 9 pages of 37"),
    (lambda b, s, t, o: (b, s, t, o.double()), "out must be a contiguous 1-D float32 buffer, got float64"),
    (lambda b, s, t, o: (b, s, t, torch.empty(2 * len(o))[::2]), r"contiguous 1-D float32 buffer, got .*not contiguous"),
    (lambda b, s, t, o: (b, s, t, o[:36].view(4, 9)), r"contiguous 1-D float32 buffer, got float32 \[4, 9\]"),
]


@pytest.mark.parametrize("i", range(len(BAD)))
def test_bad_input_raises_clear_error(ext, i):
    bad, match = BAD[i]
    blocks, scales, table, P, group, n = case(counts=(2, 3, 3, 3, 3))
    b, s, t, out = bad(blocks, scales, table, torch.empty(n))
    with pytest.raises(RuntimeError, match=match):
        ext.gather_dequant_into(b, s, t, P, group, out)


@pytest.mark.parametrize("page_size, group", [(0, 8), (37, 0)])
def test_nonpositive_page_size_or_group_raises(ext, page_size, group):
    blocks, scales, table, _, _, _ = case()
    with pytest.raises(RuntimeError, match="page_size and group must be > 0"):
        ext.gather_dequant_into(blocks, scales, table, page_size, group, torch.empty(0))


@CUDA
@pytest.mark.parametrize("shape", [*MIXED, dict(page_size=512, group=64, n_pages=3000, counts=(50, 50, 50, 50, 50))])
def test_cuda_matches_reference(ext, shape):
    """Bit for bit against the CPU reference (the 3000-page case: more pages than blocks in the grid)."""
    cpu = case(**shape)
    out = run(ext, *case(**shape, device="cuda"))
    assert torch.equal(out.cpu(), gather_dequant_reference(*cpu))


@CUDA
def test_cuda_opcheck_stream_and_device_mismatch(ext):
    blocks, scales, table, P, group, n = case(device="cuda")
    torch.library.opcheck(ext.gather_dequant_into.default,
                          (blocks, scales, table, P, group, torch.empty(n, device="cuda")))
    stream, out = torch.cuda.Stream(), torch.empty(n, device="cuda")
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        ext.gather_dequant_into(blocks, scales, table, P, group, out)
    stream.synchronize()
    assert torch.equal(out, gather_dequant_reference(blocks, scales, table, P, group, n))
    with pytest.raises(RuntimeError, match=r"blocks\[2\] \(bfloat16\) is on cpu but out on cuda:0"):
        ext.gather_dequant_into(_replaced(blocks, 2, blocks[2].cpu()), scales, table, P, group, out)
