"""Random search: uniform-random sparsities per group, projected onto the budget.

With adaptive-BN evaluation this is already a strong baseline (EagleEye, ECCV 2020).
Workers ask independently, each with its own seed.
"""

from __future__ import annotations

import optuna

from ..strategy import SearchContext, Strategy


class RandomSearch(Strategy):
    name = "random"

    def sampler(self, ctx: SearchContext) -> optuna.samplers.BaseSampler:
        return optuna.samplers.RandomSampler(seed=ctx.seed)
