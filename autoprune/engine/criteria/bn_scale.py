"""Network Slimming (Liu et al., ICCV 2017): s_j = |gamma_j| of the channel's norm layers.

Groups that run through no normalisation layer are scored by their L1 filter norm.
"""

from .base import Criterion, aggregate, named_tensors


class BNScale(Criterion):
    name = "bn_scale"

    def scores(self, groups, model, calibration=None):
        named = named_tensors(model)
        out = {}
        for g in groups:
            norms = [m for m in g.members if m.role == "norm"]
            out[g.name] = aggregate(g, norms or g.producers, lambda rows: rows.abs().sum(1), named)
        return out
