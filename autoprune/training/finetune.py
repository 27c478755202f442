"""One-shot pruning, then plain fine-tuning: the baseline every other method is compared with."""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from .base import Method


class FineTune(Method):
    """Prune once by the criterion at the start (physically: ``self.model`` is already the small network), then
    train it as it is. Option ``pruned``: a pruned network at the plan to train instead (a copy of it), e.g. the
    network a trial scored. :meth:`finalize` returns the trained small network."""

    name = "finetune"

    def __init__(self, space: Any, plan: Any, *, pruned: nn.Module | None = None, **kw: Any) -> None:
        self.pruned = pruned
        super().__init__(space, plan, **kw)

    def prepare(self) -> nn.Module:
        if self.pruned is not None:
            return copy.deepcopy(self.pruned)
        return self.space.apply(self.plan, self.criterion, calibration=self.calibration)

    def finalize(self, model: nn.Module | None = None) -> nn.Module:
        return self.model if model is None else model
