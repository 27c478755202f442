"""One-shot pruning, then plain fine-tuning: the baseline every other method is compared with."""

from __future__ import annotations

from torch import nn

from .base import Method


class FineTune(Method):
    """Prune once by the criterion at the start (physically: ``self.model`` is already the small network), then
    train it as it is. :meth:`finalize` returns the trained small network."""

    name = "finetune"

    def prepare(self) -> nn.Module:
        return self.space.apply(self.plan, self.criterion, calibration=self.calibration)

    def finalize(self, model: nn.Module | None = None) -> nn.Module:
        return self.model if model is None else model
