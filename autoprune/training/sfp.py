"""Soft Filter Pruning (He et al., IJCAI 2018) and FPGM in training (He et al., CVPR 2019), per group of a plan.

At every pruning event (``frequency`` steps, one epoch in the papers) the lowest-scoring channels of each group
are zeroed *in place* and training goes on with full gradients (SOFT masks), so a zeroed filter can grow back and
win its place at the next event. SFP ranks by the filters' L2 norm, FPGM by their distance to the other filters
(the ones nearest the geometric median are the most replaceable). The fraction zeroed ramps up on AGP's cubic
over the first ``ramp`` of the training (the "asymptotic" SFP; 0 zeroes the plan's full fraction from the first
event, as the reference does), and the last event falls on the last step, so the network that is finally made
smaller is exactly the one trained, zeros included.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from .agp import cubic
from .base import Keep, Method


class SFP(Method):
    """Soft pruning by filter L2 norm (see the module docstring). Options: ``frequency`` (steps between events;
    default: 10 events over the training) and ``ramp`` (fraction of the training over which the zeroed fraction
    rises to the plan's, default 0.25)."""

    name = "sfp"
    hard = False
    default_criterion = "l2"

    def __init__(self, space: Any, plan: Any, *, frequency: int | None = None, ramp: float = 0.25, **kw: Any) -> None:
        if frequency is not None and (not isinstance(frequency, int) or frequency < 1):
            raise ValueError(f"{self.name}'s frequency must be a positive number of steps, got {frequency!r}")
        if not 0 <= ramp <= 1:
            raise ValueError(f"{self.name}'s ramp must be a fraction of the training in [0, 1], got {ramp!r}")
        kw.setdefault("criterion", self.default_criterion)
        super().__init__(space, plan, **kw)
        total = self.total_steps
        self.frequency = frequency or max(1, math.ceil(total / 10))
        self.events = sorted({*range(self.frequency - 1, total, self.frequency), total - 1})
        self.ramp = ramp

    def fraction(self, step: int) -> float:
        """The share of each group's final pruning applied at ``step`` (1 from the end of the ramp on)."""
        if self.ramp == 0:
            return 1.0
        return cubic((step + 1) / (self.ramp * self.total_steps))

    def set_keep(self, keep: Keep) -> None:
        """Events zero the filters only (a zeroed filter's gradient still flows through its norm layer, so it can
        grow back); the last event zeroes every parameter of the removed channels, so removing them is exact."""
        super().set_keep(keep)
        if self.step < self.total_steps:
            filters = {m.param for g in self.space.groups if g.name in self.keep for m in g.producers}
            self._masks = {name: mask for name, mask in self._masks.items() if name in filters}

    def on_step(self, model: nn.Module, step: int) -> Keep | None:
        if step not in self.events:
            return None
        # SOFT: every channel competes again, the zeroed ones included
        return self.select(model, self.counts_at(self.fraction(step)), survivors_only=False)


class FPGM(SFP):
    """SFP ranking filters by their distance to the group's other filters (geometric median)."""

    name = "fpgm"
    default_criterion = "fpgm"
