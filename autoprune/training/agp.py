"""Automated Gradual Pruning (Zhu & Gupta, "To prune, or not to prune", 2017), per channel group of a plan.

Channels are removed at pruning events every ``frequency`` steps from ``start`` to ``end`` (fractions of the
training), following the cubic s(t) = s_f·[1 − (1 − τ)³], τ = (t − t₀)/(t_end − t₀): quickly at first, when the
network has the most redundancy, slowly at the end. Group g's final sparsity is the plan's, so the number of
channels it has lost at τ is round((C_g − K_g)·[1 − (1 − τ)³]), from 0 up to exactly C_g − K_g. At each event
the criterion ranks the group's surviving channels on the current (masked, trained) weights; masks are HARD, so
a removed channel never comes back, and training goes on with fixed masks after the last event.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from .base import Keep, Method


class AGP(Method):
    """Gradual pruning on a cubic schedule (see the module docstring).

    Options: ``start`` and ``end`` (fractions of ``total_steps``, default 0 and 0.5: the reference advice is to
    stop pruning well before the learning rate has decayed) and ``frequency`` (steps between events; default:
    10 events over the pruning window, at least every step).
    """

    name = "agp"

    def __init__(
        self, space: Any, plan: Any, *, start: float = 0.0, end: float = 0.5, frequency: int | None = None, **kw: Any
    ) -> None:
        check_window("AGP", start, end, frequency)
        super().__init__(space, plan, **kw)
        self.events = events(self.total_steps, start, end, frequency)
        self.start, self.end, self.frequency = start, end, frequency

    def removed(self, tau: float) -> dict[str, int]:
        """Channels each pruned group has lost at schedule position ``tau`` in [0, 1]."""
        return {g: self.sizes[g] - k for g, k in self.counts_at(cubic(tau)).items()}

    def on_step(self, model: nn.Module, step: int) -> Keep | None:
        tau = self.events.get(step)
        return None if tau is None else self.select(model, self.counts_at(cubic(tau)))


def cubic(tau: float) -> float:
    """AGP's ramp: the share of the final sparsity reached at ``tau`` in [0, 1], 1 − (1 − τ)³."""
    return 1 - (1 - min(max(tau, 0.0), 1.0)) ** 3


def check_window(who: str, start: float, end: float, frequency: int | None) -> None:
    """A clear error for a pruning window or event spacing that cannot be scheduled."""
    if not 0 <= start < end <= 1:
        raise ValueError(f"{who} needs 0 <= start < end <= 1 (fractions of the training), got {start}, {end}")
    if frequency is not None and (not isinstance(frequency, int) or isinstance(frequency, bool) or frequency < 1):
        raise ValueError(f"{who}'s frequency must be a positive number of steps, got {frequency!r}")


def events(total: int, start: float, end: float, frequency: int | None) -> dict[int, float]:
    """AGP's pruning events over ``total`` steps: step -> schedule position τ in [0, 1], every ``frequency`` steps
    (default: 10 events) from ``start`` to ``end`` (fractions of the training), the last exactly at τ = 1."""
    first = int(round(start * total))
    last = max(first, min(total - 1, int(round(end * total)) - 1))
    if frequency is None:
        frequency = max(1, math.ceil((last - first) / 10))
    n = max(1, math.ceil((last - first) / frequency))
    steps = sorted({min(first + j * frequency, last) for j in range(n + 1)})
    span = max(last - first, 1)
    return {t: (1.0 if t == last else (t - first) / span) for t in steps}
