"""The structural pruning engine: trace once, group coupled channels, apply and cost plans."""

from .cost import count_macs, count_params
from .criteria import CRITERIA, Criterion, get_criterion
from .groups import ChannelGroup, ChannelSite, Member
from .space import PruningSpace

__all__ = [
    "PruningSpace",
    "ChannelGroup",
    "Member",
    "ChannelSite",
    "count_macs",
    "count_params",
    "CRITERIA",
    "Criterion",
    "get_criterion",
]
