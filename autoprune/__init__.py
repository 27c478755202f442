"""autoprune: find how far each layer of a trained network can be pruned, then prune it for real."""

from . import agents, training, zoo  # agents registers the AMC environment and strategy
from .engine import CRITERIA, ChannelGroup, Criterion, PruningSpace, count_macs, count_params
from .report import Report, compare
from .search import (
    STRATEGIES,
    Budget,
    SearchConfig,
    Strategy,
    best_plan,
    best_trial,
    create_study,
    export,
    load,
    search,
    trial_network,
)
from .version import __version__

__all__ = [
    "PruningSpace",
    "ChannelGroup",
    "Criterion",
    "CRITERIA",
    "count_macs",
    "count_params",
    "Budget",
    "SearchConfig",
    "search",
    "create_study",
    "best_plan",
    "best_trial",
    "trial_network",
    "export",
    "load",
    "compare",
    "Report",
    "STRATEGIES",
    "Strategy",
    "training",
    "zoo",
    "agents",
    "__version__",
]
