"""Level pruning: unstructured magnitude pruning of individual weights (Han et al., "Learning both Weights and
Connections", NeurIPS 2015; NNI's ``LevelPruner``), during training.

Unlike every other method here it removes no channel: the network keeps its shape and its MACs, and ends with
masks. The plan gives element sparsities per layer — ``{"layer1.0.conv1": 0.8, "fc": 0.5}`` (the layer's
``weight``; Conv and Linear layers, any with a weight of two or more dimensions) — or one number, a sparsity for
all of them. ``scope="layer"`` zeroes exactly that fraction of each layer's smallest-magnitude weights;
``scope="global"`` ranks all the listed weights together (one threshold; small layers may lose more). Pruning
follows AGP's cubic schedule over [``start``, ``end``] (``schedule="agp"``) or happens once before training
(``"one_shot"``); masks are HARD, so a pruned weight stays zero.

``pattern="2:4"`` (any ``"N:M"``) prunes semi-structured instead: of every M consecutive weights along a layer's
input dimension (a Conv's input channels, at each kernel position) the N largest in magnitude stay, the sparsity
NVIDIA's Ampere and later tensor cores run at twice the dense rate for 2:4 (Mishra et al., "Accelerating Sparse
Deep Neural Networks", 2021). As in that paper's recipe the pattern is set once, on the trained weights, and the
network is retrained with it fixed (``schedule`` is ``"one_shot"``); the plan lists the layers, each at the
pattern's sparsity 1 − N/M. :func:`to_semi_structured` turns such Linear layers into
``torch.sparse.SparseSemiStructuredTensor`` weights on a CUDA GPU.

:meth:`Level.finalize` returns the trained network with the masks attached the way ``torch.nn.utils.prune`` does
(``weight_orig`` and ``weight_mask`` in the state dict; the forward pass multiplies them), loadable into the same
architecture with :func:`load_masked`; :func:`to_sparse_csr` / :func:`load_sparse_csr` store the pruned weights as
``torch.sparse_csr`` tensors instead (a smaller file at high sparsity; a CPU gets no faster below very high
sparsity).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from ..utils import did_you_mean
from .agp import check_window, cubic, events
from .base import Keep, Method


class Level(Method):
    """Options: ``scope`` ("layer" or "global"), ``schedule`` ("agp" or "one_shot"; default "agp", "one_shot"
    with a pattern), ``start``, ``end`` and ``frequency`` (AGP's window and spacing, as
    :class:`~autoprune.training.agp.AGP`), ``pattern`` (None for unstructured, or "N:M", e.g. "2:4")."""

    name = "level"
    structured = False
    state_keys = ("step", "_masks")

    def __init__(
        self,
        space: Any,
        plan: Mapping[str, float] | float,
        *,
        scope: str = "layer",
        schedule: str | None = None,
        start: float = 0.0,
        end: float = 0.5,
        frequency: int | None = None,
        pattern: str | None = None,
        **kw: Any,
    ) -> None:
        self.pattern = parse_pattern(pattern)
        if schedule is None:
            schedule = "agp" if self.pattern is None else "one_shot"
        if self.pattern is not None and (schedule != "one_shot" or scope != "layer"):
            raise ValueError(
                f"level: an {pattern} pattern is set once on the trained weights and kept while the network "
                "retrains (schedule='one_shot', scope='layer'); it has no gradual or global form"
            )
        if scope not in ("layer", "global"):
            raise ValueError(f"level's scope must be 'layer' or 'global', got {scope!r}")
        if schedule not in ("agp", "one_shot"):
            raise ValueError(f"level's schedule must be 'agp' or 'one_shot', got {schedule!r}")
        check_window("level", start, end, frequency)
        layers = prunable_layers(space.model)
        if isinstance(plan, (int, float)) and not isinstance(plan, bool):  # every layer that can take it
            group = self.pattern[1] if self.pattern else 1
            fits = [n for n in layers if space.model.get_submodule(n).weight.shape[1] % group == 0]
            plan = {name: float(plan) for name in fits}
        if not isinstance(plan, Mapping) or not plan:
            raise ValueError("level's plan maps layer names to element sparsities, or is one number for all layers")
        for layer, sparsity in plan.items():
            if layer not in layers:
                raise ValueError(
                    f"level: {layer!r} is not a layer with a weight to prune.{did_you_mean(layer, layers)} "
                    f"Layers: {', '.join(layers[:8])}{', ...' if len(layers) > 8 else ''}"
                )
            if not (isinstance(sparsity, (int, float)) and 0 <= sparsity < 1):
                raise ValueError(f"level: the sparsity of {layer!r} must be a number in [0, 1), got {sparsity!r}")
            if self.pattern is not None:
                check_pattern(layer, space.model.get_submodule(layer).weight, self.pattern, sparsity)
        super().__init__(space, {}, **kw)  # no channel is removed
        self.sparsity = {f"{layer}.weight": float(s) for layer, s in plan.items()}
        self.scope, self.schedule = scope, schedule
        self.events = events(self.total_steps, start, end, frequency) if schedule == "agp" else {}
        if schedule == "one_shot":
            self._masks = self.magnitude_masks(self.model, 1.0)
            self.apply_masks(self.model)

    def magnitude_masks(
        self, model: nn.Module, share: float, pruned: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """0/1 masks zeroing ``share`` of each layer's planned sparsity, on the smallest |w|, the weights that
        ``pruned`` (the current masks by default) already zeroes first, so that a mask only grows."""
        pruned = self._masks if pruned is None else pruned
        params = dict(model.named_parameters())
        if self.pattern is not None:
            return {name: pattern_mask(params[name], *self.pattern) for name in self.sparsity}
        score = {}
        for name in self.sparsity:
            w = params[name].detach().abs().float()
            if name in pruned:
                w = torch.where(pruned[name] > 0, w, torch.full_like(w, -1.0))
            score[name] = w
        out = {}
        if self.scope == "global":
            flat = torch.cat([score[n].flatten() for n in self.sparsity])
            target = sum(self.sparsity[n] * score[n].numel() for n in self.sparsity) / flat.numel()
            k = int(round(target * share * flat.numel()))
            ranked = torch.zeros(flat.numel(), dtype=torch.bool)
            ranked[torch.argsort(flat, stable=True)[:k]] = True
            offset = 0
            for n in self.sparsity:
                size = score[n].numel()
                out[n] = (~ranked[offset : offset + size]).view_as(score[n]).to(params[n].dtype)
                offset += size
            return out
        for n, s in self.sparsity.items():
            flat = score[n].flatten()
            k = int(round(s * share * flat.numel()))
            mask = torch.ones(flat.numel(), dtype=params[n].dtype)
            mask[torch.argsort(flat, stable=True)[:k]] = 0
            out[n] = mask.view_as(score[n])
        return out

    def on_step(self, model: nn.Module, step: int) -> Keep | None:
        tau = self.events.get(step)
        if tau is not None:
            self._masks = self.magnitude_masks(model, cubic(tau))
        return None  # no channel is removed: the masks are set here, and applied by after_step

    def set_keep(self, keep: Keep) -> None:  # masks are elementwise, restored as they are
        self.keep = {}

    def final_keep(self, model: nn.Module) -> Keep:
        return {}

    def finalize(self, model: nn.Module | None = None) -> nn.Module:
        """The trained network with its masks attached (``torch.nn.utils.prune``'s form; see the module)."""
        model = self.model if model is None else model
        if not self._masks:  # finalized before the schedule ran: the full sparsity at once
            self._masks = self.magnitude_masks(model, 1.0)
        self.apply_masks(model)
        modules = dict(model.named_modules())
        for name, mask in self._masks.items():
            prune.custom_from_mask(modules[name.rsplit(".", 1)[0]], "weight", mask.bool())
        return model

    def one_shot(self) -> nn.Module:
        """The original network with every layer's planned sparsity zeroed at once (on its own weights alone,
        whatever the training has masked since)."""
        copy_ = copy.deepcopy(self.space.model)
        masks = self.magnitude_masks(copy_, 1.0, pruned={})
        with torch.no_grad():
            for name, p in copy_.named_parameters():
                if name in masks:
                    p.mul_(masks[name])
        return copy_


def parse_pattern(pattern: str | None) -> tuple[int, int] | None:
    """``"N:M"`` as ``(N, M)`` (0 < N < M), or None."""
    if pattern is None:
        return None
    try:
        n, m = (int(part) for part in str(pattern).split(":"))
    except ValueError:
        n = m = 0
    if not 0 < n < m:
        raise ValueError(f"level's pattern must be 'N:M' with 0 < N < M, e.g. '2:4'; got {pattern!r}")
    return n, m


def check_pattern(layer: str, weight: torch.Tensor, pattern: tuple[int, int], sparsity: float) -> None:
    n, m = pattern
    if abs(sparsity - (1 - n / m)) > 1e-9:
        raise ValueError(
            f"level: an {n}:{m} pattern zeroes {1 - n / m:g} of every layer it prunes; the plan gives {layer!r} "
            f"{sparsity!r} (list the layers to prune at {1 - n / m:g}, or give that one number)"
        )
    if weight.shape[1] % m:
        raise ValueError(
            f"level: {layer!r} has {weight.shape[1]} inputs, not a multiple of {m}, so its weights cannot be cut "
            f"into groups of {m} for an {n}:{m} pattern; leave it out of the plan"
        )


def pattern_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """The 0/1 mask keeping the ``n`` largest |w| of every ``m`` consecutive weights along the input dimension
    (dim 1; for a Conv, along the input channels at each kernel position)."""
    w = weight.detach().abs().float().movedim(1, -1)  # (out, *kernel, in): groups run along the inputs
    groups = w.reshape(-1, m)
    mask = torch.zeros_like(groups).scatter_(1, groups.topk(n, dim=1).indices, 1.0)
    return mask.reshape(w.shape).movedim(-1, 1).to(weight.dtype)


def to_semi_structured(model: nn.Module, dtype: torch.dtype = torch.float16) -> nn.Module:
    """Give every Linear layer of ``model`` whose weight is 2:4 sparse (e.g. from ``level`` with
    ``pattern="2:4"``, finalized) a ``torch.sparse.SparseSemiStructuredTensor`` weight, so its matrix products
    run on the GPU's sparse tensor cores; ``model`` must be on a CUDA device, and is cast to ``dtype`` first
    (float16 or bfloat16). Masks are folded into the weights. Other layers stay dense, and so does a 2:4 layer
    whose shape the kernels cannot take (see :func:`semi_structured_unfit`; a warning names each, e.g. a
    10-class head). The weights go to cuSPARSELt where this PyTorch has it, else to CUTLASS. The result is for
    inference: save the dense (masked) network, and convert after loading it."""
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"semi-structured weights are float16 or bfloat16 here, got dtype={dtype}")
    device = next(model.parameters()).device
    if device.type != "cuda":
        raise ValueError(
            f"semi-structured (2:4) weights run on CUDA GPUs only (NVIDIA Ampere or later); the model is on "
            f"{device}: move it with model.cuda() first, or keep the masked dense weights on a CPU"
        )
    backend = semi_structured_backend()
    fit, dense = semi_structured_layers(model, dtype, backend)
    reasons = "; ".join(f"{n}: {why}" for n, why in dense.items())
    if not fit:
        raise ValueError(
            "no Linear layer of the model can be made semi-structured: "
            + (reasons or "none has 2:4 sparse weights; prune with level's pattern='2:4'")
        )
    if dense:
        warnings.warn(f"left dense (2:4 sparse, but a shape the kernels cannot take): {reasons}", stacklevel=2)
    fold_masks(model).to(dtype)
    modules = dict(model.named_modules())
    for name in fit:
        weight = backend.from_dense(modules[name].weight.detach().contiguous())
        modules[name].weight = nn.Parameter(weight, requires_grad=False)
    return model


def semi_structured_layers(model: nn.Module, dtype: torch.dtype, backend: type) -> tuple[list[str], dict[str, str]]:
    """The Linear layers whose (masked) weights are 2:4 sparse: those ``backend`` can take at ``dtype``, and the
    others with the reason (:func:`semi_structured_unfit`). Runs anywhere; the model is not changed."""
    fit, dense = [], {}
    for name, module in refresh_masked(model).named_modules():
        if isinstance(module, nn.Linear) and follows_pattern(module.weight):
            why = semi_structured_unfit(module.weight.shape, dtype, backend)
            if why:
                dense[name] = why
            else:
                fit.append(name)
    return fit, dense


def fold_masks(model: nn.Module) -> nn.Module:
    """Make every masked layer's weight a plain parameter with its zeros (``torch.nn.utils.prune.remove``)."""
    for module in masked_layers(model):
        prune.remove(module, "weight")
    return model


def semi_structured_backend() -> type:
    """The ``SparseSemiStructuredTensor`` subclass this PyTorch converts to: cuSPARSELt where it was built with
    it (``torch.sparse.to_sparse_semi_structured``'s default), else CUTLASS."""
    from torch.sparse import SparseSemiStructuredTensorCUSPARSELT, SparseSemiStructuredTensorCUTLASS

    if torch.backends.cusparselt.is_available():
        return SparseSemiStructuredTensorCUSPARSELT
    return SparseSemiStructuredTensorCUTLASS


def semi_structured_unfit(shape: tuple[int, ...], dtype: torch.dtype, backend: type) -> str | None:
    """Why a weight of ``shape`` and ``dtype`` cannot be a ``backend`` semi-structured tensor (its rows and
    columns must each be a multiple of the backend's minimum for the dtype, from PyTorch's own table), or
    None when it can."""
    limits = backend._DTYPE_SHAPE_CONSTRAINTS.get(dtype)
    if limits is None:
        return f"{backend.__name__} has no {dtype} kernels"
    rows, cols = shape
    if rows % limits.sparse_min_rows or cols % limits.sparse_min_cols:
        return (
            f"its weight is {rows} x {cols}; {backend.__name__} needs rows a multiple of {limits.sparse_min_rows} "
            f"and columns a multiple of {limits.sparse_min_cols} for {dtype}"
        )
    return None


def follows_pattern(weight: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    """Whether at most ``n`` of every ``m`` consecutive weights along the input dimension are non-zero (the
    grouping of :func:`pattern_mask`)."""
    if weight.dim() < 2 or weight.shape[1] % m:
        return False
    groups = weight.detach().movedim(1, -1).reshape(-1, m)
    return bool(((groups != 0).sum(dim=1) <= n).all())


def prunable_layers(model: nn.Module) -> list[str]:
    """The modules whose ``weight`` has two or more dimensions (Conv, Linear and the like), in model order."""
    return [
        name
        for name, m in model.named_modules()
        if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() >= 2 and name
    ]


def sparsity(model: nn.Module) -> dict[str, float]:
    """The fraction of zero weights of every prunable layer."""
    modules = dict(model.named_modules())
    return {name: float((modules[name].weight == 0).float().mean()) for name in prunable_layers(model)}


def load_masked(model: nn.Module, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """Load a state dict written from :meth:`Level.finalize`'s network (``weight_orig`` + ``weight_mask``) into
    ``model``, the same architecture unpruned: the masks are attached as ``torch.nn.utils.prune`` does."""
    modules = dict(model.named_modules())
    for key in state:
        if key.endswith(".weight_mask"):
            layer = key[: -len(".weight_mask")]
            if layer not in modules:
                raise ValueError(f"the state dict masks {layer!r}, which this model does not have")
            prune.identity(modules[layer], "weight")
    model.load_state_dict(state)
    return refresh_masked(model)


def masked_layers(model: nn.Module) -> list[nn.Module]:
    """The modules whose own ``weight`` carries a ``torch.nn.utils.prune`` mask (``prune.is_pruned`` is true of
    their containers too)."""
    return [m for m in model.modules() if "weight_orig" in m._parameters and hasattr(m, "weight_mask")]


def refresh_masked(model: nn.Module) -> nn.Module:
    """Set every masked layer's ``weight`` to ``weight_orig × weight_mask`` now, as ``torch.nn.utils.prune`` does
    only at the next forward pass (after loading a state dict, ``weight`` still holds the values from before)."""
    for module in masked_layers(model):
        module.weight = module.weight_orig * module.weight_mask
    return model


def to_sparse_csr(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every pruned weight (zeros applied) as a ``torch.sparse_csr`` tensor of its ``(out, -1)`` matrix, keyed by
    parameter name, with ``shape`` entries to restore it; the other parameters and buffers as they are."""
    out: dict[str, Any] = {}
    masked = {name.rsplit(".", 1)[0] for name, _ in model.named_buffers() if name.endswith(".weight_mask")}
    for name, value in model.state_dict().items():
        layer, _, leaf = name.rpartition(".")
        if layer in masked and leaf in ("weight_orig", "weight_mask"):
            continue
        out[name] = value
    modules = dict(model.named_modules())
    for layer in masked:
        weight = modules[layer].weight.detach()
        with warnings.catch_warnings():  # "sparse CSR support is in beta": the layout is what is asked for
            warnings.simplefilter("ignore", UserWarning)
            out[f"{layer}.weight"] = weight.reshape(weight.shape[0], -1).to_sparse_csr()
        out[f"{layer}.weight.shape"] = torch.tensor(weight.shape)
    return out


def load_sparse_csr(model: nn.Module, tensors: Mapping[str, torch.Tensor]) -> nn.Module:
    """Load :func:`to_sparse_csr`'s tensors into ``model`` (the same architecture, unpruned) as dense weights."""
    state = {}
    for name, value in tensors.items():
        if name.endswith(".weight.shape"):
            continue
        if value.layout == torch.sparse_csr:
            value = value.to_dense().reshape(torch.Size(tensors[f"{name}.shape"].tolist()))
        state[name] = value
    model.load_state_dict(state)
    return model
