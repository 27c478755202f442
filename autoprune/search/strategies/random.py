"""Random search: uniform-random sparsities per group, projected onto the budget.

With adaptive-BN evaluation this is already a strong baseline (EagleEye, ECCV 2020).
"""

from __future__ import annotations

from ..strategy import Strategy


class RandomSearch(Strategy):
    name = "random"
