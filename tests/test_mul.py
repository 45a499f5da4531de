"""torchext.mul against torch.mul: broadcasting, numbers, promotion, autograd of every order."""

import json
import os
import subprocess
import sys

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck
from torch.func import grad, jvp, vmap

import torchext
import triton_kernels.binary
from tests.conftest import DTYPES, assert_close
from triton_kernels import mul as mul_kernels
from triton_kernels.runtime import kernel_for

# Small on purpose (the interpreter is slow), but covering: 0-dim, empty, one-element
# operands, broadcasting on either side and both, and more than one program (1025 > BLOCK).
SHAPE_PAIRS = [
    ((), ()),
    ((7,), ()),
    ((), (5,)),
    ((1,), (2, 3)),
    ((0,), (1,)),
    ((0,), ()),
    ((3, 0), (1,)),
    ((1025,), (1025,)),
    ((3, 1), (1, 4)),
    ((2, 3, 4), (4,)),
    ((2, 1, 4), (3, 1)),
    ((5, 6), (5, 6)),
]
SCALARS = [2, 100, 0.1, -3.5, 0, True]


def _differentiable(value) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def assert_matches_torch(ours, ref, *args, grad_scale: float = 1.0) -> None:
    """`ours(*args)` against `ref(*args)`: dtype, shape and values, then the gradients of every
    floating-point tensor argument for one random output gradient (held to `grad_scale` times
    the tolerance of their dtype)."""

    def leaves():  # detach, not clone: a transposed or expanded input stays so
        return [a.detach().requires_grad_() if _differentiable(a) else a for a in args]

    ours_args, ref_args = leaves(), leaves()
    out, expected = ours(*ours_args), ref(*ref_args)
    assert out.dtype == expected.dtype and out.shape == expected.shape
    assert_close(out, expected)
    wrt = [i for i, a in enumerate(args) if _differentiable(a)]
    if not wrt:
        return
    g = torch.randn_like(expected)
    grads = torch.autograd.grad(out, [ours_args[i] for i in wrt], g)
    expected_grads = torch.autograd.grad(expected, [ref_args[i] for i in wrt], g)
    for got, want in zip(grads, expected_grads, strict=True):
        assert got.dtype == want.dtype
        assert_close(got, want, scale=grad_scale)


@pytest.mark.parametrize("shapes", SHAPE_PAIRS, ids=str)
def test_forward_and_backward_match_torch(shapes, dtype, device):
    a = torch.randn(shapes[0], device=device).to(dtype)
    b = torch.randn(shapes[1], device=device).to(dtype)
    # broadcast gradients are sums of up to 30 products: a few roundings in half precision
    assert_matches_torch(torchext.mul, torch.mul, a, b, grad_scale=4)


@pytest.mark.parametrize("scalar", SCALARS, ids=repr)
def test_python_numbers_on_either_side(scalar, dtype, device):
    """The lesson's `b * 2` and `100 * b`, for a tensor and for a 0-dim tensor."""
    for shape in ((9,), ()):
        x = (torch.randn(shape, device=device) * 3).to(dtype)
        assert_matches_torch(torchext.mul, torch.mul, x, scalar)
        assert_matches_torch(torchext.mul, torch.mul, scalar, x)


def test_two_numbers_give_a_0_dim_tensor_like_torch():
    for a, b in ((2, 3), (2.5, 3), (True, 2), (True, False), (0.1, 0.7)):
        out, expected = torchext.mul(a, b), torch.mul(a, b)
        assert out.dtype == expected.dtype and out.shape == ()
        assert_close(out, expected)


@pytest.mark.parametrize(
    "dtypes",
    [(x, y) for x in DTYPES for y in DTYPES if x != y]
    + [
        (torch.int64, torch.float32),
        (torch.int32, torch.float16),
        (torch.bool, torch.float64),
        (torch.uint8, torch.bfloat16),
    ],
    ids=str,
)
def test_type_promotion_like_torch(dtypes):
    a = (torch.randn(6) * 5).to(dtypes[0])
    b = (torch.randn(6) * 5).to(dtypes[1])
    # inputs are already rounded to their types, so one rounding of the result remains
    assert_matches_torch(torchext.mul, torch.mul, a, b)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_zero_dim_tensors_and_numbers_do_not_promote_a_float_tensor(dtype):
    x = torch.randn(5).to(dtype)
    for other in (
        torch.tensor(3.0, dtype=torch.float64),
        torch.tensor(3),
        torch.tensor(True),
        2.5,
        3,
    ):
        expected = torch.mul(x, other)
        out = torchext.mul(x, other)
        assert out.dtype == expected.dtype == dtype
        assert_close(out, expected)
    # ...but they do promote across categories, and a 0-dim tensor against a 0-dim tensor does
    assert torchext.mul(torch.arange(3), 2.5).dtype == torch.get_default_dtype()
    zero_dim = torch.tensor(2.0, dtype=dtype)
    assert torchext.mul(zero_dim, torch.tensor(2.0)).dtype == torch.promote_types(
        dtype, torch.float32
    )


def test_integer_and_bool_results_are_exact_like_torch():
    cases = [
        (torch.tensor([2**40, -7, 3, 2**62]), 3),  # int64, wraps past 2**63 like torch
        (torch.tensor([2**40, -7, 3]), torch.tensor([5, -1, 2**20])),
        (torch.tensor([100, -100, 7], dtype=torch.int8), torch.tensor(3, dtype=torch.int8)),
        (torch.tensor([2**30, 5], dtype=torch.int32), torch.tensor([4, -3], dtype=torch.int32)),
        (torch.tensor([0, 1, 200], dtype=torch.uint8), -1),  # wraps to 255, 56
        (torch.tensor([0, 1, 200], dtype=torch.uint8), 300),
        (torch.tensor([True, False, True]), torch.tensor([True, True, False])),
        (torch.tensor([True, False]), True),
        (torch.tensor([True, False]), 7),  # bool × int -> int64
        (torch.tensor([3, 4], dtype=torch.int16), torch.tensor([True, False])),
    ]
    for a, b in cases:
        expected = torch.mul(a, b)
        out = torchext.mul(a, b)
        assert out.dtype == expected.dtype
        assert torch.equal(out, expected), (a, b, out, expected)


def test_non_contiguous_inputs(device):
    base = torch.randn(6, 8, device=device, dtype=torch.float64)
    other = torch.randn(8, 6, device=device, dtype=torch.float64)
    for a, b in (
        (base.t(), other),  # transposed
        (base[:, ::2], other.t()[:, 1::2]),  # strided
        (base[0].expand(5, 8), base[1:]),  # expanded (stride 0)
        (base.t()[::2], base[0, :6]),  # strided and broadcast
        (base[2, 3], base.t()),  # 0-dim view into a bigger storage
    ):
        assert_matches_torch(torchext.mul, torch.mul, a, b)


class _RecordedKernel:
    """`kernel_for(kernel, device)` that also records the arguments of every launch."""

    def __init__(self, kernel, device, launches: list):
        self.kernel, self.device, self.launches = kernel, device, launches

    def __getitem__(self, grid):
        launch = kernel_for(self.kernel, self.device)[grid]

        def record(*args, **kwargs):
            self.launches.append((self.kernel, args, kwargs))
            return launch(*args, **kwargs)

        return record


def record_launches(monkeypatch) -> list:
    """From now on, `(kernel, args, kwargs)` of every launch by the binary ops' launch helper."""
    launches = []
    monkeypatch.setattr(
        triton_kernels.binary, "kernel_for", lambda k, d: _RecordedKernel(k, d, launches)
    )
    return launches


def test_numbers_and_one_element_tensors_are_not_materialised(monkeypatch):
    """A Python number is a pinned-dtype kernel argument; a 0-dim/one-element tensor is read
    through its pointer (never `.item()`, which would sync and break CUDA graphs)."""
    launches = record_launches(monkeypatch)
    x = torch.randn(4, 5, dtype=torch.float64)

    torchext.mul(x, 0.1)
    kernel, args, _ = launches[-1]
    assert kernel is mul_kernels.mul_scalar_kernel
    assert [a.numel() for a in args if isinstance(a, torch.Tensor)] == [20, 20]  # x and out
    assert args[1:3] == (0.1, 0)  # the exact fp64 value, as an argument

    for one in (torch.tensor(3.0), torch.tensor([[3.0]], dtype=torch.float64)):
        torchext.mul(one, x)
        kernel, args, kwargs = launches[-1]
        assert kernel is mul_kernels.mul_kernel
        assert args[0].numel() == 1 and kwargs["A_IS_SCALAR"] and not kwargs["B_IS_SCALAR"]
    assert mul_kernels.mul_scalar_kernel.params[1].annotation == "fp64"
    assert mul_kernels.mul_scalar_kernel.params[2].annotation == "i64"


def test_fp64_scalar_is_not_rounded_to_fp32():
    x = torch.ones(3, dtype=torch.float64)
    scalar = 0.1 + 1e-12  # not representable in fp32
    assert torch.equal(torchext.mul(x, scalar), x * scalar)
    huge = 2**62 + 2**40 + 1  # int -> fp32 in one rounding, as torch rounds it
    assert torch.equal(torchext.mul(torch.ones(2), huge), torch.ones(2) * huge)


def test_gradcheck_and_gradgradcheck():
    # tiny on purpose: gradgradcheck launches a few kernels per element through the interpreter
    a = torch.randn(2, 1, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    assert gradcheck(torchext.mul, (a, b), check_forward_ad=True)
    assert gradgradcheck(torchext.mul, (a, b), check_fwd_over_rev=True)
    zero_dim = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    for fn, inputs in (
        (torchext.mul, (zero_dim, b)),
        (lambda t: torchext.mul(t, t), (b,)),  # the lesson's x * x
        (lambda t: torchext.mul(-2.5, t), (a,)),
    ):
        assert gradcheck(fn, inputs, check_forward_ad=True)
        assert gradgradcheck(fn, inputs)


def test_second_derivative_of_x_times_x_is_two():
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    (d1,) = torch.autograd.grad(torchext.sum(torchext.mul(x, x)), x, create_graph=True)
    (d2,) = torch.autograd.grad(torchext.sum(d1), x)
    assert_close(d1, 2 * x.detach())
    assert_close(d2, torch.full_like(x, 2.0))


def assert_vmap_matches_torch(ours, ref) -> None:
    """vmap over several in_dims: one side unbatched, the batch at dims 0, 1 and 2, per-sample
    0-dim against per-sample (4, 3), and a Python number on either side."""
    batch = torch.randn(5, 4, 3, dtype=torch.float64)
    y = torch.randn(3, dtype=torch.float64)
    per_sample_scalars = torch.randn(5, dtype=torch.float64)
    for in_dims, args in (
        ((0, None), (batch, y)),
        ((None, 0), (y, batch)),
        ((1, 0), (batch.transpose(0, 1), batch)),
        ((2, 2), (batch.movedim(0, 2), batch.movedim(0, 2))),
        ((0, 0), (per_sample_scalars, batch)),
        ((0, None), (batch, 2.0)),
        ((None, 2), (2.0, batch.movedim(0, 2))),
    ):
        assert_close(vmap(ours, in_dims=in_dims)(*args), vmap(ref, in_dims=in_dims)(*args))


def test_torch_func_transforms_match_torch():
    x, t = torch.randn(2, 4, 3, dtype=torch.float64).unbind()
    y, u = torch.randn(2, 3, dtype=torch.float64).unbind()
    assert_close(jvp(torchext.mul, (x, y), (t, u))[1], jvp(torch.mul, (x, y), (t, u))[1])
    assert_close(
        jvp(lambda p: torchext.mul(p, y), (x,), (t,))[1], jvp(lambda p: p * y, (x,), (t,))[1]
    )
    assert_close(
        jvp(lambda p: torchext.mul(3.5, p), (x,), (t,))[1], jvp(lambda p: 3.5 * p, (x,), (t,))[1]
    )
    assert_close(
        grad(lambda p, q: torchext.mul(p, q).sum(), argnums=(0, 1))(x, y),
        grad(lambda p, q: torch.mul(p, q).sum(), argnums=(0, 1))(x, y),
        dtype=torch.float64,
    )
    assert_vmap_matches_torch(torchext.mul, torch.mul)
    batch = torch.randn(5, 4, 3, dtype=torch.float64)
    # per-sample gradients and Hessian-vector products compose transforms over our Functions
    assert_close(
        vmap(grad(lambda p: torchext.sum(torchext.mul(p, p))))(batch),
        vmap(grad(lambda p: (p * p).sum()))(batch),
    )
    assert_close(
        jvp(grad(lambda p: torchext.sum(torchext.mul(p, y))), (x,), (t,))[1],
        jvp(grad(lambda p: (p * y).sum()), (x,), (t,))[1],
    )


def test_retain_graph_backward_twice_gives_the_same_gradients():
    a = torch.randn(4, 3, requires_grad=True)
    b = torch.randn(3, requires_grad=True)
    a_before, b_before = a.detach().clone(), b.detach().clone()
    loss = torchext.sum(torchext.mul(torchext.mul(a, b), b))
    first = torch.autograd.grad(loss, (a, b), retain_graph=True)
    second = torch.autograd.grad(loss, (a, b), retain_graph=True)
    for g1, g2 in zip(first, second, strict=True):
        assert torch.equal(g1, g2)
    loss.backward(retain_graph=True)
    loss.backward()  # accumulates into .grad: twice the gradient, nothing written in place
    assert_close(a.grad, 2 * first[0])
    assert_close(b.grad, 2 * first[1])
    assert torch.equal(a.detach(), a_before) and torch.equal(b.detach(), b_before)


def test_bad_input_raises_what_torch_raises():
    x = torch.randn(3)
    with pytest.raises(RuntimeError, match=r"mul: The size of tensor a \(3\) must match the size"):
        torchext.mul(x, torch.randn(4))
    with pytest.raises(RuntimeError, match="at non-singleton dimension 1"):
        torchext.mul(torch.randn(2, 3), torch.randn(2, 2))
    with pytest.raises(RuntimeError, match="same device"):
        torchext.mul(x, torch.randn(3, device="meta"))
    with pytest.raises(RuntimeError, match="same device"):
        torchext.mul(x, torch.tensor(2.0, device="meta"))  # only a CPU 0-dim tensor may join
    with pytest.raises(TypeError, match=r"mul\(\): argument 'other' \(position 2\) must be Tensor"):
        torchext.mul(x, "2")
    with pytest.raises(TypeError, match=r"mul\(\): argument 'input' \(position 1\) must be Tensor"):
        torchext.mul([1.0], x)
    with pytest.raises(TypeError, match="must be Tensor, not NoneType"):
        torchext.mul(x, None)
    with pytest.raises(TypeError, match="mul: complex"):
        torchext.mul(torch.randn(3, dtype=torch.complex64), x)
    with pytest.raises(TypeError, match="mul: complex"):
        torchext.mul(x, 1j)
    with pytest.raises(TypeError, match="mul: unsupported dtype"):
        torchext.mul(x.to(torch.float8_e4m3fn), x)
    with pytest.raises(OverflowError, match="mul"):
        torchext.mul(torch.arange(3), 2**70)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_zero_dim_tensor_joins_a_cuda_op_like_torch():
    x = torch.randn(5, device="cuda")
    scale = torch.tensor(3.0)
    assert_close(torchext.mul(x, scale), torch.mul(x, scale))
    assert_close(torchext.mul(scale, x), torch.mul(scale, x))


def test_compiled_function_matches_eager():
    def f(p, q, s):
        y = torchext.mul(torchext.mul(p, q), 2)  # broadcast tensor × tensor, tensor × number
        z = torchext.mul(3, torchext.mul(s, q))  # number × tensor, 0-dim × tensor
        return torchext.sum(y) + torchext.sum(z)

    p, q = torch.randn(3, 4, requires_grad=True), torch.randn(4, requires_grad=True)
    s = torch.tensor(1.5, requires_grad=True)
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    out = compiled(p, q, s)
    grads = torch.autograd.grad(out, (p, q, s))
    expected = f(p, q, s)
    assert_close(out, expected)
    assert_close(grads, torch.autograd.grad(expected, (p, q, s)), dtype=torch.float32)


_COMPILE_FOR_SM90 = """
import importlib, json, sys
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile

for module, name, signature, variants in json.loads(sys.argv[1]):
    kernel = getattr(importlib.import_module(module), name)
    for constexprs in variants:
        constexprs = {k: getattr(tl, v) if isinstance(v, str) else v for k, v in constexprs.items()}
        target = GPUTarget("cuda", 90, 32)
        assert "ptx" in compile(ASTSource(kernel, signature, constexprs), target=target).asm
"""


def assert_compiles_for_sm90(cases: list[tuple], cache_dir) -> None:
    """Compile each `(kernel, signature, constexpr variants)` for an sm_90 target (no GPU
    needed): the interpreter is lenient, this checks the kernels' types (fp64/int64 scalar
    arguments, constexpr branches) as a GPU would. Dtype constexprs are given by name.

    It runs in a fresh process, as a first CUDA compile would (tests/test_runtime.py checks
    that one after CPU launches works too).
    """
    spec = json.dumps([[k.fn.__module__, k.fn.__name__, sig, var] for k, sig, var in cases])
    env = {**os.environ, "TRITON_CACHE_DIR": str(cache_dir)}  # a real compile, not a cache hit
    done = subprocess.run(
        [sys.executable, "-c", _COMPILE_FOR_SM90, spec], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_kernels_compile_for_cuda_without_a_gpu(tmp_path):
    out = {"out_ptr": "*fp16", "n_elements": "i32"}
    constexprs = {"COMPUTE_DTYPE": "constexpr", "BLOCK": "constexpr"}
    variants = [{"COMPUTE_DTYPE": dtype, "BLOCK": 1024} for dtype in ("float32", "int64")]
    mul_signature = {
        "a_ptr": "*fp16",
        "b_ptr": "*bf16",
        **out,
        "A_IS_SCALAR": "constexpr",
        "B_IS_SCALAR": "constexpr",
        **constexprs,
    }
    scalar_signature = {
        "x_ptr": "*fp16",
        "scalar_fp64": "fp64",
        "scalar_int64": "i64",
        **out,
        **constexprs,
    }
    cases = [
        (
            mul_kernels.mul_kernel,
            mul_signature,
            [{"A_IS_SCALAR": True, "B_IS_SCALAR": False, **v} for v in variants],
        ),
        (mul_kernels.mul_scalar_kernel, scalar_signature, variants),
    ]
    assert_compiles_for_sm90(cases, tmp_path)
