"""Network Slimming (Liu et al., ICCV 2017), per group of a plan.

Training adds the sparsity penalty λ·Σ|γ| on the scales of the norm layers the plan's groups run through
(implemented, as the reference does, as γ.grad += λ·sign(γ) after backward), pushing unimportant channels'
scales to zero. At ``prune_at`` (a fraction of the training) each group keeps its channels with the largest
|γ| (summed over its norm layers: a residual group is scored over all of them), under HARD masks from then on;
the rest of the training fine-tunes the survivors without the penalty. Groups without a norm layer are scored by
their filters' L1 norm.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import Keep, Method


class Slim(Method):
    """Options: ``penalty`` (λ, default 1e-4: the paper's VGG value; 1e-5 for its ResNets) and ``prune_at``
    (default 0.5 of the training)."""

    name = "slim"

    def __init__(self, space: Any, plan: Any, *, penalty: float = 1e-4, prune_at: float = 0.5, **kw: Any) -> None:
        if not (isinstance(penalty, (int, float)) and penalty >= 0):
            raise ValueError(f"slim's penalty (λ on |γ|) must be a number >= 0, got {penalty!r}")
        if not 0 <= prune_at < 1:
            raise ValueError(f"slim's prune_at must be a fraction of the training in [0, 1), got {prune_at!r}")
        kw.setdefault("criterion", "bn_scale")
        super().__init__(space, plan, **kw)
        self.penalty = float(penalty)
        self.prune_step = min(self.total_steps - 1, int(round(prune_at * self.total_steps)))
        groups = [g for g in space.groups if g.name in self.target]
        self.scales = sorted({m.param for g in groups for m in g.members if m.role == "norm"})

    def regularise(self, model: nn.Module) -> None:
        if self.step > self.prune_step or not self.penalty:
            return
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name in self.scales:
                gamma = params[name]
                if gamma.grad is not None:
                    gamma.grad.add_(torch.sign(gamma), alpha=self.penalty)

    def on_step(self, model: nn.Module, step: int) -> Keep | None:
        return self.select(model, self.target) if step == self.prune_step else None
