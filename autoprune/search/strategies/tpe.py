"""TPE (Optuna's multivariate Tree-structured Parzen Estimator) over per-group sparsities.

One parameter per channel group; the uniform plan that meets the budget is
evaluated first; every proposal is projected onto the budget before it is built
(TPE models the raw proposal, the projected plan is what gets evaluated).
Workers ask independently; with constant liar, trials still running count as
pessimistic results, so parallel workers do not all propose the same region.
"""

from __future__ import annotations

import optuna

from ..queue import enqueue_once
from ..strategy import SearchContext, Strategy


class TPE(Strategy):
    name = "tpe"

    def __init__(self, n_startup_trials: int = 10, n_ei_candidates: int = 24) -> None:
        self.n_startup_trials = n_startup_trials
        self.n_ei_candidates = n_ei_candidates

    def sampler(self, ctx: SearchContext) -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(
            multivariate=not ctx.multi_objective,
            constant_liar=True,
            n_startup_trials=self.n_startup_trials,
            n_ei_candidates=self.n_ei_candidates,
            seed=ctx.seed,
        )

    def setup(self, ctx: SearchContext) -> None:
        enqueue_once(ctx, ctx.projector.uniform(), "uniform")
