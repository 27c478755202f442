"""Simulated annealing over per-group sparsities (NNI's SimulatedAnnealingPruner, repaired).

The chain's state (current plan, temperature, best, stall count) is never
stored: it is *replayed* from the study's completed trials in order. Each
acceptance draw is seeded by the chain's step, each move by the proposal's slot
(its place among the study's trials, not counting those failed by a crash). So a
killed search resumes mid-chain and continues exactly as an uninterrupted run with
the same seed would, and workers evaluating neighbours in parallel never draw the
same move: each worker proposing while k others are in flight draws the k-th move of the step,
and moves are accepted in trial order.

Defaults fix what breaks in NNI's SimulatedAnnealingPruner: the first few moves are
random perturbations whose score drops calibrate the start temperature so that
about ``target_acceptance`` of worse moves are accepted at first (NNI's T0 = 100
against accuracy deltas of 0.01 accepts everything); every step cools (not only
accepted ones); the budget is MACs / params through the shared projection; and
a chain stuck for ``restart_after`` steps restarts from the best plan.
``nni_schedule=True`` gives NNI's schedule instead: T0 100, stop 20, cool 0.9
after each accepted move.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.samplers import BaseSampler
from optuna.trial import TrialState

from .. import attrs
from ..ledger import uncounted
from ..queue import enqueue_once
from ..strategy import Action, SearchContext, Strategy

START = "uniform"


@dataclass
class ChainState:
    current: dict[str, float]
    score: float
    best: dict[str, float]
    best_score: float
    temperature: float
    t0: float
    step: int
    stall: int
    stopped: bool = False


class SimulatedAnnealing(Strategy):
    name = "sa"

    def __init__(
        self,
        start_temperature: float | None = None,
        stop_temperature: float | None = None,
        cool_down_rate: float = 0.97,
        perturbation: float = 0.35,
        min_perturbation: float = 0.02,
        calibration_moves: int = 6,
        target_acceptance: float = 0.65,
        cool_on_accept: bool = False,
        sorted_allocation: bool = False,
        restart_after: int | None = 25,
        nni_schedule: bool = False,
    ) -> None:
        if nni_schedule:
            start_temperature, stop_temperature, cool_down_rate, cool_on_accept = 100.0, 20.0, 0.9, True
            calibration_moves, restart_after = 0, None
        if not 0 < cool_down_rate < 1:
            raise ValueError(f"cool_down_rate must be in (0, 1), got {cool_down_rate}")
        if not 0 < target_acceptance < 1:
            raise ValueError(f"target_acceptance must be in (0, 1), got {target_acceptance}")
        self.start_temperature = start_temperature
        self.stop_temperature = stop_temperature
        self.cool_down_rate = cool_down_rate
        self.perturbation = perturbation
        self.min_perturbation = min_perturbation
        self.calibration_moves = calibration_moves if start_temperature is None else 0
        self.target_acceptance = target_acceptance
        self.cool_on_accept = cool_on_accept
        self.sorted_allocation = sorted_allocation
        self.restart_after = restart_after

    def sampler(self, ctx: SearchContext) -> BaseSampler:
        return _AnnealingSampler(self, ctx)

    def setup(self, ctx: SearchContext) -> None:
        enqueue_once(ctx, ctx.projector.uniform(), START)

    def next_action(self, ctx: SearchContext) -> Action:
        return Action.STOP if self.replay(ctx).stopped else Action.ASK

    # -- the chain ------------------------------------------------------------------
    def replay(self, ctx: SearchContext) -> ChainState:
        """Re-derive the chain from the study's completed trials (in trial order)."""
        done = [
            t for t in ctx.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if attrs.PLAN in t.user_attrs
        ]
        if not done:  # the start plan is not evaluated yet: parallel workers explore around it meanwhile
            start = ctx.projector.uniform()
            return ChainState(start, float("-inf"), start, float("-inf"), 0.0, 0.0, 0, 0)
        start = next((t for t in done if t.user_attrs.get(attrs.SEED_PLAN) == START), done[0])
        moves = [t for t in done if t is not start]
        st = ChainState(
            dict(start.user_attrs[attrs.PLAN]),
            start.values[0],
            dict(start.user_attrs[attrs.PLAN]),
            start.values[0],
            0.0,
            0.0,
            0,
            0,
        )
        calibration = moves[: self.calibration_moves]
        chain = moves[self.calibration_moves :]
        st.step = len(calibration)
        if len(calibration) < self.calibration_moves:
            self._track_best(st, calibration)
            return st
        st.t0 = self.start_temperature if self.start_temperature is not None else self._calibrate(st.score, calibration)
        st.temperature = st.t0
        self._track_best(st, calibration)
        for t in chain:
            score, plan = t.values[0], dict(t.user_attrs[attrs.PLAN])
            rng = self._rng(ctx, st.step, "accept")
            accepted = score >= st.score or rng.random() < math.exp((score - st.score) / st.temperature)
            if accepted:
                st.current, st.score = plan, score
            if score > st.best_score:
                st.best, st.best_score, st.stall = plan, score, 0
            else:
                st.stall += 1
            if accepted or not self.cool_on_accept:
                st.temperature *= self.cool_down_rate
            if self.restart_after and st.stall >= self.restart_after:
                st.current, st.score, st.stall = dict(st.best), st.best_score, 0
            st.step += 1
        if self.stop_temperature is not None and st.temperature < self.stop_temperature:
            st.stopped = True
        return st

    def _calibrate(self, start_score: float, moves: list) -> float:
        """T0 such that exp(-mean drop / T0) = target_acceptance, from the calibration moves."""
        drops = [start_score - t.values[0] for t in moves if t.values[0] < start_score]
        scale = sum(drops) / len(drops) if drops else max(abs(start_score), 1.0) * 1e-3
        return scale / -math.log(self.target_acceptance)

    @staticmethod
    def _track_best(st: ChainState, trials: list) -> None:
        for t in trials:
            if t.values[0] > st.best_score:
                st.best, st.best_score = dict(t.user_attrs[attrs.PLAN]), t.values[0]

    def _rng(self, ctx: SearchContext, step: int, what: str) -> random.Random:
        return random.Random(f"{ctx.base_seed}:{what}:{step}")

    def propose(self, ctx: SearchContext, trial_id: int) -> dict[str, float]:
        """The plan trial ``trial_id`` evaluates: a random move from the chain's current plan."""
        st = self.replay(ctx)
        names = ctx.names
        ratio = st.temperature / st.t0 if st.t0 > 0 else 1.0
        magnitude = max(self.perturbation * ratio, self.min_perturbation)
        slot = sum(t._trial_id < trial_id and not uncounted(t) for t in ctx.study.get_trials(deepcopy=False))
        rng = self._rng(ctx, slot, "move")
        plan = {
            n: min(max(st.current.get(n, 0.0) + rng.uniform(-magnitude, magnitude), 0.0), ctx.max_sparsity)
            for n in names
        }
        if self.sorted_allocation:
            plan = _sorted_by_size(ctx, plan)
        return ctx.projector.project(plan) or plan


def _sorted_by_size(ctx: SearchContext, plan: dict[str, float]) -> dict[str, float]:
    """AutoCompress's prior: a group with more parameters never gets less sparsity."""
    by_size = sorted(ctx.space.groups, key=lambda g: g.params_per_channel * g.channels)
    return dict(zip((g.name for g in by_size), sorted(plan.values())))


class _AnnealingSampler(BaseSampler):
    """Proposes whole plans from the replayed chain (Optuna asks it for all groups at once)."""

    def __init__(self, strategy: SimulatedAnnealing, ctx: SearchContext) -> None:
        self.strategy = strategy
        self.ctx = ctx

    def infer_relative_search_space(self, study: optuna.Study, trial: Any) -> dict[str, Any]:
        return self.ctx.distributions()

    def sample_relative(self, study: optuna.Study, trial: Any, search_space: dict[str, Any]) -> dict[str, Any]:
        if not search_space:
            return {}
        plan = self.strategy.propose(self.ctx, trial._trial_id)
        return {n: float(plan[n]) for n in search_space}

    def sample_independent(self, study, trial, param_name, param_distribution):  # noqa: ANN001, ANN201
        return self.strategy.propose(self.ctx, trial._trial_id)[param_name]
