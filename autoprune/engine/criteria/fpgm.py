"""FPGM (He et al., CVPR 2019): distance of each filter to the others in its layer.

Filters close to the layer's geometric median are the most replaceable, so a
small summed distance means a small score.
"""

import torch

from .base import Criterion, weight_scores


class FPGM(Criterion):
    name = "fpgm"

    def scores(self, groups, model, calibration=None):
        return weight_scores(groups, model, lambda rows: torch.cdist(rows, rows).sum(1))
