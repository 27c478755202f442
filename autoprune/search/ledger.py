"""The study ledger: every evaluated plan is an Optuna trial, and the study is the source of truth.

Opening a study resumes it: completed trials are kept, trials left RUNNING by a
killed process are failed (marked ``stale``) and their parameters re-enqueued,
and the trial budget counts the whole study, not one run.
"""

from __future__ import annotations

import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import TrialState

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def default_storage(study_name: str, directory: str | Path = ".") -> str:
    return f"sqlite:///{Path(directory) / (study_name + '.db')}"


def make_storage(url: str | BaseStorage | None, study_name: str, heartbeat_interval: int = 10) -> BaseStorage:
    """An Optuna storage for ``url`` (default: a SQLite file named after the study)."""
    if isinstance(url, BaseStorage):
        return url
    url = url or default_storage(study_name)
    if url.startswith(("sqlite:", "postgresql", "mysql")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(url, heartbeat_interval=heartbeat_interval, grace_period=3 * heartbeat_interval)
    if url.endswith((".log", ".journal")) or url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    raise ValueError(
        f"unsupported storage {url!r}: use sqlite:///file.db, postgresql://user:pass@host/db, or a journal file path"
    )


def is_single_process(storage: BaseStorage) -> bool:
    """SQLite and journal files here are used by one search process at a time."""
    url = getattr(storage, "url", "") or ""
    return not url.startswith(("postgresql", "mysql"))


def counted(study: optuna.Study) -> int:
    """Trials that count toward the study-wide budget (stale failures from crashes excluded)."""
    return sum(
        1
        for t in study.get_trials(deepcopy=False, states=COUNTED)
        if not (t.state == TrialState.FAIL and t.user_attrs.get("stale"))
    )


def recover(study: optuna.Study, *, assume_dead: bool) -> list[int]:
    """Fail trials whose process died and re-enqueue their parameters. Returns their numbers.

    ``assume_dead``: every RUNNING trial is orphaned (single-process storages at start-up);
    otherwise only trials whose heartbeat went stale are.
    """
    storage = study._storage
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return []
    if not assume_dead:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            stale_ids = (
                set(storage._get_stale_trial_ids(study._study_id))
                if isinstance(storage, RDBStorage) and storage.is_heartbeat_enabled()
                else set()
            )
        running = [t for t in running if t._trial_id in stale_ids]
    done = []
    for t in running:
        try:
            storage.set_trial_user_attr(t._trial_id, "stale", True)
            if not storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                continue
        except RuntimeError:  # another worker finished or failed it first
            continue
        # Keep what tagged the proposal (a strategy's bookkeeping), drop what the crash left behind.
        attrs = {k: v for k, v in t.user_attrs.items() if k not in ("stale", "retry_of", "error")}
        attrs["retry_of"] = t.number
        study.enqueue_trial(t.params, user_attrs=attrs)
        done.append(t.number)
    return done


@contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
    """Record heartbeats for an ask()-made trial (Optuna only does it inside optimize())."""
    storage = study._storage
    if not (isinstance(storage, RDBStorage) and storage.is_heartbeat_enabled()):
        yield
        return
    stop = threading.Event()
    interval = storage.get_heartbeat_interval() or 10

    def beat() -> None:
        while not stop.wait(interval):
            try:
                storage.record_heartbeat(trial._trial_id)
            except Exception:  # noqa: BLE001 - a missed beat must not kill the trial
                pass

    storage.record_heartbeat(trial._trial_id)
    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
