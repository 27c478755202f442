"""L1 filter norm (Li et al., ICLR 2017): s_j = sum |F_j|."""

from .base import Criterion, weight_scores


class L1(Criterion):
    name = "l1"

    def scores(self, groups, model, calibration=None):
        return weight_scores(groups, model, lambda rows: rows.abs().sum(1))
