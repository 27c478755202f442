"""Enqueued proposals: batches of plans a strategy puts in the study for any worker to evaluate.

A strategy that decides its proposals itself (a seed plan, NetAdapt's iteration)
enqueues them as Optuna WAITING trials; every worker asks the study and gets
the next one. Several workers may decide the same batch at the same moment, so
each batch has a key and every copy a token: the copy holding the lowest trial id
wins, the others are withdrawn (PRUNED, marked :data:`~autoprune.search.attrs.DISCARDED`,
never evaluated, not counted).
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

import optuna
from optuna.trial import TrialState

from . import attrs
from .strategy import SearchContext


def enqueue_batch(ctx: SearchContext, key: str, proposals: list[tuple[dict[str, float], dict[str, Any]]]) -> bool:
    """Enqueue ``proposals`` (plan, user attributes) as one batch named ``key``, once per study.

    Idempotent with many workers: a worker enqueues the batch only if no trial of
    ``key`` exists yet; if two workers enqueue it at the same moment, the copy
    holding the lowest trial id wins and the other is withdrawn before anyone
    evaluates it. Returns True if this call's copy is the one kept.
    """
    study = ctx.study
    if any(batch_key(t) == key for t in study.get_trials(deepcopy=False)):
        return False
    token = uuid.uuid4().hex
    for plan, extra in proposals:
        study.enqueue_trial(plan, user_attrs={**extra, attrs.BATCH: {"key": key, "token": token}})
    trials = study.get_trials(deepcopy=False)
    if _winner(trials, key) == token:
        return True
    for t in trials:  # lost the race: withdraw this copy before anyone evaluates it
        if t.user_attrs.get(attrs.BATCH, {}).get("token") == token and t.state == TrialState.WAITING:
            with contextlib.suppress(RuntimeError):
                study._storage.set_trial_user_attr(t._trial_id, attrs.DISCARDED, "duplicate proposal")
                study._storage.set_trial_state_values(t._trial_id, TrialState.PRUNED)
    return False


def enqueue_once(ctx: SearchContext, plan: dict[str, float], tag: str) -> None:
    """Enqueue ``plan`` (a seed plan such as the uniform one) once per study, whatever the number of workers;
    its trial carries ``seed_plan = tag``."""
    enqueue_batch(ctx, f"seed:{tag}", [(plan, {attrs.SEED_PLAN: tag})])


def enqueue_task(ctx: SearchContext, key: str, name: str, extra: dict[str, Any]) -> bool:
    """Enqueue a task trial named ``name`` (work that is not a candidate, see :meth:`Strategy.run_task`) once per
    study, as batch ``key``, with the user attributes ``extra``. Returns True if this call's copy is kept."""
    full = {n: 0.0 for n in ctx.names}
    return enqueue_batch(ctx, key, [(full, {**extra, attrs.TASK: name})])


def is_duplicate(trials: list[optuna.trial.FrozenTrial], trial_id: int) -> bool:
    """True if trial ``trial_id`` belongs to a batch that another worker enqueued first."""
    me = next((t for t in trials if t._trial_id == trial_id), None)
    batch = me.user_attrs.get(attrs.BATCH) if me is not None else None
    return bool(batch) and _winner(trials, batch["key"]) != batch["token"]


def batch_key(t: optuna.trial.FrozenTrial) -> str | None:
    batch = t.user_attrs.get(attrs.BATCH)
    return batch.get("key") if isinstance(batch, dict) else None


def _winner(trials: list[optuna.trial.FrozenTrial], key: str) -> str | None:
    mine = [t for t in trials if batch_key(t) == key]
    return min(mine, key=lambda t: t._trial_id).user_attrs[attrs.BATCH]["token"] if mine else None
