"""Taylor-FO pruning during training (Molchanov et al., CVPR 2019), per group of a plan.

A channel's importance is the first-order Taylor estimate of the loss change when it is removed,
I = (Σ g·w)² over all the parameters the channel runs through (the filter, its norm scale and shift, ...),
computed from the training loop's own gradients at every step, averaged over the steps between pruning events
and smoothed across events with momentum 0.9. Every ``frequency`` steps, up to ``end`` of the training, each
group drops its lowest-importance survivors on a linear schedule towards the plan's count (HARD masks); the
rest of the training fine-tunes with the final masks.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .base import Keep, Method


class Taylor(Method):
    """Options: ``frequency`` (steps between events; default: 10 events), ``end`` (default 0.5 of the training)
    and ``momentum`` (across events, default 0.9)."""

    name = "taylor"
    state_keys = (*Method.state_keys, "_sum", "_count", "importance")

    def __init__(
        self,
        space: Any,
        plan: Any,
        *,
        frequency: int | None = None,
        end: float = 0.5,
        momentum: float = 0.9,
        **kw: Any,
    ) -> None:
        if frequency is not None and (not isinstance(frequency, int) or frequency < 1):
            raise ValueError(f"taylor's frequency must be a positive number of steps, got {frequency!r}")
        if not 0 < end <= 1:
            raise ValueError(f"taylor's end must be a fraction of the training in (0, 1], got {end!r}")
        if not 0 <= momentum < 1:
            raise ValueError(f"taylor's momentum must be in [0, 1), got {momentum!r}")
        super().__init__(space, plan, **kw)
        last = max(0, min(self.total_steps - 1, int(round(end * self.total_steps)) - 1))
        self.frequency = frequency or max(1, math.ceil((last + 1) / 10))
        self.events = sorted({*range(self.frequency - 1, last + 1, self.frequency), last})
        self.momentum = momentum
        self.groups = [g for g in space.groups if g.name in self.target]
        self._sum = {g.name: torch.zeros(g.channels, dtype=torch.float64) for g in self.groups}
        self._count = 0
        self.importance: dict[str, torch.Tensor] = {}

    def regularise(self, model: nn.Module) -> None:
        """Not a penalty: accumulates this step's (Σ g·w)² per channel from the gradients backward left."""
        params = dict(model.named_parameters())
        with torch.no_grad():
            for g in self.groups:
                total = torch.zeros(g.channels, dtype=torch.float64)
                for m in g.members:
                    p = params.get(m.param)
                    if p is None or p.grad is None:
                        continue
                    total += m.channel_rows(p.grad * p, g.channels).sum(1).double()
                self._sum[g.name] += total**2
        self._count += 1

    def on_step(self, model: nn.Module, step: int) -> Keep | None:
        if step not in self.events:
            return None
        for name, s in self._sum.items():
            mean = s / max(self._count, 1)
            old = self.importance.get(name)
            self.importance[name] = mean if old is None else self.momentum * old + (1 - self.momentum) * mean
            s.zero_()
        self._count = 0
        return self.select(model, self.counts_at((self.events.index(step) + 1) / len(self.events)))

    def scores(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {g: s.clone() for g, s in self.importance.items()} or super().scores(model)
