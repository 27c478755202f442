"""AutoCompress (Liu et al., AAAI 2020): rounds of simulated-annealing allocation, ADMM training towards it,
purification and fine-tuning, the network carried from round to round.

Round ``r`` of ``rounds`` (1-based) aims at the fraction ``b^{r/N}`` of each limit of the budget (``b``: the
budget's fraction of the unpruned model; per round the remaining cost falls by the same factor, the paper's
``1 - (1 - s)^{1/N}``): MACs, parameters or latency, whatever the budget limits — never parameters in place of
MACs (NNI's AutoCompress did that). A round has three phases, each recorded in the study:

1. **search** — ``round_trials`` candidates of the existing simulated-annealing strategy (its chain, seeded per
   round, started from the round's uniform plan), each pruned in one shot from the *current* network and scored
   by the evaluator. A channel the current network has lost never comes back: every proposal is projected onto
   the round's target with the current sparsities as floors.
2. **train** — one task trial: the current network (full size, its removed channels held at zero) is trained
   with the training package's ``admm`` towards the round's best plan: ``admm_steps`` under the penalty
   ρ/2·‖W − Z + U‖² with the exact L2 projection and ρ growing by ``growth`` up to ``rho_max``, then hard
   pruning by Π_S(W) and ``finetune_steps`` of masked retraining. Purification — removing the filters whose
   consumers are gone and the consumers' inputs whose producer is gone — needs no step of its own: the engine's
   channel groups hold each filter together with its norm channel and every consumer's input column, so
   removing one removes all. The training checkpoints every ``checkpoint_every`` steps next to the study's
   artifacts, so a killed worker's task resumes where it stopped.
3. **trained** — the trained network, physically smaller at the round's target, is scored as one more
   candidate; it is the next round's current network.

After the last round the trained network meets the budget; it is the candidate ``autoprune export`` writes when
it scores best among those that meet it (the weights that were scored: :meth:`AutoCompress.network`). Every
phase is re-derived from the study's trials, so a killed search resumes at the round and phase where it stopped,
and several workers share one search (the search phase's candidates in parallel; they wait at each phase's end).
Candidates count towards ``n_trials`` (``rounds × (round_trials + 1)`` in all); the training steps do not, and
are recorded with each round's task (``autocompress_result``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping

import optuna
import torch
from optuna.samplers import BaseSampler
from optuna.trial import TrialState
from torch import nn

from ...engine import PruningSpace
from ...utils import num_threads
from .. import attrs
from ..artifacts import artifact_dir, artifact_store, load_state, save_state
from ..budget import Budget, Projector
from ..ledger import failure_reason
from ..queue import enqueue_batch, enqueue_task
from ..strategy import Action, SearchContext, Strategy, TrialNetwork, exactly
from .annealing import START, SimulatedAnnealing

TAG = "autocompress"  # a candidate's {"round", "kind": "search" | "trained"}; a task's {"round", "task": "train"}
KEEP = "autocompress_keep"  # the channels a candidate's network keeps, per group (indices into the original widths)
RESULT = "autocompress_result"  # a round's task: {"weights", "keep", "plan", "from_trial", "training"}
COSTS = {"macs": "macs", "params": "params", "latency_ms": "latency"}


@dataclass
class _Round:
    """Where the search stands: round ``index`` (``rounds`` when all are done), its phase and its trials."""

    index: int
    phase: str  # "search", "train", "trained" or "done"
    base: dict | None  # the previous round's result (None: the original network)
    search: list = field(default_factory=list)
    tasks: list = field(default_factory=list)
    trained: list = field(default_factory=list)
    result: dict | None = None
    stale: int = 0  # this round's trials whose worker died (each batch key below is new after one)


class AutoCompress(Strategy):
    """AutoCompress: see the module docstring.

    Args:
        rounds: the number of rounds (the paper's and NNI's default: 3).
        round_trials: candidates of each round's simulated annealing (the start plan included).
        admm_steps: SGD steps under the ADMM penalty per round.
        finetune_steps: steps of masked retraining after the hard pruning, per round.
        lr, batch_size, weight_decay: the training's SGD (Nesterov 0.9, cosine learning rate).
        rho, growth, rho_max, admm_rounds: ADMM's ρ₀, its growth per Z/U update, its cap, and the number of
            Z/U updates in the penalty phase.
        annealing: options of the simulated-annealing strategy (``autoprune.search.strategies.annealing``).
        checkpoint_every: training steps between checkpoints.
        artifact_dir: where the trained networks and checkpoints go (default: next to the study's file); a
            folder every worker shares.
    """

    name = "autocompress"
    projects = False  # each round projects onto its own target, with the current network's sparsities as floors

    def __init__(
        self,
        rounds: int = 3,
        round_trials: int = 30,
        admm_steps: int = 300,
        finetune_steps: int = 200,
        lr: float = 0.01,
        batch_size: int = 128,
        weight_decay: float = 5e-5,
        rho: float = 1e-3,
        growth: float = 1.5,
        rho_max: float = 1.0,
        admm_rounds: int = 10,
        annealing: Mapping[str, Any] | None = None,
        checkpoint_every: int = 50,
        artifact_dir: str | None = None,
    ) -> None:
        for key, value, low in (
            ("rounds", rounds, 1),
            ("round_trials", round_trials, 2),
            ("admm_steps", admm_steps, 1),
            ("finetune_steps", finetune_steps, 1),
            ("batch_size", batch_size, 1),
            ("admm_rounds", admm_rounds, 1),
            ("checkpoint_every", checkpoint_every, 1),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"autocompress's {key} must be an integer >= {low}, got {value!r}")
        if not lr > 0 or weight_decay < 0:
            raise ValueError(f"autocompress needs lr > 0 and weight_decay >= 0, got {lr!r}, {weight_decay!r}")
        if not (rho > 0 and growth >= 1 and rho_max >= rho):
            raise ValueError(f"autocompress needs rho > 0, growth >= 1, rho_max >= rho; got {rho}, {growth}, {rho_max}")
        self.rounds, self.round_trials = rounds, round_trials
        self.admm_steps, self.finetune_steps = admm_steps, finetune_steps
        self.training = {"lr": lr, "batch_size": batch_size, "weight_decay": weight_decay}
        self.admm = {"rho": rho, "growth": growth, "rho_max": rho_max, "rounds": admm_rounds}
        self.annealing = SimulatedAnnealing(**dict(annealing or {}))
        self.checkpoint_every = checkpoint_every
        self.artifact_dir = artifact_dir
        self._spaces: dict[str, PruningSpace] = {}
        self._projectors: dict[int, Projector] = {}

    # -- setup and targets ------------------------------------------------------------------------------------
    def setup(self, ctx: SearchContext) -> None:
        if not ctx.projector.targets:
            raise ValueError("AutoCompress prunes towards a budget in rounds: give one, e.g. Budget(macs=0.3)")
        needed = self.rounds * (self.round_trials + 1)
        if ctx.n_trials is not None and ctx.n_trials < needed:
            raise ValueError(
                f"AutoCompress needs n_trials >= rounds x (round_trials + 1) = {self.rounds} x "
                f"({self.round_trials} + 1) = {needed}, got {ctx.n_trials}: raise n_trials or lower round_trials"
            )
        if ctx.evaluator is not None and ctx.train_data is None:
            raise ValueError(
                "AutoCompress trains the network in every round: use the accuracy evaluator with train_data, or "
                "pass search(..., train_data=...)"
            )

    def projector(self, ctx: SearchContext, r: int) -> Projector:
        """Round ``r``'s (0-based) targets: each limit's fraction ``b`` of the unpruned model as ``b^{(r+1)/N}``;
        the last round's is the search's own projector."""
        if r == self.rounds - 1:
            return ctx.projector
        if r not in self._projectors:
            p = ctx.projector
            full = p.costs({})
            fractions = {COSTS[m]: (t / full[m]) ** ((r + 1) / self.rounds) for m, t in p.targets.items()}
            self._projectors[r] = Projector(
                ctx.space,
                Budget(**{k: min(v, 1.0) for k, v in fractions.items()}),
                ctx.max_sparsity,
                latency_table=p.latency_table,
                verify_latency=False,
            )
        return self._projectors[r]

    def round_context(self, ctx: SearchContext, st: _Round) -> SearchContext:
        """The simulated annealing's view of round ``st``: its search trials only, its target with the current
        network's sparsities as floors, its own seed."""
        floor = dict(st.base["plan"]) if st.base else {}
        seed = int(hashlib.sha256(f"{ctx.base_seed}:round:{st.index}".encode()).hexdigest()[:8], 16)
        return dataclasses.replace(
            ctx,
            study=_RoundTrials(ctx.study, st.index),
            projector=_Floored(self.projector(ctx, st.index), floor),
            base_seed=seed,
        )

    def sampler(self, ctx: SearchContext) -> BaseSampler:
        return _RoundSampler(self, ctx)

    # -- state, re-derived from the study ---------------------------------------------------------------------
    def replay(self, ctx: SearchContext) -> _Round:
        trials = [
            t
            for t in ctx.study.get_trials(deepcopy=False)
            if TAG in t.user_attrs and not t.user_attrs.get(attrs.DISCARDED)
        ]
        base = None
        for r in range(self.rounds):
            mine = [t for t in trials if t.user_attrs[TAG]["round"] == r]
            live = [t for t in mine if not t.user_attrs.get(attrs.STALE)]
            st = _Round(
                r,
                "search",
                base,
                search=[t for t in live if t.user_attrs[TAG].get("kind") == "search"],
                tasks=[t for t in mine if attrs.TASK in t.user_attrs],
                trained=[t for t in live if t.user_attrs[TAG].get("kind") == "trained"],
                stale=len(mine) - len(live),
            )
            if len(_finished(st.search)) < self.round_trials:
                return st
            done = next((t for t in st.tasks if RESULT in t.user_attrs), None)
            if done is None:
                st.phase = "train"
                return st
            st.result = done.user_attrs[RESULT]
            if not _finished(st.trained):
                st.phase = "trained"
                return st
            base = st.result
        return _Round(self.rounds, "done", base)

    def results(self, ctx: SearchContext) -> dict[int, dict]:
        """Every finished round's result, by round."""
        return {
            t.user_attrs[TAG]["round"]: t.user_attrs[RESULT]
            for t in ctx.study.get_trials(deepcopy=False)
            if TAG in t.user_attrs and RESULT in t.user_attrs
        }

    def next_action(self, ctx: SearchContext) -> Action:
        st = self.replay(ctx)
        r = st.index
        if st.phase == "done":
            return Action.STOP
        if st.phase == "search":
            if not st.search:
                start = self.round_context(ctx, st).projector.uniform()
                extra = {TAG: {"round": r, "kind": "search"}, attrs.SEED_PLAN: START, **_phase(r, "search")}
                enqueue_batch(ctx, f"{TAG}:{r}:start:{st.stale}", [(start, extra)])
                return Action.ASK
            if any(t.state == TrialState.WAITING for t in st.search):
                return Action.ASK
            asked = len(_finished(st.search)) + sum(t.state == TrialState.RUNNING for t in st.search)
            return Action.WAIT if asked >= self.round_trials else Action.ASK
        if st.phase == "train":
            if any(t.state == TrialState.WAITING for t in st.tasks):
                return Action.ASK
            if any(t.state == TrialState.RUNNING for t in st.tasks):
                return Action.WAIT
            failed = [t for t in st.tasks if t.state == TrialState.FAIL and not t.user_attrs.get(attrs.STALE)]
            if failed:
                error = failure_reason(failed[-1].user_attrs.get(attrs.ERROR))
                raise ValueError(f"AutoCompress round {r + 1}'s training failed (trial {failed[-1].number}): {error}")
            extra = {TAG: {"round": r, "task": "train"}, **_phase(r, "train")}
            enqueue_task(ctx, f"{TAG}:{r}:train:{st.stale}", f"AutoCompress round {r + 1} training", extra)
            return Action.ASK
        if any(t.state == TrialState.WAITING for t in st.trained):
            return Action.ASK
        if any(t.state == TrialState.RUNNING for t in st.trained):
            return Action.WAIT
        extra = {TAG: {"round": r, "kind": "trained"}, **_phase(r, "trained")}
        enqueue_batch(ctx, f"{TAG}:{r}:trained:{st.stale}", [(dict(st.result["plan"]), extra)])
        return Action.ASK

    def accepts(self, trial: optuna.trial.FrozenTrial) -> bool:
        """Enqueued trials, and sampled ones the sampler tagged (asked in a search phase)."""
        return attrs.BATCH in trial.user_attrs or TAG in trial.user_attrs

    # -- networks -------------------------------------------------------------------------------------------
    def _space(self, ctx: SearchContext, weights: str | None) -> PruningSpace:
        """A space on the original architecture over a round's trained weights (None: the original ones)."""
        if weights is None:
            return ctx.space
        if weights not in self._spaces:
            state = load_state(self._store(ctx), weights)
            if state is None:
                raise ValueError(f"AutoCompress's trained network {weights} is missing from the artifact store")
            self._spaces = {weights: ctx.space.over(state)}
        return self._spaces[weights]

    def _store(self, ctx: SearchContext):  # noqa: ANN202
        return artifact_store(ctx.study, self.artifact_dir)

    def _base(self, ctx: SearchContext, r: int, kind: str) -> dict | None:
        """The result a round-``r`` candidate of ``kind`` is built from (None: the original network)."""
        results = self.results(ctx)
        source = r if kind == "trained" else r - 1
        if source < 0:
            return None
        if source not in results:
            raise RuntimeError(f"AutoCompress round {source + 1} has no trained network yet")
        return results[source]

    def build(self, ctx: SearchContext, trial: optuna.Trial, plan: dict[str, float]) -> nn.Module:
        """A search candidate: the current network's best channels by the criterion at ``plan`` (never one it has
        lost), reconstructed when the search reconstructs; a trained candidate: the round's trained network."""
        tag = ctx.study._storage.get_trial(trial._trial_id).user_attrs[TAG]  # a sampled one's: set while asked
        base = self._base(ctx, tag["round"], tag["kind"])
        space = self._space(ctx, base["weights"] if base else None)
        if tag["kind"] == "trained":
            keep = {g: torch.tensor(idx) for g, idx in base["keep"].items()}
        else:
            scores = space.scores(ctx.criterion, ctx.calibration)
            if base:
                alive = base["keep"]
                scores = {n: s + exactly(alive[n], s.numel()) if n in alive else s for n, s in scores.items()}
                counts = space.kept_channels(plan)
                short = [n for n, idx in alive.items() if counts[n] > len(idx)]
                if short:
                    raise RuntimeError(f"trial {trial.number}'s plan keeps channels the network has lost: {short}")
            keep = space.keep_indices(plan, scores)
        model = space.build(keep)
        if ctx.reconstruct and tag["kind"] == "search":
            space.reconstruct(model, keep, ctx.calibration)
        trial.set_user_attr(
            KEEP, {g.name: keep[g.name].tolist() if g.name in keep else list(range(g.channels)) for g in space.groups}
        )
        return model

    def network(self, ctx: SearchContext, trial: optuna.trial.FrozenTrial) -> TrialNetwork:
        """The network the trial scored: its base network's weights with exactly its channels kept."""
        tag = trial.user_attrs[TAG]
        base = self._base(ctx, tag["round"], tag["kind"])
        space = self._space(ctx, base["weights"] if base else None)
        kept = trial.user_attrs[KEEP]
        scores = {g.name: exactly(kept[g.name], g.channels) for g in space.groups}
        reconstruct = ctx.reconstruct and tag["kind"] == "search"
        return TrialNetwork(space, dict(trial.user_attrs[attrs.PLAN]), scores, reconstruct=reconstruct)

    # -- the training task ----------------------------------------------------------------------------------
    def run_task(self, ctx: SearchContext, trial: optuna.Trial) -> None:
        """ADMM towards the round's best plan, hard pruning and masked retraining (resumed from its checkpoint)."""
        from ... import training

        if ctx.train_data is None:
            raise ValueError("AutoCompress trains the network: pass search(..., train_data=...)")
        r = trial.user_attrs[TAG]["round"]
        st = self.replay(ctx)
        if st.index != r or st.phase != "train":
            return  # another worker finished this round's training meanwhile
        scored = [t for t in st.search if t.state == TrialState.COMPLETE]
        if not scored:
            raise ValueError(f"every candidate of AutoCompress round {r + 1} failed: nothing to train towards")
        best = max(scored, key=lambda t: t.values[0])
        plan = dict(best.user_attrs[attrs.PLAN])
        space = self._space(ctx, st.base["weights"] if st.base else None)
        alive = {g: torch.tensor(idx) for g, idx in st.base["keep"].items()} if st.base else None
        steps = self.admm_steps + self.finetune_steps
        checkpoint = artifact_dir(ctx.study, self.artifact_dir) / f"autocompress-{ctx.study._study_id}-round{r}.ckpt"
        with num_threads(getattr(ctx.evaluator, "threads", None)):
            trained = training.run(
                space,
                plan,
                ctx.train_data,
                method="admm",
                steps=steps,
                seed=ctx.base_seed + r,
                progress=False,
                checkpoint=checkpoint,
                checkpoint_every=self.checkpoint_every,
                admm=self.admm_steps / steps,
                keep=alive,
                **self.training,
                **self.admm,
            )
        weights = f"autocompress-round{r}-{uuid.uuid4().hex[:12]}.pt"
        save_state(self._store(ctx), weights, space.scatter(trained.keep, trained.model))
        keep = {g.name: trained.keep[g.name].tolist() for g in space.groups if g.name in trained.keep}
        counts = [len(keep.get(g.name, range(g.channels))) for g in space.groups]
        record = {k: v for k, v in trained.record.items() if isinstance(v, (int, float, str))}
        trial.set_user_attr(
            RESULT,
            {
                "weights": weights,
                "keep": keep,
                "plan": space.plan_keeping(counts),
                "from_trial": best.number,
                "training": {**record, "admm_steps": self.admm_steps, "finetune_steps": self.finetune_steps},
            },
        )
        checkpoint.unlink(missing_ok=True)


def _finished(trials: list) -> list:
    return [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.FAIL)]


def _phase(r: int, phase: str) -> dict[str, Any]:
    return {attrs.ROUND: r, attrs.PHASE: f"round {r + 1}: {phase}"}


class _Floored:
    """A round's projector: every plan projected onto its target never below the current network's sparsities."""

    def __init__(self, projector: Projector, floor: Mapping[str, float]) -> None:
        self.projector, self.floor = projector, dict(floor)

    def project(self, plan: Mapping[str, float], *, fill: bool = True) -> dict[str, float] | None:
        return self.projector.project(plan, fill=fill, floor=self.floor)

    def uniform(self) -> dict[str, float]:
        """The current network's keep ratios scaled by one factor onto the target."""
        return self.project(self.floor) or dict(self.floor)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.projector, name)


class _RoundTrials:
    """A study seen by one round's simulated annealing: that round's search trials only."""

    def __init__(self, study: optuna.Study, r: int) -> None:
        self.study, self.r = study, r

    def get_trials(self, deepcopy: bool = False, states: Any = None) -> list:
        return [
            t
            for t in self.study.get_trials(deepcopy=deepcopy, states=states)
            if t.user_attrs.get(TAG, {}).get("round") == self.r and t.user_attrs[TAG].get("kind") == "search"
        ]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.study, name)


class _RoundSampler(BaseSampler):
    """Proposes a search phase's moves from its round's annealing chain, tagging each trial with its round first
    (so the chain counts it); asked outside a search phase it proposes nothing and the trial is discarded."""

    def __init__(self, strategy: AutoCompress, ctx: SearchContext) -> None:
        self.strategy, self.ctx = strategy, ctx

    def infer_relative_search_space(self, study: optuna.Study, trial: Any) -> dict[str, Any]:
        return self.ctx.distributions()

    def sample_relative(self, study: optuna.Study, trial: Any, search_space: dict[str, Any]) -> dict[str, Any]:
        if not search_space:
            return {}
        st = self.strategy.replay(self.ctx)
        if st.phase != "search":
            return {n: 0.0 for n in search_space}  # not accepted (untagged): closed without evaluation
        study._storage.set_trial_user_attr(trial._trial_id, TAG, {"round": st.index, "kind": "search"})
        for key, value in _phase(st.index, "search").items():
            study._storage.set_trial_user_attr(trial._trial_id, key, value)
        plan = self.strategy.annealing.propose(self.strategy.round_context(self.ctx, st), trial._trial_id)
        return {n: float(plan[n]) for n in search_space}

    def sample_independent(self, study, trial, param_name, param_distribution):  # noqa: ANN001, ANN201
        return 0.0
