"""Built-in strategies; importing this package registers them."""

from . import random, tpe, uniform  # noqa: F401
