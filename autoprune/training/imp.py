"""Iterative magnitude pruning with rewinding — the lottery ticket (Frankle & Carbin, ICLR 2019; rewinding to an
early point, Frankle et al., ICML 2020), structured and per group of a plan.

The training is split into ``rounds`` equal rounds. The network is trained, a share of each group's remaining
channels is removed by the criterion on the trained weights, and the survivors are *rewound* to their values at
the rewind point θ_k (``rewind``, a fraction of the first round; 0 rewinds to the starting weights) before the
next round trains again. Each prune removes the same fraction 1 − (1 − p_g)^{1/R} of what is left: the
model (which comes trained) is pruned before the first round and again at the end of every round but the last,
so group g trains round r (1..R) with round(C_g·(K_g/C_g)^{r/R}) channels and the last round exactly K_g.
Masks are HARD; at a rewind the optimiser's state is cleared too (its momentum belongs to the weights that were
trained, not to the rewound ones), and :attr:`restarts` tells a trainer where to restart its learning-rate
schedule (``ap.training.run`` does).

``reinit=True`` rewinds to a fresh random initialisation (seeded by ``seed``) instead: the control that
"Rethinking the Value of Network Pruning" (Liu et al., ICLR 2019) found as good as a winning ticket for
structured pruning, worth reporting beside it.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from .base import Keep, Method, reinitialise


class IMP(Method):
    """Options: ``rounds`` (R, default 3), ``rewind`` (the rewind point θ_k as a fraction of the first round,
    default 0.1; 0: the starting weights), ``reinit`` (rewind to a random initialisation, default False) and
    ``seed`` (of that initialisation)."""

    name = "imp"
    state_keys = (*Method.state_keys, "_rewound")

    def __init__(
        self,
        space: Any,
        plan: Any,
        *,
        rounds: int = 3,
        rewind: float = 0.1,
        reinit: bool = False,
        seed: int = 0,
        **kw: Any,
    ) -> None:
        if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
            raise ValueError(f"imp's rounds must be a positive integer, got {rounds!r}")
        if not 0 <= rewind < 1:
            raise ValueError(f"imp's rewind must be a fraction of the first round in [0, 1), got {rewind!r}")
        total = kw.get("total_steps")
        if isinstance(total, int) and total < 2 * rounds:
            raise ValueError(
                f"imp needs at least 2 steps per round: {rounds} rounds need total_steps >= {2 * rounds}, got {total}"
            )
        self.rounds, self.rewind, self.reinit, self.seed = rounds, rewind, bool(reinit), seed
        super().__init__(space, plan, **kw)
        length = self.total_steps // rounds
        #: The first step of every round (where a trainer restarts its learning-rate schedule).
        self.restarts = [r * length for r in range(rounds)]
        self.rewind_step = int(round(rewind * length))
        self._rewound: dict[str, torch.Tensor] | None = None
        if self.reinit:
            self._rewound = _initialised(self.model, seed)
        elif self.rewind_step == 0:
            self._rewound = _copy(self.model)
        self.set_keep(self.select(self.model, self.counts_after(1)))  # the first prune, on the trained weights
        self.apply_masks(self.model)

    def counts_after(self, prunes: int) -> dict[str, int]:
        """Each pruned group's kept count after ``prunes`` (1..R) pruning steps: round(C·(K/C)^{r/R}), exactly K
        at r = R."""
        if prunes >= self.rounds:
            return dict(self.target)
        ratio = prunes / self.rounds
        return {g: max(k, int(round(self.sizes[g] * (k / self.sizes[g]) ** ratio))) for g, k in self.target.items()}

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
        if self._rewound is None and self.step == self.rewind_step - 1:
            self._rewound = _copy(model)  # θ_k, after the rewind point's optimiser step
        rewinding = self.step + 1 in self.restarts[1:]
        super().after_step(model, optimizer)  # the next round's prune happens here (on_step)
        if rewinding:
            with torch.no_grad():
                for name, value in model.state_dict().items():
                    value.copy_(self._rewound[name])
            if optimizer is not None:
                optimizer.state.clear()
            self.apply_masks(model)

    def on_step(self, model: nn.Module, step: int) -> Keep | None:
        if step + 1 not in self.restarts[1:]:
            return None
        return self.select(model, self.counts_after(self.restarts.index(step + 1) + 1))


def _copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def _initialised(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """A fresh initialisation of ``model``'s architecture: every module's ``reset_parameters``, seeded."""
    fresh = copy.deepcopy(model)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        reinitialise(fresh)
    return _copy(fresh)
