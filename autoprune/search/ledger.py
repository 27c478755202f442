"""The study ledger: every evaluated plan is an Optuna trial, and the study is the source of truth.

Opening a study resumes it: completed trials are kept, a trial whose worker died
is failed (marked ``stale``) and its parameters re-enqueued, and the trial budget
counts the whole study, not one run.

Worker liveness works the same on every storage (Optuna's journal storage has no
heartbeat, and its RDB heartbeat is only written inside ``optimize()``): a running
trial records its worker (host and pid) and a heartbeat counter in its user
attributes. A trial is dead when its worker's process is gone (same host) or
when its heartbeat has not changed for three heartbeat intervals (the longer of
the observer's and the worker's) of the observer's own clock (any host; no clock
synchronisation needed). A SQLite study has one process at a time (a second live
one is refused), so a trial still RUNNING when it is opened is dead at once, even
one whose process was killed between asking for it and recording its worker.
A worker frozen inside a PostgreSQL transaction loses it after ``HUNG_TRANSACTION_S``,
so its locks do not stop the others.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import TrialState

from .attrs import DISCARDED, ERROR, MEASURED_MS, MEASURED_RATIO, PROPOSAL, RETRY_OF, STALE, TASK, WORKER

# A worker frozen inside a transaction (SIGSTOP, a hung host) holds its row locks: Optuna locks the study row to
# number a new trial, and a heartbeat's upsert share-locks its trial, which blocks failing it. On PostgreSQL the
# server ends a transaction left idle this long, as Optuna's journal storage breaks a lock file after 30 s.
HUNG_TRANSACTION_S = 30
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


class StorageError(ValueError):
    """A storage URL that cannot be used: unreachable, unsupported, or unfit for several workers."""


def default_storage(study_name: str, directory: str | Path = ".") -> str:
    return f"sqlite:///{Path(directory) / (study_name + '.db')}"


def redact(url: str) -> str:
    """The URL with its password hidden, for messages."""
    if "://" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a database URL: nothing to hide
        return url


def make_storage(
    url: str | BaseStorage | None, study_name: str, *, create: bool = True, timeout: float = 10.0
) -> BaseStorage:
    """An Optuna storage for ``url`` (default: a SQLite file named after the study).

    ``create=False`` (a worker joining a study) never creates tables: several
    workers creating the schema of a fresh PostgreSQL database at once crash.
    A database that cannot be reached fails within ``timeout`` seconds.
    """
    if isinstance(url, BaseStorage):
        return url
    url = _driver(url or default_storage(study_name))
    if url.startswith(("sqlite:", "postgresql", "mysql")):
        connect_args = {"connect_timeout": int(max(timeout, 1))} if url.startswith(("postgresql", "mysql")) else {}
        if url.startswith("postgresql"):
            connect_args["options"] = f"-c idle_in_transaction_session_timeout={HUNG_TRANSACTION_S * 1000}"
        _check_database(url, connect_args, create)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                url,
                engine_kwargs={"connect_args": connect_args} if connect_args else None,
                skip_table_creation=not create,
            )
    if url.endswith((".log", ".journal")) or url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(url.removeprefix("journal:"))
        if not create and not path.exists():
            raise StorageError(f"no journal file {path}: run `autoprune study create` first")
        _check_journal(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    raise StorageError(
        f"unsupported storage {redact(url)!r}: use sqlite:///file.db (one process), journal:file.journal "
        "(several processes on one machine) or postgresql://user:pass@host/db (several machines)"
    )


def _check_journal(path: Path) -> None:
    """Refuse a path that exists and is not an Optuna journal file (a folder, another file), which Optuna would
    fail to read (or append its records to)."""
    import json

    if not path.exists():
        return
    if not path.is_file():
        raise StorageError(f"journal storage {path} is a folder, not a journal file: name a file, e.g. {path}.journal")
    with open(path, "rb") as f:
        first = f.readline(1 << 16)
    if not first.strip() or (first.startswith(b"{") and not first.endswith(b"\n")):
        return  # empty (a new journal), or its first record being written by another process
    try:
        record = json.loads(first)
    except ValueError:
        record = None
    if not (isinstance(record, dict) and "op_code" in record):
        raise StorageError(
            f"journal storage {path} exists and is not an Optuna journal file (its first line is no journal record): "
            "name a new file, or the journal of the study"
        )


def load_existing(storage: str | BaseStorage, study_name: str) -> optuna.Study:
    """An existing study (a worker joins, export/show read); a missing one says to run `autoprune study create`."""
    store = make_storage(storage, study_name, create=False)
    where = redact(storage) if isinstance(storage, str) else type(storage).__name__
    try:
        return optuna.load_study(study_name=study_name, storage=store)
    except (KeyError, optuna.exceptions.StorageInternalError):  # no such study / a database without Optuna's tables
        raise StorageError(
            f"no study named {study_name!r} in {where}: create it once with `autoprune study create STUDY.yaml "
            "--storage URL` (or autoprune.create_study) before starting workers"
        ) from None


def _driver(url: str) -> str:
    """``postgresql://`` with the PostgreSQL driver that is installed (SQLAlchemy 2.1 assumes psycopg 3)."""
    import importlib.util

    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None:
        if importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def _check_database(url: str, connect_args: dict, create: bool) -> None:
    """Connect once (within the timeout) and, for a worker, check Optuna's tables are there."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url, connect_args=connect_args)
        with engine.connect() as conn:
            has_tables = sqlalchemy.inspect(conn).has_table("studies")
        engine.dispose()
    except ImportError as err:
        raise StorageError(f"cannot use {redact(url)}: {err} (pip install psycopg2-binary)") from None
    except sqlalchemy.exc.SQLAlchemyError as err:
        reason = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
        raise StorageError(f"cannot open storage {redact(url)}: {reason}") from None
    if not create and not has_tables:
        raise StorageError(
            f"no study in {redact(url)} (the database has no Optuna tables): create it once with "
            "`autoprune study create STUDY.yaml --storage URL` before starting workers"
        )


def _unwrapped(storage: BaseStorage) -> BaseStorage:
    """The storage itself: a study opened on an RDB storage holds it inside Optuna's caching wrapper."""
    from optuna.storages._cached_storage import _CachedStorage

    return storage._backend if isinstance(storage, _CachedStorage) else storage


def storage_file(storage: BaseStorage) -> Path | None:
    """The file a SQLite or journal storage lives in (None for a database server)."""
    storage = _unwrapped(storage)
    url = getattr(storage, "url", "") or ""
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///"))
    path = getattr(getattr(storage, "_backend", None), "_file_path", None)
    return Path(path) if path else None


def is_sqlite(storage: BaseStorage) -> bool:
    return (getattr(_unwrapped(storage), "url", "") or "").startswith("sqlite:")


def failure(err: BaseException, limit: int = 4000) -> str:
    """What a failed trial records (:data:`~autoprune.search.attrs.ERROR`): the exception's type and message on
    the first line, then its traceback (the end of it, within ``limit`` characters)."""
    import traceback

    head = reason_of(err)
    tb = "".join(traceback.format_exception(err))
    return f"{head}\n\n{tb[-max(limit - len(head) - 2, 0) :]}"


def reason_of(err: BaseException) -> str:
    """``Type: message`` of an exception, on one line."""
    message = " ".join(str(err).split())
    return f"{type(err).__name__}: {message}" if message else type(err).__name__


def failure_reason(text: object, limit: int = 300) -> str:
    """One line that says why a trial failed, from what it recorded: its first line (the exception's type and
    message), or, for a bare traceback (studies recorded before), its last non-empty line."""
    text = str(text or "").strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return "no reason recorded"
    ours = text.find("\n\nTraceback (most recent call last)") > 0
    bare = not ours and ("Traceback (most recent call last)" in text or '  File "' in text)
    line = lines[-1] if bare else lines[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def uncounted(t: optuna.trial.FrozenTrial) -> bool:
    """Bookkeeping trials: failed because their worker died (and retried), discarded before evaluation, or a
    strategy's task (not a candidate)."""
    return bool(t.user_attrs.get(STALE) or t.user_attrs.get(DISCARDED) or TASK in t.user_attrs)


def is_task(t: optuna.trial.FrozenTrial) -> bool:
    """A trial that carries a strategy's own work, not a candidate (see :data:`~autoprune.search.attrs.TASK`)."""
    return TASK in t.user_attrs


def counted(trials: Iterable[optuna.trial.FrozenTrial]) -> int:
    """How many of ``trials`` count toward the study-wide budget."""
    return sum(1 for t in trials if t.state in COUNTED and not uncounted(t))


# -- workers and their liveness ----------------------------------------------------------------
def _machine() -> str:
    """This process's machine and PID namespace: where a pid means the same process (containers differ)."""
    parts = [socket.gethostname()]
    try:
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8])
        parts.append(os.readlink("/proc/self/ns/pid").removeprefix("pid:"))
    except OSError:
        pass
    return "/".join(parts)


HOST = _machine()


def this_worker(interval: float, beat: int = 0) -> dict[str, object]:
    return {"host": HOST, "pid": os.getpid(), "every": interval, "beat": beat}


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:  # a killed child its parent has not reaped yet is a zombie: gone too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


class Liveness:
    """Tells which RUNNING trials belong to a dead worker (see the module docstring)."""

    def __init__(self, interval: float, orphans: Iterable[int] = ()) -> None:
        self.interval = interval
        self.orphans = set(orphans)  # trial ids known dead: RUNNING when a single-process study was opened
        self._seen: dict[int, tuple[object, float]] = {}

    def dead(self, t: optuna.trial.FrozenTrial) -> bool:
        if t._trial_id in self.orphans:
            return True
        worker = t.user_attrs.get(WORKER)
        if isinstance(worker, dict) and worker.get("host") == HOST and _process_gone(int(worker.get("pid", -1))):
            return True
        sign = str(worker)
        now = time.monotonic()
        last = self._seen.get(t._trial_id)
        if last is None or last[0] != sign:
            self._seen[t._trial_id] = (sign, now)
            return False
        every = max(self.interval, float(worker.get("every", 0)) if isinstance(worker, dict) else 0.0)
        return now - last[1] > 3 * every


def recover(study: optuna.Study, liveness: Liveness, trials: Iterable[optuna.trial.FrozenTrial]) -> list[int]:
    """Fail the RUNNING ``trials`` whose worker died and re-enqueue their parameters. Returns their numbers."""
    storage = study._storage
    done = []
    for t in trials:
        if t.state != TrialState.RUNNING or not liveness.dead(t):
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, STALE, True)
            if not storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                continue
        except RuntimeError:  # another worker finished or failed it first
            continue
        # Keep what tagged the proposal (a strategy's bookkeeping), drop what the crash left behind.
        attrs = {k: v for k, v in t.user_attrs.items() if k not in (STALE, RETRY_OF, ERROR, WORKER)}
        attrs[RETRY_OF] = t.number
        study.enqueue_trial(proposal(t), user_attrs=attrs)
        done.append(t.number)
    return done


def proposal(t: optuna.trial.FrozenTrial) -> dict[str, float]:
    """The whole proposal a trial was given, even when its worker died while Optuna was writing its parameters
    one by one: recorded first in one write by the runner, or, for an enqueued trial, its fixed parameters."""
    return dict(t.user_attrs.get(PROPOSAL) or t.system_attrs.get("fixed_params") or t.params)


def latency_measurement(t: optuna.trial.FrozenTrial) -> dict[str, float] | None:
    """A trial's measured latency, as :meth:`Projector.measured_excess` takes it, if it was measured."""
    if MEASURED_RATIO not in t.user_attrs:
        return None
    return {"ms": t.user_attrs[MEASURED_MS], "ratio": t.user_attrs[MEASURED_RATIO]}


def live_worker_elsewhere(study: optuna.Study) -> dict | None:
    """A RUNNING trial's worker that is alive on this host in another process, if any."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get(WORKER)
        if (
            isinstance(worker, dict)
            and worker.get("host") == HOST
            and worker.get("pid") != os.getpid()
            and not _process_gone(int(worker.get("pid", -1)))
        ):
            return worker
    return None


@contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial, interval: float) -> Iterator[None]:
    """Mark ``trial`` as this worker's and bump its heartbeat every ``interval`` seconds while it runs."""
    storage = study._storage
    stop = threading.Event()
    storage.set_trial_user_attr(trial._trial_id, WORKER, this_worker(interval))

    def beat() -> None:
        n = 0
        while not stop.wait(interval):
            n += 1
            try:
                storage.set_trial_user_attr(trial._trial_id, WORKER, this_worker(interval, n))
            except Exception:  # noqa: BLE001 - a missed beat must not kill the trial
                pass

    thread = threading.Thread(target=beat, daemon=True, name=f"autoprune-heartbeat-{trial.number}")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
