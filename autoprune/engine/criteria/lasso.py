"""LASSO channel selection (He, Zhang & Sun, "Channel Pruning for Accelerating Very Deep Neural Networks", ICCV 2017).

A group's channels are judged by what they contribute to the layers that consume
them. On calibration batches (sampled positions, as :mod:`~autoprune.engine.reconstruct`),
channel ``i`` contributes ``Z_i = X_i W_i^T`` to a consumer's output; the paper
chooses the channels to keep by

    min_beta  1/2 || sum_i Z_i - sum_i beta_i Z_i ||^2 + lambda * ||beta||_1

raising ``lambda`` until at most ``c'`` coefficients are non-zero. That needs ``c'``;
a criterion scores every channel once, for any plan, so here the whole LASSO path
is traced from ``lambda_max`` (every ``beta`` zero) down, and a channel's score is
the ``lambda`` at which it enters: keeping the top ``c'`` scores keeps the channels
active where ``c'`` of them first are (the paper's selection, up to channels that
leave the path again). Consumers are normalised by their output energy, so a group
that feeds several layers (a residual stream) weighs each the same. The inputs
``X`` come from the unpruned model; reconstruction (``apply(..., reconstruct=)``)
then refits the kept weights on the pruned network's own inputs, as the paper's
second step. A group no Conv2d / Linear layer consumes is scored by the L1 norm of
its filters.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ..groups import ChannelGroup, Member
from ..reconstruct import POSITIONS, _positions, _sample_inputs, _supported, _total_positions
from .base import Criterion, batches, named_tensors, weight_scores

#: Work per chunk of samples when contributions are formed: samples x channels x outputs.
CHUNK = 1 << 22


class Lasso(Criterion):
    """He et al.'s LASSO selection, as the entry order along the LASSO path (see the module docstring).

    Args:
        positions: sampled positions per image (per sequence) and consumer layer.
        steps: points on the geometric ``lambda`` path, from ``lambda_max`` down to ``1e-4 lambda_max``.
        seed: seeds the sampled positions.
    """

    name = "lasso"
    needs_data = True

    def __init__(self, positions: int | None = POSITIONS, steps: int = 60, seed: int = 0) -> None:
        if steps < 2:
            raise ValueError(f"steps must be at least 2, got {steps!r}")
        self.positions, self.steps, self.seed = positions, steps, seed

    def scores(self, groups: Sequence[ChannelGroup], model: nn.Module, calibration: Any = None):
        modules = dict(model.named_modules())
        consumers = {g.name: [m for m in g.members if _consumes(m, modules)] for g in groups}
        watched = {m.module for ms in consumers.values() for m in ms}
        grams: dict[tuple[str, str], torch.Tensor] = {}
        tensors = named_tensors(model)
        state = {"batch": 0}
        order = {name: k for k, name in enumerate(sorted(watched))}

        def hook(name: str):  # noqa: ANN202
            def collect(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
                x = args[0].detach()
                where = _positions(
                    _total_positions(module, out.shape),
                    x.shape[0],
                    self.positions,
                    self.seed,
                    order[name],
                    state["batch"],
                )
                patches = _sample_inputs(module, x, where.to(x.device)).double()  # (samples, in * kh * kw)
                weight = tensors[f"{name}.weight"].detach().double().reshape(module.weight.shape[0], -1)
                for g in groups:
                    for m in consumers[g.name]:
                        if m.module == name:
                            key = (g.name, name)
                            gram = _contribution_gram(patches, weight, _columns(m, module, g.channels))
                            grams[key] = grams[key] + gram if key in grams else gram

            return collect

        flags = [(m, m.training) for m in model.modules()]
        handles = [modules[name].register_forward_hook(hook(name)) for name in watched]
        count = 0
        try:
            model.eval()
            with torch.no_grad():
                for k, (inputs, _) in enumerate(batches(calibration)):
                    state["batch"] = k
                    model(*inputs)
                    count += 1
        finally:
            for h in handles:
                h.remove()
            for m, flag in flags:
                m.training = flag
        if count == 0:
            raise ValueError("lasso got no calibration batches")
        out = {}
        fallback = [g for g in groups if not any((g.name, m.module) in grams for m in consumers[g.name])]
        if fallback:
            out.update(weight_scores(fallback, model, lambda rows: rows.abs().sum(1)))
        for g in groups:
            if g in fallback:
                continue
            total = torch.zeros(g.channels, g.channels, dtype=torch.float64)
            for m in consumers[g.name]:
                gram = grams.get((g.name, m.module))
                if gram is not None:
                    energy = gram.sum()  # || sum_i Z_i ||^2: the consumer's output energy from this group
                    total += gram.cpu() / energy if energy > 0 else gram.cpu()
            out[g.name] = self._entry_order(total)
        return out

    def _entry_order(self, gram: torch.Tensor) -> torch.Tensor:
        """The ``lambda`` at which each coefficient first becomes non-zero along the path (as a fraction of
        ``lambda_max``; 0 for one that never does), plus a tie-break by the channel's own contribution."""
        c = gram.shape[0]
        b = gram.sum(1)  # target sum_i Z_i: <Z_i, sum_j Z_j>
        lam_max = float(b.abs().max())
        own = torch.diagonal(gram).clamp_min(0).sqrt()
        tie = 1e-9 * own / own.max().clamp_min(1e-30)
        if lam_max <= 0:
            return tie
        lipschitz = float(torch.linalg.eigvalsh(gram)[-1].clamp_min(1e-30))
        entered = torch.zeros(c, dtype=torch.float64)
        beta = torch.zeros(c, dtype=torch.float64)
        previous, correlation = lam_max, b.abs()
        for lam in torch.logspace(0, -4, self.steps, dtype=torch.float64)[1:] * lam_max:
            beta = _fista(gram, b, float(lam), lipschitz, beta)
            new = (beta.abs() > 0) & (entered == 0)
            # Entered between `previous` and `lam`: the closer |b - G beta| was to `previous`, the earlier (a
            # factor below the path's step, so the order between steps is kept).
            entered[new] = float(lam) / lam_max * (1 + 1e-3 * correlation[new] / previous)
            if bool((entered > 0).all()):
                break
            previous, correlation = float(lam), (b - gram @ beta).abs()
        return entered + tie


def _consumes(m: Member, modules: dict[str, nn.Module]) -> bool:
    """The member is the input dim of a Conv2d (ungrouped) or Linear layer's weight."""
    layer = modules.get(m.module)
    if layer is None or m.param != f"{m.module}.weight" or m.dim != 1 or not _supported(layer):
        return False
    return not isinstance(layer, nn.Conv2d) or layer.groups == 1


def _columns(m: Member, layer: nn.Module, channels: int) -> torch.Tensor:
    """``(channels, k)``: the flattened weight columns (and patch columns) each of the group's channels owns."""
    width = layer.weight.shape[1]
    rows = m.rows if m.rows is not None else torch.arange(width)[:, None]
    rows = rows.reshape(channels, -1)
    kernel = layer.weight[0, 0].numel() if isinstance(layer, nn.Conv2d) else 1
    return (rows[:, :, None] * kernel + torch.arange(kernel)).reshape(channels, -1)


def _contribution_gram(patches: torch.Tensor, weight: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """``G[i, j] = <Z_i, Z_j>`` summed over samples, ``Z_i = patches[:, cols_i] @ weight[:, cols_i]^T``."""
    channels, k = columns.shape
    x = patches[:, columns.flatten()].reshape(-1, channels, k)
    w = weight[:, columns.flatten()].reshape(-1, channels, k)  # (outputs, channels, k)
    chunk = max(1, CHUNK // max(1, channels * w.shape[0]))
    gram = torch.zeros(channels, channels, dtype=torch.float64, device=patches.device)
    for start in range(0, x.shape[0], chunk):
        z = torch.einsum("nck,ock->nco", x[start : start + chunk], w)
        gram += torch.einsum("nco,ndo->cd", z, z)
    return gram


def _fista(gram: torch.Tensor, b: torch.Tensor, lam: float, lipschitz: float, start: torch.Tensor) -> torch.Tensor:
    """argmin 1/2 beta^T G beta - b^T beta + lam ||beta||_1 by accelerated proximal gradient, from ``start``."""
    beta, y, t = start.clone(), start.clone(), 1.0
    step = 1.0 / lipschitz
    for _ in range(500):
        grad = gram @ y - b
        z = y - step * grad
        new = torch.sign(z) * (z.abs() - step * lam).clamp_min(0)
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        y = new + ((t - 1) / t_next) * (new - beta)
        done = float((new - beta).abs().max()) <= 1e-9 * max(1.0, float(new.abs().max()))
        beta, t = new, t_next
        if done:
            break
    return beta
