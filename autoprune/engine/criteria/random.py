"""Random ranking: the baseline every criterion must beat. Seeded and per group."""

import zlib

import torch

from .base import Criterion


class Random(Criterion):
    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    @property
    def cache_key(self) -> str:
        return f"random:{self.seed}"

    def scores(self, groups, model, calibration=None):
        out = {}
        for g in groups:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(g.name.encode()))
            out[g.name] = torch.rand(g.channels, generator=gen, dtype=torch.float64)
        return out
