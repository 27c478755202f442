"""The structural pruning engine: trace once, group coupled channels, apply and cost plans."""

from .cost import count_macs, count_params
from .criteria import CRITERIA, Criterion, get_criterion
from .space import ChannelGroup, Member, PruningSpace

__all__ = [
    "PruningSpace",
    "ChannelGroup",
    "Member",
    "count_macs",
    "count_params",
    "CRITERIA",
    "Criterion",
    "get_criterion",
]
