"""MetaPruning (Liu et al., ICCV 2019): a PruningNet trained once generates every candidate's weights, and an
evolutionary search over the channel-count encodings picks the best under the budget.

**Training.** The first thing the search does is train a
:class:`~autoprune.search.pruningnet.PruningNet` over the search's space, warm-started
from the trained model, on the evaluator's training data (``search(train_data=...)``
for an evaluator of your own): ``train_steps`` SGD steps, a random encoding per
mini-batch. It runs as a task trial (see :meth:`Strategy.run_task`): one worker
trains while the others wait, its checkpoints (generator, optimiser, step; the
randomness is seeded by the step) are study artifacts, and a killed worker's
training is resumed by the next worker from the last checkpoint.

**Evolution** (the reference's ``search()``): the encoding is one gene per
channel group, an index into its candidate widths
(:func:`~autoprune.search.pruningnet.width_choices`). Generation 0 is
``population`` random encodings; every next one is ``mutations`` children of a
parent drawn from the ``parents`` best candidates so far (each gene changed with
probability ``mutation_prob`` to another value), ``crossovers`` uniform crossovers
of two of them, and random encodings to fill the population. A child whose
analytic cost exceeds the budget, or that was already proposed, is rejected before
it is evaluated (never evaluated, never counted); a random encoding over the
budget is scaled onto it first (:meth:`Projector.project`). Every candidate is one
trial, scored by the evaluator on the network the PruningNet generates for it,
after its BatchNorm statistics are re-estimated (by the evaluator when it does so,
else here). A generation is one enqueued batch that several workers evaluate in
parallel; the next one is computed, from the study's trials only, once the
previous one has finished, and enqueued exactly once. So a killed search resumes
at the generation and candidate where it stopped, and two workers make the same
generations as one.

**A trial's network** (:meth:`MetaPruning.network`, for export and fine-tuning) is
the generated weights of its encoding with the norm statistics its evaluation
estimated: the network that was scored. ``trial_network(..., weights="original")``
gives its structure with the unpruned model's weights and ``"scratch"`` with fresh
ones, the reference's final step (train the found structure from scratch).
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import numpy as np
import optuna
import torch
from optuna.trial import TrialState
from torch import nn

from ...data.batches import as_source, random_batches
from ...engine.criteria import get_criterion
from ...evaluators.accuracy import recalibrate_batchnorm
from ...utils import num_threads
from .. import attrs
from ..artifacts import artifact_store, load_state, remove, save_state
from ..ledger import failure_reason
from ..pruningnet import FORMS, PruningNet, PruningNetTrainer, check_training, width_choices
from ..queue import enqueue_batch, enqueue_task
from ..strategy import Action, SearchContext, Strategy, TrialNetwork, exactly

TAG = "metapruning"  # a candidate's {"generation", "genes", "of", "origin"}; the training task's {"task": "train"}
NET = "metapruning_net"  # the study's PruningNet checkpoints, newest first: [{"step", "artifact"}]
EVALUATED = "metapruning_evaluated"  # a trial's artifact: the tensors its evaluation changed (norm statistics)
LOSS_CURVE = "PruningNet training loss"
KEEP_SAVED = 2
POOL = 50  # the reference's select_num: parents are drawn from the best 50 ever evaluated


class MetaPruning(Strategy):
    """MetaPruning: train a PruningNet, then evolve encodings (see the module docstring).

    Args:
        train_steps: SGD steps of PruningNet training (at least 1).
        lr, momentum, weight_decay, batch_size, label_smoothing: the training's SGD (the learning rate decays
            linearly to 0, as the reference's MobileNet recipe).
        distill: the weight of distillation from the unpruned model in the training loss (0: labels only).
        temperature: the distillation temperature.
        form: the generators, ``"compact"`` (default) or ``"faithful"`` (the reference's), see
            :class:`~autoprune.search.pruningnet.PruningNet`.
        hidden: the generators' hidden width.
        widths: ``"reference"`` (31 ratios 0.10 ... 1.00 of each group) or ``"round_to"`` (every multiple).
        population, parents, mutations, crossovers, mutation_prob: the evolution (the reference's 50, 10, 25,
            25, 0.1).
        checkpoint_every: training steps between checkpoints.
        recalibration_batches: training batches that re-estimate a candidate's BatchNorm statistics before it is
            scored; None (default): 100, unless the evaluator re-estimates them itself (``AccuracyEvaluator``'s
            ``bn_recalibration_batches``); 0: never.
        artifact_dir: where checkpoints are saved (default: next to the study's file); with workers on several
            machines, a folder they all share.
    """

    name = "metapruning"
    projects = False  # a candidate's encoding is its network; children over the budget are rejected instead
    queued_only = True
    reconstructs = False  # its candidates' weights are generated, not pruned from trained ones

    def __init__(
        self,
        train_steps: int = 1000,
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        batch_size: int = 128,
        label_smoothing: float = 0.1,
        distill: float = 0.0,
        temperature: float = 4.0,
        form: str = "compact",
        hidden: int = 64,
        widths: str = "reference",
        population: int = 50,
        parents: int = 10,
        mutations: int = 25,
        crossovers: int = 25,
        mutation_prob: float = 0.1,
        checkpoint_every: int = 100,
        recalibration_batches: int | None = None,
        artifact_dir: str | None = None,
    ) -> None:
        check_training(train_steps, lr, batch_size, label_smoothing, distill, temperature)
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {form!r}")
        for label, value, low in (
            ("population", population, 1),
            ("parents", parents, 1),
            ("mutations", mutations, 0),
            ("crossovers", crossovers, 0),
            ("checkpoint_every", checkpoint_every, 1),
            ("hidden", hidden, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{label} must be an integer >= {low}, got {value!r}")
        if mutations + crossovers > population:
            raise ValueError(f"mutations + crossovers ({mutations} + {crossovers}) exceed the population {population}")
        if not (isinstance(mutation_prob, (int, float)) and 0 < mutation_prob <= 1):
            raise ValueError(f"mutation_prob must be in (0, 1], got {mutation_prob!r}")
        if recalibration_batches is not None and (
            isinstance(recalibration_batches, bool) or not isinstance(recalibration_batches, int)
        ):
            raise ValueError(f"recalibration_batches must be an integer >= 0 or None, got {recalibration_batches!r}")
        self.training = dict(
            steps=train_steps,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            batch_size=batch_size,
            label_smoothing=label_smoothing,
            distill=distill,
            temperature=temperature,
        )
        self.form, self.hidden, self.widths = form, hidden, widths
        self.population, self.parents, self.mutations, self.crossovers = population, parents, mutations, crossovers
        self.mutation_prob = float(mutation_prob)
        self.checkpoint_every, self.recalibration_batches, self.artifact_dir = (
            checkpoint_every,
            recalibration_batches,
            artifact_dir,
        )
        self._net: tuple[str, PruningNet] | None = None
        self._built: dict[str, torch.Tensor] | None = None
        self._choices: tuple[tuple, list[list[int]]] | None = None

    def sampler(self, ctx: SearchContext) -> optuna.samplers.BaseSampler:
        return optuna.samplers.RandomSampler(seed=ctx.seed)  # never asked: every candidate is enqueued

    # -- checks ------------------------------------------------------------------------------------
    def setup(self, ctx: SearchContext) -> None:
        """Refuse, before anything is trained, a search without a budget, a criterion that needs data, or a
        budget no encoding meets."""
        if not ctx.projector.targets:
            raise ValueError("MetaPruning searches under a budget: give one, e.g. Budget(macs=0.5)")
        if get_criterion(ctx.criterion).needs_data:
            raise ValueError(
                f"MetaPruning orders each group's channels once by a criterion of the trained model; "
                f"{ctx.criterion!r} needs calibration data: use a weight criterion such as 'l1' or 'l2'"
            )
        choices = self.choices(ctx)
        smallest = [0] * len(choices)
        if not ctx.projector.fits(self.plan(ctx, smallest)):
            costs = ctx.projector.costs(self.plan(ctx, smallest))
            over = ", ".join(
                f"{m} {costs[m]:.4g} > {ctx.projector.limit(m):.4g}"
                for m in ctx.projector.targets
                if costs[m] > ctx.projector.limit(m)
            )
            raise ValueError(
                f"no MetaPruning candidate meets the budget: even the narrowest (every group at its smallest "
                f"width) costs {over}. Loosen the budget, or allow narrower groups (max_sparsity, widths='round_to')"
            )

    def choices(self, ctx: SearchContext) -> list[list[int]]:
        """The channel counts each group's gene chooses from."""
        key = (id(ctx.space), ctx.max_sparsity)
        if self._choices is None or self._choices[0] != key:
            self._choices = (key, width_choices(ctx.space, self.widths, ctx.max_sparsity))
        return self._choices[1]

    def counts(self, ctx: SearchContext, genes: list[int]) -> list[int]:
        """The channels each group keeps under an encoding."""
        return [c[g] for c, g in zip(self.choices(ctx), genes)]

    def plan(self, ctx: SearchContext, genes: list[int]) -> dict[str, float]:
        """The plan of an encoding."""
        return ctx.space.plan_keeping(self.counts(ctx, genes))

    # -- the PruningNet: trained once, as a task --------------------------------------------------------
    def _store(self, ctx: SearchContext):  # noqa: ANN202
        return artifact_store(ctx.study, self.artifact_dir)

    def _new_net(self, ctx: SearchContext) -> PruningNet:
        return PruningNet(
            ctx.space,
            form=self.form,
            hidden=self.hidden,
            criterion=ctx.criterion,
            widths=self.widths,
            max_sparsity=ctx.max_sparsity,
            seed=ctx.base_seed,
        )

    def _trained(self, ctx: SearchContext) -> dict | None:
        saved = ctx.study.user_attrs.get(NET, [])
        return saved[0] if saved and saved[0]["step"] >= self.training["steps"] else None

    def net(self, ctx: SearchContext) -> PruningNet:
        """The trained PruningNet (loaded from the study's newest checkpoint, once per process)."""
        final = self._trained(ctx)
        if final is None:
            raise ValueError(f"study {ctx.study.study_name!r} has no trained PruningNet yet")
        if self._net is None or self._net[0] != final["artifact"]:
            state = load_state(self._store(ctx), final["artifact"])
            if state is None:
                raise ValueError(f"the PruningNet checkpoint {final['artifact']} is missing from the artifact store")
            net = self._new_net(ctx)
            net.load_state_dict(state["net"])
            self._net = (final["artifact"], net.eval())
        return self._net[1]

    def run_task(self, ctx: SearchContext, trial: optuna.Trial) -> None:
        """Train the PruningNet, from the newest checkpoint if there is one, checkpointing as it goes."""
        if ctx.train_data is None:
            raise ValueError(
                "MetaPruning trains its PruningNet on training data: use the accuracy evaluator with train_data, "
                "or pass search(..., train_data=...)"
            )
        net = self._new_net(ctx)
        trainer = PruningNetTrainer(net, ctx.train_data, seed=ctx.base_seed, **self.training)
        store = self._store(ctx)
        for saved in ctx.study.user_attrs.get(NET, []):
            state = load_state(store, saved["artifact"])
            if state is not None:
                trainer.load_state_dict(state)
                break

        def checkpoint(tr: PruningNetTrainer) -> None:
            artifact = f"pruningnet-{tr.step}-{uuid.uuid4().hex[:12]}.pt"
            save_state(store, artifact, tr.state_dict())
            saved = ctx.study.user_attrs.get(NET, [])
            kept = [{"step": tr.step, "artifact": artifact}, *saved][:KEEP_SAVED]
            ctx.study.set_user_attr(NET, kept)
            curves = dict(ctx.study.user_attrs.get(attrs.CURVES, {}))
            curves[LOSS_CURVE] = _curve(tr.losses)
            ctx.study.set_user_attr(attrs.CURVES, curves)
            for old in saved[KEEP_SAVED - 1 :]:
                remove(store, old["artifact"])

        def progress(step: int, steps: int) -> None:
            if ctx.progress is not None:
                ctx.progress("PruningNet training", step, steps)

        with num_threads(getattr(ctx.evaluator, "threads", None)):
            trainer.run(every=self.checkpoint_every, checkpoint=checkpoint, progress=progress)

    # -- evolution, re-derived from the study ------------------------------------------------------------
    def next_action(self, ctx: SearchContext) -> Action:
        """Train the PruningNet first (one task trial); then evaluate the current generation, enqueueing the next
        once it has finished."""
        trials = [t for t in ctx.study.get_trials(deepcopy=False) if TAG in t.user_attrs]
        trials = [t for t in trials if not t.user_attrs.get(attrs.DISCARDED)]
        if self._trained(ctx) is None:
            return self._training_action(ctx, [t for t in trials if "task" in t.user_attrs[TAG]])
        candidates = [t for t in trials if "generation" in t.user_attrs[TAG]]
        generation = max((t.user_attrs[TAG]["generation"] for t in candidates), default=-1)
        if generation >= 0:
            mine = [t for t in candidates if t.user_attrs[TAG]["generation"] == generation]
            if any(t.state == TrialState.WAITING for t in mine):
                return Action.ASK
            live = [t for t in mine if not t.user_attrs.get(attrs.STALE)]
            finished = [t for t in live if t.state in (TrialState.COMPLETE, TrialState.FAIL)]
            if len(finished) < mine[0].user_attrs[TAG]["of"]:
                return Action.WAIT  # the rest of this generation is being evaluated by other workers
        children = self.generation(ctx, generation + 1, candidates)
        if not children:
            return Action.STOP  # every encoding the budget allows has been tried
        n = generation + 1
        enqueue_batch(
            ctx,
            f"{TAG}:generation:{n}",
            [
                (
                    self.plan(ctx, genes),
                    {
                        TAG: {"generation": n, "genes": genes, "of": len(children), "origin": origin},
                        attrs.ROUND: n,
                        attrs.PHASE: "evolution",
                    },
                )
                for genes, origin in children
            ],
        )
        return Action.ASK

    def _training_action(self, ctx: SearchContext, tasks: list[optuna.trial.FrozenTrial]) -> Action:
        if any(t.state == TrialState.WAITING for t in tasks):
            return Action.ASK
        if any(t.state == TrialState.RUNNING for t in tasks):
            return Action.WAIT
        failed = [t for t in tasks if t.state == TrialState.FAIL and not t.user_attrs.get(attrs.STALE)]
        if failed:
            error = failure_reason(failed[-1].user_attrs.get(attrs.ERROR))
            raise ValueError(f"PruningNet training failed (trial {failed[-1].number}): {error}")
        if ctx.train_data is None:
            raise ValueError(
                "MetaPruning trains its PruningNet on training data: use the accuracy evaluator with train_data, "
                "or pass search(..., train_data=...)"
            )
        enqueue_task(ctx, f"{TAG}:train", "PruningNet training", {TAG: {"task": "train"}, attrs.PHASE: "training"})
        return Action.ASK

    def generation(
        self, ctx: SearchContext, n: int, candidates: list[optuna.trial.FrozenTrial]
    ) -> list[tuple[list[int], str]]:
        """Generation ``n``'s encodings and where each came from (``mutation``, ``crossover``, ``random``): a
        function of the candidates so far and the seed only, so every worker computes the same one."""
        choices = self.choices(ctx)
        sizes = [len(c) for c in choices]
        rng = np.random.default_rng(_seed(ctx.base_seed, "generation", n))
        seen = {tuple(t.user_attrs[TAG]["genes"]) for t in candidates}
        scores: dict[tuple, float] = {}
        for t in candidates:
            if t.state == TrialState.COMPLETE:
                scores[tuple(t.user_attrs[TAG]["genes"])] = t.values[0]
        pool = sorted(scores, key=lambda g: (-scores[g], g))[:POOL]
        parents = pool[: self.parents]
        out: list[tuple[list[int], str]] = []

        def offer(child: tuple[int, ...], origin: str) -> None:
            if child not in seen and ctx.projector.fits(self.plan(ctx, list(child))):
                seen.add(child)
                out.append(([int(x) for x in child], origin))

        if parents:
            for _ in range(10 * self.mutations):
                if sum(o == "mutation" for _, o in out) >= self.mutations:
                    break
                parent = np.array(parents[rng.integers(len(parents))])
                change = rng.random(len(sizes)) < self.mutation_prob
                shift = np.array([rng.integers(1, s) if s > 1 else 0 for s in sizes])
                offer(tuple(np.where(change, (parent + shift) % sizes, parent)), "mutation")
            if len(parents) >= 2:
                for _ in range(10 * self.crossovers):
                    if sum(o == "crossover" for _, o in out) >= self.crossovers:
                        break
                    i, j = rng.choice(len(parents), size=2, replace=False)
                    mask = rng.random(len(sizes)) < 0.5
                    offer(tuple(np.where(mask, parents[i], parents[j])), "crossover")
        for _ in range(100 * self.population):
            if len(out) >= self.population:
                break
            genes = [int(rng.integers(s)) for s in sizes]
            offer(tuple(self._onto_budget(ctx, genes)), "random")
        return out

    def _onto_budget(self, ctx: SearchContext, genes: list[int]) -> list[int]:
        """A random encoding over the budget scaled onto it (keep ratios times one factor), each gene then
        rounded down to a width it allows."""
        plan = self.plan(ctx, genes)
        if ctx.projector.fits(plan):
            return genes
        projected = ctx.projector.project(plan, fill=False)
        if projected is None:
            return genes
        kept = ctx.space.kept_counts(projected)
        return [max(0, int(np.searchsorted(c, k, side="right")) - 1) for c, k in zip(self.choices(ctx), kept)]

    # -- candidates --------------------------------------------------------------------------------
    def build(self, ctx: SearchContext, trial: optuna.Trial, plan: dict[str, float]) -> nn.Module:
        """The network the PruningNet generates for the trial's encoding, its BatchNorm statistics re-estimated
        here unless the evaluator does it."""
        counts = self.counts(ctx, trial.user_attrs[TAG]["genes"])
        if ctx.space.kept_counts(plan).tolist() != counts:
            raise RuntimeError(f"trial {trial.number}'s plan does not keep its encoding's channels {counts}")
        model = self.net(ctx).network(counts)
        self._built = {k: v.detach().clone() for k, v in model.state_dict().items()}
        batches = self.recalibration_batches
        if batches is None:
            batches = 0 if getattr(ctx.evaluator, "bn_recalibration_batches", 0) else 100
        if batches and ctx.train_data is not None:
            source = as_source(ctx.train_data, "train_data")
            if isinstance(source, torch.utils.data.DataLoader):
                inputs = (batch[:-1] for _, batch in zip(range(batches), source))
            else:
                plan_ = random_batches(len(source), 128, batches, torch.Generator().manual_seed(ctx.base_seed))
                inputs = (source.batch(key)[0] for key in plan_)
            recalibrate_batchnorm(model, inputs)
        return model

    def after_evaluation(self, ctx: SearchContext, trial: optuna.Trial, model: nn.Module) -> None:
        """Save what the evaluation changed in the generated network (its norm statistics, or weights if it
        fine-tuned) as a study artifact, so the trial's network is the one that was scored."""
        built, self._built = self._built, None
        changed = {
            k: v.detach().cpu().clone()
            for k, v in model.state_dict().items()
            if built is None or k not in built or not torch.equal(v.detach().cpu(), built[k])
        }
        if not changed:
            return
        artifact = f"metapruning-trial-{trial.number}-{uuid.uuid4().hex[:12]}.pt"
        save_state(self._store(ctx), artifact, changed)
        trial.set_user_attr(EVALUATED, artifact)

    def network(self, ctx: SearchContext, trial: optuna.trial.FrozenTrial) -> TrialNetwork:
        """The trial's own network: the generated weights of its encoding, with what its evaluation changed."""
        net = self.net(ctx)
        counts = self.counts(ctx, trial.user_attrs[TAG]["genes"])
        keep = net.keep(counts)
        model = ctx.space.model
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        full = net.full_weights(counts)
        first = {id(p): n for n, p in model.named_parameters()}  # the generated name of a shared parameter
        for name, p in model.named_parameters(remove_duplicate=False):
            if name in state:
                state[name] = full[first[id(p)]]
        if EVALUATED in trial.user_attrs:
            evaluated = load_state(self._store(ctx), trial.user_attrs[EVALUATED])
            if evaluated is None:
                raise ValueError(f"trial {trial.number}'s evaluated state is missing from the artifact store")
            indices = ctx.space.parameter_indices(keep)
            for name, value in evaluated.items():
                dims = indices.get(name)
                if not dims:
                    state[name] = value
                    continue
                grid = torch.meshgrid(
                    *[dims.get(d, torch.arange(state[name].shape[d])) for d in range(value.dim())], indexing="ij"
                )
                state[name][grid] = value.to(state[name].dtype)
        space = ctx.space.over(state)
        kept = {g.name: keep[g.name].tolist() if g.name in keep else list(range(g.channels)) for g in space.groups}
        scores = {g.name: exactly(kept[g.name], g.channels) for g in space.groups}
        return TrialNetwork(space, dict(trial.user_attrs[attrs.PLAN]), scores)


def _seed(seed: int, *key: Any) -> int:
    return int(hashlib.sha256(":".join(map(str, (seed, *key))).encode()).hexdigest()[:15], 16)


def _curve(losses: list[float], points: int = 500) -> dict[str, Any]:
    """The training loss as a curve of at most ``points`` points (the mean of each run of steps)."""
    per = max(1, -(-len(losses) // points))
    ys = [float(np.mean(losses[i : i + per])) for i in range(0, len(losses), per)]
    xs = [min(i + per, len(losses)) for i in range(0, len(losses), per)]
    return {"x": xs, "y": ys, "xlabel": "training step", "ylabel": f"loss (mean of {per} steps)"}
