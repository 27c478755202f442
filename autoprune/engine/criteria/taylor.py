"""First-order Taylor importance (Molchanov et al., CVPR 2019).

For each calibration batch, a channel's score is (sum of g * w over all of the
group's parameters)^2, the estimated loss change when the channel is removed;
scores are averaged over batches. Gradients come from ``loss(model(x), y)``,
cross-entropy by default. The model runs in eval mode and its ``.grad`` fields
are restored afterwards.
"""

from typing import Callable

import torch
import torch.nn.functional as F

from .base import Criterion, batches


class Taylor(Criterion):
    name = "taylor"
    needs_data = True

    def __init__(self, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy) -> None:
        self.loss = loss

    def scores(self, groups, model, calibration=None):
        params = dict(model.named_parameters(remove_duplicate=False))
        saved = {n: (p.grad, p.requires_grad) for n, p in params.items()}
        was_training = model.training
        totals = {g.name: torch.zeros(g.channels, dtype=torch.float64) for g in groups}
        n = 0
        try:
            model.eval()
            for p in params.values():
                p.requires_grad_(True)
            for inputs, target in batches(calibration):
                if target is None:
                    raise ValueError("taylor needs (inputs, targets) calibration batches to compute a loss")
                for p in params.values():
                    p.grad = None
                with torch.enable_grad():
                    self.loss(model(*inputs), target).backward()
                gw = {
                    k: (p.grad * p).detach() if p.grad is not None else torch.zeros_like(p) for k, p in params.items()
                }
                for g in groups:
                    s = torch.zeros(g.channels, dtype=torch.float64)
                    for m in g.members:
                        if m.param in gw:
                            s += m.channel_rows(gw[m.param], g.channels).sum(1).double()
                    totals[g.name] += s.pow(2)
                n += 1
        finally:
            model.train(was_training)
            for k, p in params.items():
                p.grad, req = saved[k]
                p.requires_grad_(req)
        if n == 0:
            raise ValueError("taylor got no calibration batches")
        return {k: v / n for k, v in totals.items()}
