"""Learned proposers: AMC's gymnasium environment (``autoprune/AMC-v0``), its DDPG agent, and the ``amc`` strategy.

Importing this package (``import autoprune`` does) registers the environment with
gymnasium and the strategy with autoprune's registry.
"""

import gymnasium

from .amc import AMC
from .ddpg import DDPGAgent
from .env import AMCEnv, LayerWalk

ENV_ID = "autoprune/AMC-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="autoprune.agents.env:AMCEnv")

__all__ = ["AMC", "AMCEnv", "DDPGAgent", "LayerWalk", "ENV_ID"]
