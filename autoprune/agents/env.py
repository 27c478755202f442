"""AMC's environment (He et al., "AMC: AutoML for Model Compression", ECCV 2018) over any PruningSpace.

An episode walks the space's channel groups in the order the forward pass meets
them and takes one action per group: the fraction of its channels to keep. The
engine's groups already tie coupled channels (residual adds, concatenations,
depthwise convs), so each is one decision, and the network's input and output
channels are never a group. At the last group the plan is applied, the
evaluator scores the network, and that score is the episode's reward.

:class:`LayerWalk` is the episode's bookkeeping without the evaluation — the
state embedding and the action wall — shared by :class:`AMCEnv` (a gymnasium
environment for any agent) and the ``amc`` search strategy.

**State** (``state="code"``, the reference code's 10 features): group index,
layer type (0 conv, 1 other), the producing layer's input channels, the group's
channels, stride, kernel size, the producing layers' weight count, ``reduced``,
``rest``, and the previous (effective) action. ``state="paper"`` gives the
paper's 11: index, channels, input channels, input height, input width,
stride, kernel, the group's MACs, ``reduced``, ``rest``, previous action. Each
static column is min-max normalised over the groups (left as is when constant),
as the reference does. ``reduced`` is the fraction of the resource (MACs, or
parameters for a parameter-only budget) removed by the groups decided so far
with the later groups at their minimum width (the reference computes it the
same way), and ``rest`` the share of the dense resource in the later groups,
at every step (the reference's first observation uses the share of weights
instead, a quirk not kept). The reference describes the consumer layer whose
*input* channels the action prunes; a group here is described by the layer that
*produces* its channels — the same decision, described from the other side.

**Action wall.** A keep ratio ``a`` is rounded to the nearest channel count the
space allows (multiples of ``round_to``), no fewer than ``lbound`` of the
group's channels, and then capped: the largest count for which the network
still meets every limit of the budget with all later groups at their minimum.
The configuration checked at one step is still available at the next, so every
finished episode meets the budget whenever the network with every group at its
minimum does (checked at construction). Unlike the reference, which rounds up
to a multiple of 8 *after* its cap (and can overshoot the budget), the count is
rounded first and then capped, and the cap holds for MACs, parameters and
latency (through a :class:`~autoprune.engine.latency.LatencyTable`) alike.

**Reward** (``reward=``): ``"acc"`` is the score itself (the reference's
``acc_reward``, accuracy up to a constant the agent's baseline removes), for
a search under a budget; ``"acc_flops"`` / ``"acc_params"`` are
``-(1 - score) * log(MACs | params)``, the paper's accuracy-guaranteed rewards,
for a search without a budget (and without a wall). They assume a score in [0, 1].
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import gymnasium
import numpy as np
from gymnasium import spaces
from torch import nn

from ..engine import PruningSpace
from ..engine.latency import LatencyTable
from ..search.budget import Budget, Projector

REWARDS = ("acc", "acc_flops", "acc_params")
STATES = ("code", "paper")


def reward(kind: str, score: float, macs: float, params: float) -> float:
    """The episode's reward for a network scoring ``score`` (see the module docstring)."""
    if kind == "acc":
        return float(score)
    cost = macs if kind == "acc_flops" else params
    return -(1.0 - float(score)) * math.log(max(float(cost), 1.0))


def check_options(lbound: float, reward_kind: str, state: str) -> None:
    """Reject AMC options that cannot work, before anything is built."""
    if isinstance(lbound, bool) or not isinstance(lbound, (int, float)) or not 0 < lbound <= 1:
        raise ValueError(f"lbound (the smallest keep ratio of a group) must be in (0, 1], got {lbound!r}")
    if reward_kind not in REWARDS:
        raise ValueError(f"reward must be one of {', '.join(REWARDS)}, got {reward_kind!r}")
    if state not in STATES:
        raise ValueError(f"state must be 'code' (the reference code's 10 features) or 'paper' (11), got {state!r}")


def check_budget(reward_kind: str, budget: Budget | None) -> None:
    """Reward ``acc`` needs a budget to search under."""
    if reward_kind == "acc" and budget is None:
        raise ValueError(
            "reward 'acc' needs a budget (without one every group would keep all its channels): give a budget, "
            "or use reward 'acc_flops' / 'acc_params' for the paper's accuracy-guaranteed search"
        )


class LayerWalk:
    """One AMC episode over a space: the state embedding and the action wall, without the evaluation.

    ``reset()`` starts an episode and returns the first observation; ``step(a)``
    takes the keep ratio ``a`` for the current group and returns the next
    observation and whether the episode is over; :attr:`plan` is the plan
    chosen (once over). See the module docstring for the features and the wall.
    """

    def __init__(
        self,
        space: PruningSpace,
        projector: Projector,
        lbound: float = 0.2,
        state: str = "code",
    ) -> None:
        if len(space.groups) < 2:
            raise ValueError(
                f"AMC allocates channels between groups, and this space has {len(space.groups)}: with one group the "
                "budget alone decides its width (use the 'uniform' strategy)"
            )
        self.space = space
        self.projector = projector
        self.lbound = float(lbound)
        self.order = _forward_order(space)
        self.groups = [space.groups[i] for i in self.order]
        floor = 1.0 - projector.max_sparsity
        self.counts = [_valid_counts(g.channels, space.round_to, max(self.lbound, floor)) for g in self.groups]
        resource = "params" if set(projector.targets) == {"params"} else "macs"
        self.resource = resource
        dense = np.array(
            [(g.params_per_channel if resource == "params" else g.macs_per_channel) * g.channels for g in self.groups],
            dtype=np.float64,
        )
        self._rest = np.concatenate([np.cumsum(dense[::-1])[::-1][1:], [0.0]]) / max(dense.sum(), 1.0)
        self._full = float(projector.cost(resource, {}))
        self.static = _embedding(space, self.groups, state)
        self.n_features = self.static.shape[1] + 3
        smallest = self._plan_at([c[0] for c in self.counts])
        if not projector.fits(smallest):
            costs = {m: projector.cost(m, smallest) for m in projector.targets}
            worst = max(costs, key=lambda m: costs[m] / projector.limit(m))
            raise ValueError(
                f"the action wall cannot meet the {worst} budget: with every group at its minimum (lbound={lbound}, "
                f"at least {max(self.lbound, floor):.0%} of its channels) the network has "
                f"{costs[worst] / projector.cost(worst, {}):.1%} of the original {worst}, and the budget allows "
                f"{projector.limit(worst) / projector.cost(worst, {}):.1%}. Lower lbound or raise the budget."
            )
        self.reset()

    # -- an episode ------------------------------------------------------------------------------
    def reset(self) -> np.ndarray:
        self.t = 0
        self.kept: list[int] = []
        self.actions: list[float] = []  # the effective keep ratios
        return self._observe()

    @property
    def done(self) -> bool:
        return self.t == len(self.groups)

    def step(self, action: float) -> tuple[np.ndarray, bool]:
        """Take keep ratio ``action`` for the current group (walled); returns the next observation and done."""
        if self.done:
            raise RuntimeError("the episode is over: call reset()")
        counts, g = self.counts[self.t], self.groups[self.t]
        a = min(max(float(action), self.lbound), 1.0) if math.isfinite(float(action)) else self.lbound
        wanted = min(range(len(counts)), key=lambda i: (abs(counts[i] - a * g.channels), -counts[i]))
        i = min(wanted, self._wall())
        while i > 0 and not self._fits(i):  # a latency table need not be monotone: fewer channels may predict slower
            i -= 1
        k = counts[i]
        self.kept.append(k)
        self.actions.append(k / g.channels)
        self.t += 1
        return (self._observe() if not self.done else self._last_observation), self.done

    def _wall(self) -> int:
        """The index of the largest count of the current group for which the budget is still met with every later
        group at its minimum (exactly for a monotone cost; one that meets it for any). The smallest count meets it
        by induction: the network the previous step chose was checked with this group at its minimum."""
        counts, fits = self.counts[self.t], self._fits
        if not self.projector.targets or fits(len(counts) - 1):
            return len(counts) - 1
        lo, hi = 0, len(counts) - 1  # fits(lo); not fits(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if fits(mid):
                lo = mid
            else:
                hi = mid
        return lo

    def _fits(self, i: int) -> bool:
        """The budget is met with the current group at its ``i``-th count and every later group at its minimum."""
        if not self.projector.targets:
            return True
        rest = [c[0] for c in self.counts[self.t + 1 :]]
        return self.projector.fits(self._plan_at([*self.kept, self.counts[self.t][i], *rest]))

    def _observe(self) -> np.ndarray:
        t = self.t
        decided = [*self.kept, *(c[0] for c in self.counts[t:])]
        reduced = 1.0 - self.projector.cost(self.resource, self._plan_at(decided)) / self._full
        obs = np.concatenate([self.static[t], [reduced, self._rest[t], self.actions[-1] if self.actions else 1.0]])
        self._last_observation = obs.astype(np.float32)
        return self._last_observation

    def _plan_at(self, kept: list[int]) -> dict[str, float]:
        plan = {g.name: 0.0 for g in self.space.groups}
        for g, k in zip(self.groups, kept):
            plan[g.name] = 1.0 - k / g.channels if k < g.channels else 0.0
        return plan

    @property
    def plan(self) -> dict[str, float]:
        """The plan the episode chose (every group; a sparsity per group name, in the space's order)."""
        if not self.done:
            raise RuntimeError(f"the episode is not over: {len(self.groups) - self.t} groups are still undecided")
        return self._plan_at(self.kept)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds of every feature of an observation."""
        low = np.concatenate([np.minimum(self.static.min(axis=0), 0.0), [0.0, 0.0, 0.0]])
        high = np.concatenate([np.maximum(self.static.max(axis=0), 1.0), [1.0, 1.0, 1.0]])
        return low.astype(np.float32), high.astype(np.float32)


class AMCEnv(gymnasium.Env):
    """AMC's channel-pruning environment (``gymnasium.make("autoprune/AMC-v0", space=..., evaluator=..., budget=...)``).

    One step per channel group; the action is the group's keep ratio in ``[lbound, 1]``;
    the reward is 0 until the last step, which applies the plan, scores the network
    with ``evaluator`` and returns the episode's reward. The last step's ``info``
    carries ``plan``, ``kept`` (channels per group), ``macs``, ``params``, ``score``
    and ``reward`` (plus ``latency_ms`` with a latency budget, and the evaluator's
    extra metrics). With a budget, every finished episode meets it (see
    :class:`LayerWalk`); a latency budget uses ``latency_table`` (built when not given).
    ``reconstruct``: calibration batches on which each episode's network is refitted by least squares before it
    is scored, as AMC's own environment does (:meth:`PruningSpace.reconstruct`).
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        space: PruningSpace,
        evaluator: Any,
        budget: Budget | None = None,
        *,
        lbound: float = 0.2,
        reward: str = "acc",
        state: str = "code",
        criterion: Any = "l1",
        calibration: Any = None,
        latency_table: LatencyTable | None = None,
        max_sparsity: float = 0.95,
        reconstruct: Any = None,
    ) -> None:
        if not isinstance(space, PruningSpace):
            raise TypeError(f"space must be an autoprune.PruningSpace, got {type(space).__name__}")
        if not callable(evaluator):
            raise TypeError(f"evaluator must be callable (model -> score), got {type(evaluator).__name__}")
        check_options(lbound, reward, state)
        check_budget(reward, budget)
        projector = Projector(space, budget, max_sparsity, latency_table=latency_table, verify_latency=False)
        self.walk = LayerWalk(space, projector, lbound, state)
        self.space, self.evaluator, self.budget = space, evaluator, budget
        self.reward_kind, self.criterion, self.calibration = reward, criterion, calibration
        self.reconstruct = reconstruct
        self.action_space = spaces.Box(np.float32(lbound), np.float32(1.0), shape=(1,), dtype=np.float32)
        low, high = self.walk.bounds()
        self.observation_space = spaces.Box(low, high, dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: Mapping[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return self.walk.reset(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, done = self.walk.step(float(np.asarray(action, dtype=np.float64).reshape(-1)[0]))
        if not done:
            return obs, 0.0, False, False, {}
        from ..evaluators import normalize_result

        plan = self.walk.plan
        model: nn.Module = self.space.apply(
            plan, self.criterion, calibration=self.calibration, reconstruct=self.reconstruct
        )
        score, extras = normalize_result(self.evaluator(model))
        costs = self.walk.projector.costs(plan)
        r = reward(self.reward_kind, score, costs["macs"], costs["params"])
        info = {
            **extras,
            "plan": plan,
            "kept": self.space.kept_channels(plan),
            **costs,
            "score": score,
            "reward": r,
        }
        return obs, r, True, False, info


def _forward_order(space: PruningSpace) -> list[int]:
    """Group indices in the order the forward pass first runs a layer producing their channels."""
    first: dict[str, int] = {}
    for i, op in enumerate(space.ops):
        first.setdefault(op.module, i)
    return sorted(
        range(len(space.groups)),
        key=lambda i: min((first.get(m.module, len(first)) for m in space.groups[i].producers), default=len(first)),
    )


def _valid_counts(channels: int, round_to: int, floor: float) -> list[int]:
    """The channel counts a plan can give a group (multiples of ``round_to``, and all of them), from the smallest
    one that keeps at least ``floor`` of them."""
    counts = sorted({*range(round_to, channels + 1, round_to), channels})
    least = floor * channels - 1e-9
    return [k for k in counts if k >= least] or [channels]


def _embedding(space: PruningSpace, groups: list, state: str) -> np.ndarray:
    """The static features of every group (rows), min-max normalised per column as the reference does."""
    modules = dict(space.model.named_modules())
    params = dict(space.model.named_parameters())
    shapes: dict[str, tuple[int, ...]] = {}
    for op in space.ops:
        if op.shapes:
            shapes.setdefault(op.module, op.shapes[0])
    rows = []
    for t, g in enumerate(groups):
        first = g.producers[0]
        m = modules.get(first.module)
        conv = isinstance(m, nn.modules.conv._ConvNd)
        weight = params.get(first.param)
        in_channels = m.in_channels if conv else (weight.shape[1] if weight is not None and weight.dim() > 1 else 0)
        stride = m.stride[0] if conv else 0
        kernel = m.kernel_size[0] if conv else 1
        numel = sum(params[p.param].numel() for p in g.producers if p.param in params)
        if state == "code":
            rows.append([t, 0 if conv else 1, in_channels, g.channels, stride, kernel, numel])
        else:
            shape = shapes.get(first.module, ())
            h, w = (shape[-2] * max(stride, 1), shape[-1] * max(stride, 1)) if conv and len(shape) >= 4 else (1, 1)
            rows.append([t, g.channels, in_channels, h, w, stride, kernel, g.macs_per_channel * g.channels])
    x = np.array(rows, dtype=np.float64)
    lo, hi = x.min(axis=0), x.max(axis=0)
    varies = hi > lo
    x[:, varies] = (x[:, varies] - lo[varies]) / (hi[varies] - lo[varies])
    return x
