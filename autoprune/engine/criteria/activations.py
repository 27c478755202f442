"""Shared machinery of the activation criteria (APoZ, mean activation).

Where a group's channels are measured: the outputs of the activation functions
(ReLU and friends) whose channel dim is the group, as recorded by the trace;
a group that never passes through one is measured at the outputs of the ops
that produce it (conv / matmul). Calibration batches run through the original
model under a dispatch mode that reduces those outputs per channel.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from ..groups import ChannelGroup, ChannelSite
from ..trace import UNSEQUENCED, plain_kernels
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


def measurement_points(groups: Sequence[ChannelGroup]) -> dict[str, list[ChannelSite]]:
    """Where each group is observed: its activation outputs, else the conv / matmul outputs that produce it."""
    out = {}
    for g in groups:
        acts = [s for s in g.sites if s.op_name in ACTIVATIONS]
        out[g.name] = acts or [s for s in g.sites if s.op_name in PRODUCERS]
    return out


class _Collector(TorchDispatchMode):
    """Sums ``stat`` of the observed outputs over one forward pass, op by op in the traced order."""

    def __init__(self, points: dict[str, list[ChannelSite]], stat: Callable[[torch.Tensor, int], torch.Tensor]):
        super().__init__()
        self.by_op: dict[int, list[ChannelSite]] = {}
        for sites in points.values():
            for site in sites:
                self.by_op.setdefault(site.op, []).append(site)
        self.stat = stat
        self.sums: dict[tuple[int, int, int], torch.Tensor] = {}
        self.i = 0
        self.in_sync = True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name in UNSEQUENCED or not self.in_sync:
            return out
        sites = self.by_op.get(self.i, ())
        self.i += 1
        outs = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)] if sites else []
        for site in sites:
            o = outs[site.output] if site.output < len(outs) else None
            if name != site.op_name or o is None or o.dim() <= site.dim or o.shape[site.dim] != site.channel.numel():
                self.in_sync = False  # the model ran differently than when it was traced: stop measuring
                return out
            key = (site.op, site.output, site.dim)
            if key not in self.sums:
                self.sums[key] = self.stat(o.detach().double(), site.dim)
        return out


def activation_scores(
    groups: Sequence[ChannelGroup],
    model: nn.Module,
    calibration: Any,
    stat: Callable[[torch.Tensor, int], torch.Tensor],
    finish: Callable[[torch.Tensor], torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Average ``stat`` of each group's observed outputs over the calibration batches, per channel, through
    ``finish``; each observation point normalised to mean 1 and summed."""
    points = measurement_points(groups)
    was_training = model.training
    totals: dict[tuple, torch.Tensor] = {}
    n = 0
    try:
        model.eval()
        for inputs, _ in batches(calibration):
            col = _Collector(points, stat)
            with plain_kernels(model), torch.no_grad(), col:
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
        for site in points[g.name]:
            per_index = totals.get((site.op, site.output, site.dim))
            if per_index is None:
                continue
            per_index = finish(per_index / n)
            inside = site.channel >= 0
            ch = torch.zeros(g.channels, dtype=torch.float64).index_add_(0, site.channel[inside], per_index[inside])
            cnt = torch.zeros(g.channels, dtype=torch.float64).index_add_(
                0, site.channel[inside], torch.ones(int(inside.sum()), dtype=torch.float64)
            )
            ch = ch / cnt.clamp_min(1)
            mean = ch.abs().mean()
            s += ch / mean if mean > 0 else ch
        out[g.name] = s
    return out


def per_index_mean(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean over every dim but ``dim``."""
    return x.movedim(dim, 0).reshape(x.shape[dim], -1).mean(1)
