"""Training-aware methods at an equal training budget, on one searched plan and the uniform plan.

    python benchmarks/training.py [--budget 0.3] [--steps 1000] [--jobs 2] [--methods finetune,agp,...]
                                  [--plans searched,uniform] [--section training]

The model is the pretrained zoo ResNet-20 on Fashion-MNIST. The plans come from the recorded 300-evaluation
searches of ``benchmarks/search.py`` at ``--budget`` of the MACs (``benchmarks/results/search/long-*.json``): the
best searched plan by its validation score (over the strategies that score the original weights) and the uniform
plan. Every method of ``autoprune.training`` trains for the same ``--steps`` SGD steps (batch 128, Nesterov 0.9,
weight decay 5e-5, cosine learning rate from 0.01; the from-scratch baselines start from 0.1, as a network
trained from a random initialisation needs) and ends physically smaller at exactly the plan; its top-1 on the 10k
test set is measured as it comes out of training (its own BatchNorm statistics). Scratch-B trains
``--steps`` × MACs ratio (capped at 2×). Then the best two methods on the searched plan run again with
distillation from the unpruned model (T = 4, α = 0.5). One-shot pruning + plain fine-tuning (``finetune``) is the
baseline every row is compared with.

Every run is one job in a pool of ``--jobs`` worker processes, one thread each, recorded in
``benchmarks/results/training/KEY.json`` (date and commit) with a resume checkpoint while it runs, so an
interrupted invocation continues where it stopped. Writes the ``--section`` section of BENCHMARKS.md
(``training``; a run at another budget of steps, e.g. on fewer methods and ``--plans searched``, goes in a
section of its own beside it).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from report import ROOT, recorded, write_section  # noqa: E402 - benchmarks/ is on sys.path when a script runs

import autoprune as ap
from autoprune import training
from autoprune.data import fashion_mnist_splits
from autoprune.evaluators import AccuracyEvaluator
from autoprune.zoo.pretrained import PRETRAINED

METHODS = ["finetune", "agp", "slim", "sfp", "fpgm", "taylor", "imp", "admm", "scratch_e", "scratch_b"]
PLANS = ["searched", "uniform"]
SCRATCH_LR = 0.1
LR = 0.01
SEARCHES = ROOT / "benchmarks" / "results" / "search"


def plans(budget: float) -> dict[str, tuple[str, dict[str, float]]]:
    """The uniform plan and the best searched plan (by validation score) at ``budget``, from the recorded searches;
    each as (where it comes from, plan)."""
    found = {}
    for path in sorted(SEARCHES.glob(f"long-*-{budget}-*.json")):
        result = json.loads(path.read_text())
        if result.get("plan_test") is None:  # a strategy that scores the original weights (not MetaPruning's own)
            found[result["name"]] = result
    if "uniform" not in found or len(found) < 2:
        raise SystemExit(
            f"no recorded searches at {budget:.0%} of the MACs in {SEARCHES}: run benchmarks/search.py first"
        )
    best = max((r for n, r in found.items() if n != "uniform"), key=lambda r: r["val"])
    return {
        "searched": (f"{best['name']}, 300 evaluations (val {best['val']:.2%})", best["plan"]),
        "uniform": ("uniform", found["uniform"]["plan"]),
    }


def run_training(key: str, method: str, plan: dict[str, float], steps: int, distill: bool, folder: str) -> dict:
    """One method on one plan (in a worker process)."""
    space = ap.PruningSpace(ap.zoo.pretrained("resnet20_fashion_mnist"), torch.zeros(1, 1, 28, 28))
    data = fashion_mnist_splits()
    checkpoints = Path(folder) / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    result = training.run(
        space,
        plan,
        data,
        method=method,
        steps=steps,
        lr=SCRATCH_LR if method.startswith("scratch") else LR,
        distill=distill,
        progress=False,
        checkpoint=checkpoints / f"{key}.ckpt",
    )
    (checkpoints / f"{key}.ckpt").unlink(missing_ok=True)
    record = dict(result.record)
    record.update(
        macs=ap.count_macs(result.model, torch.zeros(1, 1, 28, 28)),
        params=ap.count_params(result.model),
        plan_macs=space.macs(plan),
    )
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=0.3)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--plans", default=",".join(PLANS), help=f"which plans to train, of {', '.join(PLANS)}")
    parser.add_argument("--section", default="training", help="the BENCHMARKS.md section to write")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "training"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    for m in methods:
        training.options(m)  # an unknown name fails here, not in a worker
    folder = Path(args.results)
    folder.mkdir(parents=True, exist_ok=True)
    wanted = [p for p in args.plans.split(",") if p]
    if not wanted or set(wanted) - set(PLANS):
        raise SystemExit(f"--plans takes a comma-separated subset of {', '.join(PLANS)}, got {args.plans!r}")
    chosen = plans(args.budget)
    chosen = {which: chosen[which] for which in wanted}
    pool = ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn"))

    def submit(method: str, which: str, distill: bool = False):
        key = f"{method}-{which}-{args.budget}-{args.steps}" + ("-kd" if distill else "")
        plan = chosen[which][1]
        return pool.submit(
            recorded, str(folder), key, run_training, key, method, plan, args.steps, distill, str(folder)
        )

    jobs = {(m, which, False): submit(m, which) for which in chosen for m in methods}
    results = {}
    for (m, which, kd), job in jobs.items():
        results[(m, which, kd)] = job.result()
        print(f"{m} on the {which} plan: test {results[(m, which, kd)]['test']:.4f}", flush=True)
    distilled = {}
    if "searched" in chosen:  # the best two on it again, with distillation
        trained = [m for m in methods if not m.startswith("scratch")]
        ranked = sorted(trained, key=lambda m: -results[(m, "searched", False)]["test"])
        distilled = {(m, "searched", True): submit(m, "searched", True) for m in ranked[:2]}
    for k, job in distilled.items():
        results[k] = job.result()
        print(f"{k[0]} + distillation on the searched plan: test {results[k]['test']:.4f}", flush=True)
    pool.shutdown()
    text = section(results, chosen, methods, args)
    if args.no_write:
        print(text)
    else:
        after = "search-long" if args.section == "training" else "training"
        print(f"wrote {write_section(args.section, text, after=after)}")


def section(results: dict, chosen: dict, methods: list[str], args: argparse.Namespace) -> str:
    test = fashion_mnist_splits().test
    base = AccuracyEvaluator(test, bn_recalibration_batches=0)(ap.zoo.pretrained("resnet20_fashion_mnist"))["accuracy"]
    meta = PRETRAINED["resnet20_fashion_mnist"]
    space = ap.PruningSpace(ap.zoo.pretrained("resnet20_fashion_mnist"), torch.zeros(1, 1, 28, 28))
    dates = sorted({r["measured"]["date"] for r in results.values()})
    commits = sorted({r["measured"]["commit"] for r in results.values()})
    command = f"python benchmarks/training.py --budget {args.budget} --steps {args.steps}"
    for flag, value, default in (
        ("--methods", args.methods, ",".join(METHODS)),
        ("--plans", args.plans, ",".join(PLANS)),
        ("--section", args.section, "training"),
    ):
        command += f" {flag} {value}" if value != default else ""
    lines = [
        f"## Training-aware methods at an equal training budget: {args.steps} steps",
        "",
        f"Generated by `{command}` "
        f"(measured {dates[0]}{' to ' + dates[-1] if len(dates) > 1 else ''}, commit {', '.join(commits)}; "
        f"{platform.processor() or platform.machine()}, one thread per run, two runs side by side).",
        "",
        f"The pretrained ResNet-20 on Fashion-MNIST ({base:.2%} test, {meta['epochs']} epochs) pruned to "
        f"{args.budget:.0%} of its MACs. Every method trains {args.steps} SGD "
        f"steps of 128 images (Scratch-B: × the MACs ratio, capped at 2×), lr {LR} cosine ({SCRATCH_LR} from "
        "scratch), and ends physically smaller at exactly the plan (MACs checked); test top-1 on the 10k test set "
        "as trained. *one-shot* is the plan pruned by the method's criterion before any training (L1 unless the "
        "method ranks otherwise), scored after no recalibration, so it shows how much the training recovers.",
        "",
    ]
    for which, (origin, plan) in chosen.items():
        lines += [
            f"### The {which} plan ({origin}; {space.macs(plan) / 1e6:.2f} MMACs, "
            f"{space.macs(plan) / space.macs({}):.1%} of the MACs)",
            "",
            "| method | steps | test top-1 | vs one-shot + fine-tune | one-shot (no training) | wall time |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        baseline = results[("finetune", which, False)]["test"] if ("finetune", which, False) in results else None
        rows = [(m, kd) for m in methods for kd in (False, True) if (m, which, kd) in results]
        for m, kd in rows:
            r = results[(m, which, kd)]
            assert r["macs"] == r["plan_macs"], (m, which)
            delta = (
                "—" if baseline is None or (m == "finetune" and not kd) else f"{(r['test'] - baseline) * 100:+.2f} pp"
            )
            lines.append(
                f"| {m}{' + distillation' if kd else ''} | {r['steps']} | {r['test']:.2%} | {delta} | "
                f"{r['test_one_shot']:.2%} | {r['seconds'] / 60:.1f} min |"
            )
        if baseline is not None:
            better = [f"{m}{' + KD' if kd else ''}" for m, kd in rows if results[(m, which, kd)]["test"] > baseline]
            worse = [
                f"{m}{' + KD' if kd else ''}"
                for m, kd in rows
                if (m, kd) != ("finetune", False) and results[(m, which, kd)]["test"] <= baseline
            ]
            noise = (baseline * (1 - baseline) / len(test)) ** 0.5 * 100
            lines += [
                "",
                f"Beat one-shot + fine-tune ({baseline:.2%}): {', '.join(better) or 'none'}. "
                f"Did not: {', '.join(worse) or 'none'}. One standard error of a top-1 near {baseline:.2%} on "
                f"{len(test)} images is {noise:.2f} points: a difference smaller than that is not one this test set "
                "can tell.",
            ]
        lines.append("")
    searched = {(m, kd): r["test"] for (m, which, kd), r in results.items() if which == "searched"}
    if ("finetune", False) in searched:
        baseline = searched[("finetune", False)]
        best = max(searched, key=searched.get)
        name = f"{best[0]}{' + distillation' if best[1] else ''}"
        lines.append(
            f"The best network on the searched plan ({name}, {searched[best]:.2%}) ends "
            f"{(base - searched[best]) * 100:.2f} points below the unpruned model ({base:.2%})."
        )
        kd = [
            f"{m} {searched[(m, False)]:.2%} → {searched[(m, True)]:.2%} "
            f"({(searched[(m, True)] - searched[(m, False)]) * 100:+.2f} pp)"
            for m, flag in searched
            if flag and (m, False) in searched
        ]
        if kd:
            lines.append(f"Distillation from the unpruned model (T = 4, α = 0.5): {'; '.join(kd)}.")
        epochs = args.steps * 128 / 55000
        original_steps = meta["epochs"] * (55000 // 128)
        lines += [
            "",
            f"Why, and the published direction: {args.steps} steps are {epochs:.1f} epochs. A method that prunes while "
            "it trains spends them on the full network and gives the final architecture only part of them (AGP "
            "and Taylor prune until half-way, IMP retrains in 3 rounds, ADMM and Slimming regularise for half), "
            "while one-shot + fine-tune trains the final network for all of them; the papers' gains come with "
            "budgets of tens to hundreds of epochs.",
        ]
        if ("fpgm", False) in searched:
            lines[-1] += (
                " FPGM in training on ResNet-56 / CIFAR-10 at 52.6% of the FLOPs went 93.59% → 93.49% from a "
                "pretrained model (He et al., CVPR 2019); here it ends "
                f"{(searched[('fpgm', False)] - baseline) * 100:+.2f} points against one-shot + fine-tune."
            )
        if ("scratch_e", False) in searched:
            lines[-1] += (
                f" Scratch-E ends {(searched[('scratch_e', False)] - baseline) * 100:+.2f} points against one-shot + "
                "fine-tune at the equal budget"
                + (
                    f", Scratch-B {(searched[('scratch_b', False)] - baseline) * 100:+.2f}"
                    if ("scratch_b", False) in searched
                    else ""
                )
                + '; "Rethinking the Value of Network Pruning" trains from scratch for the original\'s whole '
                f"schedule (here {meta['epochs']} epochs, about {original_steps} steps), which this table does not."
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
