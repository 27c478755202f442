"""Built-in strategies; importing this package registers them."""

from . import annealing, autocompress, metapruning, netadapt, random, tpe, uniform  # noqa: F401

#: The strategy a search runs when none is named.
DEFAULT = tpe.TPE.name
