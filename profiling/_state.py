"""Running a training step several times as if once: its models', optimizers' and RNG state.

The planner runs the user's step again and again (baseline, plan, timings); each run must start
from the same parameters, optimizer state and random numbers, or the gradients could not be
compared, and the model must be left as it was found. Copies are kept on the CPU so that they
do not count in a CUDA device's memory while the step is measured.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


class ModelState:
    """Parameters (with their .grad) and buffers of some modules, copied to the CPU."""

    def __init__(self, modules: list[nn.Module]) -> None:
        tensors: dict[int, torch.Tensor] = {}
        for module in modules:
            for tensor in (*module.parameters(), *module.buffers()):
                tensors[id(tensor)] = tensor
        self._saved = [(t, _to_cpu(t), None if t.grad is None else _to_cpu(t.grad))
                       for t in tensors.values()]

    def restore(self) -> None:
        with torch.no_grad():
            for tensor, value, grad in self._saved:
                tensor.copy_(value)
                if grad is None:
                    tensor.grad = None
                elif tensor.grad is not None and tensor.grad.shape == grad.shape:
                    tensor.grad.copy_(grad)
                else:
                    tensor.grad = grad.to(tensor.device, tensor.dtype)


class OptimizerState:
    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self._saved = _to_cpu(optimizer.state_dict())

    def restore(self) -> None:
        self.optimizer.load_state_dict(self._saved)


class RandomState:
    """torch's (CPU and CUDA), Python's and NumPy's generators."""

    def __init__(self) -> None:
        self._torch = torch.get_rng_state()
        self._cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        self._python = random.getstate()
        try:
            import numpy

            self._numpy: Any = numpy.random.get_state()
        except ImportError:  # pragma: no cover - numpy comes with torch
            self._numpy = None

    def restore(self) -> None:
        torch.set_rng_state(self._torch)
        if self._cuda is not None:
            torch.cuda.set_rng_state_all(self._cuda)
        random.setstate(self._python)
        if self._numpy is not None:
            import numpy

            numpy.random.set_state(self._numpy)


class StepState:
    """Snapshots of what a step changes; optimizers are found when they first step."""

    def __init__(self, modules: list[nn.Module]) -> None:
        self.modules = list(modules)
        self.optimizers: list[torch.optim.Optimizer] = []
        self._first_models = ModelState(self.modules)
        self._first_optimizers: list[OptimizerState] = []
        self._random = RandomState()
        self._marked: tuple[ModelState, list[OptimizerState], RandomState] | None = None

    def _owns(self, optimizer: torch.optim.Optimizer) -> bool:
        mine = {id(p) for m in self.modules for p in m.parameters()}
        return any(id(p) in mine for group in optimizer.param_groups for p in group["params"])

    @contextlib.contextmanager
    def finding_optimizers(self) -> Iterator[None]:
        """While inside, an optimizer stepping the modules' parameters is recorded (and its
        state copied before its first step)."""
        def before_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            if optimizer not in self.optimizers and self._owns(optimizer):
                self.optimizers.append(optimizer)
                self._first_optimizers.append(OptimizerState(optimizer))

        handle = register_optimizer_step_pre_hook(before_step)
        try:
            yield
        finally:
            handle.remove()

    def mark(self) -> None:
        """Every later `rewind()` goes back to now."""
        self._marked = (ModelState(self.modules),
                        [OptimizerState(o) for o in self.optimizers], RandomState())

    def rewind(self) -> None:
        assert self._marked is not None, "mark() first"
        models, optimizers, rng = self._marked
        models.restore()
        for state in optimizers:
            state.restore()
        rng.restore()

    def restore_first(self) -> None:
        """Back to how the modules and optimizers were found."""
        self._first_models.restore()
        for state in self._first_optimizers:
            state.restore()
        self._random.restore()
