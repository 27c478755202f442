"""The command line, run as a user would: a subprocess on a small real study."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

import autoprune as ap

STUDY = """\
study_name: tiny
model:
  zoo: resnet20
  kwargs: {in_channels: 1, stage_widths: [8, 16, 32]}
  input_shape: [1, 1, 8, 8]
data:
  dataset: digits
evaluator:
  name: accuracy
  kwargs: {bn_recalibration_batches: 2, recalibration_batch_size: 64}
budget: {macs: 0.5}
strategy: {name: tpe}
n_trials: 3
threads: 1
"""


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "autoprune.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={"PYTHONWARNINGS": "ignore", "COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )


def test_search_show_export_round_trip(tmp_path):
    study = tmp_path / "tiny.yaml"
    study.write_text(STUDY)
    run = _cli("search", str(study), cwd=tmp_path)
    assert run.returncode == 0, run.stderr + run.stdout
    assert "best structure exported to" in run.stdout
    assert (tmp_path / "tiny.db").exists()
    exported = tmp_path / "out" / "tiny"
    assert (exported / "structure.json").exists() and (exported / "weights.pt").exists()
    # The result card: the exported network measured against the unpruned one, the same figures in three places.
    card = json.loads((exported / "structure.json").read_text())
    figures = card["report"]
    assert card["rescored"] == card["score"]  # the weights written are the ones the trial scored (BN recalibrated)
    assert figures["pruned"]["macs"] == card["macs"] and figures["unpruned"]["macs"] == card["base_macs"]
    assert figures["pruned"]["params"] == card["params"] and figures["unpruned"]["params"] == card["base_params"]
    assert figures["pruned"]["file_bytes"] < figures["unpruned"]["file_bytes"]
    assert set(figures["pruned"]["latency_ms"]) == {"1", "256"}
    assert 0 < figures["pruned"]["test_accuracy"] <= 1 and 0 < figures["unpruned"]["test_accuracy"] <= 1  # untrained
    kept = figures["kept_channels"]
    assert all(0 < k <= n for k, n in kept.values()) and any(k < n for k, n in kept.values())
    report = (exported / "REPORT.md").read_text()
    assert f"{figures['pruned']['test_accuracy']:.2%}" in report and "latency, batch 256" in report
    for png in ("accuracy_latency.png", "kept_channels.png", "search.png"):
        assert (exported / png).stat().st_size > 1000
    assert "unpruned" in run.stdout and "latency, batch 256" in run.stdout  # the card is printed

    # Running it again resumes; --n-trials raises the study-wide total.
    again = _cli("search", str(study), "--n-trials", "4", cwd=tmp_path)
    assert again.returncode == 0, again.stderr + again.stdout
    shown = _cli(
        "show",
        "--study",
        "tiny",
        "--storage",
        f"sqlite:///{tmp_path / 'tiny.db'}",
        "--json",
        "--plots",
        str(tmp_path / "plots"),
        cwd=tmp_path,
    )
    assert shown.returncode == 0, shown.stderr
    rows = json.loads(shown.stdout[: shown.stdout.rindex("]") + 1])
    assert len(rows) == 4 and rows[0]["score"] >= rows[-1]["score"]
    for png in ("pareto.png", "kept_channels.png", "progress.png"):
        assert (tmp_path / "plots" / png).stat().st_size > 1000

    out = tmp_path / "trial1"
    exp = _cli("export", str(study), "--out", str(out), "--trial", "1", "--no-report", cwd=tmp_path)
    assert exp.returncode == 0, exp.stderr + exp.stdout
    structure = json.loads((out / "structure.json").read_text())
    assert structure["trial"] == 1 and "report" not in structure and not (out / "REPORT.md").exists()
    model = ap.load(out, ap.zoo.resnet20(in_channels=1, stage_widths=(8, 16, 32)))
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert ap.count_macs(model, torch.zeros(1, 1, 8, 8)) == structure["macs"]

    # The long-term fine-tune: the same network, trained on the training split before it is written.
    tuned_dir = tmp_path / "trial1-tuned"
    tuned = _cli("export", str(study), "--out", str(tuned_dir), "--trial", "1", "--finetune", "60", cwd=tmp_path)
    assert tuned.returncode == 0, tuned.stderr + tuned.stdout
    record = json.loads((tuned_dir / "structure.json").read_text())
    assert record["layers"] == structure["layers"] and record["finetune"]["steps"] == 60
    assert record["finetune"]["test_after"] > record["finetune"]["test_before"] + 0.05  # an untrained network learns
    pruned = record["report"]["pruned"]
    assert pruned["test_accuracy"] == record["finetune"]["test_after"]
    assert pruned["test_accuracy_before_finetune"] == record["finetune"]["test_before"]
    assert "after 60 fine-tune steps" in (tuned_dir / "REPORT.md").read_text()
    assert "test accuracy" in tuned.stdout
    tuned_model = ap.load(tuned_dir, ap.zoo.resnet20(in_channels=1, stage_widths=(8, 16, 32)))
    assert not torch.equal(tuned_model.fc.weight, model.fc.weight)

    # A training-aware method instead: AGP prunes the full-size weights to the same plan while training,
    # distilling from the unpruned model; the network written is at exactly the trial's structure.
    agp_dir = tmp_path / "trial1-agp"
    agp = _cli(
        "export",
        str(study),
        "--out",
        str(agp_dir),
        "--trial",
        "1",
        "--finetune",
        "30",
        "--method",
        "agp",
        "--distill",
        "--no-report",
        cwd=tmp_path,
    )
    assert agp.returncode == 0, agp.stderr + agp.stdout
    record = json.loads((agp_dir / "structure.json").read_text())
    assert record["finetune"]["method"] == "agp" and record["finetune"]["steps"] == 30
    assert record["finetune"]["distill"] == {"temperature": 4.0, "alpha": 0.5}
    assert record["macs"] == structure["macs"] and record["params"] == structure["params"]
    assert not (agp_dir / "training.ckpt").exists()  # the resume checkpoint goes once the training is done
    agp_model = ap.load(agp_dir, ap.zoo.resnet20(in_channels=1, stage_widths=(8, 16, 32)))
    assert ap.count_macs(agp_model, torch.zeros(1, 1, 8, 8)) == structure["macs"]
    typo = _cli(
        "export", str(study), "--out", str(tmp_path / "typo"), "--finetune", "5", "--method", "agb", cwd=tmp_path
    )
    assert typo.returncode == 2 and "unknown training method 'agb'. Did you mean 'agp'" in " ".join(typo.stdout.split())
    assert "Traceback" not in typo.stdout + typo.stderr


def test_a_bad_study_file_names_line_key_and_allowed_values(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        STUDY.replace("budget: {macs: 0.5}", "budget: {macs: 0.5, flops: 3}").replace("name: tpe", "name: annealing")
    )
    run = _cli("search", str(bad), cwd=tmp_path)
    assert run.returncode == 2
    text = " ".join(run.stdout.split())
    assert "line 11: budget.flops: unknown key; allowed keys here: macs, params" in text
    available = "Available: amc, autocompress, metapruning, netadapt, random, sa, tpe, uniform"
    assert f"line 12: strategy.name: unknown strategy 'annealing'. {available}" in text
    assert not (tmp_path / "tiny.db").exists()  # nothing ran


def test_a_reconstructed_search_exports_the_network_it_scored(tmp_path):
    study = tmp_path / "recon.yaml"
    study.write_text(
        STUDY.replace("study_name: tiny", "study_name: recon") + "reconstruct_batches: 2\nexport: {report: false}\n"
    )
    run = _cli("search", str(study), cwd=tmp_path)
    assert run.returncode == 0, run.stderr + run.stdout
    card = json.loads((tmp_path / "out" / "recon" / "structure.json").read_text())
    assert card["rescored"] == card["score"]  # rebuilt with the same least-squares refit, then scored again
    import optuna

    recorded = optuna.load_study(study_name="recon", storage=f"sqlite:///{tmp_path / 'recon.db'}").user_attrs
    assert recorded["autoprune"]["reconstruct"] is True


def test_every_shipped_study_file_validates():
    from autoprune.studyfile import load_study_file

    files = sorted((Path(__file__).parent.parent / "studies").glob("*.yaml"))
    assert {f.stem for f in files} >= {"quickstart", "random", "uniform", "sa", "netadapt"}
    for f in files:
        config, _ = load_study_file(f)
        assert config.study_name == f.stem


def test_show_lists_trials_meeting_the_budget_first(tmp_path):
    """NetAdapt's proposals before its last iteration are over the budget (on a trained model they score best):
    show ranks the trials that meet it first, and its first row is the trial search exported."""
    study = tmp_path / "walk.yaml"
    study.write_text(
        STUDY.replace("study_name: tiny", "study_name: walk")
        .replace("strategy: {name: tpe}", "strategy: {name: netadapt, options: {initial_reduction: 0.2}}")
        .replace("n_trials: 3", "n_trials: 200")
    )
    run = _cli("search", str(study), cwd=tmp_path)
    assert run.returncode == 0, run.stderr + run.stdout
    shown = _cli("show", str(study), "--json", "--top", "200", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    rows = json.loads(shown.stdout[: shown.stdout.rindex("]") + 1])
    meets = [r["meets_budget"] for r in rows]
    assert meets[0] and not meets[-1] and meets == sorted(meets, reverse=True)
    exported = json.loads((tmp_path / "out" / "walk" / "structure.json").read_text())
    assert exported["trial"] == rows[0]["number"]
