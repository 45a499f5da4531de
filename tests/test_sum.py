import json
import math
import os
import subprocess
import sys

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck
from torch.func import grad, jvp, vmap

import torchext
from tests.conftest import assert_close
from triton_kernels import reduction

# (shape, dim, keepdim): 0-dim, empty, one element, one tile, several tiles (REDUCE_TILE is
# 2048, so 4097 takes three tiles and the two-stage path), rows, leading dims (the strided
# "middle" kernel), non-adjacent dims (the permuted copy), size-1 and empty reduced dims.
CASES = [
    ((), None, False), ((), 0, True), ((), -1, False), ((0,), None, False), ((0,), 0, True),
    ((1,), None, False), ((7,), 0, False), ((4097,), None, False), ((4097,), -1, True),
    ((3, 5), 1, False), ((3, 5), (0,), True), ((3, 5), None, True), ((64, 33), 0, False),
    ((64, 33), (-1,), True),
    ((33, 300), None, False), ((2, 3, 4), (0, 2), False), ((2, 3, 4), (-1, -3), True),
    ((2, 3, 4), (1,), False), ((5, 1, 3), (0, 2), True), ((2, 0, 3), 1, False),
    ((2, 0, 3), (0, 2), True), ((2, 3, 4), (), False),
]  # fmt: skip


def reduction_scale(n: int) -> float:
    """Tolerance multiplier for a sum of n terms: fp32 rounding error grows like sqrt(n) ulps.
    Half-precision results are compared with torch's fp32 reduction cast to the dtype, so their
    error is the final rounding plus that fp32 error."""
    return max(1.0, math.sqrt(n) / 16)


def reference(op, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """torch's op, through fp32 for half-precision inputs, cast back to x's dtype."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return op(x.float(), *args, **kwargs).to(x.dtype)
    return op(x, *args, **kwargs)


def test_reduction_scale_grows_with_n():
    assert reduction_scale(7) == 1.0 and reduction_scale(65536) == 16.0


@pytest.mark.parametrize("shape,dim,keepdim", CASES, ids=str)
def test_forward_and_backward_match_torch(shape, dim, keepdim, dtype, device):
    x = torch.randn(shape, device=device).to(dtype).requires_grad_()
    y = torchext.sum(x, dim, keepdim)
    expected = reference(torch.sum, x.detach(), () if dim is None else dim, keepdim)
    assert y.dtype == dtype and y.shape == expected.shape
    assert_close(y, expected, scale=reduction_scale(max(x.numel(), 1)))
    g = torch.randn_like(y)
    y.backward(g)
    x_ref = x.detach().clone().requires_grad_()
    torch.sum(x_ref, () if dim is None else dim, keepdim).backward(g)
    assert x.grad.dtype == dtype
    assert torch.equal(x.grad, x_ref.grad)  # a broadcast of g: exact


def test_two_stage_path_on_inputs_larger_than_one_program(monkeypatch):
    launches = []
    real_kernel_for = reduction.kernel_for

    def recording_kernel_for(kernel, device):
        launch = real_kernel_for(kernel, device)

        class Recorder:
            def __getitem__(self, grid):
                launches.append((kernel.fn.__name__, grid))
                return launch[grid]

        return Recorder()

    monkeypatch.setattr(reduction, "kernel_for", recording_kernel_for)
    x = torch.randn(100_000, dtype=torch.float32)
    out = torchext.sum(x)
    (first, first_grid), (second, second_grid) = launches
    assert first == second == "reduce_split_kernel"
    # stage 1: 13 programs of 8192 elements (at most INTERPRETER_PROGRAMS); stage 2: one
    assert first_grid == (1, 13) and second_grid == (1, 1)
    # fp32 partials of ~8k elements each, summed again: close to the exact fp64 sum
    torch.testing.assert_close(out.double(), x.double().sum(), atol=1e-3, rtol=1e-6)

    launches.clear()  # a column sum splits the 5000 rows too, in tiles of (512, 4) in place
    m = torch.randn(5000, 3, dtype=torch.float64)
    assert_close(torchext.sum(m, 0), m.sum(0))
    assert [grid for _, grid in launches] == [(1, 10), (1, 1)]


def test_split_plan_fills_the_gpu_and_bounds_the_partials():
    cuda = torch.device("cuda")
    reduction._first_pass_programs.cache_clear()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(torch.cuda, "get_device_properties", lambda _: _FakeProps(132))
            # 2^24 elements: one program per 16k elements, 1024 programs, 1024 partials
            block, per_program, chunks = reduction.split_plan(1, 2**24, 1, cuda)
            assert (block, chunks, per_program) == ((1, 2048, 1), 1024, 16384)
            # 2^30 elements: still at most 8 programs per SM, the second pass stays one program
            assert reduction.split_plan(1, 2**30, 1, cuda)[2] <= 8 * 132
            # many rows already fill the GPU: no split, one pass
            assert reduction.split_plan(8192, 4096, 1, cuda)[2] == 1
            # short rows share a tile: 64 rows of 32 per program
            assert reduction.split_plan(10_000, 32, 1, cuda)[0] == (64, 32, 1)
            # a column sum of a (4096, 1024) matrix: (8, 256) tiles, chunks of 32 rows
            assert reduction.split_plan(1, 4096, 1024, cuda) == ((1, 8, 256), 32, 128)
    finally:
        reduction._first_pass_programs.cache_clear()


class _FakeProps:
    def __init__(self, sms: int) -> None:
        self.multi_processor_count = sms


def test_layouts_read_contiguous_blocks_in_place():
    x = torch.randn(6, 5, 4)
    for dims in [(0,), (1,), (2,), (0, 1), (1, 2), (0, 1, 2)]:
        view, order = reduction.reduction_layout(x, dims)
        assert order is None and view.data_ptr() == x.data_ptr()
    t = torch.randn(30, 20).t()  # a transposed matrix: no copy to reduce all or dim 0
    for dims in [(0, 1), (0,)]:
        view, _ = reduction.reduction_layout(t, dims)
        assert view.data_ptr() == t.data_ptr() and view.is_contiguous()
    view, order = reduction.reduction_layout(x, (0, 2))  # not adjacent: permuted copy
    assert order == [1, 0, 2] and view.shape == (5, 24, 1)


def test_non_contiguous_inputs(device):
    base = torch.randn(6, 8, device=device)
    for x in (base.t(), base[:, ::2], base[0].expand(5, 8), base.unsqueeze(0)[..., 1:]):
        for dim in (None, 0, -1):
            args = () if dim is None else (dim,)
            assert_close(torchext.sum(x, *args), x.sum(*args))


@pytest.mark.parametrize(
    "dtype", [torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64],
    ids=str,
)  # fmt: skip
def test_integer_and_bool_sums_are_exact_int64(dtype, device):
    x = torch.randint(-100 if dtype.is_signed else 0, 100, (37, 5), device=device).to(dtype)
    for dim in (None, 0, (1,)):
        got, want = torchext.sum(x, dim), x.sum(() if dim is None else dim)
        assert got.dtype == want.dtype == torch.int64 and torch.equal(got, want)
    big = torch.full((3,), 2**40, dtype=torch.int64, device=device)
    assert torchext.sum(big).item() == 3 * 2**40


def test_dtype_argument_casts_each_element_first(device):
    x = torch.randn(4, 300, device=device) * 3
    # Triton's interpreter truncates fp32 → bf16 where the GPU rounds to nearest, so the bf16
    # cast is checked on values it keeps exactly; fp16 (rounded alike on both) checks rounding.
    bf16_exact = x.bfloat16().float()
    for dtype in (torch.float16, torch.bfloat16, torch.float64, torch.int32, torch.int64):
        source = bf16_exact if dtype == torch.bfloat16 else x
        got, want = torchext.sum(source, 1, dtype=dtype), source.sum(1, dtype=dtype)
        assert got.dtype == want.dtype
        assert_close(got.double(), want.double(), dtype=dtype if dtype.is_floating_point else None)
    # rounding each element first differs from rounding the sum: torch does the former
    assert not torch.equal(x.sum(1, dtype=torch.float16), x.sum(1).half())
    half = torch.randn(50, dtype=torch.float16, device=device, requires_grad=True)
    out = torchext.sum(half, dtype=torch.float32)
    assert out.dtype == torch.float32
    assert_close(out, half.detach().float().sum(), scale=4)
    out.backward()
    assert half.grad.dtype == torch.float16 and torch.equal(half.grad, torch.ones_like(half))
    ints = torch.arange(10, device=device)
    assert torchext.sum(ints, dtype=torch.float16).dtype == torch.float16
    b = torch.tensor([0.0, 2.5, 0.0], device=device)
    assert torch.equal(torchext.sum(b, dtype=torch.bool), b.sum(dtype=torch.bool))


def test_gradcheck_and_gradgradcheck():
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    # full Jacobians for the first case; random projections (fast_mode) for the others
    for fast, (dim, keepdim) in enumerate([(0, True), (None, False), ((-1,), False)]):
        def f(a, dim=dim, keepdim=keepdim):
            return torchext.sum(a, dim, keepdim)

        assert gradcheck(f, (x,), check_forward_ad=True, fast_mode=bool(fast))
        assert gradgradcheck(f, (x,), check_fwd_over_rev=True, fast_mode=bool(fast))


def test_backward_of_the_backward_is_our_sum():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    v = torch.randn(3, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(torchext.sum(x, 1), x, v, create_graph=True)
    assert g.grad_fn.name() == "SumBackwardFunctionBackward"  # a broadcast view of v
    w = torch.randn(3, 4, dtype=torch.float64)
    (gv,) = torch.autograd.grad(g, v, w)
    assert_close(gv, w.sum(1))


def test_torch_func_transforms_match_torch():
    x, t = torch.randn(2, 3, 5, dtype=torch.float64).unbind()
    for dim in (None, 0, 1):
        args = () if dim is None else (dim,)

        def ours(a, args=args):
            return torchext.sum(a, *args)

        def ref(a, args=args):
            return a.sum(*args)

        assert_close(jvp(ours, (x,), (t,))[1], jvp(ref, (x,), (t,))[1])
        assert_close(grad(lambda a: ours(a).sum())(x), grad(lambda a: ref(a).sum())(x))
    batch = torch.randn(4, 5, 6, dtype=torch.float64)
    for in_dims in (0, 1, 2):
        for dim in (None, 0, -1):
            args = () if dim is None else (dim,)
            assert_close(
                vmap(lambda a, args=args: torchext.sum(a, *args), in_dims=in_dims)(batch),
                vmap(lambda a, args=args: a.sum(*args), in_dims=in_dims)(batch),
            )
    # per-sample gradients: vmap over the backward (a batched broadcast)
    assert_close(
        vmap(grad(lambda a: torchext.sum(torchext.mul(a, a))))(batch),
        vmap(grad(lambda a: (a * a).sum()))(batch),
    )
    assert_close(vmap(vmap(torchext.sum))(batch), batch.sum(-1))
    # Hessian-vector product of Σx²: forward mode through the broadcast backward gives 2t
    square_sum_grad = grad(lambda a: torchext.sum(torchext.mul(a, a)))
    assert_close(jvp(square_sum_grad, (x,), (t,))[1], 2 * t)


def test_bad_input_raises_what_torch_raises():
    x = torch.randn(2, 3)
    with pytest.raises(TypeError, match="sum"):
        torchext.sum([1.0, 2.0])
    with pytest.raises(IndexError, match=r"sum: Dimension out of range .* but got 2\)"):
        torchext.sum(x, 2)
    with pytest.raises(IndexError, match="sum"):
        torchext.sum(torch.tensor(1.0), 1)
    with pytest.raises(RuntimeError, match="sum: dim 0 appears multiple times in the list of dims"):
        torchext.sum(x, (0, -2))
    with pytest.raises(TypeError, match="sum"):
        torchext.sum(x, 1.0)
    with pytest.raises(TypeError, match="complex"):
        torchext.sum(torch.randn(3, dtype=torch.complex64))
    with pytest.raises(TypeError, match="sum.*dtype"):
        torchext.sum(x, dtype="float")
    with pytest.raises(TypeError, match="sum: unsupported dtype"):
        torchext.sum(torch.zeros(3, dtype=torch.float8_e4m3fn))
    with pytest.raises(RuntimeError, match="sum: Autograd not support dtype: Long"):
        torchext.sum(x.requires_grad_(), dtype=torch.int64)


def test_compiled_function_matches_eager():
    def f(a):
        return torchext.sum(torchext.mul(a, a), 1, keepdim=True) + torchext.sum(a, (0,), True)

    x = torch.randn(5, 33, requires_grad=True)
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    y = compiled(x)
    (gx,) = torch.autograd.grad(y.sum(), x)
    x_ref = x.detach().requires_grad_()
    y_ref = (x_ref * x_ref).sum(1, keepdim=True) + x_ref.sum(0, keepdim=True)
    (gx_ref,) = torch.autograd.grad(y_ref.sum(), x_ref)
    assert_close(y, f(x))
    assert_close(y, y_ref)
    assert_close(gx, gx_ref)


# Compiles kernels for sm_90 as the JIT would specialise them for the given argument values (ints
# of 1 become constants, multiples of 16 and pointers are marked aligned) and prints their global
# loads, in a fresh process as a first CUDA compile would.
_SM90_LOADS = """
import importlib, inspect, json, re, sys
import triton, triton.language as tl
from triton._C.libtriton import native_specialize_impl
from triton.backends.compiler import BaseBackend, GPUTarget
from triton.compiler import ASTSource

def loads(module, name, args, constexprs, num_warps):
    kernel = getattr(importlib.import_module(module), name)
    signature, attrs = {}, {}
    constexprs = {k: getattr(tl, v) if isinstance(v, str) else v for k, v in constexprs.items()}
    for i, arg in enumerate(inspect.signature(kernel.fn).parameters):
        value = args.get(arg)
        if arg in constexprs:
            signature[arg] = "constexpr"
        elif isinstance(value, str):  # a pointer: "*fp32", ...
            signature[arg], attrs[(i,)] = value, [["tt.divisibility", 16]]
        else:
            ty, spec = native_specialize_impl(BaseBackend, value, False, True, True)
            signature[arg] = ty
            if ty == "constexpr":
                constexprs[arg] = spec
            elif spec == "D":
                attrs[(i,)] = [["tt.divisibility", 16]]
    source = ASTSource(kernel, signature, constexprs, attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": num_warps})
    return re.findall(r"ld\\.global[\\w.:]*", compiled.asm["ptx"])

print(json.dumps([loads(*case) for case in json.loads(sys.argv[1])]))
"""

_SPLIT = dict(x_ptr="*fp32", y_ptr="*fp32", out_ptr="*fp32")
_SPLIT_CONSTEXPRS = dict(TERM=2, CAST_DTYPE="float32", SQRT=False, COMPUTE_DTYPE="float32")
# (what, kernel args, tile); fp32 inputs, sizes as the benchmarks and sum_to_shape meet them
_SM90_CASES = [
    ("full reduction of 2^24", dict(n_outer=1, n_reduced=2**24, n_inner=1, n_inner_blocks=1,
                                    reduced_per_program=16384, n_chunks=1024), (1, 2048, 1)),
    ("rows of 32", dict(n_outer=10_000, n_reduced=32, n_inner=1, n_inner_blocks=1,
                        reduced_per_program=32, n_chunks=1), (64, 32, 1)),
    ("dim 0 of (4096, 1024)", dict(n_outer=1, n_reduced=4096, n_inner=1024, n_inner_blocks=4,
                                   reduced_per_program=32, n_chunks=128), (1, 8, 256)),
]  # fmt: skip


def test_kernels_compile_for_sm90_with_16_byte_loads(tmp_path):
    """No GPU here: compile the reduction and norm-gradient kernels as the JIT would for typical
    fp32 inputs and check each thread loads 16 bytes at a time (what HBM bandwidth needs)."""
    cases = [
        [reduction.__name__, "reduce_split_kernel", {**_SPLIT, **args},
         {**_SPLIT_CONSTEXPRS, "BLOCK_OUTER": o, "BLOCK_REDUCED": r, "BLOCK_INNER": i}, 8]
        for _, args, (o, r, i) in _SM90_CASES
    ] + [["triton_kernels.norm", "grad_times_x_over_norm_kernel",
          dict(grad_ptr="*fp32", x_ptr="*fp32", norm_ptr="*fp32", out_ptr="*fp32",
               n_elements=2**24, n_reduced=2**24, n_inner=1),
          dict(ONE_GROUP=True, COMPUTE_DTYPE="float32", BLOCK=1024), 4]]  # fmt: skip
    env = {**os.environ, "TRITON_CACHE_DIR": str(tmp_path)}  # a real compile, not a cache hit
    done = subprocess.run([sys.executable, "-c", _SM90_LOADS, json.dumps(cases)], env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    *split_loads, norm_loads = json.loads(done.stdout.splitlines()[-1])
    for (what, _, _), loads in zip(_SM90_CASES, split_loads, strict=True):
        assert loads and set(loads) == {"ld.global.v4.b32"}, what
    # x in 16-byte vectors; grad and the norm are one scalar each
    assert norm_loads.count("ld.global.b32") == 2 and "ld.global.v4.b32" in norm_loads


def test_large_reduction_on_gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA: 2^24 elements are too slow for the interpreter")
    x = torch.randn(2**24 + 3, device="cuda")
    assert_close(torchext.sum(x).double(), x.double().sum(), dtype=torch.float32, scale=64)
    m = torch.randn(4096, 4099, device="cuda")
    for dim in (0, 1):
        # fp32 results against an fp64 reference: held to fp32's tolerance
        expected = m.double().sum(dim)
        assert_close(torchext.sum(m, dim).double(), expected, dtype=torch.float32, scale=8)
