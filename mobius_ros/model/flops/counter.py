"""`MacCounter`: MACs of every aten op, attributed to components, with dead-output removal."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from mobius_ros.model.flops.formulas import attention_macs, mac_formulas, shape_of

# Name given to ops that ran outside every registered component.
UNATTRIBUTED = 'other'


@dataclass(frozen=True)
class _Node:
    macs: int
    component: str
    op: str
    inputs: tuple[int, ...]


@dataclass(frozen=True)
class MacReport:
    """Live and dead MACs per component and per op (live = reaches the requested outputs)."""

    by_component: dict[str, int]
    dead_by_component: dict[str, int]
    by_op: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.by_component.values())

    def get(self, component: str) -> int:
        return self.by_component.get(component, 0)


def tensors_in(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor inside nested tuples, lists, dicts and dataclasses."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif is_dataclass(obj) and not isinstance(obj, type):
        for f in fields(obj):
            yield from tensors_in(getattr(obj, f.name))
    elif isinstance(obj, Mapping):
        for value in obj.values():
            yield from tensors_in(value)
    elif isinstance(obj, (tuple, list)):
        for value in obj:
            yield from tensors_in(value)


def _owners(components: Mapping[str, nn.Module | Iterable[nn.Module]]) -> dict[int, str]:
    """Module id -> component; smaller (more specific) trees override the ones containing them."""
    trees = []
    for name, roots in components.items():
        roots = [roots] if isinstance(roots, nn.Module) else list(roots)
        trees.append((name, {id(m) for root in roots for m in root.modules()}))
    owner: dict[int, str] = {}
    for name, ids in sorted(trees, key=lambda tree: -len(tree[1])):
        owner.update(dict.fromkeys(ids, name))
    return owner


class MacCounter(TorchDispatchMode):
    """Record MACs of every aten op run inside the context, per component, with a dataflow graph.

    `components` maps a name to module trees; a module (and every submodule) belongs to the most
    specific component holding it, so `fusion` inside the pixel decoder counts as fusion, and
    registering the whole model as one component catches code outside submodules. An op belongs
    to the innermost called module that has a component, else to `UNATTRIBUTED`.
    """

    def __init__(
        self,
        components: Mapping[str, nn.Module | Iterable[nn.Module]] | None = None,
        *,
        batch_norm: bool = True,
        fused_attention: bool = True,
    ) -> None:
        super().__init__()
        self.mac_formulas = mac_formulas(batch_norm=batch_norm)
        self._fused_attention = fused_attention
        self._kernel_depth = 0
        self._function_mode = _AttentionCalls(self)
        self._owner = _owners(components or {})
        self._stack: list[str] = []
        self._nodes: list[_Node] = []
        self._producer: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._hooks: list = []
        self.component_override: str | None = None

    def __enter__(self) -> MacCounter:
        hooks = nn.modules.module
        self._hooks = [
            hooks.register_module_forward_pre_hook(self._enter_module),
            hooks.register_module_forward_hook(self._exit_module, always_call=True),
        ]
        self._function_mode.__enter__()
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        super().__exit__(*exc)
        self._function_mode.__exit__(*exc)

    def _enter_module(self, module: nn.Module, args: Any) -> None:
        name = self._owner.get(id(module))
        if name is not None:
            self._stack.append(name)

    def _exit_module(self, module: nn.Module, args: Any, output: Any) -> None:
        if id(module) in self._owner and self._stack:
            self._stack.pop()

    @contextmanager
    def component(self, name: str) -> Iterator[None]:
        """Attribute the ops run inside this block to `name` (for code outside any module)."""
        self._stack.append(name)
        try:
            yield
        finally:
            self._stack.pop()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = self.mac_formulas.get(func.overloadpacket)
        counted = formula is not None and not self._kernel_depth
        macs = int(formula(args, kwargs, out)) if counted else 0
        self._record(
            str(func.overloadpacket), macs, (args, kwargs), out, self._mutated(func, args, kwargs)
        )
        return out

    def _record(
        self, op: str, macs: int, inputs: Any, out: Any, mutated: Sequence[torch.Tensor] = ()
    ) -> None:
        flat_in, _ = tree_flatten(inputs)
        tensors_in_args = [t for t in flat_in if isinstance(t, torch.Tensor)]
        deps = {self._producer[t] for t in tensors_in_args if t in self._producer}
        deps |= {self._producer[t._base] for t in mutated if t._base in self._producer}
        component = self._stack[-1] if self._stack else UNATTRIBUTED
        index = len(self._nodes)
        self._nodes.append(_Node(macs, component, op, tuple(sorted(deps))))
        flat_out, _ = tree_flatten(out)
        for t in [*flat_out, *mutated]:
            if isinstance(t, torch.Tensor):
                self._producer[t] = index
                if t._base is not None and t in mutated:
                    # A write through a view changes its base too; later reads of the base
                    # must depend on this op.
                    self._producer[t._base] = index

    @staticmethod
    def _mutated(func: Any, args: tuple, kwargs: dict) -> list[torch.Tensor]:
        written = []
        for i, argument in enumerate(func._schema.arguments):
            if argument.alias_info is None or not argument.alias_info.is_write:
                continue
            value = args[i] if i < len(args) else kwargs.get(argument.name)
            if isinstance(value, torch.Tensor):
                written.append(value)
        return written

    def report(self, outputs: Any = None) -> MacReport:
        """MACs that reach the tensors in `outputs` (all recorded MACs when `outputs` is None)."""
        live = [True] * len(self._nodes)
        if outputs is not None:
            live = [False] * len(self._nodes)
            todo = [self._producer[t] for t in tensors_in(outputs) if t in self._producer]
            while todo:
                index = todo.pop()
                if not live[index]:
                    live[index] = True
                    todo.extend(self._nodes[index].inputs)
        by_component: dict[str, int] = defaultdict(int)
        dead: dict[str, int] = defaultdict(int)
        by_op: dict[str, int] = defaultdict(int)
        for node, alive in zip(self._nodes, live):
            if not node.macs:
                continue
            if alive:
                by_component[node.component] += node.macs
                by_op[node.op] += node.macs
            else:
                dead[node.component] += node.macs
        return MacReport(dict(by_component), dict(dead), dict(by_op))


class _AttentionCalls(TorchFunctionMode):
    """Count `F.scaled_dot_product_attention` as one op, whichever kernel the device picks.

    On the meta device it decomposes into bmm, on CPU it is one fused aten op: counting at the
    function level gives the same number on both and lets the fvcore convention leave it out.
    """

    def __init__(self, counter: MacCounter) -> None:
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not torch.nn.functional.scaled_dot_product_attention:
            return func(*args, **kwargs)
        counter = self.counter
        counter._kernel_depth += 1
        try:
            out = func(*args, **kwargs)
        finally:
            counter._kernel_depth -= 1
        query, key, value = args[:3]
        macs = attention_macs(shape_of(query), shape_of(key), shape_of(value)[-1])
        counter._record(
            'scaled_dot_product_attention',
            macs if counter._fused_attention else 0,
            (args, kwargs),
            out,
        )
        return out


def count_macs(
    fn: Callable[[], Any],
    components: Mapping[str, nn.Module | Iterable[nn.Module]] | None = None,
    *,
    outputs: Callable[[Any], Any] | None = None,
    batch_norm: bool = True,
    fused_attention: bool = True,
) -> MacReport:
    """Run `fn()` under a `MacCounter` (no grad) and report the MACs reaching `outputs(result)`.

    `outputs` picks the tensors inference keeps from the result; by default all of it.
    """
    counter = MacCounter(components, batch_norm=batch_norm, fused_attention=fused_attention)
    with torch.no_grad(), counter:
        result = fn()
    return counter.report(result if outputs is None else outputs(result))


def giga(macs: int) -> float:
    """MACs in G (10^9), the unit of the paper's tables."""
    return macs / 1e9
