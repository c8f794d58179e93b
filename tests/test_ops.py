"""weightsep.ops: the page-table gather extension against the pure-torch reference (`ext`: conftest.py).

The first run builds custom_op/ into cache_dir()/build (~30 s on 2 cores); later runs reuse it."""
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from weightsep import ops
from weightsep.ops import gather_pages_reference

REPO = Path(__file__).resolve().parent.parent
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
NVCC = shutil.which("nvcc")


def case(n_rows=12, page_size=16, n_pages=7, n_weights=None, seed=0, dtype=torch.float32, device="cpu"):
    """Random pages and a page table with repeated shared rows and an exclusive tail."""
    g = torch.Generator().manual_seed(seed)
    pages = torch.randn(n_rows, page_size, generator=g, dtype=dtype)
    n_shared = n_rows - 3
    shared = torch.randint(0, n_shared, (n_pages - 2,), generator=g)
    shared[1] = shared[0]  # two logical pages on one row
    table = torch.cat([shared, torch.tensor([n_shared, n_rows - 1])])  # the DNN's exclusive pages last
    n = n_pages * page_size - 5 if n_weights is None else n_weights  # default: a partial last page
    return pages.to(device), table.to(device), n


SHAPES = [dict(), dict(n_weights=7 * 16), dict(page_size=1, n_pages=9, n_weights=9),
          dict(n_rows=40, page_size=512, n_pages=30), dict(n_weights=0), dict(n_weights=3 * 16 + 1),
          # more weights than one pass of the CUDA grid covers (8 blocks of 256 threads per SM)
          dict(n_rows=2000, page_size=512, n_pages=3000)]


@pytest.mark.parametrize("shape", SHAPES)
def test_gather_matches_reference_bit_for_bit(ext, shape):
    pages, table, n = case(**shape)
    out = ext.gather_pages(pages, table, n)
    ref = gather_pages_reference(pages, table, n)
    assert out.shape == (n,) and out.dtype == pages.dtype
    assert torch.equal(out, ref)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("impl", ["extension", "torch"])
def test_gather_into_matches_reference_bit_for_bit(ext, shape, impl):
    """The in-place gather (the switch path) writes exactly the reference into a caller's buffer."""
    pages, table, n = case(**shape)
    buffer = torch.full((n + 7,), float("nan"))
    out = buffer[:n]  # a prefix view of a bigger buffer, as PackedModel passes it
    into = ext.gather_pages_into.default if impl == "extension" else ops._gather_into_reference
    into(pages, table, out)
    assert torch.equal(out, gather_pages_reference(pages, table, n))
    assert buffer[n:].isnan().all()  # nothing written past n


def test_gather_into_function_follows_backend(ext):
    assert ops.gather_into_function() is ext.gather_pages_into.default
    pages, table, n = case()
    assert torch.equal(ops.gather_pages_into(pages, table, torch.empty(n)), gather_pages_reference(pages, table, n))
    ops.set_backend("torch")
    try:
        assert ops.gather_into_function() is ops._gather_into_reference
    finally:
        ops.set_backend("extension")


@pytest.mark.parametrize("out, match", [
    (torch.empty(20, dtype=torch.float64), "out is Double"),
    (torch.empty(40)[::2], "contiguous 1-D buffer"),
    (torch.empty(4, 5), "contiguous 1-D buffer"),
    (torch.empty(33), "does not fit in 2 pages of 16"),
])
def test_gather_into_bad_buffer_raises(ext, out, match):
    with pytest.raises(RuntimeError, match=match):
        ext.gather_pages_into(torch.zeros(12, 16), torch.tensor([0, 1]), out)


@pytest.mark.parametrize("shape", SHAPES)
def test_gradient_matches_reference(ext, shape):
    pages, table, n = case(**shape)
    weight = torch.randn(n, generator=torch.Generator().manual_seed(1))
    grads = []
    for fn in (ext.gather_pages, gather_pages_reference):
        p = pages.clone().requires_grad_()
        (fn(p, table, n) * weight).sum().backward()
        grads.append(p.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-6)


def test_gradcheck_float64(ext):
    pages, table, n = case(n_rows=6, page_size=4, n_pages=5, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: ext.gather_pages(p, table, n), (pages.requires_grad_(),))
    grad = torch.randn(n, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda g: ext.scatter_add_pages(g, table, 6, 4), (grad,))


def test_scatter_add_sums_repeated_rows_and_zeros_unmapped(ext):
    table = torch.tensor([2, 0, 2, 2, 4])
    grad = torch.arange(1.0, 15.0)  # 14 of 15 weights: the last page partial
    out = ext.scatter_add_pages(grad, table, 6, 3)
    expected = torch.zeros(6, 3)
    expected[2] = torch.tensor([1.0, 2, 3]) + torch.tensor([7.0, 8, 9]) + torch.tensor([10.0, 11, 12])
    expected[0] = torch.tensor([4.0, 5, 6])
    expected[4] = torch.tensor([13.0, 14, 0])
    assert torch.equal(out, expected)


@pytest.mark.parametrize("op", ["gather_pages", "scatter_add_pages", "gather_pages_into"])
def test_opcheck(ext, op):
    pages, table, n = case(dtype=torch.float64)
    if op == "gather_pages":
        args = (pages.requires_grad_(), table, n)
    elif op == "gather_pages_into":
        args = (pages, table, torch.empty(n, dtype=torch.float64))
    else:
        args = (torch.randn(n, dtype=torch.float64, requires_grad=True), table, pages.shape[0], pages.shape[1])
    torch.library.opcheck(getattr(ext, op).default, args)


SLOW = pytest.mark.skipif(not os.environ.get("WEIGHTSEP_SLOW_TESTS"), reason="slow; set WEIGHTSEP_SLOW_TESTS=1")


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=[SLOW, pytest.mark.slow])])  # ~25 s on CPU
def test_compile_fullgraph(ext, backend):
    pages, table, n = case()

    @torch.compile(fullgraph=True, backend=backend)
    def weights_sum(p):
        return (ops.gather_pages(p, table, n) * 2).sum()

    p = pages.clone().requires_grad_()
    out = weights_sum(p)
    out.backward()
    q = pages.clone().requires_grad_()
    ref = (gather_pages_reference(q, table, n) * 2).sum()
    ref.backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-6)


def test_public_function_uses_extension(ext):
    assert ops.BACKEND == "extension"
    pages, table, n = case()
    assert torch.equal(ops.gather_pages(pages, table, n), gather_pages_reference(pages, table, n))


def test_torch_backend(ext, caplog):
    with caplog.at_level(logging.INFO, logger="weightsep"):
        ops.set_backend("torch")
    try:
        assert ops.BACKEND == "torch"
        assert "torch backend" in caplog.text
        pages, table, n = case()
        p = pages.clone().requires_grad_()
        ops.gather_pages(p, table, n).sum().backward()
        assert p.grad.grad_fn is None and p.grad.sum() == n
    finally:
        ops.set_backend("extension")


def test_unknown_backend_rejected():
    with pytest.raises(ValueError, match="unknown ops backend"):
        ops.set_backend("triton")


@pytest.mark.parametrize("bad, match", [
    (dict(table=torch.tensor([0, 12])), "out of range for 12 page rows"),
    (dict(table=torch.tensor([0, -1])), "out of range"),
    (dict(table=torch.tensor([0, 1], dtype=torch.int32)), "page_table must be int64"),
    (dict(pages=torch.zeros(12, 16, dtype=torch.int32)), "pages must be float32 or float64"),
    (dict(pages=torch.zeros(12, 16, dtype=torch.float16)), "pages must be float32 or float64"),
    (dict(pages=torch.zeros(12)), r"pages must be \[rows, page_size\]"),
    (dict(n=3 * 16), "does not fit in 2 pages of 16"),
])
def test_bad_input_raises_clear_error(ext, bad, match):
    pages, table, n = bad.get("pages", torch.zeros(12, 16)), bad.get("table", torch.tensor([0, 1])), bad.get("n", 20)
    with pytest.raises(RuntimeError, match=match):
        ext.gather_pages(pages, table, n)


def test_scatter_add_bad_row_raises(ext):
    with pytest.raises(RuntimeError, match="out of range for 3 page rows"):
        ext.scatter_add_pages(torch.ones(4), torch.tensor([0, 3]), 3, 2)


@pytest.mark.cuda
@CUDA
@pytest.mark.parametrize("shape", SHAPES)
def test_cuda_matches_reference(ext, shape):
    pages, table, n = case(**shape, device="cuda")
    assert torch.equal(ext.gather_pages(pages, table, n), gather_pages_reference(pages, table, n))
    p, q = pages.clone().requires_grad_(), pages.clone().requires_grad_()
    weight = torch.randn(n, device="cuda")
    (ext.gather_pages(p, table, n) * weight).sum().backward()
    (gather_pages_reference(q, table, n) * weight).sum().backward()
    torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-6)


@pytest.mark.cuda
@CUDA
def test_cuda_opcheck_and_stream(ext):
    pages, table, n = case(dtype=torch.float64, device="cuda")
    torch.library.opcheck(ext.gather_pages.default, (pages.requires_grad_(), table, n))
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        out = ext.gather_pages(pages, table, n)
    stream.synchronize()
    assert torch.equal(out, gather_pages_reference(pages, table, n))


@pytest.mark.cuda
@CUDA
def test_cuda_kernels_launch_on_the_current_stream(ext):
    """Captured into a CUDA graph: a launch on any stream but the capturing one breaks the capture."""
    pages, table, n = case(device="cuda")
    out = torch.empty(n, device="cuda")
    weight = torch.randn(n, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up outside the capture
        ext.gather_pages_into(pages, table, out)
        grad = ext.scatter_add_pages(weight, table, pages.shape[0], pages.shape[1])
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ext.gather_pages_into(pages, table, out)
        grad = ext.scatter_add_pages(weight, table, pages.shape[0], pages.shape[1])
    out.zero_()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, gather_pages_reference(pages, table, n))
    expected = torch.zeros_like(pages).view(-1)
    columns = torch.arange(pages.shape[1], device="cuda").repeat(len(table))
    rows = table.repeat_interleave(pages.shape[1]) * pages.shape[1] + columns
    expected.index_add_(0, rows[:n], weight)
    torch.testing.assert_close(grad, expected.view_as(pages), rtol=0, atol=1e-6)


@pytest.mark.cuda
@CUDA
@pytest.mark.parametrize("shape", SHAPES)
def test_cuda_gather_into_matches_reference(ext, shape):
    pages, table, n = case(**shape, device="cuda")
    buffer = torch.full((n + 7,), float("nan"), device="cuda")
    ext.gather_pages_into(pages, table, buffer[:n])
    assert torch.equal(buffer[:n], gather_pages_reference(pages, table, n))
    assert buffer[n:].isnan().all()
    torch.library.opcheck(ext.gather_pages_into.default, (pages, table, torch.empty(n, device="cuda")))


ARCHS = ops.CUDA_ARCH_FLAGS  # what the extension build uses


@pytest.mark.cuda
@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")
def test_cuda_kernels_compile_with_nvcc(tmp_path):
    """The header-free kernels (custom_op/gather_kernels.cuh) compile for sm_80 and sm_90, plus PTX."""
    unit = tmp_path / "kernels.cu"
    unit.write_text(
        f'#include "{REPO / "custom_op" / "gather_kernels.cuh"}"\n'
        "namespace weightsep {\n"
        "template void launch_gather_pages<float>(const float*, const int64_t*, float*, int64_t, int64_t, int64_t,"
        " int, cudaStream_t);\n"
        "template void launch_gather_pages<double>(const double*, const int64_t*, double*, int64_t, int64_t, int64_t,"
        " int, cudaStream_t);\n"
        "template void launch_scatter_add_pages<float>(const float*, const int64_t*, float*, int64_t, int64_t,"
        " int64_t, int, cudaStream_t);\n"
        "template void launch_scatter_add_pages<double>(const double*, const int64_t*, double*, int64_t, int64_t,"
        " int64_t, int, cudaStream_t);\n"
        "}\n")
    run = subprocess.run([NVCC, "-c", str(unit), "-o", str(tmp_path / "kernels.o"), *ARCHS],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr
    # what the fat binary embeds: machine code for sm_80 and sm_90, and PTX that newer GPUs compile
    plan = subprocess.run([NVCC, "--dryrun", "-c", str(unit), "-o", str(tmp_path / "kernels.o"), *ARCHS],
                          capture_output=True, text=True, timeout=120).stderr
    for image in ("kind=elf,sm=80", "kind=elf,sm=90", "kind=ptx,sm=90"):
        assert image in plan, image


@pytest.mark.cuda
@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")
@pytest.mark.slow
@SLOW  # ~90 s
def test_cuda_glue_compiles_with_nvcc(tmp_path):
    """The whole gather_cuda.cu against torch's headers. A CPU torch wheel ships c10/cuda headers but
    not the generated c10/cuda/impl/cuda_cmake_macros.h, so a one-line stand-in is supplied here."""
    from torch.utils.cpp_extension import include_paths

    includes = [f"-I{p}" for p in include_paths()]
    if not any(os.path.exists(os.path.join(p, "c10", "cuda", "CUDAStream.h")) for p in include_paths()):
        pytest.skip("this torch wheel has no c10/cuda headers; compile gather_cuda.cu on a CUDA torch build")
    if not any(os.path.exists(os.path.join(p, "c10", "cuda", "impl", "cuda_cmake_macros.h")) for p in include_paths()):
        stub = tmp_path / "stub" / "c10" / "cuda" / "impl"
        stub.mkdir(parents=True)
        (stub / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
        includes.append(f"-I{tmp_path / 'stub'}")
    run = subprocess.run([NVCC, "-c", str(REPO / "custom_op" / "gather_cuda.cu"), "-o", str(tmp_path / "glue.o"),
                          *includes, "-std=c++20", "-D_GLIBCXX_USE_CXX11_ABI=1", "--expt-relaxed-constexpr", *ARCHS],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]


def test_auto_falls_back_to_torch_and_says_why(tmp_path):
    """A build that fails (here: no sources) leaves the torch backend and one log line with the reason."""
    script = (
        "import logging, sys, torch\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "from weightsep import ops\n"
        f"ops.SOURCE_DIR = ops.Path({str(tmp_path / 'missing')!r})\n"
        "p, t = torch.randn(3, 4), torch.tensor([2, 0])\n"
        "assert torch.equal(ops.gather_pages(p, t, 6), p[t].reshape(-1)[:6])\n"
        "ops.gather_pages(p, t, 6)\n"
        "print(ops.BACKEND)\n")
    env = {**os.environ, "WEIGHTSEP_CACHE": str(tmp_path / "cache"), "WEIGHTSEP_OPS_BACKEND": "auto"}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "torch"
    assert run.stderr.count("extension unavailable") == 1, run.stderr


@pytest.mark.cuda
@CUDA
def test_cuda_scatter_add_alerts_in_deterministic_mode(ext):
    """Its atomics round in arrival order, so torch's deterministic mode must refuse it, not ignore it."""
    pages, table, n = case(device="cuda")
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(RuntimeError, match="deterministic"):
            ext.scatter_add_pages(torch.ones(n, device="cuda"), table, pages.shape[0], pages.shape[1])
    finally:
        torch.use_deterministic_algorithms(False)


def test_cpu_scatter_add_is_deterministic_and_allowed_in_deterministic_mode(ext):
    pages, table, n = case()
    torch.use_deterministic_algorithms(True)
    try:
        grads = [ext.scatter_add_pages(torch.randn(n, generator=torch.Generator().manual_seed(1)), table,
                                       pages.shape[0], pages.shape[1]) for _ in range(2)]
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(grads[0], grads[1])
