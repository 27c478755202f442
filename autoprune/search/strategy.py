"""The strategy protocol: how a search proposes plans, and the registry of strategies by name.

A strategy is one small class in one file. Its state lives in the study: either
it is re-derived from the trials recorded so far (TPE, random) or saved as user
attributes / artifacts of the study, so a killed search resumes where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import FloatDistribution

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

    def prepare(self, ctx: SearchContext) -> bool:
        """Called before each trial (e.g. to enqueue the next batch of proposals); True stops the search."""
        return False

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


def enqueue_once(ctx: SearchContext, plan: dict[str, float], tag: str) -> None:
    """Enqueue ``plan`` unless a trial with this tag already exists in the study."""
    if any(t.user_attrs.get("seed_plan") == tag for t in ctx.study.get_trials(deepcopy=False)):
        return
    ctx.study.enqueue_trial(plan, user_attrs={"seed_plan": tag})
