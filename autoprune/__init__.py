"""autoprune: find how far each layer of a trained network can be pruned, then prune it for real."""

from .engine import CRITERIA, ChannelGroup, Criterion, PruningSpace, count_macs, count_params

__version__ = "0.1.0"

__all__ = ["PruningSpace", "ChannelGroup", "Criterion", "CRITERIA", "count_macs", "count_params", "__version__"]
