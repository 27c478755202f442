"""Tracing: run the model once under a dispatch mode and record how channels flow.

Why a dispatch mode and not ``torch.fx`` or ``torch.export``: it sees every
aten op that one real forward pass executes, whatever Python control flow chose
it, with concrete arguments (dims, split sizes, view shapes). Parameters reach
the ops as themselves, so a layer used twice, a functional ``F.conv2d`` with a
module's weight, or a bare ``nn.Parameter`` (ViT's class token) are all seen.
Each op is mapped through an explicit table (:mod:`autoprune.engine.ops`); an op
not in the table freezes every channel it touches.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from . import layers
from .axes import AxisTable, Expr, Incompatible

Rule = Callable[["Tracer", Any, tuple, dict, list, Any], None]

#: Identity ops that one dispatch mode sees and another does not (the tracer sees a ``detach`` after
#: ``torch.arange(n)`` that a plain recorder never does): mapped like any op, but left out of every op
#: sequence, so the trace and a re-run of the pruned model line up op for op.
UNSEQUENCED = frozenset({"detach", "alias", "lift_fresh"})


@dataclass
class OpRecord:
    """One executed op: its name and the expressions of its tensor outputs' dims."""

    name: str
    module: str
    outputs: list[list[Expr]]
    shapes: list[tuple[int, ...]]
    value_dependent: bool = False


@dataclass
class Binding:
    """A module attribute that encodes a width and must follow the pruned sizes."""

    module: str
    attr: str
    exprs: list[Expr]
    as_tuple: bool


class Tracer(TorchDispatchMode):
    """Records channel couplings of every aten op executed inside it."""

    def __init__(self, model: nn.Module, rules: dict[str, Rule], flop_ops: set[str]) -> None:
        super().__init__()
        self.model = model
        self.rules = rules
        self.flop_ops = flop_ops
        self.axes = AxisTable()
        self._dims: dict[int, list[Expr]] = {}
        self._alive: list[torch.Tensor] = []
        self.tensor_names: dict[int, str] = {}
        for name, p in model.named_parameters(remove_duplicate=True):
            self.tensor_names.setdefault(id(p), name)
        for name, b in model.named_buffers(remove_duplicate=True):
            self.tensor_names.setdefault(id(b), name)
        self.module_names: dict[int, str] = {}
        for name, m in model.named_modules(remove_duplicate=False):
            self.module_names.setdefault(id(m), name)
        self.modules: dict[str, nn.Module] = {n: m for n, m in model.named_modules()}
        self.param_dims: dict[str, list[Expr]] = {}
        self.ops: list[OpRecord] = []
        self.macs: list[tuple[int, list[Expr]]] = []
        self.bindings: dict[tuple[str, str], Binding] = {}
        self.unknown: dict[str, list[Expr]] = {}
        self.visited: set[str] = set()
        self.stack: list[str] = []
        self.recording = True
        self._int_attrs: dict[str, dict[int, list[str]]] = {}
        self.guess_created = False  # see created(): set when a verification will test the guesses
        self._current: OpRecord | None = None

    # -- helpers used by the rules ------------------------------------------------
    def dims(self, t: torch.Tensor) -> list[Expr]:
        """Expressions of a tensor's dims; unseen tensors are constants (frozen) or parameters."""
        d = self._dims.get(id(t))
        if d is not None and len(d) == t.dim():
            return d
        name = self.tensor_names.get(id(t))
        # Integer buffers hold indices (positions, token ids), never channels.
        frozen = name is None or not (t.is_floating_point() or t.is_complex())
        d = [self.axes.new_expr(s, frozen) for s in t.shape]
        if name is not None:
            self.param_dims[name] = d
        self._keep(t, d)
        return d

    def set(self, t: torch.Tensor, dims: list[Expr]) -> None:
        if len(dims) != t.dim():
            raise AssertionError(f"rule gave {len(dims)} dims for a {t.dim()}-d tensor")
        self._keep(t, list(dims))

    def _keep(self, t: torch.Tensor, d: list[Expr]) -> None:
        self._dims[id(t)] = d
        self._alive.append(t)

    def fresh(self, size: int) -> Expr:
        return self.axes.new_expr(size, True)

    def unify(self, a: Expr, b: Expr) -> None:
        self.axes.unify(a, b)

    def factor(self, e: Expr, sizes: list[int]) -> list[Expr]:
        return self.axes.factor(e, sizes)

    def freeze(self, e: Expr) -> None:
        self.axes.freeze(e)

    def add_macs(self, exprs: list[Expr], coef: int = 1) -> None:
        if self.recording:
            self.macs.append((coef, list(exprs)))

    def mark_value_dependent(self) -> None:
        if self._current is not None:
            self._current.value_dependent = True

    def owner(self, t: torch.Tensor | None) -> str | None:
        """Module path owning parameter ``t``, else the innermost module being run."""
        name = self.tensor_names.get(id(t)) if t is not None else None
        if name is not None:
            return name.rpartition(".")[0]
        return self.stack[-1] if self.stack else None

    def bind(self, module: str | None, attr: str, exprs: list[Expr], as_tuple: bool = False) -> None:
        """Record that ``module.attr`` equals the sizes of ``exprs`` (updated when pruning)."""
        if module is None or module not in self.modules:
            return
        key = (module, attr)
        old = self.bindings.get(key)
        if old is None:
            self.bindings[key] = Binding(module, attr, list(exprs), as_tuple)
            return
        if len(old.exprs) == len(exprs):
            # One attribute sizing several dims forces them to stay equal.
            for a, b in zip(old.exprs, exprs):
                self.unify(a, b)

    def bind_sizes(self, dims: list[Expr], shape: tuple[int, ...]) -> None:
        """Bind integer attributes of the running modules equal to a prunable dim's size.

        Sizes match by coincidence too (``(B*heads, T, head_dim)`` may be ``(8, 8, 8)``),
        and a wrong binding couples unrelated channels, so only unambiguous dims bind:
        none with a frozen factor (a batch or spatial size), none whose size another
        such dim of the same tensor shares.
        """
        free = [(e, s) for e, s in zip(dims, shape) if s > 1 and not any(self.axes.frozen_atom(e))]
        sizes = [s for _, s in free]
        for e, size in free:
            if sizes.count(size) == 1:
                self._bind_attrs(e, size)

    def created(self, shape: tuple[int, ...]) -> list[Expr]:
        """Dims of a tensor the model fills itself (``torch.zeros(B, self.hidden_size)``, ``x.new_zeros(x.shape)``).

        A dim the size of an integer attribute of the running module is taken to
        be sized by it: it stays prunable and the attribute is bound to it, so the
        pruned module creates the narrower tensor. Any other dim is prunable too
        when ``guess_created`` is set (it may be computed from another tensor's
        shape, as ``pad_packed_sequence`` sizes its output), else a constant.
        Verification tests every such guess and freezes the groups it breaks.
        """
        dims = []
        for size in shape:
            e = self.axes.new_expr(size, True)
            if size > 1:
                free = self.axes.new_expr(size, False)
                if (shape.count(size) == 1 and self._bind_attrs(free, size)) or self.guess_created:
                    e = free
            dims.append(e)
        return dims

    def _bind_attrs(self, e: Expr, size: int) -> bool:
        """Bind the innermost running module's int attributes of this size, up to the first known layer:
        what runs inside a Linear or a Conv (the views that flatten its input) sizes nothing outside it."""
        for mod in reversed(self.stack):
            attrs = self._attrs_of(mod).get(size)
            if attrs:
                for a in attrs:
                    self.bind(mod, a, [e])
                return True
            if layers.known(self.modules[mod]) is not None:
                return False
        return False

    def _attrs_of(self, mod: str) -> dict[int, list[str]]:
        got = self._int_attrs.get(mod)
        if got is None:
            got = {}
            m = self.modules[mod]
            layer = layers.known(m)
            derived = layer.widths if layer is not None else ()
            for k, v in vars(m).items():
                if type(v) is int and not k.startswith("_") and k not in derived:
                    got.setdefault(v, []).append(k)
            self._int_attrs[mod] = got
        return got

    # -- dispatch ----------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        outs = [o for o in pytree.tree_leaves(out) if isinstance(o, torch.Tensor)]
        recorded = self.recording and name not in UNSEQUENCED
        record = OpRecord(name, self.stack[-1] if self.stack else "", [], []) if recorded else None
        self._current = record
        rule = self.rules.get(name.rstrip("_") if not name.startswith("__") else name)
        if func.overloadpacket in _FLOP_PACKETS and name not in self.flop_ops:
            rule = None
            self._constant_flops(func, args, kwargs, out)
        try:
            if rule is None:
                raise Incompatible
            rule(self, func, args, kwargs, outs, out)
        except Incompatible:
            self._freeze_all(name, args, kwargs, outs, known=rule is not None)
        for o in outs:
            if id(o) not in self._dims:
                self.set(o, [self.fresh(s) for s in o.shape])
        if record is not None:
            record.outputs = [self._dims[id(o)] for o in outs]
            record.shapes = [tuple(o.shape) for o in outs]
            self.ops.append(record)
        self._current = None
        return out

    def _constant_flops(self, func, args: tuple, kwargs: dict, out: Any) -> None:  # noqa: ANN001
        """A FLOP-counted op without a rule: count it as a constant (its channels get frozen)."""
        from torch.utils.flop_counter import flop_registry

        formula = flop_registry.get(func.overloadpacket)
        if formula is not None and self.recording:
            flops = formula(*args, out_val=out, **kwargs)
            self.macs.append((int(flops) // 2, []))

    def _freeze_all(self, name: str, args: tuple, kwargs: dict, outs: list, known: bool) -> None:
        tensors = [a for a in pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        frozen: list[Expr] = []
        for t in tensors:
            for e in self.dims(t):
                if not self.axes.is_frozen(e):
                    frozen.append(e)
                self.freeze(e)
        for o in outs:
            self.set(o, [self.fresh(s) for s in o.shape])
        if not known:
            self.unknown.setdefault(name, []).extend(frozen)

    # -- running -------------------------------------------------------------------
    @contextlib.contextmanager
    def _module_stack(self) -> Iterator[None]:
        def pre(module: nn.Module, _inputs: Any) -> None:
            name = self.module_names.get(id(module))
            self.stack.append(name if name is not None else (self.stack[-1] if self.stack else ""))
            if name is not None:
                self.visited.add(name)

        def post(_module: nn.Module, _inputs: Any, _output: Any) -> None:
            if self.stack:
                self.stack.pop()

        h1 = nn.modules.module.register_module_forward_pre_hook(pre)
        h2 = nn.modules.module.register_module_forward_hook(post, always_call=True)
        try:
            yield
        finally:
            h1.remove()
            h2.remove()
            self.stack.clear()

    def run(self, inputs: tuple, *, record: bool) -> Any:
        """Run one forward pass; inputs are frozen, and so are the outputs."""
        self.recording = record
        for t in pytree.tree_leaves(inputs):
            if isinstance(t, torch.Tensor):
                self.set(t, [self.fresh(s) for s in t.shape])
        with plain_kernels(self.model), torch.no_grad(), self._module_stack(), self:
            out = self.model(*inputs)
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                for e in self.dims(t):
                    self.freeze(e)
        return out


def _flop_packets() -> set:
    from torch.utils.flop_counter import flop_registry

    return {getattr(k, "overloadpacket", k) for k in flop_registry}


_FLOP_PACKETS = _flop_packets() | {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu}


@contextlib.contextmanager
def plain_kernels(model: nn.Module) -> Iterator[None]:
    """Composite layers as the ops they are made of, not one fused op that hides their channels.

    nn.MultiheadAttention's fast path is one opaque op; so are nn.LSTM on oneDNN
    (``mkldnn_rnn_layer``) and every RNN on cuDNN (``_cudnn_rnn``, with its weights
    in one flat buffer). Without them an RNN runs as matmuls, gate chunks and
    element-wise ops, which the op table maps; the shapes are the same. oneDNN and
    cuDNN are off only while an RNN runs: convolutions elsewhere keep them (without
    oneDNN a CPU convolution is about 4x slower).
    """
    saved: list[tuple[bool, bool]] = []

    def enter(_m: nn.Module, _inputs: Any) -> None:
        saved.append((torch._C._get_mkldnn_enabled(), torch._C._get_cudnn_enabled()))
        # Not torch.backends.*.flags(): it also sets the TF32 flags, which warns on every call.
        torch._C._set_mkldnn_enabled(False)
        torch._C._set_cudnn_enabled(False)

    def leave(_m: nn.Module, _inputs: Any, _output: Any) -> None:
        mkldnn, cudnn = saved.pop()
        torch._C._set_mkldnn_enabled(mkldnn)
        torch._C._set_cudnn_enabled(cudnn)

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.RNNBase):
            hooks += [m.register_forward_pre_hook(enter), m.register_forward_hook(leave, always_call=True)]
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for h in hooks:
            h.remove()


class ShapeRecorder(TorchDispatchMode):
    """Records only op names and output shapes (used to verify a pruned model)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, list[tuple[int, ...]]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name not in UNSEQUENCED:
            self.ops.append((name, [tuple(o.shape) for o in pytree.tree_leaves(out) if isinstance(o, torch.Tensor)]))
        return out

    def run(self, model: nn.Module, inputs: tuple) -> None:
        with plain_kernels(model), torch.no_grad(), self:
            model(*inputs)
