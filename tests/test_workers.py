"""Many workers on one study: `autoprune study create` + `autoprune worker`, on a journal file and on PostgreSQL.

Every worker is a real `autoprune worker` process; the PostgreSQL server is a real
one the test starts in a temporary directory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from helpers import new_database, postgres_server
from optuna.trial import TrialState

import autoprune as ap
from autoprune.search import Projector, SearchContext
from autoprune.search.attrs import BATCH
from autoprune.search.ledger import HUNG_TRANSACTION_S, counted, make_storage
from autoprune.search.queue import enqueue_batch, is_duplicate
from autoprune.search.runner import _surplus

SCRIPTS = Path(__file__).parent / "scripts"
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "COLUMNS": "200", "PYTHONPATH": str(SCRIPTS)}


def study_file(tmp_path: Path, name: str, *, pause: float = 0.0, strategy: str = "tpe", n_trials: int = 12, **extra):
    options = {"initial_reduction": 0.1} if strategy == "netadapt" else {}
    steps = 5 if strategy == "netadapt" else 0
    text = f"""\
study_name: {name}
model:
  zoo: resnet20
  kwargs: {{in_channels: 1, stage_widths: [8, 16, 32]}}
  input_shape: [1, 1, 8, 8]
evaluator:
  name: "slow_eval:make"
  kwargs: {{pause: {pause}, finetune_steps: {steps}}}
budget: {{macs: {extra.get("macs", 0.6)}}}
strategy: {{name: {strategy}, options: {json.dumps(options)}}}
n_trials: {n_trials}
threads: 1
"""
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def cli(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "autoprune.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
    )


def start_worker(path: Path, url: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "autoprune.cli", "worker", str(path), "--storage", url, *extra],
        cwd=path.parent,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(procs: list[subprocess.Popen], timeout: float = 600) -> None:
    for p in procs:
        _, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err[-2000:]


def trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=make_storage(url, name, create=False)).trials


@pytest.fixture(scope="module")
def postgres():
    with postgres_server() as server:
        yield server


@pytest.fixture(params=["journal", "postgresql"])
def storage(request, tmp_path):
    """A storage URL several processes can share: a journal file, or a fresh PostgreSQL database."""
    if request.param == "journal":
        return f"journal:{tmp_path / 'study.journal'}"
    server = request.getfixturevalue("postgres")
    return new_database(server, f"db_{request.node.name.split('[')[0][-20:]}_{os.getpid()}_{time.time_ns() % 10**9}")


@pytest.mark.parametrize("strategy", ["tpe", "sa"])
def test_three_workers_evaluate_exactly_n_trials_without_duplicates(tmp_path, storage, strategy):
    path = study_file(tmp_path, "three", n_trials=12, strategy=strategy)
    created = cli("study", "create", str(path), "--storage", storage, cwd=tmp_path)
    assert created.returncode == 0, created.stdout + created.stderr
    finish([start_worker(path, storage) for _ in range(3)])
    ts = trials(storage, "three")
    complete = [t for t in ts if t.state == TrialState.COMPLETE]
    assert len(complete) == 12
    assert all(t.state in (TrialState.COMPLETE, TrialState.WAITING) for t in ts)  # a surplus ask goes back to WAITING
    plans = [json.dumps(t.user_attrs["plan"], sort_keys=True) for t in complete]
    assert len(set(plans)) == len(plans)
    assert complete[0].user_attrs.get("seed_plan") == "uniform"  # the seed plan, enqueued once by `study create`
    assert len({t.user_attrs["worker"]["pid"] for t in complete}) >= 2  # the work was shared


@pytest.mark.parametrize("how", ["kill", "freeze"])
def test_a_dead_workers_trial_fails_and_its_plan_is_retried(tmp_path, storage, how):
    """SIGKILL: the process is gone (found at once); SIGSTOP: a hung worker, found by its missing heartbeat."""
    path = study_file(tmp_path, "dead", pause=1.0, n_trials=8)
    assert cli("study", "create", str(path), "--storage", storage, cwd=tmp_path).returncode == 0
    victim = start_worker(path, storage, "--heartbeat", "1")
    deadline = time.time() + 300
    while time.time() < deadline:
        ts = trials(storage, "dead")
        mine = [
            t for t in ts if t.state == TrialState.RUNNING and t.user_attrs.get("worker", {}).get("pid") == victim.pid
        ]
        if sum(t.state == TrialState.COMPLETE for t in ts) >= 2 and mine:
            break
        time.sleep(0.05)
    else:
        victim.kill()
        pytest.fail("the worker made no progress")
    victim.send_signal(signal.SIGKILL if how == "kill" else signal.SIGSTOP)
    doomed = mine[0]
    other = start_worker(path, storage, "--heartbeat", "1")
    try:
        finish([other])
    finally:
        victim.kill()
        victim.wait()
    ts = trials(storage, "dead")
    failed = next(t for t in ts if t.number == doomed.number)
    assert failed.state == TrialState.FAIL and failed.user_attrs["stale"]
    retry = [t for t in ts if t.user_attrs.get("retry_of") == doomed.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == doomed.params
    assert sum(t.state == TrialState.COMPLETE for t in ts) == 8
    assert [t for t in ts if t.state == TrialState.FAIL] == [failed]  # nothing else lost


def test_a_worker_frozen_inside_a_transaction_does_not_block_the_others(tmp_path, postgres):
    """A worker stopped mid-transaction holds its row locks (Optuna locks the study row to number a new trial, a
    heartbeat's upsert key-share-locks its trial): the server ends that transaction, so the others go on."""
    import sqlalchemy

    url = new_database(postgres, f"db_frozen_{os.getpid()}_{time.time_ns() % 10**9}")
    path = study_file(tmp_path, "frozen", n_trials=3)
    assert cli("study", "create", str(path), "--storage", url, cwd=tmp_path).returncode == 0
    store = make_storage(url, "frozen", create=False)  # connections made the way every worker makes them
    holder = store.engine.connect()
    holder.begin()
    holder.execute(sqlalchemy.text("SELECT * FROM studies FOR UPDATE"))  # ...and then the process is frozen
    try:
        finish([start_worker(path, url)], timeout=4 * HUNG_TRANSACTION_S)
    finally:
        holder.invalidate()
    assert counted(trials(url, "frozen")) == 3


def test_netadapt_with_two_workers_makes_the_same_iterations_as_with_one(tmp_path, storage):
    path = study_file(tmp_path, "na", strategy="netadapt", n_trials=500, macs=0.7)
    single = f"sqlite:///{tmp_path / 'single.db'}"
    alone = cli("search", str(path), "--storage", single, "--out", str(tmp_path / "out1"), cwd=tmp_path)
    assert alone.returncode == 0, alone.stdout + alone.stderr
    assert cli("study", "create", str(path), "--storage", storage, cwd=tmp_path).returncode == 0
    finish([start_worker(path, storage) for _ in range(2)])

    def iterations(url: str) -> list[tuple]:
        by_iteration: dict[int, list] = {}
        for t in trials(url, "na"):
            if t.state == TrialState.COMPLETE:
                by_iteration.setdefault(t.user_attrs["netadapt"]["iteration"], []).append(t)
        return [
            tuple(sorted((t.user_attrs["netadapt"]["group"], round(t.values[0], 6)) for t in props))
            for _, props in sorted(by_iteration.items())
        ]

    one, two = iterations(single), iterations(storage)
    assert len(one) >= 2 and one == two
    # The carried-over weights live next to a file storage (a shared folder is the user's choice for PostgreSQL).
    assert any((tmp_path / "single.artifacts").iterdir())
    if storage.startswith("journal:"):
        assert any((tmp_path / "study.artifacts").iterdir())
    assert all(t.user_attrs.get("netadapt") for t in trials(storage, "na") if t.state == TrialState.COMPLETE)


def _tiny() -> ap.PruningSpace:
    torch.manual_seed(0)
    return ap.PruningSpace(ap.zoo.resnet20(in_channels=1, stage_widths=(8, 16, 32)).eval(), torch.zeros(1, 1, 8, 8))


def test_a_batch_two_workers_enqueue_at_once_is_evaluated_once(tmp_path):
    space, budget, url = _tiny(), ap.Budget(macs=0.6), f"journal:{tmp_path / 'b.journal'}"
    study = ap.create_study(space, budget, strategy="random", storage=url, study_name="b")
    ctx = SearchContext(space, Projector(space, budget), study, 0, 0.95)
    batch = [(ctx.projector.uniform(), {"proposal": i}) for i in range(2)]
    assert enqueue_batch(ctx, "iteration:1", batch)
    assert not enqueue_batch(ctx, "iteration:1", batch)  # already there: nothing enqueued
    # A worker that checked just before the first copy landed enqueues a second one:
    study.enqueue_trial(batch[0][0], user_attrs={"proposal": 0, BATCH: {"key": "iteration:1", "token": "late"}})
    ts = study.get_trials(deepcopy=False)
    assert is_duplicate(ts, ts[-1]._trial_id) and not is_duplicate(ts, ts[0]._trial_id)
    ap.search(space, lambda m: 1.0, budget, strategy="random", n_trials=3, storage=url, study_name="b", join=True)
    ts = study.get_trials(deepcopy=False)
    late = [t for t in ts if t.user_attrs.get(BATCH, {}).get("token") == "late"]
    assert [(t.state, t.user_attrs.get("discarded")) for t in late] == [(TrialState.PRUNED, "duplicate proposal")]
    assert counted(ts) == 3 and sum(t.state == TrialState.COMPLETE for t in ts) == 3


def test_the_last_trials_of_the_budget_go_to_the_earliest_asks(tmp_path):
    study = optuna.create_study(storage=make_storage(f"journal:{tmp_path / 's.journal'}", "s"), study_name="s")
    first, second = study.ask(), study.ask()
    ts = study.get_trials(deepcopy=False)
    assert not _surplus(ts, first, 1) and _surplus(ts, second, 1) and not _surplus(ts, second, 2)
    study.tell(first, 1.0)
    assert _surplus(study.get_trials(deepcopy=False), second, 1)


# -- bad input ---------------------------------------------------------------------------------
def test_an_unreachable_database_fails_fast_without_showing_the_password(tmp_path):
    path = study_file(tmp_path, "bad")
    started = time.time()
    out = cli("worker", str(path), "--storage", "postgresql+psycopg2://me:s3cret@127.0.0.1:1/db", cwd=tmp_path)
    assert out.returncode == 2 and time.time() - started < 120
    assert "cannot open storage" in out.stdout and "127.0.0.1:1" in out.stdout and "s3cret" not in out.stdout


def test_a_database_that_never_answers_times_out():
    import socket

    from autoprune.search.ledger import StorageError

    with socket.socket() as silent:  # accepts the connection, never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"postgresql://me:s3cret@127.0.0.1:{silent.getsockname()[1]}/db"
        started = time.time()
        with pytest.raises(StorageError, match="cannot open storage") as err:
            make_storage(url, "x", create=False, timeout=2)
    assert time.time() - started < 30 and "s3cret" not in str(err.value) and "***" in str(err.value)


def test_a_worker_needs_a_created_study(tmp_path, postgres):
    path = study_file(tmp_path, "missing")
    for url in (f"journal:{tmp_path / 'none.journal'}", new_database(postgres, f"empty_{os.getpid()}")):
        out = cli("worker", str(path), "--storage", url, cwd=tmp_path)
        assert out.returncode == 2 and "autoprune study create" in out.stdout, out.stdout + out.stderr


def test_a_worker_with_a_different_study_file_is_refused(tmp_path):
    url = f"journal:{tmp_path / 'cfg.journal'}"
    assert cli("study", "create", str(study_file(tmp_path, "cfg")), "--storage", url, cwd=tmp_path).returncode == 0
    (tmp_path / "other").mkdir()
    other = study_file(tmp_path / "other", "cfg", macs=0.4)  # same study name, another budget
    out = cli("worker", str(other), "--storage", url, cwd=tmp_path)
    assert out.returncode == 2 and "different configuration" in out.stdout and "budget" in out.stdout


def test_several_workers_refuse_sqlite_and_name_the_right_storage(tmp_path):
    out = cli("search", str(study_file(tmp_path, "lite")), "--workers", "2", cwd=tmp_path)
    assert out.returncode == 2
    assert "SQLite is for one process" in out.stdout and "journal:" in out.stdout and "postgresql://" in out.stdout


def test_a_second_process_on_one_sqlite_study_is_refused(tmp_path):
    path = study_file(tmp_path, "lone", pause=2.0, n_trials=6)
    url = f"sqlite:///{tmp_path / 'lone.db'}"
    assert cli("study", "create", str(path), "--storage", url, cwd=tmp_path).returncode == 0
    first = subprocess.Popen(
        [sys.executable, "-m", "autoprune.cli", "search", str(path), "--storage", url],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 300
        while not any(t.state == TrialState.RUNNING for t in trials(url, "lone")):
            assert time.time() < deadline and first.poll() is None, "the first search made no progress"
            time.sleep(0.1)
        second = cli("search", str(path), "--storage", url, cwd=tmp_path)
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2 and "another process" in second.stdout and "journal" in second.stdout


def test_search_with_local_workers_on_a_journal_file(tmp_path):
    path = study_file(tmp_path, "local", n_trials=6)
    url = f"journal:{tmp_path / 'local.journal'}"
    out = cli(
        "search",
        str(path),
        "--workers",
        "2",
        "--storage",
        url,
        "--device",
        "cpu,cpu",
        "--out",
        str(tmp_path / "out"),
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert sum(t.state == TrialState.COMPLETE for t in trials(url, "local")) == 6
    assert (tmp_path / "out" / "structure.json").exists()
