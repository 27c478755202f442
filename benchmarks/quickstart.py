"""The README's first picture: run the quickstart as a user would and put its result card into the README.

    python benchmarks/quickstart.py [--study studies/quickstart.yaml]

Runs ``autoprune search`` on a copy of the study file in a fresh folder (so nothing is resumed), timed from the
shell's point of view, then writes the card (REPORT.md's table), the wall time and the machine into the README's
``quickstart`` section and copies the card's accuracy/latency PNG to ``docs/quickstart.png``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import yaml
from report import write_section  # noqa: E402 - benchmarks/ is on sys.path when a script runs

from autoprune.report import speedup

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--study", default=str(ROOT / "studies" / "quickstart.yaml"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    config = yaml.safe_load(Path(args.study).read_text())
    config["export"]["dir"] = str(work / "out")
    study = work / Path(args.study).name
    study.write_text(yaml.safe_dump(config, sort_keys=False))
    t0 = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "autoprune.cli", "search", str(study)], capture_output=True, text=True, cwd=work
    )
    seconds = time.perf_counter() - t0
    if run.returncode != 0:
        sys.exit(run.stdout[-3000:] + run.stderr[-3000:])
    out = work / "out"
    figures = json.loads((out / "structure.json").read_text())["report"]
    table = (out / "REPORT.md").read_text().split("\n\n")[1]  # the card's table, after its title
    base, pruned = figures["unpruned"], figures["pruned"]
    drop = (base["test_accuracy"] - pruned["test_accuracy"]) * 100
    big = max(pruned["latency_ms"], key=int)  # the study's batch
    text = "\n".join(
        [
            f"`autoprune search studies/quickstart.yaml` on {date.today()}: {seconds / 60:.1f} minutes from the "
            f"command to the card ({platform.processor() or platform.machine()}, 2 cores, torch 1 thread), "
            f"{config['n_trials']} TPE trials, then {config['export'].get('finetune_steps', 0)} fine-tune steps:",
            "",
            table,
            "",
            f"At {pruned['macs'] / base['macs']:.0%} of the MACs the pruned network is {drop:.2f} points "
            f"{'under' if drop > 0 else 'over'} the unpruned one on the 10k test images; measured on this machine "
            f"it is {speedup(figures['unpruned']['latency_ms']['1'], pruned['latency_ms']['1'])} at batch 1 and "
            f"{speedup(figures['unpruned']['latency_ms'][big], pruned['latency_ms'][big])} at batch {big}"
            + (
                " (at batch 1 a 28×28 ResNet-20 is bound by the fixed cost of each layer's call, not by its "
                "arithmetic, so removing channels does not pay there)."
                if pruned["latency_ms"]["1"] > figures["unpruned"]["latency_ms"]["1"]
                else "."
            ),
            "",
            "![the quickstart's result card](docs/quickstart.png)",
        ]
    )
    if args.no_write:
        print(text)
        return
    (ROOT / "docs").mkdir(exist_ok=True)
    shutil.copy(out / "accuracy_latency.png", ROOT / "docs" / "quickstart.png")
    print(f"wrote {write_section('quickstart', text, path=ROOT / 'README.md')}")


if __name__ == "__main__":
    main()
