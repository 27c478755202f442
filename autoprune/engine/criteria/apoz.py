"""APoZ (Hu et al., 2016, "Network Trimming"): importance = 1 - average percentage of zeros after ReLU."""

from .activations import activation_scores, per_index_mean
from .base import Criterion


class APoZ(Criterion):
    name = "apoz"
    needs_data = True

    def scores(self, groups, model, calibration=None):
        return activation_scores(
            groups, model, calibration, lambda x, k: per_index_mean((x <= 0).double(), k), lambda apoz: 1.0 - apoz
        )
