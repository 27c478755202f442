"""autoprune: find how far each layer of a trained network can be pruned, then prune it for real."""

__version__ = "0.1.0"

from . import zoo  # noqa: E402
from .engine import CRITERIA, ChannelGroup, Criterion, PruningSpace, count_macs, count_params  # noqa: E402
from .search import STRATEGIES, Budget, Strategy, best_plan, create_study, export, load, search  # noqa: E402

__all__ = [
    "PruningSpace",
    "ChannelGroup",
    "Criterion",
    "CRITERIA",
    "count_macs",
    "count_params",
    "Budget",
    "search",
    "create_study",
    "best_plan",
    "export",
    "load",
    "STRATEGIES",
    "Strategy",
    "zoo",
    "__version__",
]
