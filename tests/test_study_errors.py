"""Study-file models (torchvision, timm, checkpoints) and the mistakes that must reach the user as one clear line:
the message names what is wrong and what is allowed, before any expensive work, and never as a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_cli import STUDY, _cli

import autoprune as ap
from autoprune.search.ledger import StorageError, failure_reason, make_storage
from autoprune.studyfile import StudyFileError, build_model, load_study_file, parse_study


def _model(tmp_path: Path, model: dict) -> ap.PruningSpace:
    config = parse_study({"study_name": "m", "model": {"input_shape": [1, 3, 32, 32], **model}})
    return build_model(config.model, tmp_path)


# -- models: torchvision and timm names, checkpoints -------------------------------------------------------------
def test_torchvision_model_with_a_checkpoint_and_the_wrong_ones(tmp_path):
    import torchvision

    trained = torchvision.models.resnet18(num_classes=10).eval()
    torch.save(trained.state_dict(), tmp_path / "plain.pt")
    torch.save({"epoch": 3, "state_dict": trained.state_dict(), "optimizer": {}}, tmp_path / "script.pt")
    x = torch.randn(2, 3, 32, 32)
    for name in ("plain.pt", "script.pt"):  # a plain state_dict, or a training script's dict holding one
        model = _model(tmp_path, {"torchvision": "resnet18", "kwargs": {"num_classes": 10}, "checkpoint": name})
        torch.testing.assert_close(model(x), trained(x))

    with pytest.raises(StudyFileError, match=r"model.torchvision: unknown torchvision model 'resnet181'.*'resnet18'"):
        _model(tmp_path, {"torchvision": "resnet181"})
    with pytest.raises(StudyFileError, match=r"no option 'num_clases'.*allowed: .*num_classes.*'num_classes'"):
        _model(tmp_path, {"torchvision": "resnet18", "kwargs": {"num_clases": 10}})
    with pytest.raises(FileNotFoundError, match=r"model.checkpoint .*nope.pt does not exist"):
        _model(tmp_path, {"torchvision": "resnet18", "checkpoint": "nope.pt"})
    torch.save(trained, tmp_path / "whole.pt")  # the module pickled, not its state_dict
    with pytest.raises(ValueError, match=r"not a plain state_dict: it pickles torchvision.models.resnet.ResNet.*"):
        _model(tmp_path, {"torchvision": "resnet18", "kwargs": {"num_classes": 10}, "checkpoint": "whole.pt"})
    # Another architecture: the first differing keys, and the model or kwargs the checkpoint does fit.
    wrong = r"mismatches fc.weight: checkpoint \(10, 512\) vs model \(1000, 512\).*It fits model.kwargs num_classes: 10"
    with pytest.raises(ValueError, match=wrong):
        _model(tmp_path, {"torchvision": "resnet18", "checkpoint": "plain.pt"})
    with pytest.raises(ValueError, match=r"missing keys layer1.2.conv1.weight.*It fits torchvision model resnet18"):
        _model(tmp_path, {"torchvision": "resnet34", "kwargs": {"num_classes": 10}, "checkpoint": "plain.pt"})
    with pytest.raises(StudyFileError, match=r"give exactly one of model.zoo, model.torchvision.*\(got zoo, timm\)"):
        _model(tmp_path, {"zoo": "resnet20", "timm": "resnet10t"})


def test_timm_model_with_a_checkpoint(tmp_path):
    import timm

    trained = timm.create_model("resnet10t", num_classes=10).eval()
    torch.save({"model": trained.state_dict()}, tmp_path / "t.pt")
    model = _model(tmp_path, {"timm": "resnet10t", "kwargs": {"num_classes": 10}, "checkpoint": "t.pt"})
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(x), trained(x))
    with pytest.raises(StudyFileError, match=r"unknown timm model 'resnet10x'. Did you mean 'resnet10t'.*list_models"):
        _model(tmp_path, {"timm": "resnet10x"})
    with pytest.raises(ValueError, match=r"not a state_dict of timm model resnet14t.*It fits timm model resnet10t"):
        _model(tmp_path, {"timm": "resnet14t", "kwargs": {"num_classes": 10}, "checkpoint": "t.pt"})


# -- keyword typos: one check against the callable's signature, at load time, with file and line -----------------
@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "kwargs: {in_channels: 1,",
            "kwargs: {in_chanels: 1,",
            "line 4: model.kwargs: no option 'in_chanels' for zoo model resnet20; allowed: depth, num_classes, "
            "in_channels, stage_widths, block_widths. Did you mean 'in_channels'?",
        ),
        (
            "kwargs: {bn_recalibration_batches: 2,",
            "kwargs: {batchs: 2,",
            "line 10: evaluator.kwargs: no option 'batchs' for AccuracyEvaluator; allowed: train_data, batch_size, "
            "batches,",
        ),
        (
            "strategy: {name: tpe}",
            "strategy: {name: tpe, options: {n_startup: 3}}",
            "line 12: strategy.options: no option 'n_startup' for strategy tpe; allowed: n_startup_trials, "
            "n_ei_candidates. Did you mean 'n_startup_trials'?",
        ),
    ],
)
def test_a_keyword_typo_names_the_option_and_the_allowed_ones(tmp_path, old, new, expected):
    study = tmp_path / "typo.yaml"
    assert old in STUDY
    study.write_text(STUDY.replace(old, new))
    with pytest.raises(StudyFileError) as info:
        load_study_file(study)
    assert expected in str(info.value)


# -- files that are not what they should be -----------------------------------------------------------------------
def test_a_truncated_structure_file_and_a_foreign_journal_are_named(tmp_path):
    model = ap.zoo.resnet20(in_channels=1, stage_widths=(8, 16, 32)).eval()
    space = ap.PruningSpace(model, torch.zeros(1, 1, 8, 8))
    out = ap.export(space, {space.groups[0].name: 0.5}, tmp_path / "out")
    text = (out / "structure.json").read_text()
    (out / "structure.json").write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match=r"structure.json is not a valid autoprune structure file \(truncated\?\)"):
        ap.load(out, model)
    with pytest.raises(ValueError, match=r"out/structure.json is a file: export writes .* into a folder"):
        ap.export(space, {}, out / "structure.json")

    other = tmp_path / "notes.txt"
    other.write_text("not a journal\n")
    with pytest.raises(StorageError, match=r"journal storage .*notes.txt exists and is not an Optuna journal file"):
        make_storage(f"journal:{other}", "s")
    assert other.read_text() == "not a journal\n"  # nothing appended to it
    with pytest.raises(StorageError, match=r"journal storage .* is a folder"):
        make_storage(f"journal:{tmp_path}", "s")


# -- a search's evaluator that returns no score, and a budget given as a dict --------------------------------------
def test_no_score_fails_its_trial_with_one_line_and_a_budget_may_be_a_dict(tmp_path):
    torch.manual_seed(0)
    space = ap.PruningSpace(ap.zoo.resnet20(in_channels=1, stage_widths=(8, 16, 32)).eval(), torch.zeros(1, 1, 8, 8))
    returns = iter([float("nan"), None, "0.9", {"accuracy": 0.9}, "raise", 0.5])

    def evaluator(model):
        r = next(returns)
        if r == "raise":
            raise RuntimeError("out of memory\n(simulated)")
        return r

    url = f"sqlite:///{tmp_path / 's.db'}"
    study = ap.search(space, evaluator, {"macs": 0.5}, strategy="random", n_trials=6, storage=url, study_name="s")
    errors = [t.user_attrs.get("error") for t in study.trials]
    assert errors[:4] == [
        "evaluator returned nan; a score must be a finite number",
        "evaluator returned None; a score must be a real number (or {'score': number, ...})",
        "evaluator returned str '0.9'; a score must be a real number (or {'score': number, ...})",
        "evaluator returned a dict without a 'score' key (keys: 'accuracy'); return a number or {'score': number, ...}",
    ]
    assert "Traceback" in errors[4] and failure_reason(errors[4]) == "RuntimeError: out of memory (simulated)"
    assert errors[5] is None and study.best_trial.number == 5
    assert failure_reason("Traceback (most recent call last):\n  File ...\nKeyError: 'x'") == "KeyError: 'x'"  # old
    with pytest.raises(ValueError, match=r"no option 'mac' for Budget; allowed: macs, params, latency"):
        ap.search(space, evaluator, {"mac": 0.5}, storage=url, study_name="s")
    with pytest.raises(TypeError, match=r"use ap.Budget\(macs=0.5\); got float 0.5"):
        ap.search(space, evaluator, 0.5, storage=url, study_name="s")


# -- the command line: one line, exit code 2, no traceback ---------------------------------------------------------
def _one_line_error(run) -> str:
    text = run.stdout + run.stderr
    assert run.returncode == 2 and "Traceback" not in text, text
    return " ".join(text.split())


def test_cli_rejects_what_cannot_work_before_it_starts(tmp_path):
    study = tmp_path / "tiny.yaml"
    study.write_text(STUDY.replace("input_shape: [1, 1, 8, 8]", "input_shape: [1, 1, 28, 28]"))
    text = _one_line_error(_cli("search", str(study), cwd=tmp_path))
    assert "data digits gives inputs of shape [1, 8, 8], but model.input_shape [1, 1, 28, 28] takes [1, 28, 28]" in text
    assert not (tmp_path / "tiny.db").exists()

    from typer.testing import CliRunner  # in-process: these are refused before anything is loaded

    from autoprune.cli import app

    study.write_text(STUDY)
    run = CliRunner().invoke(app, ["search", str(study), "--n-trials", "0"])
    assert run.exit_code == 2 and "Invalid value for '--n-trials'" in run.output
    (tmp_path / "file").write_text("")
    run = CliRunner().invoke(app, ["export", str(study), "--out", str(tmp_path / "file")])
    assert run.exit_code == 2 and f"--out {tmp_path / 'file'} is a file" in " ".join(run.output.split())


def test_cli_search_whose_every_trial_fails_exits_non_zero_with_the_reason(tmp_path):
    (tmp_path / "scores.py").write_text("def nan(model):\n    return float('nan')\n")
    study = tmp_path / "tiny.yaml"
    study.write_text(
        STUDY.replace(
            "name: accuracy\n  kwargs: {bn_recalibration_batches: 2, recalibration_batch_size: 64}", "name: scores:nan"
        ).replace("n_trials: 3", "n_trials: 2")
    )
    run = _cli("search", str(study), cwd=tmp_path)
    text = _one_line_error(run)
    assert "trial 0 failed: evaluator returned nan; a score must be a finite number" in text
    assert "every trial failed (2), the last: evaluator returned nan; a score must be a finite number" in text


def test_cli_search_with_a_criterion_that_needs_data_calibrates_on_training_batches(tmp_path):
    study = tmp_path / "tiny.yaml"
    study.write_text(
        STUDY.replace("n_trials: 3", "n_trials: 2\ncriterion: taylor\ncalibration_batches: 2\nexport: {report: false}")
    )
    run = _cli("search", str(study), cwd=tmp_path)
    assert run.returncode == 0 and "trial 0 failed" not in run.stdout, run.stdout + run.stderr
    structure = json.loads((tmp_path / "out" / "tiny" / "structure.json").read_text())
    assert structure["criterion"] == "taylor"
    model = ap.load(tmp_path / "out" / "tiny", ap.zoo.resnet20(in_channels=1, stage_widths=(8, 16, 32)))
    assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 10)


def test_the_export_blocks_training_method_and_its_options_are_checked_with_their_line():
    base = {"study_name": "m", "model": {"zoo": "resnet20", "input_shape": [1, 1, 28, 28]}}
    config = parse_study({**base, "export": {"finetune_steps": 100, "method": "admm", "method_options": {"rho": 1e-2}}})
    assert config.export.method == "admm" and config.export.method_options == {"rho": 1e-2}
    with pytest.raises(StudyFileError, match=r"export.method: unknown training method 'sfpp'. Did you mean 'sfp'"):
        parse_study({**base, "export": {"method": "sfpp"}})
    with pytest.raises(StudyFileError, match=r"no option 'ends' for training method agp; .*Did you mean 'end'"):
        parse_study({**base, "export": {"method": "agp", "method_options": {"ends": 0.3}}})
    with pytest.raises(StudyFileError, match=r"no option 'total_steps' for training method agp"):  # export sets it
        parse_study({**base, "export": {"method": "agp", "method_options": {"total_steps": 3}}})
