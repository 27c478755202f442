"""NetAdapt (Yang et al., ECCV 2018): greedy, iterative, one group per step, weights carried over.

Iteration i lowers the resource target by ``dR_i = initial_reduction * R_full * decay**i``
(never below the budget). For every group it proposes the largest channel count
whose network meets the target, keeping the highest-L2 channels *of the current
network*; each proposal is built, short-term fine-tuned (the evaluator's
``finetune_steps``) and scored. The best proposal — highest score, or least score
drop per unit of resource saved (``pick="min_drop_per_resource"``, the paper's
variant) — becomes the current network, fine-tuned weights included, and the
next iteration starts from it. The search ends when every limit of the budget is
met. Where fewer than half of the groups that can still shrink can make an
iteration's step alone, the step is halved until half can (the paper's NetAdapt
stops when none can, short of the budget, and with a few it has little to choose
from). The resource
walked down is the budget's latency if it has one, else its MACs, else its
parameters (or ``resource=``).

Under a latency budget the table's prediction proposes, but the search ends only
when the picked network meets the budget *as measured* (the runner measures every
candidate beside the unpruned model, ``verify_latency``): as in the paper, the pick
is the best proposal among those that meet the constraint — here the whole budget,
latency as measured — when any does. A picked network the table put under its
target that measures over the budget sets the target to its prediction times
budget/measurement, and the walk goes on.

Everything is re-derived from the study: proposals are enqueued trials tagged with
their iteration; the picked proposal's fine-tuned weights are a study artifact
(full-size tensors, pruned channels left at their old values), so a killed search
resumes at the iteration and proposal where it stopped. The proposals of one
iteration are independent, so several workers evaluate them in parallel; they
wait at the end of an iteration, and exactly one copy of the next iteration is
enqueued even when several of them reach that point at once.

A trial's network (for export and fine-tuning) is its fine-tuned weights with
exactly its channels kept (:meth:`NetAdapt.network`), not its plan re-applied to
the original weights.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState
from torch import nn

from ...engine import PruningSpace
from .. import attrs
from ..artifacts import artifact_store
from ..ledger import latency_measurement, uncounted
from ..queue import enqueue_batch
from ..strategy import Action, SearchContext, Strategy, TrialNetwork, exactly

TAG = "netadapt"  # a proposal's {"iteration", "group", "of"}
KEEP = "netadapt_keep"  # the channels a proposal's network keeps, per group (indices into the original widths)
WEIGHTS = "netadapt_weights"  # the artifact id of a proposal's fine-tuned weights (full size)
RESOURCES = ("macs", "params", "latency_ms")


@dataclass
class _State:
    iteration: int
    plan: dict[str, float]
    keep: dict[str, list[int]] | None
    weights: str | None
    score: float | None
    resource: float
    target: float  # the resource's target: the budget's, lowered where measurements showed the table optimistic
    pending: bool = False
    done: bool = False
    history: list[int] = field(default_factory=list)


class NetAdapt(Strategy):
    name = "netadapt"
    projects = False
    queued_only = True

    def __init__(
        self,
        resource: str | None = None,
        initial_reduction: float = 0.025,
        decay: float = 0.96,
        pick: str = "max_score",
        criterion: str = "l2",
        artifact_dir: str | None = None,
    ) -> None:
        if resource not in (None, *RESOURCES):
            raise ValueError(f"resource must be 'macs', 'params' or 'latency_ms', got {resource!r}")
        if pick not in ("max_score", "min_drop_per_resource"):
            raise ValueError(f"pick must be 'max_score' or 'min_drop_per_resource', got {pick!r}")
        if not 0 < initial_reduction < 1 or not 0 < decay <= 1:
            raise ValueError("initial_reduction must be in (0, 1) and decay in (0, 1]")
        self.resource = resource
        self.initial_reduction = initial_reduction
        self.decay = decay
        self.pick = pick
        self.criterion = criterion
        self.artifact_dir = artifact_dir
        self._base: dict[str, Any] = {}
        self._state: _State | None = None  # replayed by next_action, for the build that follows it

    def sampler(self, ctx: SearchContext) -> optuna.samplers.BaseSampler:
        return optuna.samplers.RandomSampler(seed=ctx.seed)  # never asked: every proposal is enqueued

    # -- state, re-derived from the study --------------------------------------------
    def setup(self, ctx: SearchContext) -> None:
        self._resource(ctx)  # a resource the budget does not limit is an error before anything runs

    def _resource(self, ctx: SearchContext) -> str:
        targets = ctx.projector.targets
        if self.resource is None:
            found = next((r for r in ("latency_ms", "macs", "params") if r in targets), None)
            if found is None:
                raise ValueError("NetAdapt walks down to a budget: give one, e.g. Budget(macs=0.5)")
            return found
        if self.resource not in targets:
            raise ValueError(
                f"NetAdapt's resource {self.resource!r} has no limit in the budget ({', '.join(targets) or 'none'}): "
                "add it to the budget or leave resource unset (the budget's latency, else MACs, else params)"
            )
        return self.resource

    def _cost(self, ctx: SearchContext, plan: dict[str, float]) -> float:
        return float(ctx.projector.costs(plan)[self._resource(ctx)])

    def _meets(self, ctx: SearchContext, plan: dict[str, float], trial: optuna.trial.FrozenTrial | None) -> bool:
        """The network meets every limit of the budget; its latency as measured, when it was."""
        costs = ctx.projector.costs(plan)
        for metric in ctx.projector.targets:
            measured = latency_measurement(trial) if trial is not None else None
            if metric == "latency_ms" and measured is not None:
                if ctx.projector.measured_excess(measured) > 0:
                    return False
            elif costs[metric] > ctx.projector.limit(metric):
                return False
        return True

    def replay(self, ctx: SearchContext) -> _State:
        trials = [t for t in ctx.study.get_trials(deepcopy=False) if TAG in t.user_attrs]
        full = {n: 0.0 for n in ctx.names}
        resource = self._resource(ctx)
        limit = float(ctx.projector.limit(resource))
        st = _State(0, full, None, None, None, self._cost(ctx, full), limit)
        picked = None
        while True:
            props = [t for t in trials if t.user_attrs[TAG]["iteration"] == st.iteration and not uncounted(t)]
            live = [t for t in props if not (t.state == TrialState.FAIL and t.user_attrs.get(attrs.STALE))]
            if self._meets(ctx, st.plan, picked):
                st.done = True
                return st
            if not props:
                return st
            expected = props[0].user_attrs[TAG]["of"]
            finished = [t for t in live if t.state in (TrialState.COMPLETE, TrialState.FAIL)]
            if len(finished) < expected:
                st.pending = True
                return st
            done = [t for t in finished if t.state == TrialState.COMPLETE and WEIGHTS in t.user_attrs]
            if not done:
                st.done = True  # every proposal failed: nothing to continue from
                return st
            # As in the paper, the best proposal among those meeting the constraint; here the whole budget (latency
            # as measured), so a last iteration ends with a network that really meets it, when one of them does.
            feasible = [t for t in done if self._meets(ctx, t.user_attrs[attrs.PLAN], t)]
            best = max(feasible or done, key=lambda t: self._merit(ctx, st, t))
            st.plan = dict(best.user_attrs[attrs.PLAN])
            st.keep = best.user_attrs[KEEP]
            st.weights = best.user_attrs[WEIGHTS]
            st.score = best.values[0]
            st.resource = self._cost(ctx, st.plan)
            st.history.append(best.number)
            st.iteration += 1
            picked = best
            measurement = latency_measurement(best)
            if resource == "latency_ms" and measurement is not None and st.resource <= st.target:
                # The table put this network under the budget; if it measures over, the table is optimistic here
                # (only here: its bias changes sign along the way): aim lower by its predicted/measured ratio.
                measured = ctx.projector.measured_excess(measurement) + limit
                if measured > limit:
                    st.target = limit * st.resource / measured

    def _merit(self, ctx: SearchContext, st: _State, t: optuna.trial.FrozenTrial) -> float:
        if self.pick == "max_score" or st.score is None:
            return t.values[0]
        saved = max(st.resource - self._cost(ctx, t.user_attrs[attrs.PLAN]), 1e-12)
        return -(st.score - t.values[0]) / saved

    def next_action(self, ctx: SearchContext) -> Action:
        """Stop at the budget; else evaluate the current iteration's proposals, enqueueing them once the previous
        iteration is complete.

        Every worker that sees the barrier computes the same proposals; :func:`enqueue_batch`
        keeps exactly one copy, so two workers advancing at once never duplicate an iteration.
        """
        st = self._state = self.replay(ctx)
        if st.done:
            return Action.STOP
        waiting = ctx.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if any(t.user_attrs.get(TAG, {}).get("iteration") == st.iteration for t in waiting):
            return Action.ASK
        if st.pending:
            return Action.WAIT  # the rest of this iteration is being evaluated by other workers
        full = self._cost(ctx, {})
        reduction = self.initial_reduction * full * self.decay**st.iteration
        cut = st.resource - 1e-6 * full  # groups that can lower the resource at all
        shrinkable = sum(self._propose(ctx, st, g, cut) is not None for g in ctx.space.groups)
        while True:
            # Down to the target, or on past it while another limit (or the measured latency) is still unmet.
            step = st.resource - reduction
            target = max(step, st.target) if st.resource > st.target else step
            proposals = [p for p in (self._propose(ctx, st, g, target) for g in ctx.space.groups) if p is not None]
            # A step only a few groups can make alone leaves no choice (the paper stops when none can): halve it.
            if 2 * len(proposals) >= shrinkable or reduction < 1e-4 * full:
                break
            reduction /= 2
        if not proposals:
            return Action.STOP
        enqueue_batch(
            ctx,
            f"{TAG}:{st.iteration}",
            [
                (plan, {TAG: {"iteration": st.iteration, "group": group, "of": len(proposals)}})
                for plan, group in proposals
            ],
        )
        return Action.ASK

    def _propose(self, ctx: SearchContext, st: _State, group: Any, target: float) -> tuple[dict, str] | None:
        """The largest channel count of ``group`` whose network meets ``target`` (others unchanged)."""
        space, r = ctx.space, ctx.space.round_to
        current = space.kept_channels(st.plan)[group.name]
        low = max(min(r, group.channels), int(-(-(1 - ctx.max_sparsity) * group.channels // 1)))

        def plan_at(k: int) -> dict[str, float]:
            return {**st.plan, group.name: 1.0 - k / group.channels}

        if current <= low or self._cost(ctx, plan_at(low)) > target:
            return None
        lo, hi = low, current - 1  # lo meets the target; find the largest k that does
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._cost(ctx, plan_at(mid)) <= target:
                lo = mid
            else:
                hi = mid - 1
        lo = max(low, lo - lo % r) if r > 1 else lo
        return plan_at(lo), group.name

    # -- building proposals from the current network --------------------------------------
    def _store(self, ctx: SearchContext):  # noqa: ANN202
        return artifact_store(ctx.study, self.artifact_dir)

    def _space_over(self, ctx: SearchContext, weights: str | None) -> PruningSpace:
        """A space on the original architecture over the weights saved as artifact ``weights`` (None: the
        original weights)."""
        if weights is None:
            return ctx.space.over(ctx.space.model.state_dict())
        from optuna.artifacts import download_artifact

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "weights.pt"
            download_artifact(artifact_store=self._store(ctx), file_path=str(path), artifact_id=weights)
            return ctx.space.over(torch.load(path, weights_only=True))

    def _current(self, ctx: SearchContext, st: _State) -> PruningSpace:
        """The current network as a space on the original architecture (cached per iteration)."""
        key = st.weights or "original"
        if key not in self._base:
            self._base = {key: self._space_over(ctx, st.weights)}
        return self._base[key]

    def build(self, ctx: SearchContext, trial: optuna.Trial, plan: dict[str, float]) -> nn.Module:
        """The proposal's network: the current network's highest-``criterion`` channels at ``plan`` (its own kept
        channels only), with the current network's weights."""
        st = self._state  # replayed by next_action just before, unless another worker moved to the next iteration
        if st is None or st.iteration != trial.user_attrs.get(TAG, {}).get("iteration"):
            st = self.replay(ctx)
        base = self._current(ctx, st)
        scores = base.scores(self.criterion)
        if st.keep is not None:
            scores = {name: s + exactly(st.keep[name], s.numel()) for name, s in scores.items()}
        keep = base.keep_indices(plan, scores)
        trial.set_user_attr(
            KEEP, {g.name: keep[g.name].tolist() if g.name in keep else list(range(g.channels)) for g in base.groups}
        )
        self._pending = (base, keep)
        model = base.build(keep)
        if ctx.reconstruct:  # refit towards the current network, the one this proposal is pruned from
            base.reconstruct(model, keep, ctx.calibration)
        return model

    def after_evaluation(self, ctx: SearchContext, trial: optuna.Trial, model: nn.Module) -> None:
        """Save the evaluated (fine-tuned) weights, scattered back to full size, as a study artifact."""
        from optuna.artifacts import upload_artifact

        base, keep = self._pending
        state = base.scatter(keep, model)
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = Path(tmp) / f"netadapt_trial_{trial.number}.pt"
            torch.save(state, path)
            aid = upload_artifact(
                artifact_store=self._store(ctx), file_path=str(path), study_or_trial=trial, storage=ctx.study._storage
            )
        trial.set_user_attr(WEIGHTS, aid)

    def network(self, ctx: SearchContext, trial: optuna.trial.FrozenTrial) -> TrialNetwork:
        """The trial's own network: a space over its fine-tuned weights, and scores that keep exactly its channels."""
        if WEIGHTS not in trial.user_attrs:
            raise ValueError(f"NetAdapt trial {trial.number} has no saved weights (its evaluation did not finish)")
        net = self._space_over(ctx, trial.user_attrs[WEIGHTS])
        kept = trial.user_attrs[KEEP]
        scores = {g.name: exactly(kept[g.name], g.channels) for g in net.groups}
        return TrialNetwork(net, dict(trial.user_attrs[attrs.PLAN]), scores)
