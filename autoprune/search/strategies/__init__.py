"""Built-in strategies; importing this package registers them."""

from . import annealing, random, tpe, uniform  # noqa: F401
