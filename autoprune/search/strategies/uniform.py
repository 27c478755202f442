"""Uniform pruning: one sparsity for every group, found by bisection to meet the budget.

It proposes a single plan, the baseline every other strategy has to beat.
"""

from __future__ import annotations

from optuna.trial import TrialState

from ..strategy import SearchContext, Strategy, enqueue_once


class Uniform(Strategy):
    name = "uniform"
    parallel = "one plan: one worker evaluates it, the others wait for it and stop"
    queued_only = True

    def setup(self, ctx: SearchContext) -> None:
        enqueue_once(ctx, ctx.projector.uniform(), "uniform")

    def prepare(self, ctx: SearchContext) -> str:
        if self.finished(ctx):
            return "stop"
        return "ask" if ctx.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)) else "wait"

    def finished(self, ctx: SearchContext) -> bool:
        return any(
            t.user_attrs.get("seed_plan") == "uniform"
            and (t.state == TrialState.COMPLETE or t.state == TrialState.FAIL and not t.user_attrs.get("stale"))
            for t in ctx.study.get_trials(deepcopy=False)
        )
