"""Network Slimming (Liu et al., ICCV 2017): s_j = |gamma_j| of the channel's norm layers.

Groups that run through no normalisation layer are scored by their L1 filter norm.
"""

from .base import Criterion, _named_tensors, aggregate, producers


class BNScale(Criterion):
    name = "bn_scale"

    def scores(self, space, groups, calibration):
        named = _named_tensors(space)
        out = {}
        for g in groups:
            norms = [m for m in g.members if m.role == "norm"]
            out[g.name] = aggregate(space, g, norms or producers(g), lambda rows: rows.abs().sum(1), named)
        return out
