"""The strategy protocol: how a search proposes plans, and the registry of strategies by name.

A strategy is one class in one file, registered by its ``name``. Its state lives in
the study: it is re-derived from the trials recorded so far (TPE, random,
simulated annealing) or saved as trial attributes and artifacts (NetAdapt's
weights), so a killed search resumes where it stopped and several workers can
share one search. The runner (:func:`autoprune.search` ) drives it: before each
trial it asks :meth:`Strategy.next_action`; for each proposal it calls
:meth:`Strategy.build`, evaluates, then :meth:`Strategy.after_evaluation`; export,
``autoprune show`` and fine-tuning get a trial's network from
:meth:`Strategy.network`, so nothing outside a strategy's file names it.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import optuna
import torch
from optuna.distributions import FloatDistribution
from torch import nn

from ..utils import import_object, lookup
from . import attrs

if TYPE_CHECKING:
    from ..engine import PruningSpace
    from .budget import Projector

STRATEGIES: dict[str, type["Strategy"]] = {}


@dataclass
class SearchContext:
    """What a strategy may look at: the space, the budget projector, the study and the seeds.

    ``seed`` differs per run and worker (so a resumed sampler does not replay itself);
    ``base_seed`` is the user's seed, for strategies that replay their state.
    ``projector`` is None when the study is only read (export, ``autoprune show``).
    ``n_trials`` is the study-wide trial budget of the run (None when the study is only read).
    """

    space: "PruningSpace"
    projector: "Projector | None"
    study: optuna.Study
    seed: int
    max_sparsity: float
    multi_objective: bool = False
    base_seed: int = 0
    criterion: Any = "l1"
    n_trials: int | None = None
    #: The run's evaluator, training samples (``search(train_data=...)``, else the evaluator's ``train_data``) and
    #: a ``progress(what, done, total)`` callback for a strategy's long work; None when the study is only read.
    evaluator: Any = None
    train_data: Any = None
    progress: Callable[[str, int, int], None] | None = None
    #: The run's calibration batches (None when not given), and whether each candidate is reconstructed from them
    #: (:attr:`SearchConfig.reconstruct`): a strategy that builds its own networks reconstructs them too.
    calibration: Any = None
    reconstruct: bool = False

    @property
    def names(self) -> list[str]:
        return [g.name for g in self.space.groups]

    def distributions(self) -> dict[str, FloatDistribution]:
        """One parameter per channel group: its sparsity, in ``[0, max_sparsity]``."""
        return {n: FloatDistribution(0.0, self.max_sparsity) for n in self.names}


class Action(enum.Enum):
    """What the runner does next, as :meth:`Strategy.next_action` says."""

    ASK = "ask"  #: ask the study for a trial (a queued proposal, or the sampler's) and evaluate it
    WAIT = "wait"  #: other workers' trials must finish first (e.g. the rest of an iteration); poll again
    STOP = "stop"  #: nothing more to propose: this strategy's search is over


@dataclass
class TrialNetwork:
    """The network a trial evaluated, ready to rebuild: ``space.apply(plan, criterion)``.

    For most strategies ``space`` is the search's and ``criterion`` the search's
    criterion. A strategy that carries trained weights from trial to trial gives a
    space over the trial's own (full-size) weights and per-group scores that keep
    exactly the trial's channels, so export writes the very network that was scored.
    """

    space: "PruningSpace"
    plan: dict[str, float]
    criterion: Any
    #: Re-initialise every layer's parameters after building: the structure alone, to train from scratch.
    from_scratch: bool = False
    #: The trial's network was reconstructed by least squares on the search's calibration batches.
    reconstruct: bool = False

    def build(self, calibration: Any = None) -> nn.Module:
        """The network; ``calibration``: the search's calibration batches, for a criterion that needs data and for
        a reconstructed network."""
        if self.reconstruct and calibration is None:
            raise ValueError(
                "this trial's network was reconstructed by least squares on the search's calibration batches: "
                "pass the same batches, build(calibration=...)"
            )
        reconstruct = calibration if self.reconstruct and not self.from_scratch else None
        model = self.space.apply(self.plan, self.criterion, calibration=calibration, reconstruct=reconstruct)
        if self.from_scratch:
            from ..training import reinitialise

            reinitialise(model)
        return model


def exactly(kept: Sequence[int], channels: int) -> torch.Tensor:
    """Scores under which exactly the channels ``kept`` rank first (0 for them, -inf for the others): a
    :class:`TrialNetwork` criterion that keeps a trial's own channels."""
    s = torch.full((channels,), float("-inf"), dtype=torch.float64)
    s[torch.as_tensor(list(kept), dtype=torch.long)] = 0.0
    return s


class Strategy(abc.ABC):
    """Base class of search strategies (in the manner of Optuna's ``BaseSampler``).

    Subclasses set ``name`` (which registers them in :data:`STRATEGIES`), implement
    :meth:`sampler`, and override the hooks they need. A strategy's constructor
    takes its options as keyword arguments (``strategy_options`` / the study file's
    ``strategy.options``) and should reject bad ones at once.
    """

    #: The registered name (``search(strategy=name)``, the study file's ``strategy.name``).
    name: ClassVar[str] = ""
    #: Proposals are projected onto the budget before they are built (NetAdapt's are not: it walks down to it).
    projects: ClassVar[bool] = True
    #: Its candidates can be reconstructed by least squares (:attr:`SearchConfig.reconstruct`): a strategy whose
    #: networks are not pruned from trained weights (MetaPruning's generated ones) sets this False.
    reconstructs: ClassVar[bool] = True
    #: Every proposal is an enqueued trial (:func:`autoprune.search.queue.enqueue_batch`); an ask that finds the
    #: queue empty (another worker took the last proposal) is discarded, not sampled.
    queued_only: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            STRATEGIES[cls.name] = cls

    def accepts(self, trial: optuna.trial.FrozenTrial) -> bool:
        """Whether a freshly asked trial is one of this strategy's proposals (False: it is closed unevaluated and
        not counted, e.g. an ask that found another worker had taken the last queued proposal). By default every
        trial is, and with :attr:`queued_only` only enqueued ones."""
        return not self.queued_only or attrs.BATCH in trial.user_attrs

    @abc.abstractmethod
    def sampler(self, ctx: SearchContext) -> optuna.samplers.BaseSampler:
        """The Optuna sampler that proposes a trial's parameters (one sparsity per group, see
        :meth:`SearchContext.distributions`); it should be seeded by ``ctx.seed``.

        Args:
            ctx: the search's context.

        Returns:
            A sampler; a strategy whose proposals are all enqueued may return any (it is never asked).
        """

    def setup(self, ctx: SearchContext) -> None:
        """Called once per run before the first trial, and by ``create_study``: enqueue seed plans
        (:func:`autoprune.search.queue.enqueue_once`) and reject options this budget cannot honour.

        Args:
            ctx: the search's context.
        """

    def next_action(self, ctx: SearchContext) -> Action:
        """Called before each trial.

        A strategy that enqueues its proposals enqueues the next batch here, once the
        previous one is complete (:func:`autoprune.search.queue.enqueue_batch` keeps
        one copy when several workers do it at once).

        Args:
            ctx: the search's context.

        Returns:
            :attr:`Action.ASK` for a proposal, :attr:`Action.WAIT` while other workers must finish first,
            :attr:`Action.STOP` when there is nothing left to propose.
        """
        return Action.ASK

    def build(self, ctx: SearchContext, trial: optuna.Trial, plan: dict[str, float]) -> nn.Module | None:
        """The model to evaluate for ``plan``.

        Args:
            ctx: the search's context.
            trial: the running trial (for attributes the strategy records).
            plan: the plan to evaluate (projected onto the budget when :attr:`projects`).

        Returns:
            A model, or None for ``ctx.space.apply(plan, ctx.criterion)``.
        """
        return None

    def after_evaluation(self, ctx: SearchContext, trial: optuna.Trial, model: nn.Module) -> None:
        """Called with the evaluated (possibly fine-tuned in place) model before the trial is told: a strategy
        that carries weights saves them here (e.g. as a study artifact).

        Args:
            ctx: the search's context.
            trial: the running trial.
            model: the model the evaluator was given.
        """

    def run_task(self, ctx: SearchContext, trial: optuna.Trial) -> None:
        """Do the work of a task trial this strategy enqueued (:func:`autoprune.search.queue.enqueue_task`): work
        that is not a candidate, such as training a weight generator, run by whichever worker asks for it, under
        the trial's heartbeat, so that a dead worker's task is retried by another. The trial is closed PRUNED and
        never counted; an exception fails it (the strategy decides what a failed task means).

        Args:
            ctx: the search's context.
            trial: the running task trial.
        """
        raise NotImplementedError(f"strategy {self.name!r} enqueued a task but does not implement run_task")

    def network(self, ctx: SearchContext, trial: optuna.trial.FrozenTrial) -> TrialNetwork:
        """The network ``trial`` evaluated, for export, fine-tuning and ``autoprune show``.

        Args:
            ctx: a context on the study (its ``projector`` may be None).
            trial: a completed trial of this strategy's study.

        Returns:
            By default the trial's plan applied to the search's space with the search's criterion; a strategy
            whose :meth:`build` returns its own networks returns them here.
        """
        return TrialNetwork(ctx.space, dict(trial.user_attrs[attrs.PLAN]), ctx.criterion, reconstruct=ctx.reconstruct)


def strategy_class(spec: str) -> type[Strategy]:
    """The strategy class a registered name or an import path (``package.module:Class``, which registers it) names."""
    if ":" in spec:
        cls = import_object(spec, "strategy")
        if not (isinstance(cls, type) and issubclass(cls, Strategy)):
            raise ValueError(f"{spec!r} is a {type(cls).__name__}, not a subclass of autoprune.Strategy")
        return cls
    return lookup(STRATEGIES, spec, "strategy")


def get_strategy(spec: str | Strategy, **options: Any) -> Strategy:
    """A strategy object from a registered name or an import path (``package.module:Class``) and its options; or
    the object itself, without options."""
    if isinstance(spec, Strategy):
        if options:
            raise ValueError(f"strategy options {sorted(options)} only apply to a strategy name, not an object")
        return spec
    if isinstance(spec, str):
        cls = strategy_class(spec)
        try:
            return cls(**options)
        except TypeError as err:
            raise ValueError(f"bad options for strategy {spec!r}: {err}") from err
    raise TypeError(f"strategy must be a name or a Strategy, got {type(spec).__name__}")
