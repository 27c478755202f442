"""The strategy protocol: how a search proposes plans, and the registry of strategies by name.

A strategy is one small class in one file. Its state lives in the study: either
it is re-derived from the trials recorded so far (TPE, random) or saved as user
attributes / artifacts of the study, so a killed search resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from .ledger import DISCARDED

if TYPE_CHECKING:
    from ..engine import PruningSpace
    from .budget import Projector

STRATEGIES: dict[str, type["Strategy"]] = {}


@dataclass
class SearchContext:
    """What a strategy may look at: the space, the budget projector, the study and the seeds.

    ``seed`` differs per run (so a resumed sampler does not replay itself);
    ``base_seed`` is the user's seed, for strategies that replay their state.
    """

    space: "PruningSpace"
    projector: "Projector"
    study: optuna.Study
    seed: int
    max_sparsity: float
    multi_objective: bool = False
    base_seed: int = 0

    @property
    def names(self) -> list[str]:
        return [g.name for g in self.space.groups]

    def distributions(self) -> dict[str, FloatDistribution]:
        return {n: FloatDistribution(0.0, self.max_sparsity) for n in self.names}


class Strategy:
    """Base class. Subclasses set ``name`` and override what they need.

    ``parallel`` says how the strategy runs with several workers on one study.
    """

    name: str = ""
    parallel: str = "independent asks: each worker samples from the shared study"
    #: Proposals are projected onto the budget before they are built (NetAdapt's are not: it walks down to it).
    projects: bool = True
    #: Every proposal is an enqueued trial (see :func:`enqueue_batch`); an ask that finds the queue empty is discarded.
    queued_only: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            STRATEGIES[cls.name] = cls

    def sampler(self, ctx: SearchContext) -> optuna.samplers.BaseSampler:
        """The Optuna sampler that proposes parameters (one float per group)."""
        return optuna.samplers.RandomSampler(seed=ctx.seed)

    def setup(self, ctx: SearchContext) -> None:
        """Called once per run before the first trial (e.g. to enqueue seed plans)."""

    def finished(self, ctx: SearchContext) -> bool:
        """True when the strategy has nothing more to propose."""
        return False

    def prepare(self, ctx: SearchContext) -> str:
        """Called before each trial: ``"ask"`` for a proposal, ``"wait"`` while other workers must finish
        first (e.g. the rest of an iteration), ``"stop"`` when there is nothing left to propose.

        A strategy that enqueues its proposals may enqueue the next batch here (see :func:`enqueue_batch`).
        """
        return "ask"

    def build(self, ctx: SearchContext, trial: optuna.Trial, plan: dict[str, float]) -> Any:
        """The model to evaluate for ``plan``; None means ``space.apply(plan, criterion)``."""
        return None

    def after_evaluation(self, ctx: SearchContext, trial: optuna.Trial, model: Any) -> None:
        """Called with the evaluated (possibly fine-tuned) model before the trial is told."""


def get_strategy(spec: Any, **options: Any) -> Strategy:
    if isinstance(spec, Strategy):
        return spec
    if isinstance(spec, str):
        cls = STRATEGIES.get(spec)
        if cls is None:
            raise ValueError(f"unknown strategy {spec!r}; available: {', '.join(sorted(STRATEGIES))}")
        try:
            return cls(**options)
        except TypeError as err:
            raise ValueError(f"bad options for strategy {spec!r}: {err}") from err
    raise TypeError(f"strategy must be a name or a Strategy, got {type(spec).__name__}")


BATCH = "batch"


def enqueue_batch(ctx: SearchContext, key: str, proposals: list[tuple[dict[str, float], dict[str, Any]]]) -> bool:
    """Enqueue ``proposals`` (plan, user attributes) as one batch named ``key``, once per study.

    Idempotent with many workers: a worker enqueues the batch only if no trial of
    ``key`` exists yet; if two workers enqueue it at the same moment, the copy
    holding the lowest trial id wins and the other is marked a duplicate (PRUNED,
    never evaluated, not counted). Returns True if this call's copy is the one kept.
    """
    study = ctx.study
    if any(_batch_key(t) == key for t in study.get_trials(deepcopy=False)):
        return False
    token = uuid.uuid4().hex
    for plan, attrs in proposals:
        study.enqueue_trial(plan, user_attrs={**attrs, BATCH: {"key": key, "token": token}})
    trials = study.get_trials(deepcopy=False)
    if _winner(trials, key) == token:
        return True
    for t in trials:  # lost the race: withdraw this copy before anyone evaluates it
        if t.user_attrs.get(BATCH, {}).get("token") == token and t.state == TrialState.WAITING:
            with contextlib.suppress(RuntimeError):
                study._storage.set_trial_user_attr(t._trial_id, DISCARDED, "duplicate proposal")
                study._storage.set_trial_state_values(t._trial_id, TrialState.PRUNED)
    return False


def is_duplicate(trials: list[optuna.trial.FrozenTrial], trial_id: int) -> bool:
    """True if trial ``trial_id`` belongs to a batch that another worker enqueued first (see :func:`enqueue_batch`)."""
    me = next((t for t in trials if t._trial_id == trial_id), None)
    batch = me.user_attrs.get(BATCH) if me is not None else None
    return bool(batch) and _winner(trials, batch["key"]) != batch["token"]


def _batch_key(t: optuna.trial.FrozenTrial) -> str | None:
    batch = t.user_attrs.get(BATCH)
    return batch.get("key") if isinstance(batch, dict) else None


def _winner(trials: list[optuna.trial.FrozenTrial], key: str) -> str | None:
    mine = [t for t in trials if _batch_key(t) == key]
    return min(mine, key=lambda t: t._trial_id).user_attrs[BATCH]["token"] if mine else None


def enqueue_once(ctx: SearchContext, plan: dict[str, float], tag: str) -> None:
    """Enqueue ``plan`` (a seed plan such as the uniform one) once per study, whatever the number of workers."""
    enqueue_batch(ctx, f"seed:{tag}", [(plan, {"seed_plan": tag})])
