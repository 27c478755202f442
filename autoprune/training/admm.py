"""ADMM structured pruning (Zhang et al., ECCV 2018; the structured form of AutoCompress, Liu et al., AAAI 2020),
per group of a plan.

The problem min f(W) s.t. every group g keeps at most K_g non-zero channels is split with Z = W and a scaled
dual U. For the first ``admm`` share of the training the loss gains Σ ρ/2·‖W − Z + U‖²_F on the filters the
plan's groups produce (their weights and biases), added as the gradient ρ·(W − Z + U); ``rounds`` times during
that phase

- Z ← Π_S(W + U): keep the K_g channels whose filters (over all of the group's producers) have the largest L2
  norm, zero the rest — the exact Euclidean projection onto the constraint set;
- U ← U + W − Z;
- ρ ← min(ρ_max, growth·ρ).

Z starts as Π_S(W) in its own storage and U at zero, so the penalty acts from the first step (NNI's first
version aliased Z and W, and its second used the square root of the norm, ranked by L1 instead of the
projection, and kept ρ fixed). At the end of the phase the network is hard-pruned by Π_S(W) and trained on with
HARD masks (the masked retraining); purification — channels that no consumer reads, or whose producer is gone —
needs no step of its own, because the engine removes a group's channels from every layer they run through.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .base import Keep, Method, masks


class ADMM(Method):
    """Options: ``admm`` (share of the training under the penalty, default 0.5), ``rounds`` (Z/U updates in that
    phase, default 10), ``rho`` (ρ₀, default 1e-3), ``growth`` (ρ's factor per round, default 1.5) and
    ``rho_max`` (default 1.0)."""

    name = "admm"
    state_keys = (*Method.state_keys, "Z", "U", "rho")

    def __init__(
        self,
        space: Any,
        plan: Any,
        *,
        admm: float = 0.5,
        rounds: int = 10,
        rho: float = 1e-3,
        growth: float = 1.5,
        rho_max: float = 1.0,
        **kw: Any,
    ) -> None:
        if not 0 < admm < 1:
            raise ValueError(f"admm's admm (share of the training under the penalty) must be in (0, 1), got {admm!r}")
        if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
            raise ValueError(f"admm's rounds must be a positive integer, got {rounds!r}")
        if not (isinstance(rho, (int, float)) and rho > 0 and growth >= 1 and rho_max >= rho):
            raise ValueError(f"admm needs rho > 0, growth >= 1 and rho_max >= rho; got {rho}, {growth}, {rho_max}")
        kw.setdefault("criterion", "l2")
        super().__init__(space, plan, **kw)
        self.prune_step = max(0, min(self.total_steps - 1, int(round(admm * self.total_steps)) - 1))
        every = max(1, math.ceil((self.prune_step + 1) / rounds))
        #: The steps after which Z and U are updated (the last on the hard-pruning step is not: it prunes).
        self.updates = [s for s in range(every - 1, self.prune_step, every)]
        self.rho, self.growth, self.rho_max = float(rho), float(growth), float(rho_max)
        self.groups = [g for g in space.groups if g.name in self.target]
        params = dict(self.model.named_parameters())
        #: Per pruned group: its producers' parameter names (the filters the constraint counts).
        self.filters = {g.name: sorted({m.param for m in g.producers if m.param in params}) for g in self.groups}
        self.Z = {n: torch.zeros_like(params[n]) for names in self.filters.values() for n in names}
        self.U = {n: torch.zeros_like(params[n]) for n in self.Z}
        self.project(self.model, with_dual=False)

    def channel_norms(self, tensors: dict[str, torch.Tensor], group: Any) -> torch.Tensor:
        """Per channel of ``group``: the L2 norm of all its filters' entries in ``tensors`` (by parameter name)."""
        total = torch.zeros(group.channels, dtype=torch.float64)
        for m in group.producers:
            if m.param in tensors:
                total += m.channel_rows(tensors[m.param], group.channels).double().pow(2).sum(1)
        return total.sqrt()

    def projection(self, tensors: dict[str, torch.Tensor]) -> Keep:
        """Π_S's support: per pruned group, the K_g channels of largest filter norm in ``tensors``."""
        keep = {}
        for g in self.groups:
            norms = self.channel_norms(tensors, g)
            if g.name in self.alive:  # a channel the network had already lost is never in the support
                gone = torch.ones_like(norms, dtype=torch.bool)
                gone[self.alive[g.name]] = False
                norms[gone] = float("-inf")
            keep[g.name] = torch.sort(torch.topk(norms, self.target[g.name], sorted=False).indices).values
        return keep

    def project(self, model: nn.Module, with_dual: bool = True) -> None:
        """The Z-step (Z ← Π_S(W + U)) and, ``with_dual``, the U-step (U ← U + W − Z)."""
        params = dict(model.named_parameters())
        with torch.no_grad():
            point = {n: params[n].detach() + self.U[n] for n in self.Z}
            for g, idx in self.projection(point).items():
                zero = masks(self.space, {g: idx})
                for n in self.filters[g]:
                    self.Z[n] = point[n] * zero[n]
            if with_dual:
                for n in self.U:
                    self.U[n] += params[n].detach() - self.Z[n]

    def regularise(self, model: nn.Module) -> None:
        """The penalty's gradient ρ·(W − Z + U) on the constrained filters, during the ADMM phase."""
        if self.step > self.prune_step:
            return
        params = dict(model.named_parameters())
        with torch.no_grad():
            for n in self.Z:
                p = params[n]
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                p.grad.add_(p.detach() - self.Z[n] + self.U[n], alpha=self.rho)

    def on_step(self, model: nn.Module, step: int) -> Keep | None:
        if step in self.updates:
            self.project(model)
            self.rho = min(self.rho_max, self.growth * self.rho)
        if step == self.prune_step:  # hard pruning by Π_S(W); HARD masks from here on
            return self.projection({n: p.detach() for n, p in model.named_parameters()})
        return None
