"""Channel-importance criteria, registered by name (one small module each)."""

from . import apoz, bn_scale, fpgm, l1, l2, lasso, mean_activation, random, taylor  # noqa: F401 - registers them
from .apoz import APoZ
from .base import CRITERIA, Criterion, get_criterion
from .bn_scale import BNScale
from .fpgm import FPGM
from .l1 import L1
from .l2 import L2
from .lasso import Lasso
from .mean_activation import MeanActivation
from .random import Random
from .taylor import Taylor

__all__ = [
    "CRITERIA",
    "Criterion",
    "get_criterion",
    "L1",
    "L2",
    "Lasso",
    "FPGM",
    "BNScale",
    "Taylor",
    "APoZ",
    "MeanActivation",
    "Random",
]
