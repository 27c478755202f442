"""L2 filter norm (NetAdapt, SFP): s_j = ||F_j||_2."""

from .base import Criterion, weight_scores


class L2(Criterion):
    name = "l2"

    def scores(self, groups, model, calibration=None):
        return weight_scores(groups, model, lambda rows: rows.pow(2).sum(1).sqrt())
