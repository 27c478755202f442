"""One typed description of a search, which ``search()``, ``create_study()``, the study file and the CLI all use."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from ..utils import check_kwargs, did_you_mean
from .budget import Budget
from .strategies import DEFAULT

if TYPE_CHECKING:
    from .strategy import Strategy


@dataclass(frozen=True)
class SearchConfig:
    """What a search is. Every worker of one study must agree on it (``n_trials`` and ``storage`` excepted), and
    the study records it (see :data:`autoprune.search.attrs.CONFIG`) and refuses a run that differs.

    Attributes:
        budget: the limits the pruned model must meet (None: no limit, e.g. a multi-objective search); a mapping
            such as ``{"macs": 0.5}`` is taken as ``Budget(macs=0.5)``.
        strategy: a registered strategy's name (``autoprune.STRATEGIES``) or a :class:`Strategy` object.
        strategy_options: keyword arguments of the strategy's constructor (with a name).
        study_name: the Optuna study's name.
        storage: an Optuna storage URL or object (default: ``sqlite:///STUDY_NAME.db``).
        criterion: how a plan's channels are chosen (a name from ``autoprune.CRITERIA`` or a criterion).
        seed: seeds the strategy; a resumed run and each worker derive their own from it.
        n_trials: the number of trials of the whole study (all runs and workers together).
        multi_objective: maximise the score and minimise MACs together (the Pareto front).
        max_sparsity: no group loses more than this fraction of its channels.
        verify_latency: under a latency budget, measure every candidate (not only predict it).
        latency_margin: a measured candidate must be under the latency budget less this fraction of it.
        reconstruct: refit every candidate's layers that lost input channels by least squares on the run's
            calibration batches before it is evaluated (:meth:`PruningSpace.reconstruct`; He et al., ICCV 2017).
    """

    budget: Budget | None = None
    strategy: "str | Strategy" = DEFAULT
    strategy_options: Mapping[str, Any] = field(default_factory=dict)
    study_name: str = "autoprune"
    storage: Any = None
    criterion: Any = "l1"
    seed: int = 0
    n_trials: int = 100
    multi_objective: bool = False
    max_sparsity: float = 0.95
    verify_latency: bool = True
    latency_margin: float = 0.03
    reconstruct: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.budget, Mapping):  # {"macs": 0.5}: the Budget it spells (its keys checked)
            check_kwargs(Budget, self.budget, "Budget")
            object.__setattr__(self, "budget", Budget(**self.budget))
        if self.budget is not None and not isinstance(self.budget, Budget):
            raise TypeError(
                f"budget must be an autoprune.Budget or a mapping of its fields: use ap.Budget(macs=0.5); "
                f"got {type(self.budget).__name__} {self.budget!r}"
            )
        if not isinstance(self.n_trials, int) or isinstance(self.n_trials, bool) or self.n_trials < 1:
            raise ValueError(f"n_trials must be a positive integer, got {self.n_trials!r}")
        if not 0 < self.max_sparsity < 1:
            raise ValueError(f"max_sparsity must be in (0, 1), got {self.max_sparsity!r}")
        if not 0 <= self.latency_margin < 1:
            raise ValueError(
                f"latency_margin must be in [0, 1) (a fraction of the budget), got {self.latency_margin!r}"
            )
        if not isinstance(self.study_name, str) or not self.study_name:
            raise ValueError(f"study_name must be a non-empty string, got {self.study_name!r}")

    def replace(self, **changes: Any) -> "SearchConfig":
        """A copy with ``changes``; an unknown name is a TypeError that says which names there are."""
        names = [f.name for f in dataclasses.fields(self)]
        for key in changes:
            if key not in names:
                raise TypeError(
                    f"unknown search setting {key!r}.{did_you_mean(key, names)} Settings: {', '.join(names)}"
                )
        return dataclasses.replace(self, **changes)

    @property
    def criterion_name(self) -> str:
        return criterion_name(self.criterion)


def criterion_name(criterion: Any) -> str:
    """How a criterion is recorded: its registered name, or a criterion object's class name."""
    return criterion if isinstance(criterion, str) else type(criterion).__name__


def resolve(config: SearchConfig | None, budget: Budget | None, settings: Mapping[str, Any]) -> SearchConfig:
    """The configuration a call describes: ``config`` (or the defaults), with ``budget`` and ``settings`` on top."""
    if config is not None and not isinstance(config, SearchConfig):
        raise TypeError(f"config must be a SearchConfig, got {type(config).__name__}")
    changes = dict(settings)
    if budget is not None:
        changes["budget"] = budget
    return (config or SearchConfig()).replace(**changes)
