"""The search loop: propose -> project onto the budget -> apply -> evaluate -> record, resumably."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import traceback
import warnings
from typing import Any, Callable, Iterable, Mapping

import optuna
import torch
from optuna.trial import TrialState

from .. import __version__
from ..engine import PruningSpace
from ..engine.latency import LatencyTable, space_fingerprint
from . import strategies  # noqa: F401 - registers the built-in strategies
from .budget import Budget, Projector
from .ledger import (
    DISCARDED,
    HOST,
    Liveness,
    StorageError,
    counted,
    heartbeat,
    is_sqlite,
    live_worker_elsewhere,
    load_existing,
    make_storage,
    recover,
)
from .strategy import BATCH, SearchContext, Strategy, get_strategy, is_duplicate

log = logging.getLogger("autoprune")

Callback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


def search(
    space: PruningSpace,
    evaluator: Callable[[Any], Any],
    budget: Budget | None = None,
    *,
    strategy: str | Strategy = "tpe",
    n_trials: int = 100,
    storage: Any = None,
    study_name: str = "autoprune",
    criterion: Any = "l1",
    calibration: Any = None,
    seed: int = 0,
    multi_objective: bool = False,
    max_sparsity: float = 0.95,
    strategy_options: Mapping[str, Any] | None = None,
    callbacks: Iterable[Callback] = (),
    timeout: float | None = None,
    latency_table: LatencyTable | None = None,
    join: bool = False,
    heartbeat_interval: float = 10.0,
    verify_latency: bool = True,
    latency_margin: float = 0.03,
) -> optuna.Study:
    """Search per-group sparsities for ``space`` and record every candidate in an Optuna study.

    Run it again with the same arguments to resume: completed trials are kept,
    a trial interrupted by a crash is retried, and ``n_trials`` is the total for
    the whole study. Returns the study; :func:`best_plan` reads the result.

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
    if not isinstance(n_trials, int) or n_trials < 1:
        raise ValueError(f"n_trials must be a positive integer, got {n_trials!r}")
    if heartbeat_interval <= 0:
        raise ValueError(f"heartbeat_interval must be positive, got {heartbeat_interval!r}")
    from ..evaluators import normalize_result

    study, strat, ctx = _open(
        space,
        budget,
        strategy=strategy,
        storage=storage,
        study_name=study_name,
        criterion=criterion,
        seed=seed,
        multi_objective=multi_objective,
        max_sparsity=max_sparsity,
        strategy_options=strategy_options,
        latency_table=latency_table,
        join=join,
        verify_latency=verify_latency,
        latency_margin=latency_margin,
    )
    if not join:
        strat.setup(ctx)
    orphans = []  # SQLite has one process per study (a live second one was refused): what is RUNNING, a crash left
    if is_sqlite(study._storage):
        orphans = [t._trial_id for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    liveness = Liveness(heartbeat_interval, orphans)
    poll = min(heartbeat_interval, 2.0)
    dists = ctx.distributions()
    callbacks = list(callbacks)
    started = time.monotonic()

    while timeout is None or time.monotonic() - started < timeout:
        trials = study.get_trials(deepcopy=False)
        if recover(study, liveness, trials):
            continue
        if ctx.projector.verify_latency:
            ctx.projector.calibrate(_latency_samples(trials))
        done, running = counted(trials), sum(t.state == TrialState.RUNNING for t in trials)
        if done >= n_trials or strat.finished(ctx):
            break
        # While other workers' trials fill the budget, stay: if one of them dies, its plan is retried here.
        action = "wait" if done + running >= n_trials else strat.prepare(ctx)
        if action == "stop":
            break
        if action == "wait":
            if not running:
                break
            time.sleep(poll)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trial = study.ask(fixed_distributions=dists)
        with heartbeat(study, trial, heartbeat_interval):
            trials = study.get_trials(deepcopy=False)
            if _surplus(trials, trial, n_trials):  # several workers asked for the last trials at once
                study._storage.set_trial_state_values(trial._trial_id, TrialState.WAITING)
                continue
            reason = _discard(trials, trial._trial_id, strat)
            if reason:
                trial.set_user_attr(DISCARDED, reason)
                study.tell(trial, state=TrialState.PRUNED)
                continue
            state, values = _run_trial(trial, ctx, evaluator, normalize_result, strat, criterion, calibration)
        frozen = study.tell(trial, values=values, state=state, skip_if_finished=True)
        for cb in callbacks:
            cb(study, frozen)
    return study


def create_study(
    space: PruningSpace,
    budget: Budget | None = None,
    *,
    strategy: str | Strategy = "tpe",
    storage: Any = None,
    study_name: str = "autoprune",
    criterion: Any = "l1",
    seed: int = 0,
    multi_objective: bool = False,
    max_sparsity: float = 0.95,
    strategy_options: Mapping[str, Any] | None = None,
    latency_table: LatencyTable | None = None,
    verify_latency: bool = True,
    latency_margin: float = 0.03,
) -> optuna.Study:
    """Create a search's study once, before its workers join it (``search(..., join=True)``).

    Creates the storage's schema and the study, records the configuration the
    workers must match, and the strategy's seed proposals. Calling it again on
    the same study with the same configuration changes nothing.
    """
    study, strat, ctx = _open(
        space,
        budget,
        strategy=strategy,
        storage=storage,
        study_name=study_name,
        criterion=criterion,
        seed=seed,
        multi_objective=multi_objective,
        max_sparsity=max_sparsity,
        strategy_options=strategy_options,
        latency_table=latency_table,
        join=False,
        verify_latency=verify_latency,
        latency_margin=latency_margin,
    )
    strat.setup(ctx)
    return study


def _open(
    space,
    budget,
    *,
    strategy,
    storage,
    study_name,
    criterion,
    seed,
    multi_objective,
    max_sparsity,  # noqa: ANN001
    strategy_options,
    latency_table,
    join,
    verify_latency,
    latency_margin,  # noqa: ANN001
) -> tuple[optuna.Study, Strategy, SearchContext]:
    """Validate the arguments, open (or create) the study, check its configuration, make the context."""
    if not 0 < max_sparsity < 1:
        raise ValueError(f"max_sparsity must be in (0, 1), got {max_sparsity!r}")
    if not 0 <= latency_margin < 1:
        raise ValueError(f"latency_margin must be in [0, 1) (a fraction of the budget), got {latency_margin!r}")
    if not space.groups:
        raise ValueError("the space has no prunable channel groups: nothing to search")
    strat = get_strategy(strategy, **dict(strategy_options or {}))
    needs_table = budget is not None and budget.latency is not None
    # raises for an unreachable budget; a latency budget is checked once its table is known
    projector = None if needs_table else Projector(space, budget, max_sparsity)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = ["maximize", "minimize"] if multi_objective else ["maximize"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if join:
            study = load_existing(storage, study_name)
        else:
            study = optuna.create_study(
                storage=make_storage(storage, study_name),
                study_name=study_name,
                directions=directions,
                load_if_exists=True,
            )
    if is_sqlite(study._storage) and (other := live_worker_elsewhere(study)) is not None:
        raise StorageError(
            f"study {study_name!r} is being searched by another process (pid {other['pid']}) on SQLite, which "
            "supports one process: use a journal file (journal:NAME.journal) or PostgreSQL for several workers"
        )
    if projector is None:
        table = latency_table or _cached_table(study, space)
        if table is None and join:
            raise ValueError(f"study {study_name!r} has no latency table for this model: run `autoprune study create`")
        projector = Projector(
            space,
            budget,
            max_sparsity,
            latency_table=table or LatencyTable.build(space),
            verify_latency=verify_latency,
            latency_margin=latency_margin,
        )
        if study.user_attrs.get("latency_table") != projector.latency_table.to_dict():
            study.set_user_attr("latency_table", projector.latency_table.to_dict())
    verify = {"verify": projector.verify_latency, "margin": projector.latency_margin} if needs_table else None
    _check_config(study, space, budget, strat, criterion, directions, max_sparsity, verify)
    if multi_objective and not join:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(["score", "macs"])
    # A resumed run, or another worker, must not replay the same random proposals.
    worker = f":{HOST}:{os.getpid()}" if join else ""
    run_seed = int(hashlib.sha256(f"{seed}:{len(study.trials)}{worker}".encode()).hexdigest()[:8], 16)
    ctx = SearchContext(space, projector, study, run_seed, max_sparsity, multi_objective, base_seed=seed)
    study.sampler = strat.sampler(ctx)
    return study, strat, ctx


def _discard(trials: list[optuna.trial.FrozenTrial], trial_id: int, strat: Strategy) -> str | None:
    """Why this freshly asked trial must not be evaluated, if it must not."""
    if is_duplicate(trials, trial_id):
        return "duplicate proposal"
    me = next(t for t in trials if t._trial_id == trial_id)
    if strat.queued_only and BATCH not in me.user_attrs:
        return "nothing to propose: another worker took the last queued proposal"
    return None


def _surplus(trials: list[optuna.trial.FrozenTrial], trial: optuna.Trial, n_trials: int) -> bool:
    """True if the trials counted, or running and asked before this one, already fill the study's budget.

    Trial ids are assigned atomically by the storage, so every worker sees the same order.
    """
    ahead = sum(t.state == TrialState.RUNNING and t._trial_id < trial._trial_id for t in trials)
    return counted(trials) + ahead >= n_trials


def _run_trial(
    trial,
    ctx,
    evaluator,
    normalize_result,
    strat,
    criterion,
    calibration,  # noqa: ANN001
) -> tuple[TrialState, list[float] | None]:
    space, projector, multi_objective = ctx.space, ctx.projector, ctx.multi_objective
    raw = {n: float(trial.params[n]) for n in ctx.names}
    plan = projector.project(raw, fill=not multi_objective) if strat.projects else raw
    trial.set_user_attr("strategy", strat.name)
    trial.set_user_attr("criterion", criterion if isinstance(criterion, str) else type(criterion).__name__)
    if plan is None:
        trial.set_user_attr("error", "no scaling of this plan meets the budget")
        return TrialState.PRUNED, None
    costs = projector.costs(plan)
    trial.set_user_attr("plan", plan)
    trial.set_user_attr("macs", costs["macs"])
    trial.set_user_attr("params", costs["params"])
    if "latency_ms" in costs:
        trial.set_user_attr("latency_ms", costs["latency_ms"])
    for metric, target in projector.targets.items():
        if not (metric == "latency_ms" and projector.verify_latency):  # that one is measured below
            trial.set_constraint(metric, float(costs[metric] - target))
    t0 = time.perf_counter()
    try:
        model = strat.build(ctx, trial, plan)
        if model is None:
            model = space.apply(plan, criterion, calibration=calibration)
        if projector.verify_latency:
            measured = projector.latency_table.measure(model)
            trial.set_user_attr("measured_latency_ms", measured["ms"])
            trial.set_user_attr("measured_full_ms", measured["full_ms"])
            trial.set_user_attr("measured_latency_ratio", measured["ratio"])
            trial.set_user_attr("measured_clean", measured["clean"])
            trial.set_user_attr("latency_scale", projector.latency_scale)
            trial.set_constraint("latency_ms", projector.measured_excess(measured))
        score, extras = normalize_result(evaluator(model))
        strat.after_evaluation(ctx, trial, model)
    except Exception as err:  # noqa: BLE001 - a failing evaluator fails its trial, not the study
        trial.set_user_attr("error", "".join(traceback.format_exception(err))[-4000:])
        trial.set_user_attr("eval_seconds", time.perf_counter() - t0)
        log.warning("trial %d failed: %s: %s", trial.number, type(err).__name__, err)
        return TrialState.FAIL, None
    trial.set_user_attr("eval_seconds", time.perf_counter() - t0)
    for k, v in extras.items():
        if isinstance(v, (int, float, str, bool)) and k != "score":
            trial.set_user_attr(k, v)
    return TrialState.COMPLETE, ([score, float(costs["macs"])] if multi_objective else [score])


def _latency_samples(trials: list[optuna.trial.FrozenTrial]) -> list[tuple[float, dict[str, float]]]:
    """(predicted ms, measurement) of every completed trial whose latency was measured."""
    return [
        (
            t.user_attrs["latency_ms"],
            {"ms": t.user_attrs["measured_latency_ms"], "ratio": t.user_attrs["measured_latency_ratio"]},
        )
        for t in trials
        if t.state == TrialState.COMPLETE and "measured_latency_ratio" in t.user_attrs
    ]


def _cached_table(study: optuna.Study, space: PruningSpace) -> LatencyTable | None:
    """The study's latency table, if it was built for this model on this device with one thread."""
    data = study.user_attrs.get("latency_table")
    if data is None or data.get("fingerprint") != space_fingerprint(space):
        return None
    try:
        table = LatencyTable.from_dict(data, space)
    except (ValueError, KeyError):
        return None
    return table if table.matches(device="cpu", threads=1, batch_size=None) else None


def _check_config(study, space, budget, strat, criterion, directions, max_sparsity, verify) -> None:  # noqa: ANN001
    """Record the search's configuration in the study, or check it matches on resume."""
    config = {
        "space": space_fingerprint(space),
        "weights": _weights_fingerprint(space),
        "groups": [g.name for g in space.groups],
        "budget": budget.to_dict() if budget is not None else None,
        "strategy": strat.name,
        "criterion": criterion if isinstance(criterion, str) else type(criterion).__name__,
        "directions": directions,
        "max_sparsity": max_sparsity,
        "verify_latency": verify,
    }
    old = study.user_attrs.get("autoprune")
    if old is None:
        study.set_user_attr("autoprune", {**config, "version": __version__})
        return
    diff = [k for k in config if k in old and json.dumps(old[k]) != json.dumps(config[k])]
    if diff:
        detail = "; ".join(f"{k}: study has {old.get(k)!r}, now {config[k]!r}" for k in diff if k != "groups")
        raise ValueError(
            f"study {study.study_name!r} was started with a different configuration ({', '.join(diff)}). "
            f"{detail}. Use another study_name (or storage) for a different search."
        )


def _weights_fingerprint(space: PruningSpace) -> str:
    """Identifies the model's weights: every worker of a study must search the same trained model."""
    h = hashlib.sha256()
    for name, value in space.model.state_dict().items():
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def best_plan(study: optuna.Study) -> dict[str, float]:
    """The evaluated (projected) plan of the best trial; for a multi-objective study, the best-scoring Pareto point."""
    if len(study.directions) > 1:
        front = study.best_trials
        if not front:
            raise ValueError(f"study {study.study_name!r} has no completed trial yet")
        return dict(max(front, key=lambda t: t.values[0]).user_attrs["plan"])
    try:
        return dict(study.best_trial.user_attrs["plan"])
    except ValueError as err:
        raise ValueError(f"study {study.study_name!r} has no completed trial that meets the budget yet") from err
