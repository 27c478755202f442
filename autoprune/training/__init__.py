"""Training-aware pruning: methods that prune while training, driven by a plan from any strategy.

``get(name, space, plan, total_steps=...)`` gives a method object with hooks for your own training loop (see
:class:`Method`); every method ends, in ``finalize``, with a network physically smaller at exactly the plan.
"""

from . import admm, agp, finetune, imp, level, scratch, sfp, slim, taylor  # noqa: F401 - registers the methods
from .base import METHODS, Method, check_options, get, masks, options, reinitialise
from .run import Trained, distillation_loss, run

__all__ = [
    "METHODS",
    "Method",
    "Trained",
    "check_options",
    "distillation_loss",
    "get",
    "masks",
    "options",
    "reinitialise",
    "run",
]
