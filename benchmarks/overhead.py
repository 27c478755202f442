"""Framework overhead per trial of each strategy: everything a search does except the evaluator's own work.

    python benchmarks/overhead.py [--trials 100] [--strategies tpe,random,sa,amc]

The pretrained ResNet-20 on Fashion-MNIST (28x28), a MACs budget of 50%, and an
evaluator that costs nothing (it returns the kept fraction of the parameters, so
the agents still see rewards that vary). What is left per trial is the
strategy's proposal (AMC: an episode through the action wall, the agent's
updates — one per group — and saving the agent in the study), the projection,
building the pruned model, and the storage's round trips. Each strategy runs on
the in-memory storage and on SQLite, side by side in one process. Writes the
``overhead`` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import optuna
import torch
from report import write_section  # noqa: E402 - benchmarks/ is on sys.path when a script runs

import autoprune as ap


def per_trial(space: ap.PruningSpace, strategy: str, storage, n: int, tmp: Path) -> float:  # noqa: ANN001
    full = ap.count_params(space.model)
    options = {"artifact_dir": str(tmp / f"{strategy}-artifacts")} if strategy == "amc" else {}
    t0 = time.perf_counter()
    ap.search(
        space,
        lambda model: ap.count_params(model) / full,
        ap.Budget(macs=0.5),
        strategy=strategy,
        strategy_options=options,
        n_trials=n,
        storage=storage,
        study_name=strategy,
        seed=0,
    )
    return (time.perf_counter() - t0) / n * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--strategies", default="tpe,random,sa,amc")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = ap.PruningSpace(ap.zoo.pretrained("resnet20_fashion_mnist"), torch.zeros(1, 1, 28, 28))
    tmp = Path(tempfile.mkdtemp())
    rows = []
    for name in args.strategies.split(","):
        memory = per_trial(space, name, optuna.storages.InMemoryStorage(), args.trials, tmp)
        sqlite = per_trial(space, name, f"sqlite:///{tmp / (name + '.db')}", args.trials, tmp)
        rows.append((name, memory, sqlite))
        print(f"{name}: {memory:.1f} ms in memory, {sqlite:.1f} ms on SQLite", flush=True)
    lines = [
        "## Framework overhead per trial",
        "",
        f"`python benchmarks/overhead.py --trials {args.trials}` on {date.today()}; "
        f"{platform.processor() or platform.machine()}, 1 thread, torch {torch.__version__}, "
        f"optuna {optuna.__version__}.",
        f"The pretrained ResNet-20 on Fashion-MNIST ({len(space.groups)} channel groups), budget 50% of the MACs, "
        f"{args.trials} trials per strategy and storage, an evaluator that costs nothing: what is left is the "
        "strategy's proposal (AMC: one episode through the action wall, one agent update per group after the "
        "warm-up, the agent saved in the study), the projection, building the pruned model and the storage.",
        "",
        "| strategy | ms per trial, in-memory storage | ms per trial, SQLite |",
        "|---|---:|---:|",
        *(f"| {n} | {m:.1f} | {s:.1f} |" for n, m, s in rows),
    ]
    text = "\n".join(lines)
    if args.no_write:
        print(text)
        return
    print(f"wrote {write_section('overhead', text, after='search-long')}")


if __name__ == "__main__":
    main()
