"""Which `nn.Module` is running: global forward hooks keep a stack of module paths.

A path is the class name of the outermost module called (the root), then the submodule's name as
in `state_dict` keys: `TinyLM.encoder.layers.0.linear1`; operators that run directly in the
root's own `forward` get the root's class name alone. So every path under a root starts with the
root's path and a dot, which is what a module's inclusive figures add up. The forward hook is
registered with `always_call=True`, so a module that raises still pops its path. The hooks are
global: calls from threads other than the profiled one are ignored (their modules are not this
profile's, and must neither name its rows nor count in its memory).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

from torch import nn
from torch.fx import GraphModule
from torch.nn.modules.module import (
    register_module_forward_hook,
    register_module_forward_pre_hook,
)


def _is_optimized(module: nn.Module) -> bool:
    return type(module).__name__ == "OptimizedModule"


def _is_compiled_graph(module: nn.Module) -> bool:
    """A graph a compile backend made and runs as a module (AOTAutograd's `<lambda>` FX graph,
    e.g. `aot_eager` without grad): its ops belong to the module that was compiled, not to a
    model of its own. (A user's `symbolic_trace` keeps its root's class name.)"""
    return type(module).__name__ == "<lambda>" and isinstance(module, GraphModule)


class ModuleStack:
    """The path of the innermost module whose forward is running ("" outside any module)."""

    def __init__(self, on_new_root: Callable[[nn.Module], None]) -> None:
        # accounts for the parameters of a newly seen model (None once stopped)
        self._on_new_root: Callable[[nn.Module], None] | None = on_new_root
        self._paths: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()
        self._stack: list[str] = []
        self.current = ""
        self._handles: list[Any] = []
        self._thread = 0  # the profiled thread's ident

    def _path_of(self, module: nn.Module) -> str:
        # torch.compile(model) wraps the model in an OptimizedModule: name the model itself
        module = getattr(module, "_orig_mod", module) if _is_optimized(module) else module
        path = self._paths.get(module)
        if path is None:
            # First time seen: name it and all its submodules under it.
            path = type(module).__name__
            for name, sub in module.named_modules():
                if name and sub not in self._paths:
                    # a submodule replaced by torch.compile(sub): the model inside the wrapper
                    # (`_orig_mod`) is named by the wrapper's place, as state_dict keys it
                    name = ".".join(part for part in name.split(".") if part != "_orig_mod")
                    self._paths[sub] = f"{path}.{name}" if name else path
            self._paths[module] = path
            if self._on_new_root is not None:
                self._on_new_root(module)
        return path

    def _pre(self, module: nn.Module, args: Any) -> None:
        if threading.get_ident() != self._thread or _is_compiled_graph(module):
            return
        self._stack.append(self.current)
        self.current = self._path_of(module)

    def _post(self, module: nn.Module, args: Any, output: Any) -> None:
        if threading.get_ident() == self._thread and self._stack and (
                not _is_compiled_graph(module)):
            self.current = self._stack.pop()

    def start(self, thread: int) -> None:
        self._thread = thread
        self._handles = [
            register_module_forward_pre_hook(self._pre),
            register_module_forward_hook(self._post, always_call=True),
        ]

    def stop(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._stack.clear()
        self.current = ""
        self._on_new_root = None  # a reference cycle through the recorder: see Recorder.stop
