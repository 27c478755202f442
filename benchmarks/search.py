"""Search quality: every strategy under the same budget, evaluator and number of evaluations, in one run.

    python benchmarks/search.py [--trials 60] [--budget 0.5]
                                [--strategies uniform,random,tpe,sa,amc,metapruning,netadapt]
                                [--long-trials 300] [--long-budgets 0.5,0.3] [--jobs 2] [--metapruning-steps 300]
                                [--long-strategies uniform,random,tpe,sa,amc,metapruning,autocompress]

The model is the pretrained zoo ResNet-20 on Fashion-MNIST. Every candidate is
scored the same way (adaptive-BN recalibration on 10 x 128 training images, top-1
on 2048 held-out *training* images). The best plan of each strategy is then
scored once on the 10k test set with the same recalibration (no fine-tune), so
the table compares allocations, not training recipes. MetaPruning is the exception
that scores its own weights: it first trains a PruningNet (``--metapruning-steps``
SGD steps, reported in its row) and its candidates carry the generated weights, so
its row also gives its plan on the original weights. Torch-Pruning's global
magnitude ranking (its ``global_pruning=True``, ratio bisected to the same MACs)
is the outside baseline. NetAdapt fine-tunes every proposal, so for a comparison at
equal training compute every other best network is also fine-tuned once with as
many SGD steps as NetAdapt spent in all, and scored on the test set again. Writes
the ``search`` section of BENCHMARKS.md.

The same invocation then gives every strategy but NetAdapt ``--long-trials``
evaluations (long enough for AMC's agent to learn after its warm-up) at each of
``--long-budgets`` and writes the ``search-long`` section, with AMC's warm-up and
learning phases compared; AutoCompress runs 3 rounds whose candidates fill the evaluations, and its training
steps are reported in its row (not counted as evaluations). Every search and fine-tune is one job in a pool of
``--jobs`` worker processes, one thread each. Each finished job is recorded in
``--results`` (``benchmarks/results/search/``: its numbers as JSON with the date and
commit, and the network of a strategy that trains its own); an interrupted
invocation run again with the same options runs only what is missing, and the
tables say over which dates and commits their rows were measured (``--fresh``
measures everything again).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch
from report import commit, recorded, write_section  # noqa: E402 - benchmarks/ is on sys.path when a script runs

import autoprune as ap
from autoprune.data import fashion_mnist_splits
from autoprune.evaluators import AccuracyEvaluator
from autoprune.search import attrs

ROOT = Path(__file__).resolve().parent.parent


def torch_pruning_global(model: torch.nn.Module, x: torch.Tensor, target_macs: int) -> torch.nn.Module:
    """Torch-Pruning's global L2 ranking, with the ratio bisected so the MACs meet the target."""
    import torch_pruning as tp

    def prune(ratio: float) -> torch.nn.Module:
        m = copy.deepcopy(model)
        pruner = tp.pruner.BasePruner(
            m,
            x,
            importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=ratio,
            global_pruning=True,
            ignored_layers=[m.fc],
        )
        pruner.step()
        return m

    lo, hi = 0.0, 0.95
    best = model
    for _ in range(14):
        mid = (lo + hi) / 2
        m = prune(mid)
        if ap.count_macs(m, x) <= target_macs:
            best, hi = m, mid
        else:
            lo = mid
    return best


def _evaluators(data: Any) -> tuple[AccuracyEvaluator, AccuracyEvaluator]:
    """How every row scores: candidates on 2048 held-out training images, the best plan on the 10k test set
    (both after adaptive-BN recalibration on 10 x 128 training images)."""
    search_eval = AccuracyEvaluator(data.val, train_data=data.train, batches=8, bn_recalibration_batches=10)
    test_eval = AccuracyEvaluator(data.test, train_data=data.train, bn_recalibration_batches=10)
    return search_eval, test_eval


OWN_WEIGHTS = {"netadapt", "metapruning", "autocompress"}  # their trials score weights of their own
ROUNDS = 3  # AutoCompress's rounds (its default): round_trials = evaluations / rounds - 1


def _options(name: str, metapruning_steps: int, trials: int) -> dict:
    """The options a strategy runs with in this benchmark (its defaults, but MetaPruning's training length and
    AutoCompress's candidates per round, which fill the evaluations)."""
    if name == "metapruning":
        return {"train_steps": metapruning_steps}
    if name == "autocompress":
        return {"rounds": ROUNDS, "round_trials": trials // ROUNDS - 1}
    return {}


def _generations(done: list) -> list[dict]:
    """MetaPruning's best and mean score per generation of its completed candidates."""
    by: dict[int, list[float]] = {}
    for t in done:
        by.setdefault(t.user_attrs["metapruning"]["generation"], []).append(t.values[0])
    return [{"n": len(v), "best": max(v), "mean": sum(v) / len(v)} for _, v in sorted(by.items())]


def _space() -> ap.PruningSpace:
    return ap.PruningSpace(ap.zoo.pretrained("resnet20_fashion_mnist"), torch.zeros(1, 1, 28, 28))


def run_search(
    key: str, name: str, budget: float, trials: int, folder: str, options: dict, netadapt_finetune: int
) -> dict:
    """One strategy's search of ``trials`` evaluations at ``budget`` (in a worker process): its best plan's scores,
    and for a strategy with phases (AMC), generations (MetaPruning) or iterations (NetAdapt) the scores of each.
    A strategy that scores weights of its own also gives its plan on the original weights, and its network is
    saved beside the result for the equal-compute fine-tune."""
    space = _space()
    data = fashion_mnist_splits()
    search_eval, test_eval = _evaluators(data)
    if name == "netadapt":
        search_eval = AccuracyEvaluator(
            data.val, train_data=data.train, batches=8, bn_recalibration_batches=10, finetune_steps=netadapt_finetune
        )
    studies = Path(folder) / "studies"
    studies.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    study = ap.search(
        space,
        search_eval,
        ap.Budget(macs=budget),
        strategy=name,
        n_trials=trials,
        strategy_options=options,
        storage=f"sqlite:///{studies / f'{key}.db'}",
        study_name=name,
        seed=0,
    )
    seconds = time.perf_counter() - t0
    best = ap.best_trial(study)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    phases: dict[str, list[float]] = {}
    for t in sorted(done, key=lambda t: t.number):
        phases.setdefault(t.user_attrs.get(attrs.PHASE) or "", []).append(t.values[0])
    plan = best.user_attrs["plan"]
    plan_test = test_eval(space.apply(plan))["accuracy"]
    own = name in OWN_WEIGHTS
    result = {
        "name": name,
        "budget": budget,
        "evaluations": len(done),
        "val": best.values[0],
        "plan": plan,
        "test": plan_test,
        "plan_test": None,
        "macs": best.user_attrs["macs"],
        "params": best.user_attrs["params"],
        "seconds": seconds,
        "eval_seconds": sum(t.user_attrs.get("eval_seconds", 0.0) for t in done),
        "train_seconds": sum(
            (t.datetime_complete - t.datetime_start).total_seconds()
            for t in study.trials
            if t.user_attrs.get(attrs.TASK) and t.datetime_complete
        ),
        "phases": {
            k: {"n": len(v), "best": max(v), "mean_last": sum(v[-50:]) / len(v[-50:])} for k, v in phases.items()
        },
        "generations": _generations(done) if name == "metapruning" else [],
    }
    if own:
        network = ap.trial_network(study, best, space).build()
        result["test"], result["plan_test"] = test_eval(network)["accuracy"], plan_test
        result["network"] = f"{key}.pt"
        torch.save(network, Path(folder) / result["network"])
    if name == "autocompress":
        rounds = [t.user_attrs["autocompress_result"] for t in study.trials if "autocompress_result" in t.user_attrs]
        result["steps"] = sum(r["training"]["steps"] for r in rounds)
        result["rounds"] = [
            {"steps": r["training"]["steps"], "seconds": r["training"]["seconds"], "macs": space.macs(r["plan"])}
            for r in rounds
        ]
    if name == "netadapt":
        feasible = [n for n, t in enumerate(done, 1) if all(c <= 0 for c in t.constraints.values())]
        result["first_feasible"] = feasible[0] if feasible else None
        result["iterations"] = len({t.user_attrs["netadapt"]["iteration"] for t in done})
        result["steps"] = netadapt_finetune * len(done)
    return result


def run_torch_pruning(budget: float) -> dict:
    """Torch-Pruning's global ranking at ``budget``, scored like every row."""
    space = _space()
    search_eval, test_eval = _evaluators(fashion_mnist_splits())
    t0 = time.perf_counter()
    x = torch.zeros(1, 1, 28, 28)
    model = torch_pruning_global(space.model, x, ap.Budget(macs=budget).targets(space)["macs"])
    return {
        "name": "Torch-Pruning global L2",
        "evaluations": 1,
        "val": search_eval(copy.deepcopy(model))["accuracy"],
        "test": test_eval(copy.deepcopy(model))["accuracy"],
        "macs": ap.count_macs(model, x),
        "params": ap.count_params(model),
        "seconds": time.perf_counter() - t0,
        "macs_target": ap.Budget(macs=budget).targets(space)["macs"],
    }


def run_finetune(row: dict, folder: str, steps: int) -> dict:
    """Fine-tune one row's best network once with ``steps`` SGD steps and score it on the test set."""
    space = _space()
    data = fashion_mnist_splits()
    if row.get("network"):
        model = torch.load(Path(folder) / row["network"], weights_only=False)
    elif row.get("plan") is not None:
        model = space.apply(row["plan"])
    else:  # Torch-Pruning's row: rebuilt (its bisection is deterministic)
        model = torch_pruning_global(space.model, torch.zeros(1, 1, 28, 28), row["macs_target"])
    tune_eval = AccuracyEvaluator(data.test, train_data=data.train, bn_recalibration_batches=10, finetune_steps=steps)
    return {"test": tune_eval(model)["accuracy"], "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--strategies", default="uniform,random,tpe,sa,amc,metapruning,netadapt")
    parser.add_argument("--long-trials", type=int, default=300)
    parser.add_argument("--long-budgets", default="0.5,0.3")
    parser.add_argument("--long-strategies", default="uniform,random,tpe,sa,amc,metapruning,autocompress")
    parser.add_argument(
        "--metapruning-steps",
        type=int,
        default=300,
        help="MetaPruning's PruningNet training steps (128 images each; reported in its row)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="searches run at once (one thread each)")
    parser.add_argument(
        "--netadapt-finetune",
        type=int,
        default=20,
        help="NetAdapt's short-term fine-tune steps per proposal (counted in its row)",
    )
    parser.add_argument(
        "--netadapt-trials",
        type=int,
        default=300,
        help="NetAdapt's cap on evaluations: it stops when the budget is met, and needs one evaluation per group "
        "per iteration, so it gets more than --trials (the count is reported)",
    )
    parser.add_argument(
        "--netadapt-reduction",
        type=float,
        default=0.12,
        help="NetAdapt's first resource reduction (fraction of the original per iteration)",
    )
    parser.add_argument(
        "--results",
        default=str(ROOT / "benchmarks" / "results" / "search"),
        help="where each finished search and fine-tune is recorded; a re-run with the same options reuses them "
        "and runs only what is missing",
    )
    parser.add_argument("--fresh", action="store_true", help="forget the recorded results and measure everything")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    folder = Path(args.results)
    folder.mkdir(parents=True, exist_ok=True)
    if args.fresh:
        for old in [*folder.glob("*.json"), *folder.glob("*.pt"), *folder.glob("studies/*.db")]:
            old.unlink()
    pool = ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn"))

    def search_job(section: str, name: str, budget: float, trials: int):
        options = _options(name, args.metapruning_steps, trials)
        trials = 1 if name == "uniform" else trials
        key = f"{section}-{name}-{budget}-{trials}"
        if name == "metapruning":
            key += f"-steps{args.metapruning_steps}"
        if name == "netadapt":
            options = {"initial_reduction": args.netadapt_reduction}
            key += f"-ft{args.netadapt_finetune}-r{args.netadapt_reduction}"
        args_ = (key, name, budget, trials, str(folder), options, args.netadapt_finetune)
        return key, pool.submit(recorded, str(folder), key, run_search, *args_)

    # NetAdapt first: its SGD steps set the equal-compute fine-tune of every other row.
    names = sorted(args.strategies.split(","), key=lambda n: n != "netadapt")
    short = {
        n: search_job("short", n, args.budget, args.netadapt_trials if n == "netadapt" else args.trials) for n in names
    }
    tp_key = f"short-torch-pruning-{args.budget}"
    short["Torch-Pruning global L2"] = (
        tp_key,
        pool.submit(recorded, str(folder), tp_key, run_torch_pruning, args.budget),
    )
    long_jobs = [
        search_job("long", n, float(b), args.long_trials)
        for b in filter(None, args.long_budgets.split(","))
        for n in filter(None, args.long_strategies.split(","))
    ]

    model = ap.zoo.pretrained("resnet20_fashion_mnist")
    space = ap.PruningSpace(model, torch.zeros(1, 1, 28, 28))
    base = _evaluators(fashion_mnist_splits())[1](copy.deepcopy(model))["accuracy"]
    results = {}
    for name, (key, job) in short.items():
        results[name] = job.result()
        print(f"{name}: {results[name]['evaluations']} evaluations, test {results[name]['test']:.4f}", flush=True)
    netadapt = results.get("netadapt")
    steps = netadapt["steps"] if netadapt else 0
    tuned_jobs = {
        name: pool.submit(
            recorded, str(folder), f"tuned-{key}-{steps}", run_finetune, results[name], str(folder), steps
        )
        for name, (key, _) in short.items()
        if steps and name != "netadapt"
    }
    tuned = {name: job.result()["test"] for name, job in tuned_jobs.items()}
    text = _short_section(results, tuned, base, space, args)
    if args.no_write:
        print(text)
    else:
        print(f"wrote {write_section('search', text)}")
    long_results = [job.result() for _, job in long_jobs]
    # MetaPruning's weights were trained (its PruningNet); every other long row's best network gets as many
    # fine-tune steps, for a comparison at equal training compute.
    steps = args.metapruning_steps
    # MetaPruning's *structure* gets the same: its plan on the original weights, fine-tuned (the paper compares
    # structures, each trained).
    tuned_long_jobs = {
        key: pool.submit(
            recorded, str(folder), f"tuned-{key}-{steps}", run_finetune, {**row, "network": None}, str(folder), steps
        )
        for (key, _), row in zip(long_jobs, long_results)
    }
    tuned_long = {key: job.result()["test"] for key, job in tuned_long_jobs.items()}
    pool.shutdown()
    if not long_results:  # --long-strategies "": the first section only
        return
    keys = [key for key, _ in long_jobs]
    text = _long_section(
        long_results, {r["name"] + f"@{r['budget']}": tuned_long.get(k) for k, r in zip(keys, long_results)}, args
    )
    if args.no_write:
        print(text)
        return
    print(f"wrote {write_section('search-long', text, after='search')}")


def _measured(results: Any) -> str:
    """When (and at which commits) the rows were measured: one invocation can span sessions."""
    results = list(results)
    dates = sorted({r["measured"]["date"] for r in results if r.get("measured")})
    commits = sorted({r["measured"]["commit"] for r in results if r.get("measured")})
    span = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}" if dates else str(date.today())
    return f"measured {span} at commit{'s' if len(commits) > 1 else ''} {', '.join(commits) or commit()}"


def _short_section(results: dict, tuned: dict, base: float, space: ap.PruningSpace, args: argparse.Namespace) -> str:
    netadapt = results.get("netadapt")
    netadapt_steps = netadapt["steps"] if netadapt else 0
    uniform = results.get("uniform")
    lines = [
        "## Search quality: strategies under one budget",
        "",
        f"`python benchmarks/search.py --trials {args.trials} --budget {args.budget}`, {_measured(results.values())}; "
        f"{platform.processor() or platform.machine()}, {args.jobs} searches at a time with one thread each, "
        f"torch {torch.__version__}.",
        f"Pretrained zoo ResNet-20 on Fashion-MNIST (test accuracy {base:.2%} unpruned, "
        f"{space.macs({}) / 1e6:.1f} MMACs); budget {args.budget:.0%} of the MACs; L1 criterion; every candidate "
        "scored with adaptive-BN recalibration (10 x 128 training images) and top-1 on 2048 held-out training "
        "images; the best plan of each strategy then scored once on the 10k test set the same way. No fine-tuning "
        "in the search (NetAdapt excepted): this compares allocations."
        + (
            f" The column after Δ fine-tunes each best network once with the {netadapt_steps} SGD steps NetAdapt "
            "spent on its proposals (same optimiser and learning rate), for a comparison at equal training compute."
            if tuned
            else ""
        ),
        "",
        "| strategy | evaluations | best val top-1 | its test top-1 | Δ test vs uniform | "
        + (f"test after {netadapt_steps} fine-tune steps | " if tuned else "")
        + "MMACs | params | wall time |",
        "|---|---:|---:|---:|---:|" + ("---:|" if tuned else "") + "---:|---:|---:|",
    ]
    for key, r in results.items():
        label = key
        if key == "netadapt":
            label = (
                f"netadapt ({r['iterations']} iterations; {args.netadapt_finetune} fine-tune steps per evaluation, "
                f"i.e. {r['steps']} SGD steps in all)"
            )
        elif key == "metapruning":
            label = f"metapruning ({args.metapruning_steps} PruningNet training steps of 128 images first)"
        delta = f"{(r['test'] - uniform['test']) * 100:+.2f} pp" if uniform and key != "netadapt" else "—"
        shown = f"{r['test']:.2%}"
        if key == "netadapt":
            shown += f" (its own fine-tuned network); {r['plan_test']:.2%} (its plan on the original weights)"
        elif key == "metapruning":
            shown += f" (its generated weights); {r['plan_test']:.2%} (its plan on the original weights)"
        after = ""
        if tuned:
            after = f"{tuned[key]:.2%} | " if key in tuned else "(its own network above) | "
        lines.append(
            f"| {label} | {r['evaluations']} | {r['val']:.2%} | {shown} | {delta} | {after}"
            f"{r['macs'] / 1e6:.2f} | {r['params']:,} | {r['seconds']:.0f} s |"
        )
    tests = {k: r["test"] for k, r in results.items()}
    meta = results.get("metapruning")
    lines += [
        "",
        f"Without fine-tuning, {1 - args.budget:.0%} of the MACs removed in one shot costs a lot of accuracy for "
        "every method; the ranking between strategies is what this table is for. One run, one seed: differences "
        "below about one point are within the noise of the 2048-image scoring set. Wall times are from a shared "
        f"{os.cpu_count()}-core machine.",
        "",
        *_verdicts(
            tests,
            args.netadapt_finetune,
            args.trials,
            netadapt["evaluations"] if netadapt else 0,
            netadapt["first_feasible"] if netadapt else None,
            netadapt["plan_test"] if netadapt else None,
            len(space.groups),
            meta["plan_test"] if meta else None,
        ),
        *_compute_verdict(tests, tuned, netadapt_steps),
    ]
    return "\n".join(lines)


def _long_section(results: list[dict], tuned: dict[str, float | None], args: argparse.Namespace) -> str:
    """``tuned``: "name@budget" -> the test top-1 of that row's best plan, pruned from the original weights, after
    MetaPruning's training steps of fine-tuning."""
    steps = args.metapruning_steps
    budgets = list(dict.fromkeys(r["budget"] for r in results))
    lines = [
        f"## Search quality at {args.long_trials} evaluations: "
        + " and ".join(f"{b:.0%}" for b in budgets)
        + " of the MACs",
        "",
        f"The same invocation (`--long-trials {args.long_trials} --long-budgets {args.long_budgets}`, "
        f"{args.jobs} searches at a time, one thread each; {_measured(results)}): every strategy but NetAdapt "
        f"gets {args.long_trials} "
        "evaluations, scored as above (adaptive BN, 2048 held-out training images; the best plan then on the 10k "
        "test set, no fine-tuning). Wall time includes waiting for the other core's searches. MetaPruning's row "
        f"scores its generated weights, which its PruningNet training ({steps} SGD steps of 128 images) has "
        f"trained; so the *after {steps} fine-tune steps* column gives every other row's best network the same "
        "number of steps (same optimiser and learning rate as above), for a comparison at equal training compute.",
        "",
        "| budget | strategy | evaluations | best val top-1 | its test top-1 | Δ test vs uniform | Δ test vs random "
        f"| test after {steps} fine-tune steps | MMACs | params | wall time | overhead per trial |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    verdicts = []
    for b in budgets:
        mine = {r["name"]: r for r in results if r["budget"] == b}
        uniform, random = mine.get("uniform"), mine.get("random")
        for r in mine.values():
            du = f"{(r['test'] - uniform['test']) * 100:+.2f} pp" if uniform else "—"
            dr = f"{(r['test'] - random['test']) * 100:+.2f} pp" if random and r is not random else "—"
            overhead = (r["seconds"] - r["eval_seconds"]) / max(r["evaluations"], 1) * 1e3
            after = tuned.get(f"{r['name']}@{b}")
            after = "—" if after is None else f"{after:.2%}" + (" (its plan)" if r["name"] == "metapruning" else "")
            label = r["name"]
            if r["name"] == "autocompress":
                label += f" ({len(r['rounds'])} rounds; {r['steps']} training steps of 128 images, not counted)"
            lines.append(
                f"| {b:.0%} | {label} | {r['evaluations']} | {r['val']:.2%} | {r['test']:.2%} | {du} | {dr} | "
                f"{after} | {r['macs'] / 1e6:.2f} | {r['params']:,} | {r['seconds']:.0f} s | {overhead:.0f} ms |"
            )
        amc = mine.get("amc")
        if amc and random:
            warm, learn = amc["phases"].get("warm-up"), amc["phases"].get("learning")
            verb = "beats" if amc["test"] - random["test"] > 0.01 else "does *not* beat"
            text = (
                f"- At {b:.0%}: AMC {verb} random search at equal evaluations ({amc['test']:.2%} vs "
                f"{random['test']:.2%} on test; best val {amc['val']:.2%} vs {random['val']:.2%})."
            )
            if warm and learn:
                text += (
                    f" Its {warm['n']} warm-up episodes (uniform random actions through the wall) found a best of "
                    f"{warm['best']:.2%} (mean of the last 50: {warm['mean_last']:.2%}); its {learn['n']} learning "
                    f"episodes a best of {learn['best']:.2%} (mean of the last 50: {learn['mean_last']:.2%})."
                )
            verdicts.append(text)
        auto = mine.get("autocompress")
        if auto:
            fair = {k: tuned[f"{k}@{b}"] for k in mine if k not in OWN_WEIGHTS and tuned.get(f"{k}@{b}") is not None}
            best = max(fair, key=fair.get) if fair else None
            text = (
                f"- At {b:.0%}: AutoCompress's network, trained {auto['steps']} SGD steps over its "
                f"{len(auto['rounds'])} rounds (ADMM, hard pruning, masked retraining), scores {auto['test']:.2%} "
                "on test"
            )
            if best is not None:
                verb = "more" if auto["test"] > fair[best] else "less"
                text += (
                    f": {verb} than the best one-shot row fine-tuned {steps} steps ({best}, {fair[best]:.2%}), with "
                    f"{auto['steps'] / steps:.0f}x its training"
                )
            structure = tuned.get(f"autocompress@{b}")
            if structure is not None:
                text += f". Its structure from the original weights, fine-tuned {steps} steps: {structure:.2%}"
            verdicts.append(text + ".")
        meta = mine.get("metapruning")
        if meta:
            verdicts.append(_metapruning_verdict(b, meta, mine))
            fair = {k: tuned[f"{k}@{b}"] for k in mine if k not in OWN_WEIGHTS and tuned.get(f"{k}@{b}") is not None}
            structure = tuned.get(f"metapruning@{b}")
            if fair:
                best = max(fair, key=fair.get)
                verb = "beats" if meta["test"] - fair[best] > 0.005 else "does *not* beat"
                verdicts.append(
                    f"  At equal training compute (every other best network fine-tuned with the {steps} steps its "
                    f"PruningNet trained) MetaPruning {verb} the best of them, {best} at {fair[best]:.2%} "
                    f"(MetaPruning {meta['test']:.2%}; the others after fine-tuning: "
                    + ", ".join(f"{k} {v:.2%}" for k, v in fair.items())
                    + ")."
                )
            if fair and structure is not None and "uniform" in fair:
                gap = (structure - fair["uniform"]) * 100
                verdicts.append(
                    f"  Its *structure*, pruned from the original weights and fine-tuned the same {steps} steps, "
                    f"scores {structure:.2%}: {gap:+.2f} points against the uniform structure "
                    f"({fair['uniform']:.2%}) and {(structure - max(fair.values())) * 100:+.2f} against the best. "
                    "The paper's claim (Liu et al., ICCV 2019: MobileNetV2 at 140 MFLOPs on ImageNet, uniform "
                    "67.2% → MetaPruning 68.2%, each structure trained from scratch) is +1.0 point for the "
                    f"structure; here it is {gap:+.2f}."
                )
    lines += [
        "",
        "Overhead per trial = (wall time − the evaluations' own time, model building included) / evaluations: "
        "the proposal (AMC: the episode, the agent's updates, saving it; MetaPruning: its PruningNet training, "
        "AutoCompress: its three rounds of training, spread over their evaluations) and the SQLite round trips; "
        "see also the overhead section.",
        "",
        *verdicts,
    ]
    return "\n".join(lines)


def _metapruning_verdict(budget: float, meta: dict, rows: dict[str, dict]) -> str:
    """MetaPruning against the other strategies at ``budget``: test accuracies, what the generator adds over the
    original weights, the training it spent and how its generations improved."""
    others = {k: r["test"] for k, r in rows.items() if k not in (*OWN_WEIGHTS, "uniform")}
    beaten = [k for k, v in others.items() if meta["test"] - v > 0.01]
    below = [k for k, v in others.items() if v - meta["test"] > 0.01]
    level = [k for k in others if k not in beaten and k not in below]
    parts = []
    if beaten:
        parts.append("beats " + ", ".join(f"{k} ({others[k]:.2%})" for k in beaten))
    if level:
        parts.append("is level (within a point) with " + ", ".join(f"{k} ({others[k]:.2%})" for k in level))
    if below:
        parts.append("does *not* beat " + ", ".join(f"{k} ({others[k]:.2%})" for k in below))
    if not parts:
        parts.append("has no other strategy to compare with")
    gens = "; ".join(f"{g['mean']:.1%} mean, {g['best']:.1%} best" for g in meta["generations"])
    return (
        f"- At {budget:.0%}: MetaPruning ({meta['test']:.2%} on test with its generated weights) "
        + "; ".join(parts)
        + f" at equal evaluations, with weights its generator trained against their one-shot ones. Its plan on the"
        f" original weights scores {meta['plan_test']:.2%} "
        f"({(meta['test'] - meta['plan_test']) * 100:+.1f} points from the generator). It trained its PruningNet "
        f"for {meta['train_seconds']:.0f} s before evaluating; per generation (scoring set): {gens}."
    )


def _verdicts(
    tests: dict[str, float],
    finetune: int,
    trials: int,
    evaluations: int,
    first_feasible: int | None,
    plan_only: float | None,
    groups: int,
    metapruning_plan_only: float | None = None,
) -> list[str]:
    """Plain sentences on who beats whom in this run, and why where a strategy does not beat the baselines."""
    pp = {k: (v - tests.get("uniform", v)) * 100 for k, v in tests.items()}
    out = []
    for name in ("random", "tpe", "sa", "amc", "metapruning"):
        if name in tests and "uniform" in tests:
            verb = "beats" if pp[name] > 1 else "does *not* beat"
            gap = (tests[name] - tests["random"]) * 100 if "random" in tests else 0.0
            vs_random = (
                f" and {'beats' if gap > 0 else 'trails'} random by {abs(gap):.1f} points"
                if name != "random" and "random" in tests
                else ""
            )
            out.append(f"- `{name}` {verb} uniform ({pp[name]:+.1f} points){vs_random}.")
    if "sa" in tests and "random" in tests and tests["sa"] < tests["random"]:
        out.append(
            "  Simulated annealing's chain starts at the uniform plan and moves locally (its first evaluations "
            f"calibrate the temperature), so in {trials} evaluations it explores far less of the space than random "
            "sampling; its best plan can also land under the budget, because the projection scales every group "
            "together and the last channel of a residual-stream group is a coarse step."
        )
    if "metapruning" in tests and metapruning_plan_only is not None:
        out.append(
            f"  MetaPruning's row scores its generated weights; its plan on the original weights scores "
            f"{metapruning_plan_only:.2%} ({(tests['metapruning'] - metapruning_plan_only) * 100:+.1f} points from "
            "the generator). Its first generation is random (the reference's initial population), so with "
            f"{trials} evaluations its evolution has had "
            f"{max(trials - 50, 0) // 50} generation(s) of children."
        )
    if "Torch-Pruning global L2" in tests and "uniform" in tests:
        out.append(
            f"- Torch-Pruning's global ranking (one shot, no search): {pp['Torch-Pruning global L2']:+.1f} points "
            "against uniform."
        )
    if "netadapt" in tests:
        out.append(
            f"- NetAdapt's own network is not comparable with the test column of the other rows: it fine-tunes "
            f"every proposal ({finetune} steps) and carries the picked weights forward, so it is a trained network "
            "(the fine-tuned column compares it at equal training compute)."
        )
        if plan_only is not None and "uniform" in tests:
            worse = plan_only < tests["uniform"]
            out.append(
                f"  Its *allocation* alone (its plan on the original weights, no fine-tuning) scores {plan_only:.2%}, "
                + (
                    f"{(tests['uniform'] - plan_only) * 100:.1f} points *under* uniform: its greedy steps cut a few "
                    "groups hard, each recovered by fine-tuning before the next."
                    if worse
                    else f"{(plan_only - tests['uniform']) * 100:+.1f} points against uniform."
                )
            )
        if evaluations > trials:
            out.append(
                f"  It ran {evaluations} evaluations, more than the {trials} the others had; its first network "
                f"under the budget was evaluation {first_feasible}. Every iteration evaluates one proposal per group "
                f"that can still shrink (up to {groups} here), and a step that fewer than half of them can make "
                "alone is halved, so the walk down to the budget takes many small iterations."
            )
    return out


def _compute_verdict(tests: dict[str, float], tuned: dict[str, float], steps: int) -> list[str]:
    """NetAdapt against the others at equal compute: each of their best networks fine-tuned with its SGD steps."""
    if not tuned or "netadapt" not in tests:
        return []
    best = max(tuned, key=tuned.get)
    verb = "beats" if tests["netadapt"] > tuned[best] else "does *not* beat"
    return [
        f"- At equal training compute (every other best network fine-tuned once with the {steps} SGD steps NetAdapt "
        f"spent on its proposals, same optimiser and learning rate), NetAdapt's {tests['netadapt']:.2%} {verb} the "
        f"best of them, `{best}` at {tuned[best]:.2%}."
    ]


if __name__ == "__main__":
    main()
