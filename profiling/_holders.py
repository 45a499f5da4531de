"""Who holds a tensor: the variable, and the path through containers and attributes to it.

The leak finder asks for a name for each tensor that keeps a graph alive. We look where a user
looks: the calling frames' local variables (innermost first), then the globals of those frames'
modules, following tuples, lists, dicts and object attributes a few levels down, so a carried
LSTM state reads `hidden[0]`, a dict entry `state['h']` and an attribute `self.h`. What no
variable reaches is found among every object the garbage collector tracks, and named by the
containers that hold it, from the inside out.

Before Python 3.13, reading `frame.f_locals` of a running function stores a snapshot dict in
the frame that keeps its values alive until the function returns; we empty those snapshots
again (anything that reads them, `locals()` or a tracer, refills them first).
"""

from __future__ import annotations

import ast
import dis
import gc
import inspect
import linecache
import sys
import types
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

MAX_DEPTH = 4  # containers/attributes followed from a variable: hidden[0], trainer.state['h']
MAX_VISITS = 200_000  # objects looked at in all, so huge structures stay cheap
_SNAPSHOT_LOCALS = sys.version_info < (3, 13)
_OPAQUE = (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType,
           type, types.FrameType, types.CodeType, str, bytes, int, float, complex, bool)
_STORES = {"STORE_FAST", "STORE_NAME", "STORE_DEREF", "STORE_GLOBAL"}
# Objects of these packages hold no user tensor worth a name (the profiler's own never holds
# one): not looked into, which keeps a scan of frames holding DataFrames and figures short.
_NOT_LOOKED_INTO = (__name__.split(".")[0], "pandas", "numpy", "matplotlib")


@dataclass(frozen=True)
class Holder:
    """A name for a tensor: `name` ("hidden[0]"), what scope it is in, and a line to look at."""

    name: str
    text: str  # for people: "local 'hidden[0]' in train (train.py:41), assigned at line 38"
    line: int | None = None  # locals: the line the frame is at; globals: the line assigning it


@contextmanager
def _locals_of(frame: types.FrameType) -> Iterator[dict]:
    names = frame.f_locals
    try:
        yield names
    finally:
        if _SNAPSHOT_LOCALS and frame.f_code.co_flags & inspect.CO_OPTIMIZED:
            names.clear()


def _children(value: object, expr: str) -> Iterator[tuple[object, str]]:
    """(item, expression naming it) for what a container or an object holds. Types are tested
    with `type()`: `isinstance` reads `__class__`, which a lazy or deprecated object answers
    with side effects (imports, warnings)."""
    if issubclass(type(value), (tuple, list)):
        for index, item in enumerate(value):
            yield item, f"{expr}[{index}]"
    elif issubclass(type(value), dict):
        for key, item in list(value.items()):
            shown = repr(key) if isinstance(key, (str, int)) else "..."
            yield item, f"{expr}[{shown}]"
    elif issubclass(type(value), nn.Module):
        for key, item in list(vars(value).items()):
            if key in ("_parameters", "_buffers", "_modules"):  # shown as model.attr
                for sub, inner in list(item.items()):
                    yield inner, f"{expr}.{sub}"
            elif not key.startswith("_"):
                yield item, f"{expr}.{key}"
    elif not issubclass(type(value), _OPAQUE) and \
            type(value).__module__.split(".")[0] not in _NOT_LOOKED_INTO:
        try:  # an object without __dict__ may answer through its own __getattr__: anything
            attributes = list(vars(value).items())
        except Exception:
            return
        for key, item in attributes:
            yield item, f"{expr}.{key}"


def is_module_globals(value: object) -> bool:
    return issubclass(type(value), dict) and "__builtins__" in value and "__name__" in value


Found = dict[int, tuple[str, "dict | None"]]  # target -> (expression, the globals it is in)


def search(value: object, expr: str, match: Callable[[torch.Tensor], int | None],
           wanted: set[int], found: Found, seen: dict[int, int],
           scope: dict | None = None) -> None:
    """Record in `found` the wanted targets under `value`, breadth first (the shortest
    expression wins). A module's globals met on the way (a script's namespace kept by a
    runner) start the expression again, from the global's name. `seen` (object id -> depth) is
    shared by the scans of one search: an object is looked into again only at a smaller depth."""
    queue = deque([(value, expr, 0, scope)])
    while queue and len(seen) < MAX_VISITS and len(found) < len(wanted):
        value, expr, depth, scope = queue.popleft()
        if seen.get(id(value), MAX_DEPTH + 1) <= depth:
            continue
        seen[id(value)] = depth
        if issubclass(type(value), torch.Tensor):
            target = match(value)
            if target in wanted and target not in found:
                found[target] = (expr, scope)
            continue
        if is_module_globals(value):
            queue.extend((item, str(key), 1, value) for key, item in list(value.items())
                         if not str(key).startswith("__"))
        elif depth < MAX_DEPTH and not issubclass(type(value), _OPAQUE):
            queue.extend((item, name, depth + 1, scope)
                         for item, name in _children(value, expr))


def assigned_lines(code: types.CodeType, name: str) -> list[int]:
    """The lines of `code` that assign the local `name` (which one ran last is not known)."""
    line, lines = None, []
    for instruction in dis.get_instructions(code):
        if instruction.starts_line:
            line = instruction.starts_line if isinstance(instruction.starts_line, int) \
                else instruction.line_number
        if instruction.opname in _STORES and instruction.argval == name and line is not None:
            lines.append(line)
    return sorted(set(lines))


def _module_assignment_line(module_globals: dict, name: str) -> int | None:
    """The line of the last statement of a module's own code (not inside its functions) that
    binds `name`: where the global is defined."""
    filename = module_globals.get("__file__")
    if not filename:
        return None
    source = "".join(linecache.getlines(filename, module_globals))
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    last = None
    for statement in tree.body:  # the module's own statements, not the functions' bodies
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        for node in ast.walk(statement):
            if isinstance(node, ast.Name) and node.id == name and isinstance(node.ctx, ast.Store):
                last = node.lineno
    return last


def base_name(expr: str) -> str:
    """The variable an expression starts from: "hidden[0]" -> "hidden", "self.h" -> "self"."""
    for mark in ("[", "."):
        expr = expr.split(mark)[0]
    return expr


def in_frames(frame: types.FrameType | None, match: Callable[[torch.Tensor], int | None],
              wanted: set[int]) -> dict[int, Holder]:
    """Holders among the locals of `frame` and its callers, then among their modules' globals."""
    holders: dict[int, Holder] = {}
    module_scopes: list[dict] = []
    seen: dict[int, int] = {}
    while frame is not None and len(holders) < len(wanted):
        code = frame.f_code
        if frame.f_globals not in module_scopes:
            module_scopes.append(frame.f_globals)
        if not code.co_flags & inspect.CO_OPTIMIZED:  # a module's or a class's own code
            frame = frame.f_back
            continue
        found: Found = {}
        with _locals_of(frame) as local_names:
            for name, value in list(local_names.items()):
                search(value, name, match, wanted - holders.keys(), found, seen)
        for target, (expr, scope) in found.items():
            if scope is not None:
                holders[target] = global_holder(expr, scope)
                continue
            line = frame.f_lineno
            assigned = assigned_lines(code, base_name(expr))
            text = f"local '{expr}' in {code.co_name} ({code.co_filename}:{line})"
            if assigned:
                plural = "s" if len(assigned) > 1 else ""
                text += f", assigned at line{plural} {', '.join(map(str, assigned))}"
            holders[target] = Holder(expr, text, line)
        frame = frame.f_back
    for scope in module_scopes:
        if len(holders) == len(wanted):
            break
        found = {}
        search(scope, "", match, wanted - holders.keys(), found, seen)
        for target, (expr, inside) in found.items():
            holders[target] = global_holder(expr, inside or scope)
    return holders


def global_holder(expr: str, scope: dict) -> Holder:
    """A module global, with the line of the module's own code that binds it."""
    line = _module_assignment_line(scope, base_name(expr))
    where = f" ({scope.get('__file__')}:{line})" if line is not None else ""
    return Holder(expr, f"global '{expr}' in module {scope.get('__name__', '?')}{where}", line)


def _path_to(obj: object, ignore: set[int], depth: int = 0) -> tuple[str, dict | None]:
    """(expression, module globals) for `obj` from what refers to it, inside out: a module
    global, an attribute of an object, an item of a container, up to `MAX_DEPTH` levels. The
    globals are None when none is reached; the expression then starts at the outermost
    container found."""
    deeper = depth + 1 < MAX_DEPTH
    for holder in gc.get_referrers(obj):
        if id(holder) in ignore or issubclass(type(holder), types.FrameType):
            continue
        if issubclass(type(holder), dict):
            key = next((k for k, v in list(holder.items()) if v is obj), None)
            if key is None:
                continue
            if is_module_globals(holder):
                return str(key), holder
            owner = next((o for o in gc.get_referrers(holder)
                          if getattr(o, "__dict__", None) is holder), None)
            if owner is not None:
                outer, scope = _path_to(owner, ignore | {id(holder)}, depth + 1) if deeper \
                    else ("", None)
                return f"{outer or '<' + type(owner).__name__ + '>'}.{key}", scope
            outer, scope = _path_to(holder, ignore, depth + 1) if deeper else ("", None)
            return f"{outer or '<dict>'}[{key!r}]", scope
        if issubclass(type(holder), (list, tuple)):
            index = next((i for i, v in enumerate(holder) if v is obj), None)
            if index is None:
                continue
            outer, scope = _path_to(holder, ignore, depth + 1) if deeper else ("", None)
            kind = f"<{type(holder).__name__} of {len(holder)}>"
            return f"{outer or kind}[{index}]", scope
    return "", None


def in_heap(match: Callable[[torch.Tensor], int | None], wanted: set[int]) -> dict[int, Holder]:
    """Holders of the wanted targets among every tensor the garbage collector tracks."""
    holders: dict[int, Holder] = {}
    objects = gc.get_objects()
    ignore = {id(objects), id(sys._getframe())}
    for obj in objects:
        if len(holders) == len(wanted):
            break
        if not issubclass(type(obj), torch.Tensor):
            continue
        target = match(obj)
        if target in wanted and target not in holders:
            expr, scope = _path_to(obj, ignore)
            if scope is not None:
                holders[target] = global_holder(expr, scope)
                continue
            text = (f"'{expr}': a container no variable of the calling frames reaches" if expr
                    else "a tensor referenced from elsewhere (no variable or container found)")
            holders[target] = Holder(expr, text)
    del objects
    return holders
