"""Checks every engine test applies: the public contract of PruningSpace."""

from __future__ import annotations

import contextlib
import random
from typing import Any, Iterator

import torch
from torch import nn

import autoprune as ap


def outputs(model: nn.Module, inputs: tuple) -> list[torch.Tensor]:
    model.eval()
    with torch.no_grad():
        out = model(*inputs)
    return [o for o in torch.utils._pytree.tree_leaves(out) if isinstance(o, torch.Tensor)]


def checksums(model: nn.Module) -> dict[str, tuple[float, float]]:
    """Two position-sensitive sums per tensor: any change to a weight shows, without a full copy."""
    out = {}
    with torch.no_grad():
        for k, v in model.state_dict().items():
            x = v.detach().double().flatten()
            w = torch.arange(1, x.numel() + 1, dtype=torch.float64).remainder_(97)
            out[k] = (float(x.sum()), float((x * w).sum()))
    return out


def agreement(space: ap.PruningSpace, x: torch.Tensor) -> Any:
    """An evaluator needing no data: minus the squared distance of a pruned model's outputs from the original's."""
    with torch.no_grad():
        ref = space.model(x)

    def evaluate(model: nn.Module) -> float:
        with torch.no_grad():
            return -float(((model(x) - ref) ** 2).mean())

    return evaluate


def random_plan(space: ap.PruningSpace, seed: int, high: float = 0.9) -> dict[str, float]:
    rng = random.Random(seed)
    return {g.name: rng.uniform(0.0, high) for g in space.groups}


def check_contract(
    model: nn.Module,
    inputs: Any,
    plans: list[dict[str, float]] | None = None,
    *,
    train_batch: tuple | None = None,
    space: ap.PruningSpace | None = None,
    **space_kwargs: Any,
) -> ap.PruningSpace:
    """Zero plan reproduces the model; every plan runs, keeps the output shape and costs what it measures."""
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    state = checksums(model)
    ref = outputs(model, inputs)
    space = space if space is not None else ap.PruningSpace(model, inputs, **space_kwargs)

    same = space.apply({})
    for a, b in zip(outputs(same, inputs), ref):
        scale = max(1.0, float(b.abs().max()))
        assert float((a - b).abs().max()) <= 1e-4 * scale
    del same

    plans = plans if plans is not None else [{g.name: 0.5 for g in space.groups}, random_plan(space, 0)]
    for plan in plans:
        pruned = space.apply(plan)
        got = outputs(pruned, inputs)
        assert [o.shape for o in got] == [o.shape for o in ref]
        assert all(torch.isfinite(o).all() for o in got)
        assert space.macs(plan) == ap.count_macs(pruned, inputs), plan
        assert space.params(plan) == ap.count_params(pruned), plan
        if train_batch is not None:
            pruned.train()
            pruned(*train_batch)
        del pruned

    assert checksums(model) == state, "the original model's weights changed"
    for a, b in zip(outputs(model, inputs), ref):
        assert torch.equal(a, b), "the original model's outputs changed"
    return space


SEARCH_SCRIPT = __import__("pathlib").Path(__file__).parent / "scripts" / "search_digits.py"


def run_search(
    url: str, n_trials: int, pause: float = 0.0, strategy: str = "tpe", mode: str = "search", options: Any = None
) -> None:
    """Run tests/scripts/search_digits.py to completion in a subprocess (``mode``: search or join)."""
    proc = start_search(url, n_trials, pause, strategy, mode, options)
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]


def start_search(
    url: str, n_trials: int, pause: float = 0.0, strategy: str = "tpe", mode: str = "search", options: Any = None
) -> Any:
    """Start tests/scripts/search_digits.py in a subprocess; returns the ``subprocess.Popen`` (stderr piped).
    ``options``: the strategy's options, instead of the script's."""
    import json
    import os
    import subprocess
    import sys

    extra = [json.dumps(options)] if options is not None else []
    return subprocess.Popen(
        [sys.executable, str(SEARCH_SCRIPT), url, str(n_trials), str(pause), strategy, mode, *extra],
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_when(url: str, n_trials: int, strategy: str, options: Any, condition: Any) -> None:
    """Start the search script and SIGKILL it as soon as ``condition()`` holds (polled; an exception counts as
    not yet, e.g. while the study is not created). The test waits on that condition, never on time."""
    import signal
    import time

    import pytest

    proc = start_search(url, n_trials, strategy=strategy, options=options)
    deadline = time.time() + 900  # a guard against a hung search, not a speed limit
    while time.time() < deadline:
        try:
            if condition():
                break
        except Exception:  # noqa: BLE001 - not there yet
            pass
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.02)
    else:
        proc.kill()
        pytest.fail(f"the {strategy} search never reached the point to kill it at")
    proc.send_signal(signal.SIGKILL)
    proc.communicate()


def kill_mid_trial(url: str, n_trials: int, pause: float, strategy: str, completed: int, options: Any = None) -> None:
    """Start the search script and SIGKILL it inside the evaluation of the trial after ``completed`` done ones.

    The script's evaluator holds (blocks) in its ``completed + 1``-th call and says so through a file, so the kill
    lands mid-evaluation, with the trial's plan recorded, however loaded the machine is: the test waits on that
    condition, never on time. ``pause`` is the script's per-evaluation pause (kept for the trials before).
    """
    import json
    import os
    import signal
    import subprocess
    import sys
    import tempfile
    import time

    import optuna
    import pytest
    from optuna.trial import TrialState

    extra = [json.dumps(options)] if options is not None else []
    folder = __import__("pathlib").Path(tempfile.mkdtemp())
    held, log = folder / "held", open(folder / "stderr", "w+")
    proc = subprocess.Popen(
        [sys.executable, str(SEARCH_SCRIPT), url, str(n_trials), str(pause), strategy, "search", *extra],
        env={**os.environ, "PYTHONWARNINGS": "ignore", "AUTOPRUNE_TEST_HOLD": f"{held}:{completed + 1}"},
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    deadline = time.time() + 900  # a guard against a hung search, not a speed limit: a loaded machine is slow
    while not held.exists():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            log.seek(0)
            pytest.fail(f"the {strategy} search subprocess stopped before its hold: {log.read()[-2000:]}")
        time.sleep(0.05)
    trials = optuna.load_study(study_name="digits", storage=url).trials
    running = [t for t in trials if t.state == TrialState.RUNNING and "plan" in t.user_attrs]
    assert sum(t.state == TrialState.COMPLETE for t in trials) >= completed and running, "held outside a trial"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    log.close()


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A fresh PostgreSQL cluster in a temporary directory, on 127.0.0.1 only; yields its base URL.

    Needs Debian's ``postgresql`` package (``.ci/run`` installs it). As root, the
    server runs as the ``postgres`` user. Stopped and deleted at the end.
    """
    import glob
    import os
    import shutil
    import socket
    import subprocess
    import tempfile

    import pytest

    found = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))[-1:]), None)
    if found is None:
        pytest.fail("PostgreSQL is not installed: apt-get install postgresql (.ci/run installs it)")
    bindir = os.path.dirname(os.path.realpath(found))
    root = tempfile.mkdtemp(prefix="autoprune-pg-")
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = os.path.join(root, "data")

    def run(*cmd: str) -> None:
        subprocess.run([*as_user, *cmd], check=True, capture_output=True, timeout=120)

    run(f"{bindir}/initdb", "-D", data, "-A", "trust", "-U", "autoprune", "-E", "UTF8", "--no-sync")
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c max_connections=200"
    run(f"{bindir}/pg_ctl", "-D", data, "-o", options, "-l", os.path.join(root, "log"), "-w", "start")
    try:
        yield f"postgresql+psycopg2://autoprune@127.0.0.1:{port}"
    finally:
        subprocess.run([*as_user, f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def new_database(server: str, name: str) -> str:
    """Create an empty database on the test server; returns its URL."""
    import psycopg2

    conn = psycopg2.connect(server.replace("postgresql+psycopg2", "postgresql") + "/postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return f"{server}/{name}"
