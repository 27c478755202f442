"""Least-squares reconstruction of a pruned network's layers (He, Zhang & Sun, "Channel Pruning for Accelerating
Very Deep Neural Networks", ICCV 2017; the LS half of AMC's environment).

Removing channel ``i`` of a group removes input channel ``i`` of every layer that
consumes the group. Each such layer is then refitted: its new weights ``W'`` solve

    min_W' ||X' W'^T - Y||^2 + ridge * ||W'||^2

where ``X'`` are the layer's input patches *in the pruned network* and ``Y`` the
original network's outputs of the same layer (pre-activation, before any norm
that follows it), at the same sampled positions. Layers are refitted in the
order the forward pass reaches them, each on inputs from the network with every
earlier layer already refitted, so later layers also compensate the error that
accumulates on the way (the paper's sequential scheme). The solve is in float64
on accumulated normal equations, so memory is ``d x d`` per layer whatever the
number of samples; a layer with a bias fits an intercept too.

Conv2d (grouped and depthwise: each group on its own channels) and Linear layers
(every token of a sequence input is a sample) are refitted; a layer called more
than once per forward pass, or with a padding this module does not reproduce
(``padding_mode`` other than zeros, ``padding="same"``), keeps its weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .criteria.base import batches as _batches

#: Positions sampled per image (per sequence) and layer, the reference's default (10 random points per image).
POSITIONS = 10


@dataclass(frozen=True)
class LayerFit:
    """What refitting one layer did, on its samples: relative squared output error before and after."""

    samples: int
    before: float
    after: float


class _Stop(Exception):
    """Raised in a hook to end a forward pass once the layer of interest has run."""


def reconstruct(
    original: nn.Module,
    pruned: nn.Module,
    indices: Mapping[str, Mapping[int, torch.Tensor]],
    calibration: Any,
    *,
    positions: int | None = POSITIONS,
    ridge: float = 1e-5,
    seed: int = 0,
) -> dict[str, LayerFit]:
    """Refit, in place, every Conv2d / Linear layer of ``pruned`` whose input channels were removed.

    Args:
        original: the unpruned model (left as it was).
        pruned: a model built from ``original`` with some channels removed (module names unchanged).
        indices: for every parameter that shrank, ``{dim: kept indices}``
            (:meth:`PruningSpace.parameter_indices`): which original output channels each layer kept.
        calibration: batches (``inputs`` or ``(inputs, targets)``), e.g. a few batches of training data.
        positions: sampled output positions per image (per sequence) and layer; None: every position.
        ridge: the ridge term, relative to the mean diagonal of ``X'^T X'``.
        seed: seeds the sampled positions.

    Returns:
        ``{layer name: LayerFit}`` for each layer refitted, in the order they were refitted.
    """
    if positions is not None and (not isinstance(positions, int) or positions < 1):
        raise ValueError(f"positions must be a positive integer or None (every position), got {positions!r}")
    if not ridge >= 0:
        raise ValueError(f"ridge must be >= 0, got {ridge!r}")
    data = [inputs for inputs, _ in _batches(calibration)]
    if not data:
        raise ValueError("reconstruction needs calibration batches: got an empty iterable")
    originals = dict(original.named_modules())
    candidates = {
        name: m
        for name, m in pruned.named_modules()
        if _supported(m) and 1 in indices.get(f"{name}.weight", {}) and type(originals.get(name)) is type(m)  # noqa: E721 - the same layer, not a subclass swapped in
    }
    if not candidates:
        return {}
    targets, order = _original_outputs(originals, candidates, indices, data, positions, seed)
    fits: dict[str, LayerFit] = {}
    was_training = [(m, m.training) for m in pruned.modules()]
    pruned.eval()
    try:
        for name in order:
            layer = list(candidates).index(name)  # seeds its positions, as in the original pass
            fits[name] = _refit(pruned, candidates[name], layer, data, targets[name], positions, seed, ridge)
    finally:
        for m, flag in was_training:
            m.training = flag
    return fits


def _supported(m: nn.Module) -> bool:
    if isinstance(m, nn.Linear):
        return True
    if isinstance(m, nn.Conv2d):
        return m.padding_mode == "zeros" and (not isinstance(m.padding, str) or m.padding == "valid")
    return False


def _padding(m: nn.Conv2d) -> tuple[int, int]:
    return (0, 0) if isinstance(m.padding, str) else tuple(m.padding)


def _positions(total: int, batch: int, positions: int | None, seed: int, layer: int, index: int) -> torch.Tensor:
    """``(batch, P)`` sampled positions out of ``total``, the same for the original and the pruned pass."""
    if positions is None or positions >= total:
        return torch.arange(total).expand(batch, total)
    g = torch.Generator().manual_seed(seed * 1_000_003 + layer * 7_919 + index)
    return torch.randint(total, (batch, positions), generator=g)


def _sample_outputs(m: nn.Module, out: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """The layer's outputs at the sampled positions, ``(samples, channels)``."""
    if isinstance(m, nn.Conv2d):
        b, n, _, w = out.shape
        rows, cols = where // w, where % w
        return out[torch.arange(b)[:, None], :, rows, cols].reshape(-1, n)
    flat = out.reshape(out.shape[0], -1, out.shape[-1]) if out.dim() > 2 else out[:, None]
    return flat[torch.arange(flat.shape[0])[:, None], where].reshape(-1, out.shape[-1])


def _sample_inputs(m: nn.Module, x: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """The layer's input patches at the sampled output positions, ``(samples, in features)`` ordered as the
    flattened weight's columns (channel-major, then kernel row, then column)."""
    if isinstance(m, nn.Linear):
        flat = x.reshape(x.shape[0], -1, x.shape[-1]) if x.dim() > 2 else x[:, None]
        return flat[torch.arange(flat.shape[0])[:, None], where].reshape(-1, x.shape[-1])
    (ph, pw), (sh, sw), (dh, dw), (kh, kw) = _padding(m), m.stride, m.dilation, m.kernel_size
    padded = F.pad(x, (pw, pw, ph, ph))
    out_w = (x.shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    rows, cols = (where // out_w) * sh, (where % out_w) * sw
    b = torch.arange(x.shape[0])[:, None]
    patches = [padded[b, :, rows + i * dh, cols + j * dw] for i in range(kh) for j in range(kw)]  # each (B, P, C)
    return torch.stack(patches, dim=-1).reshape(-1, x.shape[1] * kh * kw)


def _total_positions(m: nn.Module, shape: torch.Size) -> int:
    if isinstance(m, nn.Conv2d):
        return shape[2] * shape[3]
    return 1 if len(shape) == 2 else int(torch.Size(shape[1:-1]).numel())


def _original_outputs(
    originals: dict[str, nn.Module],
    candidates: dict[str, nn.Module],
    indices: Mapping[str, Mapping[int, torch.Tensor]],
    data: list[tuple],
    positions: int | None,
    seed: int,
) -> tuple[dict[str, list[torch.Tensor]], list[str]]:
    """One pass of the original model: each candidate's sampled outputs (its kept output channels) per batch, and
    the order the forward pass reaches the candidates (those called exactly once per pass)."""
    layer_of = {name: k for k, name in enumerate(candidates)}
    root = next(iter(originals.values()))
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in candidates}
    calls: dict[str, int] = {}
    order: list[str] = []
    state = {"batch": 0}

    def hook(name: str):  # noqa: ANN202
        def record(m: nn.Module, args: tuple, out: torch.Tensor) -> None:
            calls[name] = calls.get(name, 0) + 1
            if state["batch"] == 0 and name not in order:
                order.append(name)
            where = _positions(
                _total_positions(m, out.shape), out.shape[0], positions, seed, layer_of[name], state["batch"]
            )
            y = _sample_outputs(m, out.detach(), where.to(out.device))
            keep = indices.get(f"{name}.weight", {}).get(0)
            # float32 is the outputs' own precision (or more): stored so, solved in float64
            outputs[name].append((y if keep is None else y[:, keep.to(y.device)]).float())

        return record

    flags = [(m, m.training) for m in root.modules()]
    handles = [originals[name].register_forward_hook(hook(name)) for name in candidates]
    try:
        root.eval()
        with torch.no_grad():
            for k, inputs in enumerate(data):
                state["batch"] = k
                root(*inputs)
    finally:
        for h in handles:
            h.remove()
        for m, flag in flags:
            m.training = flag
    once = [name for name in order if calls.get(name) == len(data)]
    return outputs, once


def _refit(
    pruned: nn.Module,
    m: nn.Module,
    layer: int,
    data: list[tuple],
    targets: list[torch.Tensor],
    positions: int | None,
    seed: int,
    ridge: float,
) -> LayerFit:
    """Accumulate the normal equations of one layer over the batches (each pass stopped at the layer), solve them
    per conv group, and write the weights."""
    groups = m.groups if isinstance(m, nn.Conv2d) else 1
    n_out = m.weight.shape[0]
    per_group = m.weight[0].numel()  # inputs of one output channel: C_in/groups * kh * kw, or in_features
    bias = m.bias is not None
    d = per_group + bias
    gram = torch.zeros(groups, d, d, dtype=torch.float64, device=m.weight.device)
    cross = torch.zeros(groups, d, n_out // groups, dtype=torch.float64, device=m.weight.device)
    energy = torch.zeros((), dtype=torch.float64, device=m.weight.device)
    state = {"batch": 0, "samples": 0}

    def grab(module: nn.Module, args: tuple) -> None:
        x = args[0].detach()
        y = targets[state["batch"]]
        total = _total_positions(module, _output_shape(module, x))
        where = _positions(total, x.shape[0], positions, seed, layer, state["batch"])
        xs = _sample_inputs(module, x, where.to(x.device)).double().reshape(-1, groups, per_group)
        if bias:
            xs = torch.cat([xs, xs.new_ones(xs.shape[0], groups, 1)], dim=2)
        ys = y.double().reshape(-1, groups, n_out // groups)
        gram.add_(torch.einsum("ngi,ngj->gij", xs, xs))
        cross.add_(torch.einsum("ngi,ngo->gio", xs, ys))
        energy.add_((ys * ys).sum())
        state["samples"] += xs.shape[0]
        raise _Stop

    handle = m.register_forward_pre_hook(grab)
    try:
        with torch.no_grad():
            for k, inputs in enumerate(data):
                state["batch"] = k
                try:
                    pruned(*inputs)
                except _Stop:
                    pass
    finally:
        handle.remove()
    with torch.no_grad():
        w = m.weight.reshape(groups, n_out // groups, per_group).transpose(1, 2).double()  # (g, d, out/g)
        if bias:
            w = torch.cat([w, m.bias.reshape(groups, 1, n_out // groups).double()], dim=1)
        scale = torch.diagonal(gram[:, :per_group, :per_group], dim1=1, dim2=2).mean(dim=1).clamp_min(1e-12)
        reg = torch.zeros(groups, d, d, dtype=torch.float64, device=gram.device)
        reg[:, torch.arange(per_group), torch.arange(per_group)] = (ridge * scale)[:, None]
        solved = torch.linalg.solve(gram + reg, cross)

        def error(v: torch.Tensor) -> float:  # ||X v - Y||^2 / ||Y||^2 from the normal equations
            sq = (v * (gram @ v)).sum() - 2 * (v * cross).sum() + energy
            return float(sq.clamp_min(0) / energy.clamp_min(1e-30))

        before, after = error(w), error(solved)
        if after > before:  # can only happen through the ridge term on ill-posed samples: keep what was there
            solved, after = w, before
        weights = solved[:, :per_group].transpose(1, 2).reshape(m.weight.shape)
        m.weight.copy_(weights.to(m.weight.dtype))
        if bias:
            m.bias.copy_(solved[:, per_group].reshape(-1).to(m.bias.dtype))
    return LayerFit(state["samples"], before, after)


def _output_shape(m: nn.Module, x: torch.Tensor) -> torch.Size:
    if isinstance(m, nn.Linear):
        return torch.Size((*x.shape[:-1], m.out_features))
    (ph, pw), (sh, sw), (dh, dw), (kh, kw) = _padding(m), m.stride, m.dilation, m.kernel_size
    h = (x.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    w = (x.shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    return torch.Size((x.shape[0], m.out_channels, h, w))
