"""Search per-layer sparsities on Optuna: budgets, strategies, the study ledger, export."""

from .budget import Budget, Projector
from .config import SearchConfig
from .export import export, load
from .runner import best_plan, best_trial, create_study, search, trial_network
from .strategy import STRATEGIES, Action, SearchContext, Strategy, TrialNetwork, get_strategy

__all__ = [
    "Budget",
    "Projector",
    "SearchConfig",
    "search",
    "create_study",
    "best_plan",
    "best_trial",
    "trial_network",
    "export",
    "load",
    "STRATEGIES",
    "Strategy",
    "Action",
    "SearchContext",
    "TrialNetwork",
    "get_strategy",
]
