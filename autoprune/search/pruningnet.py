"""MetaPruning's PruningNet (Liu et al., ICCV 2019) for any model autoprune can analyse.

A PruningNet generates the weights of every pruned network of a space: given how
many channels each group keeps (an *encoding*), each parameter's generator maps
the keep ratios of the groups that parameter depends on through
``FC(k -> hidden) -> ReLU -> FC(hidden -> ...)`` to a full-size tensor, which is
cropped to the kept channels. The crop is the engine's own kept-index mapping
(:meth:`PruningSpace.parameter_indices`), so it holds for every layer the engine
prunes (convolutions incl. grouped and depthwise, linear layers, norms,
attention heads, recurrent gates), not only the convolutions of the reference's
hand-written networks. Within a group the kept channels are the highest-scoring
ones under a criterion of the trained model (L1 by default), so a candidate
keeping ``k`` channels keeps the ``k`` best.

**Warm start.** Every generator starts out producing the trained tensor whatever
its input (its last layer's weights are zero), so before training the PruningNet
at any encoding *is* the trained model pruned by the criterion, and training
learns width-dependent corrections instead of starting from noise.

**Forms.** ``faithful`` is the reference's generator: its last layer outputs the
whole tensor (``hidden x numel`` weights, ~64x the layer). ``compact`` (the
default) keeps the trained tensor as a parameter and generates a per-channel
scale for its first two dims (``W * (1 + a_out) * (1 + b_in)``; an additive
correction for 1-D parameters such as norm scales and biases), so its memory is
the model's plus ``hidden x (channels in + out)`` per layer.

**Norm layers.** The reference keeps separate BatchNorm statistics per width;
here a candidate's statistics are re-estimated on training batches before it is
scored (adaptive BN), as every autoprune evaluator already does: it works for
any norm layer whose channels several groups share, and it is what the reference
does at search time anyway. During training, norm layers use batch statistics.

Parameters that depend on no prunable group (a classifier's output rows, frozen
layers) are ordinary parameters, trained with the rest.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.batches import as_source, split_batch
from ..engine import PruningSpace
from ..evaluators.accuracy import logits_of
from ..utils import seeded_generator

#: The reference's 31 candidate widths, as fractions of each layer's full width: 0.10, 0.13, ..., 1.00.
REFERENCE_RATIOS = tuple(round((10 + 3 * i) / 100, 2) for i in range(31))
FORMS = ("compact", "faithful")
WIDTHS = ("reference", "round_to")


def width_choices(space: PruningSpace, widths: str = "reference", max_sparsity: float = 0.95) -> list[list[int]]:
    """The channel counts each group may keep, ascending: the reference's 31 ratios of its width (``"reference"``)
    or every multiple of the space's ``round_to`` (``"round_to"``), rounded as the space rounds, none below
    ``1 - max_sparsity`` of the group."""
    if widths not in WIDTHS:
        raise ValueError(f"widths must be one of {WIDTHS}, got {widths!r}")
    r = space.round_to
    out = []
    for g in space.groups:
        full = g.channels
        low = max(min(r, full), math.ceil((1 - max_sparsity) * full - 1e-9))
        if widths == "reference":
            counts = {min(max(int(math.floor(full * q / r + 0.5)) * r, min(r, full)), full) for q in REFERENCE_RATIOS}
        else:
            counts = {*range(r, full + 1, r), full}
        out.append(sorted(c for c in counts if c >= low) or [full])
    return out


def generator_size(space: PruningSpace, form: str = "compact", hidden: int = 64) -> int:
    """The number of parameters of ``PruningNet(space, form=form, hidden=hidden)``, counted without building it
    (the faithful form of a large model does not fit in memory)."""
    total = 0
    for _, p, deps in _parameters(space):
        if not deps:
            total += p.numel()
            continue
        total += (len(deps) + 1) * hidden
        if form == "faithful":
            total += (hidden + 1) * p.numel()
        else:
            total += p.numel() + sum((hidden + 1) * p.shape[d] for d in _modulated_dims(p))
    return total


def _parameters(space: PruningSpace) -> list[tuple[str, torch.Tensor, list[int]]]:
    """Every parameter of the model (shared ones once), with the indices of the groups its shape depends on."""
    index = {g.atom: i for i, g in enumerate(space.groups)}
    out = []
    for name, p in space.model.named_parameters():
        dims = space.param_dims.get(name) or []
        deps = sorted({index[a] for e in dims for a in space.axes.atoms(e) if a in index})
        out.append((name, p, deps))
    return out


def _modulated_dims(p: torch.Tensor) -> list[int]:
    return [0] if p.dim() == 1 else [d for d in (0, 1) if p.shape[d] > 1]


def _crop(t: torch.Tensor, index: dict[int, torch.Tensor]) -> torch.Tensor:
    for d, idx in index.items():
        t = t.index_select(d, idx)
    return t


class _Faithful(nn.Module):
    """The reference's generator: FC(k -> hidden) -> ReLU -> FC(hidden -> numel), viewed as the tensor."""

    def __init__(self, weight: torch.Tensor, k: int, hidden: int) -> None:
        super().__init__()
        self.fc = nn.Linear(k, hidden, dtype=weight.dtype)
        self.out = nn.Linear(hidden, weight.numel(), dtype=weight.dtype)
        self.shape = tuple(weight.shape)
        with torch.no_grad():
            self.out.weight.zero_()
            self.out.bias.copy_(weight.detach().flatten())

    def forward(self, ratios: torch.Tensor, index: dict[int, torch.Tensor]) -> torch.Tensor:
        return _crop(self.out(torch.relu(self.fc(ratios))).view(self.shape), index)


class _Modulated(nn.Module):
    """The compact generator: the trained tensor scaled per output and input channel (1-D: shifted per channel)
    by FC(k -> hidden) -> ReLU -> FC(hidden -> channels)."""

    def __init__(self, weight: torch.Tensor, k: int, hidden: int) -> None:
        super().__init__()
        self.fc = nn.Linear(k, hidden, dtype=weight.dtype)
        self.base = nn.Parameter(weight.detach().clone())
        self.dims = _modulated_dims(weight)
        self.heads = nn.ModuleList(nn.Linear(hidden, weight.shape[d], dtype=weight.dtype) for d in self.dims)
        with torch.no_grad():
            for head in self.heads:
                head.weight.zero_()
                head.bias.zero_()

    def forward(self, ratios: torch.Tensor, index: dict[int, torch.Tensor]) -> torch.Tensor:
        h = torch.relu(self.fc(ratios))
        w = _crop(self.base, index)
        for d, head in zip(self.dims, self.heads):
            m = head(h)
            if d in index:
                m = m.index_select(0, index[d])
            if w.dim() == 1:
                w = w + m
            else:
                shape = [1] * w.dim()
                shape[d] = -1
                w = w * (1 + m.view(shape))
        return w


class PruningNet(nn.Module):
    """A weight generator for every pruned network of ``space`` (see the module docstring).

    Args:
        space: the analysed model; its weights are the warm start (the model itself is never modified).
        form: ``"compact"`` (default) or ``"faithful"`` (the reference's full-tensor generator).
        hidden: the generators' hidden width (the reference's 64; 32 for its ResNet).
        criterion: which channels of a group a narrower candidate keeps (the highest-scoring of the trained model).
        calibration: batches for a data-driven criterion.
        widths: the candidate widths, see :func:`width_choices`.
        max_sparsity: no group keeps less than ``1 - max_sparsity`` of its channels.
        seed: seeds the generators' first layers (whatever the global torch RNG), so two processes build the
            same PruningNet.
    """

    def __init__(
        self,
        space: PruningSpace,
        *,
        form: str = "compact",
        hidden: int = 64,
        criterion: Any = "l1",
        calibration: Any = None,
        widths: str = "reference",
        max_sparsity: float = 0.95,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {form!r}")
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden must be a positive integer, got {hidden!r}")
        if not space.groups:
            raise ValueError("the space has no prunable channel groups: there is nothing to generate widths for")
        self.space = space
        self.form = form
        self.choices = width_choices(space, widths, max_sparsity)
        scores = space.scores(criterion, calibration)
        self.order = [torch.argsort(scores[g.name], descending=True, stable=True) for g in space.groups]
        self.full = np.array([g.channels for g in space.groups], dtype=np.int64)
        self.generated: list[str] = []
        self.deps: list[torch.Tensor] = []
        self.fixed_names: list[str] = []
        generators, fixed = [], []
        make = _Faithful if form == "faithful" else _Modulated
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            for name, p, deps in _parameters(space):
                if deps:
                    self.generated.append(name)
                    self.deps.append(torch.tensor(deps, dtype=torch.long))
                    generators.append(make(p, len(deps), hidden))
                else:
                    self.fixed_names.append(name)
                    fixed.append(nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad))
        self.generators = nn.ModuleList(generators)
        self.fixed = nn.ParameterList(fixed)
        self._check_reaches_forward()

    # -- encodings --------------------------------------------------------------------------------
    def sample(self, generator: torch.Generator) -> np.ndarray:
        """A random encoding: each group's kept channels drawn uniformly from its choices (the reference's
        training distribution)."""
        picks = [c[int(torch.randint(len(c), (), generator=generator))] for c in self.choices]
        return np.array(picks, dtype=np.int64)

    def plan(self, counts: Sequence[int]) -> dict[str, float]:
        """The plan that keeps ``counts`` channels per group (the space rounds it back to exactly ``counts``)."""
        return self.space.plan_keeping(counts)

    def keep(self, counts: Sequence[int]) -> dict[str, torch.Tensor]:
        """The kept channel indices (sorted) of every group ``counts`` narrows: its ``k`` highest-scoring."""
        return {
            g.name: torch.sort(order[: int(k)]).values
            for g, order, k in zip(self.space.groups, self.order, counts)
            if k < g.channels
        }

    # -- weights --------------------------------------------------------------------------------
    def weights(self, counts: Sequence[int], keep: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The generated parameters (by the model's parameter names) of the network keeping ``counts``: cropped
        to ``keep`` (default: :meth:`keep` of ``counts``), or full-size with ``keep={}``."""
        keep = self.keep(counts) if keep is None else keep
        index = self.space.parameter_indices(keep) if keep else {}
        ratios = torch.as_tensor(np.asarray(counts) / self.full, dtype=torch.float32)
        out = {}
        for name, deps, gen in zip(self.generated, self.deps, self.generators):
            r = ratios[deps].to(gen.fc.weight.dtype)
            out[name] = gen(r, index.get(name, {}))
        for name, p in zip(self.fixed_names, self.fixed):
            out[name] = _crop(p, index.get(name, {}))
        return out

    def forward(self, counts: Sequence[int], *inputs: Any) -> Any:
        """The output of the network keeping ``counts`` channels on ``inputs``, differentiable in the generators."""
        keep = self.keep(counts)
        skeleton = self.space.build(keep)
        skeleton.train(self.training)
        return torch.func.functional_call(skeleton, self.weights(counts, keep), inputs)

    @torch.no_grad()
    def network(self, counts: Sequence[int]) -> nn.Module:
        """The pruned network keeping ``counts`` channels, a plain ``nn.Module`` holding the generated weights
        (its norm statistics are the trained model's, cropped: re-estimate them before scoring)."""
        keep = self.keep(counts)
        model = self.space.build(keep)
        for name, w in self.weights(counts, keep).items():
            model.get_parameter(name).copy_(w)
        return model

    @torch.no_grad()
    def full_weights(self, counts: Sequence[int]) -> dict[str, torch.Tensor]:
        """The generated parameters for ``counts`` at full size: :meth:`network` is them cropped to its channels."""
        return {k: v.detach().clone() for k, v in self.weights(counts, {}).items()}

    def _check_reaches_forward(self) -> None:
        """Every parameter the PruningNet generates must reach the model's computation when substituted for the
        model's own (as :meth:`forward` does): an op must take it as an argument, in eval or train mode. One that
        never does belongs to a module that caches its weights or reads them outside its forward."""
        model = self.space.model
        names = [*self.generated, *self.fixed_names]
        params = dict(model.named_parameters())
        substitutes = {n: params[n].detach().clone() for n in names}
        seen = _TensorsUsed()
        was = model.training
        try:
            with torch.no_grad(), seen:
                model.eval()
                torch.func.functional_call(model, substitutes, self.space.example_inputs)
                unused = [n for n in self.generated if id(substitutes[n]) not in seen.ids]
                if unused and self.space.train_mode_traced:
                    model.train()
                    doubled = tuple(
                        torch.cat([x, x]) if isinstance(x, torch.Tensor) and x.dim() > 0 else x
                        for x in self.space.example_inputs
                    )
                    torch.func.functional_call(model, substitutes, doubled)
        finally:
            model.train(was)
        unused = [n for n in self.generated if id(substitutes[n]) not in seen.ids]
        if unused:
            module = unused[0].rpartition(".")[0]
            raise ValueError(
                f"module {module!r} does not compute with the parameter {unused[0]!r} when another tensor is "
                "substituted for it (it caches its weights, or reads them outside its forward), so the PruningNet "
                f"cannot generate it: exclude the module (PruningSpace(..., exclude=[{module!r}]))"
            )


class _TensorsUsed(torch.overrides.TorchFunctionMode):
    """Records the ids of every tensor an op is called with."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[int] = set()

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        for x in torch.utils._pytree.tree_leaves((args, kwargs)):
            if isinstance(x, torch.Tensor):
                self.ids.add(id(x))
        return func(*args, **kwargs)


class PruningNetTrainer:
    """Stochastic training of a :class:`PruningNet`: every mini-batch samples a random encoding (uniform over
    each group's choices), runs the network it generates, and takes an SGD step on the generators (the
    reference's recipe: label-smoothed cross-entropy, momentum 0.9, linearly decaying learning rate).

    Randomness (the encoding, the batch, augmentations) is seeded by ``(seed, step)``, so a resumed training
    from a checkpoint (:meth:`state_dict`) takes exactly the steps an uninterrupted one would.

    Args:
        net: the PruningNet.
        data: training samples (``(inputs..., target)``): a Dataset, a DataLoader or a tuple of tensors.
        steps: the total number of SGD steps.
        distill: the weight of distillation from the unpruned model (``(1 - distill) * CE + distill * T^2 *
            KL``), for when labels are scarce.
        temperature: the distillation temperature ``T``.
    """

    def __init__(
        self,
        net: PruningNet,
        data: Any,
        *,
        steps: int,
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        batch_size: int = 128,
        label_smoothing: float = 0.1,
        distill: float = 0.0,
        temperature: float = 4.0,
        seed: int = 0,
    ) -> None:
        check_training(steps, lr, batch_size, label_smoothing, distill, temperature)
        self.net = net
        self.source = as_source(data, "train_data")
        self.steps, self.lr, self.batch_size = steps, float(lr), batch_size
        self.label_smoothing, self.distill, self.temperature, self.seed = label_smoothing, distill, temperature, seed
        self.optimizer = torch.optim.SGD(
            net.parameters(),
            lr=self.lr,
            momentum=momentum,
            nesterov=momentum > 0,
            weight_decay=weight_decay,
            foreach=True,  # hundreds of small generator tensors: one kernel per step, not one per tensor
        )
        self.step = 0
        self.losses: list[float] = []
        self._epoch: tuple[int, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "losses": list(self.losses),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.losses = [float(x) for x in state["losses"]]

    def _batch(self, step: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """The mini-batch of ``step``: epoch by epoch through a permutation seeded by the epoch (a DataLoader is
        iterated under a torch seed of the epoch, and skipped ahead on resume)."""
        from torch.utils.data import DataLoader

        if isinstance(self.source, DataLoader):
            epoch, position = divmod(step, len(self.source))
            if self._epoch is None or self._epoch[:2] != (epoch, position):
                # A shuffling sampler draws its order at the first batch: draw it under the epoch's seed, and skip
                # ahead there on resume; later batches are fetched under their step's seed, as without a resume.
                with torch.random.fork_rng():
                    torch.manual_seed(_torch_seed(self.seed, "epoch", epoch))
                    iterator = iter(self.source)
                    first = next(iterator)
                    for _ in range(position - 1):
                        next(iterator)
                if position == 0:
                    self._epoch = (epoch, 1, iterator)
                    return split_batch(first, "train_data")
                self._epoch = (epoch, position, iterator)
            batch = next(self._epoch[2])
            self._epoch = (epoch, position + 1, self._epoch[2])
            return split_batch(batch, "train_data")
        size = len(self.source)
        batch_size = min(self.batch_size, size)
        epoch, position = divmod(step, size // batch_size)
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, 0, torch.randperm(size, generator=seeded_generator(self.seed, "epoch", epoch)))
        return self.source.batch(self._epoch[2][position * batch_size : (position + 1) * batch_size])

    def train_step(self) -> float:
        """One SGD step on a random encoding; returns its loss."""
        step = self.step
        with torch.random.fork_rng():
            torch.manual_seed(_torch_seed(self.seed, "step", step))
            counts = self.net.sample(seeded_generator(self.seed, "encoding", step))
            inputs, target = self._batch(step)
            self.net.train()
            logits = logits_of(self.net(counts, *inputs)).float()
            loss = F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)
            if self.distill:
                with torch.no_grad():
                    teacher = self.net.space.model
                    was = teacher.training
                    teacher.eval()
                    reference = logits_of(teacher(*inputs)).float()
                    teacher.train(was)
                t = self.temperature
                log_p, log_q = F.log_softmax(logits / t, 1), F.log_softmax(reference / t, 1)
                kl = F.kl_div(log_p, log_q, log_target=True, reduction="batchmean")
                loss = (1 - self.distill) * loss + self.distill * t * t * kl  # Hinton et al.'s T^2 scaling
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * (1 - step / self.steps)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(
                f"PruningNet training diverged at step {step} (loss {value}): lower the learning rate ({self.lr})"
            )
        self.step += 1
        self.losses.append(value)
        return value

    def run(
        self,
        *,
        every: int = 100,
        checkpoint: Callable[["PruningNetTrainer"], None] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[float]:
        """Train until ``steps``, calling ``checkpoint(self)`` every ``every`` steps and at the end, and
        ``progress(step, steps)`` after each step. Returns the loss of every step."""
        while self.step < self.steps:
            self.train_step()
            if progress is not None:
                progress(self.step, self.steps)
            if checkpoint is not None and (self.step % every == 0 or self.step == self.steps):
                checkpoint(self)
        return self.losses


def _torch_seed(seed: int, *key: Any) -> int:
    return int(seeded_generator(seed, *key).initial_seed())


def check_training(steps: Any, lr: Any, batch_size: Any, label_smoothing: Any, distill: Any, temperature: Any) -> None:
    """Reject training options that cannot work, naming the option."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(
            f"train_steps must be an integer >= 1, got {steps!r}: MetaPruning searches with a trained PruningNet "
            "(for a search over the trained weights pruned by a criterion, use strategy 'tpe' or 'annealing')"
        )
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not (isinstance(label_smoothing, (int, float)) and 0 <= label_smoothing < 1):
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    if not (isinstance(distill, (int, float)) and 0 <= distill <= 1):
        raise ValueError(f"distill must be a weight in [0, 1], got {distill!r}")
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature must be positive, got {temperature!r}")
