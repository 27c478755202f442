"""NetAdapt under a latency budget: does the network it returns meet the budget when measured?

    python benchmarks/netadapt_latency.py [--batch 64] [--budget 0.6] [--finetune 20] [--no-write]

The pretrained zoo ResNet-20 on Fashion-MNIST. A :class:`LatencyTable` is built
for one thread at ``--batch``; NetAdapt searches with ``resource="latency_ms"``
under ``Budget(latency=0.6)`` (60% of the table's full-model latency), every
proposal short-term fine-tuned (``--finetune`` SGD steps) and scored on 2048
held-out training images after adaptive-BN recalibration. The network it returns
(the best feasible trial, with its own fine-tuned weights, as in
``benchmarks/search.py``) is then measured with ``measure_latency`` interleaved
with the unpruned model over several rounds (median), so slow drift of a shared
machine hits both alike, and checked against 0.6 x the *measured* full latency.
As in ``latency_table.py``, ``--malloc stable`` (the default) fixes glibc's
malloc thresholds for this process, so latency does not depend on the process's
history (see that script's docstring).
Writes the ``netadapt-latency`` section of BENCHMARKS.md (right after the
``latency`` section).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from latency_table import stable_malloc  # a sibling script: benchmarks/ is on sys.path
from report import write_section  # noqa: E402 - benchmarks/ is on sys.path when a script runs

import autoprune as ap
from autoprune.data import fashion_mnist_splits
from autoprune.engine.latency import LatencyTable, hardware
from autoprune.evaluators import AccuracyEvaluator
from autoprune.evaluators.latency import measure_latency
from autoprune.search.strategies.netadapt import TAG, trial_network

REPO = Path(__file__).resolve().parents[1]


def measure_pair(full: torch.nn.Module, pruned: torch.nn.Module, x: torch.Tensor, batch: int, rounds: int) -> dict:
    """Both models' median latency over ``rounds`` interleaved rounds (order alternating), and the per-round ratio."""
    times = np.zeros((rounds, 2))
    for r in range(rounds):
        for i in (0, 1) if r % 2 == 0 else (1, 0):
            times[r, i] = measure_latency((full, pruned)[i], x, batch_size=batch, threads=1, min_run_time=0.5)
    ratio = times[:, 1] / times[:, 0]
    return {
        "full_ms": float(np.median(times[:, 0])),
        "pruned_ms": float(np.median(times[:, 1])),
        "ratio": float(np.median(ratio)),
        "ratio_range": (float(ratio.min()), float(ratio.max())),
    }


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    model = ap.zoo.pretrained("resnet20_fashion_mnist").eval()
    x = torch.zeros(1, 1, 28, 28)
    space = ap.PruningSpace(model, x)
    load = [os.getloadavg()[0]]
    t0 = time.perf_counter()
    table = LatencyTable.build(space, threads=1, batch_size=args.batch, repeats=3)
    build_s = time.perf_counter() - t0
    print(f"table: {table}, built in {build_s:.0f} s", flush=True)

    data = fashion_mnist_splits()
    evaluator = AccuracyEvaluator(
        data.val, train_data=data.train, batches=8, bn_recalibration_batches=10, finetune_steps=args.finetune
    )
    test_eval = AccuracyEvaluator(data.test, train_data=data.train, bn_recalibration_batches=10)
    tmp = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    study = ap.search(
        space,
        evaluator,
        ap.Budget(latency=args.budget),
        strategy="netadapt",
        n_trials=args.trials,
        strategy_options={"resource": "latency_ms", "initial_reduction": args.reduction},
        storage=f"sqlite:///{tmp / 'netadapt.db'}",
        study_name="netadapt_latency",
        seed=0,
        latency_table=table,
    )
    search_s = time.perf_counter() - t0
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    try:
        best, reached = study.best_trial, True  # the best trial that meets the budget
    except ValueError:  # NetAdapt stopped before it: no group alone could make the next step
        best, reached = min(done, key=lambda t: t.user_attrs["latency_ms"]), False
    plan = dict(best.user_attrs["plan"])
    net, keep_scores = trial_network(space, study, best)
    pruned = net._build(net.keep_indices(plan, keep_scores)).eval()
    test = test_eval(copy.deepcopy(pruned))["accuracy"]
    base_test = test_eval(copy.deepcopy(model))["accuracy"]
    print(f"search: {len(done)} evaluations in {search_s:.0f} s; val {best.value:.4f}, test {test:.4f}", flush=True)

    load.append(os.getloadavg()[0])
    measured = measure_pair(model, pruned, x, args.batch, args.rounds)
    load.append(os.getloadavg()[0])
    kept = space.kept_channels(plan)
    return {
        "batch": args.batch,
        "malloc": args.malloc,
        "budget": args.budget,
        "finetune": args.finetune,
        "reduction": args.reduction,
        "build_s": build_s,
        "table_ops": len(table.layers),
        "table_full_ms": table.full_ms,
        "target_ms": args.budget * table.full_ms,
        "predicted_ms": table.predict(plan),
        "measured": measured,
        "meets": measured["ratio"] <= args.budget,
        "reached": reached,
        "val": best.value,
        "test": test,
        "base_test": base_test,
        "iterations": 1 + max(t.user_attrs[TAG]["iteration"] for t in done),
        "evaluations": len(done),
        "search_s": search_s,
        "macs": space.macs(plan) / space.macs({}),
        "params": space.params(plan) / space.params({}),
        "kept": kept,
        "full_kept": {g.name: g.channels for g in space.groups},
        "load": load,
        "rounds": args.rounds,
    }


def section(r: dict, seconds: float) -> str:
    m = r["measured"]
    predicted_ratio = r["predicted_ms"] / r["table_full_ms"]
    widths = ", ".join(f"{n} {k}/{r['full_kept'][n]}" for n, k in r["kept"].items() if k < r["full_kept"][n])
    verdict = "meets" if r["meets"] else "does **not** meet"
    low, high = m["ratio_range"]
    if low > predicted_ratio:
        spread = "every measured round lies above the prediction, so the gap is the table's bias, not noise"
    elif high < predicted_ratio:
        spread = "every measured round lies below the prediction (the table over-predicts this network)"
    else:
        spread = "the measured rounds straddle the prediction"
    if not r["reached"]:
        verdict += " (NetAdapt stopped before the table said the budget was met: the smallest network is reported)"
    allocator = "glibc malloc with " + (
        "fixed thresholds (as in the latency section)" if r["malloc"] == "stable" else "its default thresholds"
    )
    return f"""## NetAdapt under a latency budget: predicted vs measured

`python benchmarks/netadapt_latency.py --batch {r["batch"]} --budget {r["budget"]} --malloc {r["malloc"]}` —
pretrained zoo ResNet-20 on Fashion-MNIST, CPU `{hardware("cpu")}` ({os.cpu_count()} cores, shared), 1 thread,
batch {r["batch"]}, torch {torch.__version__}, Python {platform.python_version()}, {allocator}.
A `LatencyTable` ({r["table_ops"]} ops, built in {r["build_s"]:.0f} s) drives NetAdapt
(`resource="latency_ms"`, first reduction {r["reduction"]:.0%} of the full latency per iteration, decay 0.96)
under `Budget(latency={r["budget"]})`; every proposal is fine-tuned {r["finetune"]} SGD steps and scored on
2048 held-out training images after BN recalibration. The returned network (best trial meeting the budget,
its own fine-tuned weights) is measured with `measure_latency` interleaved with the unpruned model
({r["rounds"]} rounds, order alternating, median; 0.5 s per measurement).

| | value |
|---|---|
| full model: table (at build) / measured now | {r["table_full_ms"]:.2f} ms / {m["full_ms"]:.2f} ms |
| budget: {r["budget"]} × measured full latency | {r["budget"] * m["full_ms"]:.2f} ms |
| NetAdapt's network: predicted by the table | {r["predicted_ms"]:.2f} ms ({predicted_ratio:.1%} of the table's full) |
| NetAdapt's network: measured | {m["pruned_ms"]:.2f} ms ({m["ratio"]:.1%} of the measured full; per round \
{m["ratio_range"][0]:.1%}–{m["ratio_range"][1]:.1%}) |
| meets the budget (measured) | {"yes" if r["meets"] else "no"} |
| accuracy: val (2048 held-out train images) / test (10k) | {r["val"]:.2%} / {r["test"]:.2%} (unpruned test \
{r["base_test"]:.2%}) |
| MACs / params left | {r["macs"]:.1%} / {r["params"]:.1%} |
| NetAdapt iterations / evaluations | {r["iterations"]} / {r["evaluations"]} |
| search wall time | {r["search_s"]:.0f} s (whole run {seconds / 60:.1f} min) |
| 1-min load: table build → measurement → end | {" → ".join(f"{v:.2f}" for v in r["load"])} |

Kept channels (pruned groups only): {widths}.

The network {verdict} the budget when measured: the table predicted {predicted_ratio:.1%} of the full latency,
the measurement gave {m["ratio"]:.1%}; {spread}.
{BATCH_NOTE if r["batch"] == 64 else ""}"""


BATCH_NOTE = """
Why batch 64: the table is more faithful at batch 1 (fraction error 4.0% against 10.5% in the latency
section), but NetAdapt cannot reach 60% of the latency there. Per-op overhead dominates at batch 1, most
single groups cut less than one iteration's reduction, and in a trial run (7% per iteration) NetAdapt stopped
after four iterations at 73% of the full latency with no proposal left. At batch 64 every stage-1 group can
make a step. The price is the table's bias at batch 64: it under-predicts pruned models (−7% on the
most-pruned third in the latency section), because ops run slower inside a forward pass than alone, and the
more so the smaller they are (see the latency section). NetAdapt stops at the first network the table puts
under the budget, so a network predicted just under 60% can measure a few points over it. A budget with that
margin, or a table that times ops in context, closes the gap.

An earlier run of the same command on the same machine (load 0.75 → 1.00) picked other proposals (the table
and the fine-tuning differ a little between runs) and returned conv1 5/16, layer1.1.conv1 15/16,
layer2.0.conv2 11/32, layer3.0.conv2 32/64: predicted 59.7%, measured 62.8% (every round 60.4–66.9%), so
**over** the budget, at 89.19% test accuracy (89.55% val) after 6 iterations / 24 evaluations. One network
meeting the budget and one missing it by 3 points is what a table with a ±7–10% bias on pruned models gives.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--budget", type=float, default=0.6)
    parser.add_argument("--finetune", type=int, default=20, help="short-term fine-tune steps per proposal")
    parser.add_argument("--reduction", type=float, default=0.08, help="first resource reduction per iteration")
    parser.add_argument("--trials", type=int, default=120, help="cap on evaluations")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved measurement rounds")
    parser.add_argument("--malloc", choices=("stable", "default"), default="stable")
    parser.add_argument("--no-write", action="store_true", help="print the section, do not touch BENCHMARKS.md")
    args = parser.parse_args()
    if args.malloc == "stable":
        stable_malloc()
    torch.set_num_threads(1)
    started = time.perf_counter()
    r = run(args)
    print(r, flush=True)
    text = section(r, time.perf_counter() - started)
    print(text)
    if not args.no_write:
        write_section("netadapt-latency", text, after="latency")


if __name__ == "__main__":
    main()
