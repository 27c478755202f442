"""The "train from scratch" baselines of "Rethinking the Value of Network Pruning" (Liu et al., ICLR 2019).

The plan is only an architecture: the pruned network is built, every parameter and running statistic is
re-initialised (each layer's own ``reset_parameters``, seeded), and it is trained as it is.

- Scratch-E trains for the steps it is given — pass the original network's training length.
- Scratch-B gives the smaller network the same compute: those steps × MACs(original) / MACs(pruned), capped at
  ``cap`` (2, as the paper's ImageNet runs). Its :attr:`total_steps` is the stretched number, which a user's
  loop should run (``ap.training.run`` does).

For structured pruning the paper found both match or beat fine-tuning the inherited weights; a searched plan is
worth reporting beside them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import Method, reinitialise


class ScratchE(Method):
    """Options: ``seed`` (of the initialisation, default 0)."""

    name = "scratch_e"

    def __init__(self, space: Any, plan: Any, *, seed: int = 0, **kw: Any) -> None:
        self.seed = seed
        super().__init__(space, plan, **kw)

    def prepare(self) -> nn.Module:
        model = self.space.apply(self.plan)
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            return reinitialise(model)

    def finalize(self, model: nn.Module | None = None) -> nn.Module:
        return self.model if model is None else model


class ScratchB(ScratchE):
    """Scratch-E with the steps stretched by the MACs ratio (options ``cap``, default 2, and ``seed``)."""

    name = "scratch_b"

    def __init__(self, space: Any, plan: Any, *, cap: float = 2.0, **kw: Any) -> None:
        if not (isinstance(cap, (int, float)) and cap >= 1):
            raise ValueError(f"scratch_b's cap (most times the given steps) must be a number >= 1, got {cap!r}")
        super().__init__(space, plan, **kw)
        self.cap = float(cap)
        self.ratio = min(self.cap, space.macs({}) / max(space.macs(self.plan), 1))
        self.total_steps = int(round(self.total_steps * self.ratio))
