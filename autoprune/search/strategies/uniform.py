"""Uniform pruning: one sparsity for every group, found by bisection to meet the budget.

It proposes a single plan, the baseline every other strategy has to beat. With
several workers, one evaluates it and the others wait for it and stop.
"""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from .. import attrs
from ..queue import enqueue_once
from ..strategy import Action, SearchContext, Strategy

TAG = "uniform"


class Uniform(Strategy):
    name = "uniform"
    queued_only = True

    def sampler(self, ctx: SearchContext) -> optuna.samplers.BaseSampler:
        return optuna.samplers.RandomSampler(seed=ctx.seed)  # never asked: the one proposal is enqueued

    def setup(self, ctx: SearchContext) -> None:
        enqueue_once(ctx, ctx.projector.uniform(), TAG)

    def next_action(self, ctx: SearchContext) -> Action:
        trials = ctx.study.get_trials(deepcopy=False)
        evaluated = any(
            t.user_attrs.get(attrs.SEED_PLAN) == TAG
            and (t.state == TrialState.COMPLETE or t.state == TrialState.FAIL and not t.user_attrs.get(attrs.STALE))
            for t in trials
        )
        if evaluated:
            return Action.STOP
        return Action.ASK if any(t.state == TrialState.WAITING for t in trials) else Action.WAIT
