"""Mean activation (Molchanov et al., 2017 baseline): s_j = mean of ReLU(z_j) over data."""

from .activations import activation_scores, per_index_mean
from .base import Criterion


class MeanActivation(Criterion):
    name = "mean_activation"
    needs_data = True

    def scores(self, groups, model, calibration=None):
        return activation_scores(
            groups, model, calibration, lambda x, k: per_index_mean(x.clamp_min(0), k), lambda m: m
        )
