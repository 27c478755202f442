"""The search loop: propose -> project onto the budget -> apply -> evaluate -> record, resumably."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import warnings
from typing import Any, Callable, Iterable

import optuna
from optuna.samplers import BaseSampler
from optuna.trial import TrialState

from ..engine import PruningSpace
from ..engine.latency import LatencyTable
from ..utils import fingerprint
from ..version import __version__
from . import (
    attrs,
    strategies,  # noqa: F401 - registers the built-in strategies
)
from .budget import Budget, Projector
from .config import SearchConfig, criterion_name, resolve
from .ledger import (
    HOST,
    Liveness,
    StorageError,
    counted,
    failure,
    heartbeat,
    is_sqlite,
    is_task,
    latency_measurement,
    live_worker_elsewhere,
    load_existing,
    make_storage,
    recover,
)
from .queue import is_duplicate
from .strategy import STRATEGIES, Action, SearchContext, Strategy, TrialNetwork, get_strategy

log = logging.getLogger("autoprune")

#: What :func:`trial_network` can give a trial's structure: its own weights, the unpruned model's, or fresh ones.
WEIGHTS = ("trial", "original", "scratch")

Callback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


def search(
    space: PruningSpace,
    evaluator: Callable[[Any], Any],
    budget: Budget | None = None,
    *,
    config: SearchConfig | None = None,
    calibration: Any = None,
    callbacks: Iterable[Callback] = (),
    timeout: float | None = None,
    latency_table: LatencyTable | None = None,
    join: bool = False,
    heartbeat_interval: float = 10.0,
    train_data: Any = None,
    progress: Callable[[str, int, int], None] | None = None,
    **settings: Any,
) -> optuna.Study:
    """Search per-group sparsities for ``space`` and record every candidate in an Optuna study.

    What the search is comes from ``config`` (a :class:`SearchConfig`) and/or its
    fields given as keywords (``strategy=NAME``, ``n_trials=100``, ``storage=...``,
    ``study_name=...``, ``criterion``, ``seed``, ``multi_objective``,
    ``max_sparsity``, ``strategy_options``, ``verify_latency``, ``latency_margin``),
    which override it. The other arguments say how this run goes: ``calibration``
    batches for data-driven criteria, ``callbacks(study, trial)`` after each trial,
    a ``timeout`` in seconds, a prebuilt ``latency_table``, ``join`` a study made by
    :func:`create_study` as one of several workers, the ``heartbeat_interval``, the
    ``train_data`` a strategy that trains (MetaPruning) uses (default: the evaluator's
    ``train_data``), and ``progress(what, done, total)``, called as such training goes.

    Run it again with the same configuration to resume: completed trials are kept,
    a trial interrupted by a crash is retried with exactly its proposal, and
    ``n_trials`` is the total for the whole study. Returns the study;
    :func:`best_plan` reads the result.

    Several workers share one search when each calls ``search(..., join=True)`` on
    a study made once by :func:`create_study`, on a storage several processes can
    use (a journal file on one machine, PostgreSQL across machines): together they
    evaluate exactly ``n_trials`` trials, and a dead worker's trial (no heartbeat for
    three ``heartbeat_interval``) is failed and its plan retried by another.

    A latency budget uses ``latency_table``, else the table cached in the study
    (if built for this model, device and thread count), else one built now
    (1 thread, the example inputs' batch) and cached in the study. The table's
    predictions propose and project plans; with ``verify_latency`` (the default)
    every candidate is also measured beside the unpruned model under the table's
    conditions (``measured_latency_ms``, ``measured_full_ms``,
    ``measured_latency_ratio``; ``measured_clean``, the fraction of timing blocks no
    other process disturbed), its latency constraint is that measurement, and
    the projection is calibrated by the measurements so far, so the best trial
    meets the budget as measured. Measurements are noisy, so a candidate must
    measure under the budget less ``latency_margin`` (a fraction of it: 3% by
    default, 60% -> 58.2%). ``verify_latency=False`` trusts the table.
    """
    if not callable(evaluator):
        raise TypeError(f"evaluator must be callable (model -> float or dict), got {type(evaluator).__name__}")
    if heartbeat_interval <= 0:
        raise ValueError(f"heartbeat_interval must be positive, got {heartbeat_interval!r}")
    config = resolve(config, budget, settings)
    from ..engine.criteria import get_criterion
    from ..evaluators import normalize_result

    criterion = get_criterion(config.criterion)
    if criterion.needs_data and calibration is None:  # otherwise every trial would fail on the same missing input
        raise ValueError(
            f"criterion {criterion.name!r} scores channels on data: pass calibration= a few batches of training "
            "inputs (e.g. a list of tensors), or choose a criterion that reads only the weights (l1, l2, fpgm, ...)"
        )
    if config.reconstruct and calibration is None:
        raise ValueError(
            "reconstruct=True refits each candidate's layers on data: pass calibration= a few batches of training "
            "inputs (e.g. a list of tensors)"
        )

    study, strat, ctx = _open(space, config, latency_table, join=join)
    ctx.evaluator = evaluator
    ctx.train_data = train_data if train_data is not None else getattr(evaluator, "train_data", None)
    ctx.progress = progress
    ctx.calibration = calibration
    if not join:
        strat.setup(ctx)
    orphans = []  # SQLite has one process per study (a live second one was refused): what is RUNNING, a crash left
    if is_sqlite(study._storage):
        orphans = [t._trial_id for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    liveness = Liveness(heartbeat_interval, orphans)
    poll = min(heartbeat_interval, 2.0)
    dists = ctx.distributions()
    callbacks = list(callbacks)
    n_trials = config.n_trials
    started = time.monotonic()

    while timeout is None or time.monotonic() - started < timeout:
        trials = study.get_trials(deepcopy=False)
        if recover(study, liveness, trials):
            continue
        if ctx.projector.verify_latency:
            ctx.projector.calibrate(_latency_samples(trials))
        done, running = counted(trials), sum(t.state == TrialState.RUNNING for t in trials)
        if done >= n_trials:
            break
        action = strat.next_action(ctx)
        if action is Action.STOP:
            break
        candidates = sum(t.state == TrialState.RUNNING and not is_task(t) for t in trials)
        if action is Action.ASK and done + candidates >= n_trials:
            # Other workers' trials fill the budget: stay, so that if one of them dies its plan is retried here.
            action = Action.WAIT
        if action is Action.WAIT:
            if not running:
                break
            time.sleep(poll)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trial = study.ask(fixed_distributions=dists)
        task = attrs.TASK in trial.user_attrs
        with heartbeat(study, trial, heartbeat_interval):
            trials = study.get_trials(deepcopy=False)
            if not task and _surplus(trials, trial, n_trials):  # several workers asked for the last trials at once
                study._storage.set_trial_state_values(trial._trial_id, TrialState.WAITING)
                continue
            reason = _discard(trials, trial._trial_id, strat)
            if reason:
                trial.set_user_attr(attrs.DISCARDED, reason)
                study.tell(trial, state=TrialState.PRUNED)
                continue
            if task:
                state, values = _run_task(trial, ctx, strat), None
            else:
                state, values = _run_trial(trial, ctx, evaluator, normalize_result, strat, calibration)
        frozen = study.tell(trial, values=values, state=state, skip_if_finished=True)
        if task:
            continue
        for cb in callbacks:
            cb(study, frozen)
    return study


def create_study(
    space: PruningSpace,
    budget: Budget | None = None,
    *,
    config: SearchConfig | None = None,
    latency_table: LatencyTable | None = None,
    **settings: Any,
) -> optuna.Study:
    """Create a search's study once, before its workers join it (``search(..., join=True)``).

    Takes the search's configuration as :func:`search` does. Creates the storage's
    schema and the study, records the configuration the workers must match, and the
    strategy's seed proposals. Calling it again on the same study with the same
    configuration changes nothing.
    """
    study, strat, ctx = _open(space, resolve(config, budget, settings), latency_table, join=False)
    strat.setup(ctx)
    return study


def _open(
    space: PruningSpace, config: SearchConfig, latency_table: LatencyTable | None, *, join: bool
) -> tuple[optuna.Study, Strategy, SearchContext]:
    """Validate the configuration, open (or create) the study, check its configuration, make the context."""
    if not space.groups:
        raise ValueError("the space has no prunable channel groups: nothing to search")
    budget, name = config.budget, config.study_name
    strat = get_strategy(config.strategy, **dict(config.strategy_options))
    if config.reconstruct and not strat.reconstructs:
        raise ValueError(
            f"strategy {strat.name!r} does not prune trained weights, so its candidates cannot be reconstructed: "
            "drop reconstruct (reconstruct_batches in a study file)"
        )
    needs_table = budget is not None and budget.latency is not None
    # raises for an unreachable budget; a latency budget is checked once its table is known
    projector = None if needs_table else Projector(space, budget, config.max_sparsity)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = ["maximize", "minimize"] if config.multi_objective else ["maximize"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if join:
            study = load_existing(config.storage, name)
        else:
            study = optuna.create_study(
                storage=make_storage(config.storage, name),
                study_name=name,
                directions=directions,
                load_if_exists=True,
            )
    if is_sqlite(study._storage) and (other := live_worker_elsewhere(study)) is not None:
        raise StorageError(
            f"study {name!r} is being searched by another process (pid {other['pid']}) on SQLite, which "
            "supports one process: use a journal file (journal:NAME.journal) or PostgreSQL for several workers"
        )
    if projector is None:
        table = latency_table or _cached_table(study, space)
        if table is None and join:
            raise ValueError(f"study {name!r} has no latency table for this model: run `autoprune study create`")
        projector = Projector(
            space,
            budget,
            config.max_sparsity,
            latency_table=table or LatencyTable.build(space),
            verify_latency=config.verify_latency,
            latency_margin=config.latency_margin,
        )
        if study.user_attrs.get(attrs.LATENCY_TABLE) != projector.latency_table.to_dict():
            study.set_user_attr(attrs.LATENCY_TABLE, projector.latency_table.to_dict())
    verify = {"verify": projector.verify_latency, "margin": projector.latency_margin} if needs_table else None
    _check_config(study, space, config, strat, directions, verify)
    if config.multi_objective and not join:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(["score", "macs"])
    # A resumed run, or another worker, must not replay the same random proposals.
    worker = f":{HOST}:{os.getpid()}" if join else ""
    run_seed = int(hashlib.sha256(f"{config.seed}:{len(study.trials)}{worker}".encode()).hexdigest()[:8], 16)
    ctx = SearchContext(
        space,
        projector,
        study,
        run_seed,
        config.max_sparsity,
        config.multi_objective,
        base_seed=config.seed,
        criterion=config.criterion,
        n_trials=config.n_trials,
        reconstruct=config.reconstruct,
    )
    study.sampler = _RecordedProposals(strat.sampler(ctx), ctx.distributions())
    return study, strat, ctx


class _RecordedProposals(BaseSampler):
    """Wraps a strategy's sampler so that a trial's whole proposal is written in one storage call
    (:data:`~autoprune.search.attrs.PROPOSAL`) before Optuna writes its parameters one by one.

    A worker killed between those writes leaves a trial with only some parameters;
    its retry then gets exactly the proposal it was given, not a new sample of the rest.
    The wrapped sampler sees the same calls, in the same order, as without the wrapper.
    """

    def __init__(self, sampler: BaseSampler, distributions: dict[str, Any]) -> None:
        self.sampler = sampler
        self.distributions = distributions

    def infer_relative_search_space(self, study: optuna.Study, trial: Any) -> dict[str, Any]:
        return dict(self.distributions)

    def sample_relative(self, study: optuna.Study, trial: Any, search_space: dict[str, Any]) -> dict[str, Any]:
        # (Optuna takes an enqueued trial's fixed parameters without asking: only one enqueued in part gets here.)
        fixed = trial.system_attrs.get("fixed_params", {})
        space = self.sampler.infer_relative_search_space(study, trial)
        plan = dict(self.sampler.sample_relative(study, trial, space)) if space else {}
        for name, dist in self.distributions.items():
            if name in fixed:
                plan[name] = float(fixed[name])
            elif name not in plan:
                plan[name] = self.sampler.sample_independent(study, trial, name, dist)
        plan = {n: float(v) for n, v in plan.items()}
        study._storage.set_trial_user_attr(trial._trial_id, attrs.PROPOSAL, plan)
        return plan

    def sample_independent(self, study, trial, param_name, param_distribution):  # noqa: ANN001, ANN201
        return self.sampler.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: Any) -> None:
        self.sampler.before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:  # noqa: ANN001
        self.sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.sampler.reseed_rng()


def _discard(trials: list[optuna.trial.FrozenTrial], trial_id: int, strat: Strategy) -> str | None:
    """Why this freshly asked trial must not be evaluated, if it must not."""
    if is_duplicate(trials, trial_id):
        return "duplicate proposal"
    me = next(t for t in trials if t._trial_id == trial_id)
    if not strat.accepts(me):
        return "nothing to propose: another worker took the last queued proposal"
    return None


def _surplus(trials: list[optuna.trial.FrozenTrial], trial: optuna.Trial, n_trials: int) -> bool:
    """True if the trials counted, or running and asked before this one, already fill the study's budget.

    Trial ids are assigned atomically by the storage, so every worker sees the same order.
    """
    ahead = sum(t.state == TrialState.RUNNING and t._trial_id < trial._trial_id and not is_task(t) for t in trials)
    return counted(trials) + ahead >= n_trials


def _run_trial(
    trial: optuna.Trial,
    ctx: SearchContext,
    evaluator: Callable[[Any], Any],
    normalize_result: Callable[[Any], tuple[float, dict]],
    strat: Strategy,
    calibration: Any,
) -> tuple[TrialState, list[float] | None]:
    space, projector, multi_objective = ctx.space, ctx.projector, ctx.multi_objective
    raw = {n: float(trial.params[n]) for n in ctx.names}
    plan = projector.project(raw, fill=not multi_objective) if strat.projects else raw
    criterion = ctx.criterion
    reconstruct = calibration if ctx.reconstruct else None
    trial.set_user_attr(attrs.STRATEGY, strat.name)
    trial.set_user_attr(attrs.CRITERION, criterion_name(criterion))
    if plan is None:
        trial.set_user_attr(attrs.ERROR, "no scaling of this plan meets the budget")
        return TrialState.PRUNED, None
    costs = projector.costs(plan)
    trial.set_user_attr(attrs.PLAN, plan)
    trial.set_user_attr(attrs.MACS, costs["macs"])
    trial.set_user_attr(attrs.PARAMS, costs["params"])
    if "latency_ms" in costs:
        trial.set_user_attr(attrs.LATENCY_MS, costs["latency_ms"])
    for metric, target in projector.targets.items():
        if not (metric == "latency_ms" and projector.verify_latency):  # that one is measured below
            trial.set_constraint(metric, float(costs[metric] - target))
    t0 = time.perf_counter()
    try:
        model = strat.build(ctx, trial, plan)
        if model is None:
            model = space.apply(plan, criterion, calibration=calibration, reconstruct=reconstruct)
        if projector.verify_latency:
            measured = projector.latency_table.measure(model)
            trial.set_user_attr(attrs.MEASURED_MS, measured["ms"])
            trial.set_user_attr(attrs.MEASURED_FULL_MS, measured["full_ms"])
            trial.set_user_attr(attrs.MEASURED_RATIO, measured["ratio"])
            trial.set_user_attr(attrs.MEASURED_CLEAN, measured["clean"])
            trial.set_user_attr(attrs.LATENCY_SCALE, projector.latency_scale)
            trial.set_constraint("latency_ms", projector.measured_excess(measured))
        result = evaluator(model)
        try:
            score, extras = normalize_result(result)
        except (TypeError, ValueError) as err:  # what it returned is no score: say so in one line
            raise _NoScore(str(err)) from None
        strat.after_evaluation(ctx, trial, model)
    except _NoScore as err:
        trial.set_user_attr(attrs.ERROR, str(err))
        trial.set_user_attr(attrs.EVAL_SECONDS, time.perf_counter() - t0)
        log.warning("trial %d failed: %s", trial.number, err)
        return TrialState.FAIL, None
    except Exception as err:  # noqa: BLE001 - a failing evaluator fails its trial, not the study
        trial.set_user_attr(attrs.ERROR, failure(err))
        trial.set_user_attr(attrs.EVAL_SECONDS, time.perf_counter() - t0)
        log.warning("trial %d failed: %s: %s", trial.number, type(err).__name__, err)
        return TrialState.FAIL, None
    trial.set_user_attr(attrs.EVAL_SECONDS, time.perf_counter() - t0)
    for k, v in extras.items():
        if isinstance(v, (int, float, str, bool)) and k != "score":
            trial.set_user_attr(k, v)
    return TrialState.COMPLETE, ([score, float(costs["macs"])] if multi_objective else [score])


class _NoScore(ValueError):
    """An evaluator returned something that is not a score (recorded as its one-line message, no traceback)."""


def _run_task(trial: optuna.Trial, ctx: SearchContext, strat: Strategy) -> TrialState:
    """Run a strategy's task trial: PRUNED when done (never counted), FAIL with the error recorded."""
    trial.set_user_attr(attrs.STRATEGY, strat.name)
    t0 = time.perf_counter()
    try:
        strat.run_task(ctx, trial)
    except Exception as err:  # noqa: BLE001 - recorded; the strategy decides what a failed task means
        trial.set_user_attr(attrs.ERROR, failure(err))
        log.warning("task %d (%s) failed: %s: %s", trial.number, trial.user_attrs[attrs.TASK], type(err).__name__, err)
        return TrialState.FAIL
    finally:
        trial.set_user_attr(attrs.EVAL_SECONDS, time.perf_counter() - t0)
    return TrialState.PRUNED


def _latency_samples(trials: list[optuna.trial.FrozenTrial]) -> list[tuple[float, dict[str, float]]]:
    """(predicted ms, measurement) of every completed trial whose latency was measured."""
    return [
        (t.user_attrs[attrs.LATENCY_MS], m)
        for t in trials
        if t.state == TrialState.COMPLETE and (m := latency_measurement(t)) is not None
    ]


def _cached_table(study: optuna.Study, space: PruningSpace) -> LatencyTable | None:
    """The study's latency table, if it was built for this model on this device with one thread."""
    data = study.user_attrs.get(attrs.LATENCY_TABLE)
    if data is None or data.get("fingerprint") != space.fingerprint():
        return None
    try:
        table = LatencyTable.from_dict(data, space)
    except (ValueError, KeyError):
        return None
    return table if table.matches(device="cpu", threads=1, batch_size=None) else None


def _check_config(
    study: optuna.Study,
    space: PruningSpace,
    config: SearchConfig,
    strat: Strategy,
    directions: list[str],
    verify: dict | None,
) -> None:
    """Record the search's configuration in the study, or check it matches on resume."""
    recorded = {
        "space": space.fingerprint(),
        "weights": fingerprint(space.model, values=True),
        "groups": [g.name for g in space.groups],
        "budget": config.budget.to_dict() if config.budget is not None else None,
        "strategy": strat.name,
        "strategy_options": _jsonable(dict(config.strategy_options)),
        "criterion": config.criterion_name,
        "directions": directions,
        "max_sparsity": config.max_sparsity,
        "verify_latency": verify,
        "reconstruct": config.reconstruct,
    }
    old = study.user_attrs.get(attrs.CONFIG)
    if old is None:
        where = f"{type(strat).__module__}:{type(strat).__qualname__}"  # to rebuild a strategy no one registered
        study.set_user_attr(attrs.CONFIG, {**recorded, "strategy_class": where, "version": __version__})
        return
    diff = [k for k in recorded if k in old and json.dumps(old[k]) != json.dumps(recorded[k])]
    if diff:
        detail = "; ".join(f"{k}: study has {old.get(k)!r}, now {recorded[k]!r}" for k in diff if k != "groups")
        raise ValueError(
            f"study {study.study_name!r} was started with a different configuration ({', '.join(diff)}). "
            f"{detail}. Use another study_name (or storage) for a different search."
        )


def _jsonable(options: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(options, default=repr))


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """The best trial; for a multi-objective study, the best-scoring Pareto point."""
    if len(study.directions) > 1:
        front = study.best_trials
        if not front:
            raise ValueError(f"study {study.study_name!r} has no completed trial yet")
        return max(front, key=lambda t: t.values[0])
    try:
        return study.best_trial
    except ValueError as err:
        raise ValueError(f"study {study.study_name!r} has no completed trial that meets the budget yet") from err


def best_plan(study: optuna.Study) -> dict[str, float]:
    """The evaluated (projected) plan of the best trial; for a multi-objective study, the best-scoring Pareto point."""
    return dict(best_trial(study).user_attrs[attrs.PLAN])


def trial_network(
    study: optuna.Study,
    trial: optuna.trial.FrozenTrial,
    space: PruningSpace,
    *,
    strategy: Strategy | None = None,
    criterion: Any = None,
    weights: str = "trial",
) -> TrialNetwork:
    """The network ``trial`` of ``study`` evaluated, from the strategy that proposed it (see
    :meth:`Strategy.network`): ``trial_network(...).build()`` rebuilds it, and
    ``export(net.space, net.plan, out, criterion=net.criterion)`` writes it.

    ``space`` is the search's space (the unpruned model). The study records the strategy's name and options and
    the criterion's name; pass ``strategy`` / ``criterion`` when the search ran with objects instead.
    ``weights``: ``"trial"`` (the weights the trial scored, e.g. NetAdapt's fine-tuned or MetaPruning's generated
    ones), ``"original"`` (the trial's structure with the unpruned model's weights, chosen by the criterion) or
    ``"scratch"`` (the structure with freshly initialised weights, to train from scratch).
    """
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(map(repr, WEIGHTS))}, got {weights!r}")
    if trial.state != TrialState.COMPLETE or attrs.PLAN not in trial.user_attrs:
        raise ValueError(f"trial {trial.number} of study {study.study_name!r} did not complete")
    recorded = study.user_attrs.get(attrs.CONFIG)
    if recorded is None:
        raise ValueError(f"study {study.study_name!r} was not made by autoprune (it records no search configuration)")
    if strategy is None:
        name = recorded["strategy"]
        spec = name if name in STRATEGIES or "strategy_class" not in recorded else recorded["strategy_class"]
        strategy = get_strategy(spec, **recorded.get("strategy_options", {}))
    ctx = SearchContext(
        space,
        None,
        study,
        0,
        recorded["max_sparsity"],
        len(study.directions) > 1,
        criterion=criterion or trial.user_attrs[attrs.CRITERION],
        reconstruct=bool(recorded.get("reconstruct", False)),
    )
    if weights == "trial":
        return strategy.network(ctx, trial)
    scratch = weights == "scratch"
    plan = dict(trial.user_attrs[attrs.PLAN])
    return TrialNetwork(space, plan, ctx.criterion, from_scratch=scratch, reconstruct=ctx.reconstruct and not scratch)
