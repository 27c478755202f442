"""A real search on scikit-learn's digits, run as a subprocess by the resume tests.

usage: search_digits.py STORAGE_URL N_TRIALS [SLEEP_SECONDS] [STRATEGY] [search|join] [OPTIONS_JSON]

``join`` runs as one of several workers on a study made by ``autoprune.create_study``; ``OPTIONS_JSON`` replaces
the strategy's options below.
"""

import json
import os
import sys
import time
from pathlib import Path

import torch

import autoprune as ap
from autoprune.data import load_digits
from autoprune.evaluators import AccuracyEvaluator

# Small settings for the strategies that need them; tests/test_strategies.py passes the same.
OPTIONS = {
    "netadapt": {"initial_reduction": 0.1},
    "autocompress": {
        "rounds": 2,
        "round_trials": 2,
        "admm_steps": 6,
        "finetune_steps": 4,
        "batch_size": 32,
        "checkpoint_every": 2,
        "annealing": {"calibration_moves": 1},
    },
    "metapruning": {
        "train_steps": 20,
        "checkpoint_every": 5,
        "batch_size": 64,
        "population": 4,
        "parents": 2,
        "mutations": 1,
        "crossovers": 1,
        "recalibration_batches": 0,  # the evaluator re-estimates BatchNorm statistics itself
    },
}


def main() -> None:
    url, n = sys.argv[1], int(sys.argv[2])
    pause = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    strategy = sys.argv[4] if len(sys.argv) > 4 else "tpe"
    mode = sys.argv[5] if len(sys.argv) > 5 else "search"
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = ap.zoo.resnet20(in_channels=1, stage_widths=(8, 16, 32)).eval()
    train, test = load_digits("train"), load_digits("test")
    netadapt = strategy == "netadapt"
    evaluator = AccuracyEvaluator(
        test,
        train_data=train,
        bn_recalibration_batches=2,
        recalibration_batch_size=64,
        finetune_steps=5 if netadapt else 0,
        finetune_batch_size=64,
    )

    # AUTOPRUNE_TEST_HOLD=PATH:N: the N-th evaluation writes PATH and blocks, for a test to SIGKILL this process
    # inside a trial (see tests/helpers.py's kill_mid_trial).
    hold_path, _, hold_at = os.environ.get("AUTOPRUNE_TEST_HOLD", "").partition(":")
    calls = [0]

    def slow(model):
        calls[0] += 1
        if hold_path and calls[0] == int(hold_at):
            Path(hold_path).write_text("held")
            while True:
                time.sleep(1)
        result = evaluator(model)
        time.sleep(pause)
        return result

    space = ap.PruningSpace(model, torch.zeros(1, 1, 8, 8))
    options = json.loads(sys.argv[6]) if len(sys.argv) > 6 else OPTIONS.get(strategy, {})
    config = ap.SearchConfig(
        budget=ap.Budget(macs=0.6),
        strategy=strategy,
        n_trials=n,
        storage=url,
        study_name="digits",
        seed=0,
        strategy_options=options,
    )
    ap.search(space, slow, config=config, join=mode == "join", train_data=train)


if __name__ == "__main__":
    main()
