"""TPE (Optuna's multivariate Tree-structured Parzen Estimator) over per-group sparsities.

One parameter per channel group; the uniform plan that meets the budget is
evaluated first; every proposal is projected onto the budget before it is built
(TPE models the raw proposal, the projected plan is what gets evaluated).
"""

from __future__ import annotations

import optuna

from ..strategy import SearchContext, Strategy, enqueue_once


class TPE(Strategy):
    name = "tpe"
    parallel = "independent asks with constant liar: running trials count as pessimistic results"

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
