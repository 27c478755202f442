"""The README's examples run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

import autoprune as ap

README = Path(__file__).resolve().parents[1] / "README.md"


def _section_blocks(heading: str, language: str) -> list[str]:
    text = README.read_text()
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


def test_the_example_strategy_runs_from_a_study_file_resumes_and_exports(tmp_path):
    """The 'Write your own strategy' file, named by its import path in a study file next to it."""
    (tmp_path / "evolution.py").write_text(_section_blocks("Write your own strategy", "python")[0])
    strategy_line = _section_blocks("Write your own strategy", "yaml")[0].strip()
    assert strategy_line.startswith('strategy: {name: "evolution:Evolution"')
    study_file = tmp_path / "evo.yaml"
    study_file.write_text(
        "study_name: evo\n"
        "model: {zoo: resnet20, kwargs: {in_channels: 1, stage_widths: [8, 16, 32]}, input_shape: [1, 1, 8, 8]}\n"
        "data: {dataset: digits}\n"
        "evaluator: {name: accuracy, kwargs: {bn_recalibration_batches: 2, recalibration_batch_size: 64}}\n"
        "budget: {macs: 0.5}\n"
        + strategy_line.replace("population: 8", "population: 3")
        + "\nn_trials: 6\nthreads: 1\n"
    )
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "COLUMNS": "200"}

    def cli(*args: str) -> None:
        run = subprocess.run(
            [sys.executable, "-m", "autoprune.cli", *args], cwd=Path.home(), capture_output=True, text=True, env=env
        )
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]

    cli("search", str(study_file), "--out", str(tmp_path / "out"))  # run from elsewhere: found next to the file
    cli("search", str(study_file), "--n-trials", "8", "--out", str(tmp_path / "out"))  # resumes
    study = optuna.load_study(study_name="evo", storage=f"sqlite:///{tmp_path / 'evo.db'}")
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 8 and {t.user_attrs["strategy"] for t in complete} == {"evolution"}
    space = ap.PruningSpace(ap.zoo.resnet20(in_channels=1, stage_widths=(8, 16, 32)), torch.zeros(1, 1, 8, 8))
    assert all(t.user_attrs["macs"] <= 0.5 * space.macs({}) for t in complete)
    # After the first three random plans, each proposal is a mutation (sigma 0.1) of one of the best three before it:
    # on average about 0.08 from that parent in each group; a fresh uniform sample would be about 0.3 from it.
    for i, t in enumerate(complete[3:], 3):
        parents = sorted(complete[:i], key=lambda p: p.values[0])[-3:]
        nearest = min(
            sum(abs(t.params[n] - p.user_attrs["plan"][n]) for n in t.params) / len(t.params) for p in parents
        )
        assert nearest < 0.2
    assert (tmp_path / "out" / "structure.json").exists()
    assert ap.load(tmp_path / "out", ap.zoo.resnet20(in_channels=1, stage_widths=(8, 16, 32))) is not None
