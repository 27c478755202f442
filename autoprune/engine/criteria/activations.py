"""Shared machinery of the activation criteria (APoZ, mean activation).

Where a group's channels are measured: the outputs of the activation functions
(ReLU and friends) whose channel dim is the group, as recorded by the trace;
a group that never passes through one is measured at the outputs of the ops
that produce it (conv / matmul). Calibration batches run through the original
model under a dispatch mode that reduces those outputs per channel.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from ..trace import _plain_kernels
from .base import batches

ACTIVATIONS = {
    "relu",
    "relu_",
    "hardtanh",
    "hardtanh_",
    "gelu",
    "silu",
    "silu_",
    "hardswish",
    "hardswish_",
    "leaky_relu",
    "leaky_relu_",
    "elu",
    "elu_",
    "mish",
    "_prelu_kernel",
    "clamp_min",
    "clamp_min_",
}
PRODUCERS = {"convolution", "_convolution", "mm", "addmm", "bmm", "baddbmm"}


def measurement_points(space, groups) -> dict[int, list[tuple[int, int, int, torch.Tensor]]]:
    """atom -> [(op index, output index, dim, coords)] where the group can be observed."""
    wanted = {g.atom for g in groups}
    found: dict[int, dict[str, list]] = {a: {"act": [], "prod": []} for a in wanted}
    for i, op in enumerate(space._ops):
        kind = "act" if op.name in ACTIVATIONS else "prod" if op.name in PRODUCERS else None
        if kind is None:
            continue
        for j, dims in enumerate(op.outputs):
            for k, e in enumerate(dims):
                atoms = [a for a in space.axes.atoms(e) if a in wanted]
                if not atoms:
                    continue
                coords = space.axes.coords(e)
                for a in atoms:
                    found[a][kind].append((i, j, k, coords[a]))
    return {a: v["act"] or v["prod"] for a, v in found.items()}


class _Collector(TorchDispatchMode):
    def __init__(self, points: dict[int, list], names: list[str], stat: Callable[[torch.Tensor, int], torch.Tensor]):
        super().__init__()
        self.by_op: dict[int, list] = {}
        for a, pts in points.items():
            for p in pts:
                self.by_op.setdefault(p[0], []).append((a, p))
        self.names = names
        self.stat = stat
        self.sums: dict[tuple, torch.Tensor] = {}
        self.i = 0
        self.in_sync = True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        i = self.i
        self.i += 1
        if not self.in_sync or i >= len(self.names) or func.overloadpacket.__name__ != self.names[i]:
            self.in_sync = False
            return out
        for a, (_, j, k, _) in self.by_op.get(i, ()):
            o = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)][j]
            key = (i, j, k)
            if key not in self.sums:
                self.sums[key] = self.stat(o.detach().double(), k)
            elif self.sums[key].numel():
                self.sums[key] += self.stat(o.detach().double(), k)
        return out


def activation_scores(
    space,
    groups,
    calibration: Any,
    stat: Callable[[torch.Tensor, int], torch.Tensor],
    finish: Callable[[torch.Tensor], torch.Tensor],
) -> dict[str, torch.Tensor]:
    points = measurement_points(space, groups)
    names = [op.name for op in space._ops]
    model = space.model
    was_training = model.training
    totals: dict[tuple, torch.Tensor] = {}
    n = 0
    try:
        model.eval()
        for inputs, _ in batches(calibration):
            col = _Collector(points, names, stat)
            with _plain_kernels(model), torch.no_grad(), col:
                model(*inputs)
            for key, v in col.sums.items():
                totals[key] = totals[key] + v if key in totals else v
            n += 1
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("activation criteria need at least one calibration batch")
    out = {}
    for g in groups:
        s = torch.zeros(g.channels, dtype=torch.float64)
        for i, j, k, coords in points[g.atom]:
            per_index = totals.get((i, j, k))
            if per_index is None:
                continue
            per_index = finish(per_index / n)
            inside = coords >= 0
            ch = torch.zeros(g.channels, dtype=torch.float64).index_add_(0, coords[inside], per_index[inside])
            cnt = torch.zeros(g.channels, dtype=torch.float64).index_add_(
                0, coords[inside], torch.ones(int(inside.sum()), dtype=torch.float64)
            )
            ch = ch / cnt.clamp_min(1)
            mean = ch.abs().mean()
            s += ch / mean if mean > 0 else ch
        out[g.name] = s
    return out


def per_index_mean(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean over every dim but ``dim``."""
    return x.movedim(dim, 0).reshape(x.shape[dim], -1).mean(1)
