"""What every training-aware method shares: the plan's final channel counts, channel masks, the hooks a user's
training loop calls, and the physical removal at the end.

A method trains a full-size copy of the space's model (``method.model``) and ends, in :meth:`Method.finalize`,
with a network physically smaller at exactly the plan (the same MACs and parameters as ``space.apply(plan)``).
Masks are a training-time device only:

- HARD masks (AGP, Taylor, IMP, the hard phase of ADMM and Slimming): a pruned channel's parameters are zero
  after every optimiser step, its gradients are zeroed before the step, and so is the optimiser's state for it
  (momentum, Adam's moments), so neither momentum nor weight decay moves it again.
- SOFT masks (SFP, FPGM): a pruning event zeroes the weights in place and training goes on with full gradients,
  so a zeroed filter can grow back.

A channel is masked in *every* parameter along its channel dimension: the producing layer's filter and bias, the
norm layer's scale and shift (so the channel's output is exactly zero, not BatchNorm's constant β − γμ/σ) and the
consumers' input columns. Removing the masked channels therefore leaves the masked model's outputs unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from ..engine import PruningSpace
from ..engine.criteria.base import get_criterion
from ..utils import did_you_mean

#: Registered methods by name (filled by subclasses setting ``name``).
METHODS: dict[str, type[Method]] = {}

Keep = dict[str, torch.Tensor]  # group name -> the sorted indices of the channels it keeps


class Method:
    """Base class of the training-aware methods.

    Construct with the space, the plan (group name -> sparsity, from any strategy or written by hand) and the
    number of optimiser steps the training will take; then train ``self.model`` in a loop that calls
    :meth:`before_step` between ``loss.backward()`` and ``optimizer.step()`` and :meth:`after_step` right after
    it, and call :meth:`finalize` at the end::

        method = ap.training.get("agp", space, plan, total_steps=1000)
        model = method.model
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        for step, (x, y) in enumerate(batches):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            method.before_step(model, optimizer)
            optimizer.step()
            method.after_step(model, optimizer)
        pruned = method.finalize(model)  # physically smaller, exactly at the plan

    Subclasses set ``name`` and override :meth:`on_step` (the schedule: return new masks or None), and optionally
    :meth:`regularise` (gradients of a penalty added before the step) and :meth:`final_keep`.
    """

    name: ClassVar[str] = ""
    #: HARD masks hold pruned channels at zero between events; SOFT masks only zero them at events.
    hard: ClassVar[bool] = True
    #: The method ends physically smaller at the plan (False: Level, which ends with masks on a dense network).
    structured: ClassVar[bool] = True
    #: The attributes that change during training: what a checkpoint saves (see :meth:`state_dict`).
    state_keys: ClassVar[tuple[str, ...]] = ("step", "keep")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            METHODS[cls.name] = cls

    def __init__(
        self,
        space: PruningSpace,
        plan: Mapping[str, float],
        *,
        total_steps: int,
        criterion: Any = "l1",
        calibration: Any = None,
        keep: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(total_steps, int) or isinstance(total_steps, bool) or total_steps < 1:
            raise ValueError(
                f"total_steps must be a positive integer (the optimiser steps of the training), got {total_steps!r}"
            )
        self.space = space
        self.plan = dict(plan)
        counts = space.kept_counts(self.plan)  # checks the plan's group names and values against this model
        self.sizes = {g.name: g.channels for g in space.groups}  # every group's full width
        self.target = {g.name: int(k) for g, k in zip(space.groups, counts) if k < g.channels}
        self.total_steps = total_steps
        self.criterion = get_criterion(criterion)
        self.calibration = calibration
        if self.criterion.needs_data and calibration is None:
            raise ValueError(f"criterion {self.criterion.name!r} scores channels on data: pass calibration=batches")
        self.step = 0
        #: The steps where a new phase of training starts (a trainer restarts its learning-rate schedule there).
        self.restarts = [0]
        self.keep: Keep = {}  # the current masks' kept channels (groups not named keep all of theirs)
        self._masks: dict[str, torch.Tensor] = {}
        #: The channels the network had before this training (``keep=``: it was pruned before and is carried at
        #: full size); the others are held at zero from the first step and never come back.
        self.alive: Keep = self._alive(keep or {})
        self.model = self.prepare()
        if self.alive:
            self.set_keep(dict(self.alive))
            self.apply_masks(self.model)

    def _alive(self, keep: Mapping[str, Any]) -> Keep:
        alive: Keep = {}
        counts = dict(zip((g.name for g in self.space.groups), self.space.kept_counts(self.plan)))
        for name, idx in keep.items():
            if name not in self.sizes:
                raise KeyError(f"keep names unknown group {name!r}.{did_you_mean(name, self.sizes)}")
            idx = torch.sort(torch.as_tensor(idx, dtype=torch.long).flatten()).values
            if int(counts[name]) > idx.numel():
                raise ValueError(
                    f"the plan keeps {int(counts[name])} channels of group {name!r}, but the network has only "
                    f"{idx.numel()} left (keep=): a plan for a network pruned before must prune it further"
                )
            alive[name] = idx
        return alive

    # -- what a subclass provides ---------------------------------------------------------------------------
    def prepare(self) -> nn.Module:
        """The network to train (a full-size copy of the space's model; never the space's own)."""
        import copy

        return copy.deepcopy(self.space.model)

    def on_step(self, model: nn.Module, step: int) -> Keep | None:
        """After optimiser step ``step`` (0-based): the new kept channels when a pruning event falls here."""
        return None

    def regularise(self, model: nn.Module) -> None:
        """Add a penalty's gradients to ``model``'s ``.grad`` (called before the optimiser step)."""

    def final_keep(self, model: nn.Module) -> Keep:
        """The channels the final network keeps: exactly the plan's counts (the current masks when they match)."""
        if all(int(self.keep.get(g, torch.empty(0)).numel()) == k for g, k in self.target.items()):
            return dict(self.keep)
        return self.select(model, self.target)

    def one_shot(self) -> nn.Module:
        """The plan applied at once, before any training: what the training is compared with."""
        return self.space.apply(self.plan, self.criterion, calibration=self.calibration)

    # -- the hooks --------------------------------------------------------------------------------------------
    def before_step(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Between ``backward()`` and ``optimizer.step()``: add the regulariser's gradients; under HARD masks zero
        the pruned channels' gradients."""
        self.regularise(model)
        if self.hard and self._masks:
            params = dict(model.named_parameters())
            for name in self._masks:
                grad = params[name].grad
                if grad is not None:
                    grad.mul_(self.mask_for(name, params[name]))

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Right after ``optimizer.step()``: run the schedule (new masks at a pruning event), then apply the
        masks to the weights (always under HARD masks, at events under SOFT ones) and to the optimiser's state."""
        keep = self.on_step(model, self.step)
        self.step += 1
        if keep is not None:
            self.set_keep(keep)
        if self._masks and (self.hard or keep is not None):
            self.apply_masks(model, optimizer if self.hard else None)  # SOFT: the weights only

    def finalize(self, model: nn.Module | None = None) -> nn.Module:
        """The trained network with the pruned channels physically removed, at exactly the plan's counts."""
        model = self.model if model is None else model
        keep = self.final = self.final_keep(model)
        return self.space.over(model.state_dict()).build(keep)

    # -- checkpoints --------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The method's training state (:attr:`state_keys`: tensors, numbers and dicts of them), for a checkpoint
        beside the model's and the optimiser's; loadable with ``torch.load(..., weights_only=True)``."""
        return {key: getattr(self, key) for key in self.state_keys}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s state (into a method constructed with the same arguments)."""
        missing = set(self.state_keys) - set(state)
        if missing:
            raise ValueError(f"{self.name} checkpoint state lacks {sorted(missing)}")
        for key in self.state_keys:
            setattr(self, key, state[key])
        self.set_keep(dict(self.keep))  # the masks follow from the kept channels (and, for SOFT ones, the step)

    # -- helpers for subclasses -------------------------------------------------------------------------------
    def scores(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The criterion's per-channel scores of every group the plan prunes, on ``model``'s current weights."""
        groups = [g for g in self.space.groups if g.name in self.target]
        return self.criterion.scores(groups, model, self.calibration)

    def counts_at(self, share: float) -> dict[str, int]:
        """Each pruned group's kept count once ``share`` (in [0, 1]) of its plan's removal is done:
        C_g − round((C_g − K_g)·share), from the full width at 0 to exactly the plan's K_g at 1."""
        share = min(max(share, 0.0), 1.0)
        return {g: self.sizes[g] - int(round((self.sizes[g] - k) * share)) for g, k in self.target.items()}

    def select(self, model: nn.Module, counts: Mapping[str, int], survivors_only: bool = True) -> Keep:
        """Keep ``counts[g]`` channels per group by the criterion on ``model``; with ``survivors_only`` a channel
        already pruned is never picked again (counts may only fall)."""
        scores = self.scores(model)
        keep: Keep = {}
        for g, k in counts.items():
            s = scores[g].clone().double()
            if survivors_only and g in self.keep:
                alive = torch.zeros_like(s, dtype=torch.bool)
                alive[self.keep[g]] = True
                s[~alive] = float("-inf")
                k = min(k, int(alive.sum()))
            keep[g] = torch.sort(torch.topk(s, max(k, 1), sorted=False).indices).values
        return keep

    def set_keep(self, keep: Keep) -> None:
        """Make ``keep`` the current masks (groups at full width are dropped)."""
        self.keep = {g: idx for g, idx in keep.items() if int(idx.numel()) < self.sizes[g]}
        self._masks = masks(self.space, self.keep)

    def apply_masks(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Zero the pruned channels in ``model``'s parameters and in ``optimizer``'s per-parameter state."""
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name in self._masks:
                p = params[name]
                mask = self.mask_for(name, p)
                p.mul_(mask)
                if optimizer is not None:
                    for value in optimizer.state.get(p, {}).values():
                        if isinstance(value, torch.Tensor) and value.shape == p.shape:
                            value.mul_(mask)

    def mask_for(self, name: str, p: torch.Tensor) -> torch.Tensor:
        """Parameter ``name``'s mask on ``p``'s device (moved there once: a model trained on a GPU)."""
        mask = self._masks[name]
        if mask.device != p.device:
            mask = self._masks[name] = mask.to(p.device)
        return mask

    def masked(self) -> int:
        """How many channels the current masks remove in all."""
        return sum(self.sizes[g] - int(idx.numel()) for g, idx in self.keep.items())


def masks(space: PruningSpace, keep: Keep) -> dict[str, torch.Tensor]:
    """For each parameter a channel of ``keep`` runs through: a 0/1 tensor of its shape, 0 on the removed
    channels along every dimension they index (filters, biases, norm scales and shifts, consumers' inputs)."""
    if not keep:
        return {}
    params = dict(space.model.named_parameters())
    out = {}
    for name, dims in space.parameter_indices(keep).items():
        p = params.get(name)
        if p is None:  # a buffer (running statistics): the zeroed scale and shift already silence the channel
            continue
        mask = torch.ones_like(p, dtype=p.dtype)
        for dim, idx in dims.items():
            keep_dim = torch.zeros(p.shape[dim], dtype=p.dtype)
            keep_dim[idx] = 1
            shape = [1] * p.dim()
            shape[dim] = -1
            mask = mask * keep_dim.view(shape)
        out[name] = mask
    return out


def reinitialise(model: nn.Module) -> nn.Module:
    """Reset every parameter and running statistic of ``model`` in place (each module's own
    ``reset_parameters`` / ``reset_running_stats``), under torch's current RNG."""
    for module in model.modules():
        if hasattr(module, "reset_running_stats"):
            module.reset_running_stats()
        if hasattr(module, "reset_parameters") and callable(module.reset_parameters):
            module.reset_parameters()
    return model


def options(name: str) -> list[str]:
    """The keyword options method ``name`` takes: its own and the common ``total_steps``, ``criterion``,
    ``calibration``."""
    import inspect

    names: list[str] = []
    for klass in _method_class(name).__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.kind is p.KEYWORD_ONLY and p.name not in names:
                names.append(p.name)
    return names


def check_options(name: str, given: Mapping[str, Any], *, supplied: tuple[str, ...] = ()) -> None:
    """A clear error for an option method ``name`` does not take (``supplied``: those the caller sets itself)."""
    allowed = [k for k in options(name) if k not in supplied]
    for key in given:
        if key not in allowed:
            raise ValueError(
                f"no option {key!r} for training method {name}; allowed: {', '.join(allowed)}."
                f"{did_you_mean(key, allowed, n=1)}"
            )


def _method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise ValueError(
            f"unknown training method {name!r}.{did_you_mean(name, METHODS)} Known: {', '.join(sorted(METHODS))}"
        )
    return METHODS[name]


def get(name: str, space: PruningSpace, plan: Mapping[str, float], **options: Any) -> Method:
    """The method ``name`` (see :data:`METHODS`) for ``plan`` on ``space``; ``options`` are its own and the
    common ``total_steps``, ``criterion``, ``calibration``."""
    cls = _method_class(name)
    check_options(name, options)
    return cls(space, plan, **options)
