"""The autograd lesson's examples, written on torchext ops.

Each example is a zero-argument function returning what the lesson prints (tensors and checks),
so tests compare against the lesson and the profiler (`torchext-profile examples`) can run them.
`python -m torchext.examples` prints them all and saves the sin plot.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch

import torchext as te


def _lesson_x() -> torch.Tensor:
    return torch.arange(4.0, requires_grad=True)


def two_x_dot_x() -> dict:
    """y = 2·xᵀx; its gradient is 4x."""
    x = _lesson_x()
    y = te.mul(te.dot(x, x), 2)
    y.backward()
    return {"x": x.detach(), "y": y.detach(), "x.grad": x.grad, "x.grad == 4 * x": x.grad == 4 * x}


def sum_of_x() -> dict:
    """y = x.sum(); its gradient is a vector of ones."""
    x = _lesson_x()
    y = te.sum(x)
    y.backward()
    return {"y": y.detach(), "x.grad": x.grad}


def x_times_x() -> dict:
    """y = x * x is a vector: backward of y.sum() gives the summed per-element gradients, 2x."""
    x = _lesson_x()
    y = te.mul(x, x)
    te.sum(y).backward()
    return {"y": y.detach(), "x.grad": x.grad, "x.grad == 2 * x": x.grad == 2 * x}


def detach() -> dict:
    """u = y.detach() is a constant: the gradient of u * x is u; y keeps its own graph (2x)."""
    x = _lesson_x()
    y = te.mul(x, x)
    u = y.detach()
    z = te.mul(u, x)
    te.sum(z).backward()
    grad_of_z = x.grad.clone()
    x.grad.zero_()
    te.sum(y).backward()
    return {
        "u": u,
        "x.grad (of sum(u * x))": grad_of_z,
        "x.grad == u": grad_of_z == u,
        "x.grad (after y.sum().backward())": x.grad,
        "x.grad == 2 * x (after y.sum().backward())": x.grad == 2 * x,
    }


def f(a: torch.Tensor) -> torch.Tensor:
    """The lesson's function with Python control flow: f(a) = k·a for a k chosen at run time."""
    b = te.mul(a, 2)
    while te.norm(b) < 1000:
        b = te.mul(b, 2)
    if te.sum(b) > 0:
        c = b
    else:
        c = te.mul(b, 100)
    return c


def branch_slope(a: torch.Tensor) -> float:
    """The k of f(a) = k·a for the branch `f` takes on `a`, followed in plain Python floats.

    k is 2^n (times 100 on the negative branch): exact in every float dtype, so it is what the
    gradient of f must equal exactly, element by element.
    """
    b, k = a.detach().double() * 2, 2.0
    while torch.linalg.vector_norm(b) < 1000:
        b, k = b * 2, k * 2
    return k if b.sum() > 0 else k * 100


def _control_flow(shape: tuple[int, ...]) -> dict:
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(shape, generator=generator).requires_grad_()
    d = f(a)
    te.sum(d).backward()  # d.sum() is d itself for a scalar
    k = branch_slope(a)
    return {
        "a": a.detach(),
        "d": d.detach(),
        "a.grad": a.grad,
        "a.grad == d / a (the lesson's check)": a.grad == d / a,
        "slope k of the branch taken": k,
        "a.grad == k (exact check, every element)": bool((a.grad == k).all()),
        "why d / a can differ": (
            "a.grad is k exactly, but d / a is float32 math: on the negative branch d = 100·b is "
            "rounded and d / a rounds again, so an element may be one ulp off k (torch gives the "
            "same); on the positive branch d = 2^n·a and d / a are exact"
        ),
    }


def control_flow_scalar() -> dict:
    """f is linear in a for the branch taken, so its gradient is d / a."""
    return _control_flow(())


def control_flow_vector() -> dict:
    """The exercise: a vector input; d is a vector, so backward needs d.sum()."""
    return _control_flow((10,))


def backward_twice() -> dict:
    """A second backward through a freed graph raises; retain_graph=True keeps it (grads add up)."""
    x = _lesson_x()
    y = te.sum(te.mul(x, x))
    y.backward()
    try:
        y.backward()
        error = ""
    except RuntimeError as exc:
        error = str(exc).splitlines()[0]
    x.grad = None
    y = te.sum(te.mul(x, x))
    y.backward(retain_graph=True)
    y.backward()
    return {"error": error, "x.grad (two backwards, retain_graph=True)": x.grad}


def sin_and_derivative() -> dict:
    """The exercise: autograd's derivative of sin is cos, without writing cos down."""
    x = torch.arange(-20, 20, 0.1, requires_grad=True)
    y = te.sin(x)
    te.sum(y).backward()
    error = (x.grad - torch.cos(x.detach())).abs().max()
    return {"x": x.detach(), "sin(x)": y.detach(), "dy/dx": x.grad, "max |dy/dx - cos x|": error}


def plot_sin_and_derivative(path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = sin_and_derivative()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(result["x"], result["sin(x)"], label="y = sin(x)  (torchext.sin)")
    ax.plot(result["x"], result["dy/dx"], label="dy/dx  (autograd, torchext kernels)")
    ax.set(xlabel="x", ylabel="value", title="sin and its autograd derivative")
    ax.legend(loc="lower right")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def chain_rule() -> dict:
    """(⟨x,w⟩ − y)² and ‖Xw − y‖²: gradients 2(⟨x,w⟩ − y)x and 2Xᵀ(Xw − y), fused and unfused."""
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(8, 4, generator=generator, dtype=torch.float64)
    y = torch.randn(8, generator=generator, dtype=torch.float64)
    w = torch.randn(4, generator=generator, dtype=torch.float64, requires_grad=True)

    residual = te.sub(te.dot(X[0], w), y[0])
    te.mul(residual, residual).backward()
    grad_scalar = w.grad.clone()

    w.grad = None
    r = te.sub(te.mv(X, w), y)
    te.dot(r, r).backward()
    grad_composed = w.grad.clone()

    w.grad = None
    loss = te.least_squares(X, w, y)
    loss.backward()
    expected = 2 * X.T @ (X @ w.detach() - y)
    return {
        "grad of (<x,w> - y)^2": grad_scalar,
        "matches 2(<x,w> - y)x": torch.allclose(grad_scalar, 2 * (X[0] @ w.detach() - y[0]) * X[0]),
        "||Xw - y||^2": loss.detach(),
        "grad (composed)": grad_composed,
        "grad (fused least_squares)": w.grad,
        "matches 2X^T(Xw - y)": torch.allclose(grad_composed, expected)
        and torch.allclose(w.grad, expected),
    }


EXAMPLES: dict[str, Callable[[], dict]] = {
    "two_x_dot_x": two_x_dot_x,
    "sum_of_x": sum_of_x,
    "x_times_x": x_times_x,
    "detach": detach,
    "control_flow_scalar": control_flow_scalar,
    "control_flow_vector": control_flow_vector,
    "backward_twice": backward_twice,
    "sin_and_derivative": sin_and_derivative,
    "chain_rule": chain_rule,
}


def _show(value) -> str:
    if isinstance(value, torch.Tensor) and value.numel() > 12:
        return f"tensor of shape {tuple(value.shape)}, first: {value.flatten()[:4].tolist()}"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/examples", help="folder for the sin plot")
    args = parser.parse_args(argv)
    for name, example in EXAMPLES.items():
        print(f"== {name}: {(example.__doc__ or '').splitlines()[0]}")
        for key, value in example().items():
            print(f"   {key}: {_show(value)}")
    print(f"sin plot: {plot_sin_and_derivative(Path(args.out) / 'sin_and_derivative.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
