"""The L2 norm (a split reduction of x², then sqrt) and its fused gradient `grad · x / norm`.

The gradient kernel reads x once and writes once; `grad` and `norm` are one value per reduced
group (one value in all for a full norm, read through its pointer: no host sync).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from triton_kernels.reduction import TERM_SQUARE, reduce, reduction_layout
from triton_kernels.runtime import (
    ELEMENTWISE_BLOCK,
    ELEMENTWISE_WARPS,
    compute_dtype,
    elementwise_grid,
    kernel_for,
)


@triton.jit
def grad_times_x_over_norm_kernel(
    grad_ptr,
    x_ptr,
    norm_ptr,
    out_ptr,
    n_elements,
    n_reduced,
    n_inner,
    ONE_GROUP: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """out = grad · x / norm for x laid out (outer, reduced, inner), grad and norm (outer, inner);
    0 where norm is 0 (the subgradient torch picks)."""
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n_elements
    x = tl.load(x_ptr + offsets, mask=mask).to(COMPUTE_DTYPE)
    if ONE_GROUP:
        grad = tl.load(grad_ptr).to(COMPUTE_DTYPE)
        norm = tl.load(norm_ptr).to(COMPUTE_DTYPE)
    else:
        # (outer, inner) of each element; dividing twice keeps every product in int64
        group = offsets // n_reduced // n_inner * n_inner + offsets % n_inner
        grad = tl.load(grad_ptr + group, mask=mask, other=0).to(COMPUTE_DTYPE)
        norm = tl.load(norm_ptr + group, mask=mask, other=0).to(COMPUTE_DTYPE)
    # Divide by 1 where the norm is 0 (and in masked lanes): no 0/0 is ever computed.
    scale = tl.where(norm == 0, 0.0, grad / tl.where(norm == 0, 1.0, norm))
    tl.store(out_ptr + offsets, (x * scale).to(out_ptr.dtype.element_ty), mask=mask)


def norm_forward(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """‖x‖₂ over `dims` (sqrt of the fp32 sum of squares), x's shape with `dims` kept as 1."""
    return reduce(x, dims, x.dtype, term=TERM_SQUARE, sqrt=True)


def norm_backward(
    grad: torch.Tensor, x: torch.Tensor, norm: torch.Tensor, dims: tuple[int, ...]
) -> torch.Tensor:
    """`grad · x / norm` (0 where norm = 0) in x's shape and dtype, contiguous.

    `grad` and `norm` have x's shape with `dims` as size 1; x may have size 1 there too (the
    backward of this very function passes such an x), then it is an elementwise product.
    """
    x3, order = reduction_layout(x, dims)
    outer, reduced, inner = x3.shape
    out3 = torch.empty_like(x3)
    if x3.numel():
        grad_flat, norm_flat = grad.reshape(-1).contiguous(), norm.reshape(-1).contiguous()
        kernel_for(grad_times_x_over_norm_kernel, x.device)[elementwise_grid(x3.numel())](
            grad_flat, x3, norm_flat, out3, x3.numel(), reduced, inner,
            ONE_GROUP=outer * inner == 1, COMPUTE_DTYPE=compute_dtype(x.dtype),
            BLOCK=ELEMENTWISE_BLOCK, num_warps=ELEMENTWISE_WARPS,
        )  # fmt: skip
    if order is None:
        return out3.view(x.shape)
    permuted = out3.view([x.shape[d] for d in order])
    return permuted.permute([order.index(d) for d in range(x.dim())]).contiguous()
