"""Search per-layer sparsities on Optuna: budgets, strategies, the study ledger, export."""

from .budget import Budget, Projector
from .export import export, load
from .runner import best_plan, create_study, search
from .strategy import STRATEGIES, SearchContext, Strategy, get_strategy

__all__ = [
    "Budget",
    "Projector",
    "search",
    "create_study",
    "best_plan",
    "export",
    "load",
    "STRATEGIES",
    "Strategy",
    "SearchContext",
    "get_strategy",
]
