"""Built-in strategies; importing this package registers them."""

from . import annealing, netadapt, random, tpe, uniform  # noqa: F401
