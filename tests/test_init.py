"""`autoprune init` and the wheel: a pip-installed autoprune starts a search from an empty directory."""

from __future__ import annotations

import json
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from autoprune.studyfile import StudyFileError, parse_study
from autoprune.template import study_template

ROOT = Path(__file__).resolve().parents[1]

MODELS = ["pretrained:resnet20_fashion_mnist", "zoo:resnet56", "torchvision:resnet18", "timm:resnet18", "factory:m:f"]
DATA = ["fashion_mnist", "digits", "mnist", "cifar10:c10", "cifar100:c100", "image_folder:images", "factory:d:splits"]


@pytest.mark.parametrize("model", MODELS)
def test_every_template_is_a_valid_study_file(model):
    for data in DATA:
        text = study_template(model, data, name="s")
        raw = yaml.safe_load(text)
        source, name = model.split(":", 1)
        assert raw["model"][source] == name and raw["data"].get("factory", "d:splits") == "d:splits"
        if source == "factory":  # a factory the user has yet to write: the rest of the file must still hold
            raw["model"] = {"zoo": "resnet20", "input_shape": raw["model"]["input_shape"]}
        if data.startswith("factory"):
            raw["data"] = {"dataset": "digits"}
        config = parse_study(raw, "init", text)
        assert config.study_name == "s" and config.budget.macs == 0.5
        assert text.count("#") > 15  # commented
        if data.startswith(("cifar", "image_folder")):
            assert config.data.root == data.split(":", 1)[1] and config.model.input_shape[1] == 3
        if source in ("torchvision", "timm", "zoo") and data.startswith("cifar100"):
            assert config.model.kwargs["num_classes"] == 100


def test_init_counts_the_classes_of_an_image_folder(tmp_path):
    for c in ("cat", "dog", "fox"):
        (tmp_path / "train" / c).mkdir(parents=True)
    text = study_template("torchvision:resnet18", f"image_folder:{tmp_path}")
    assert parse_study(yaml.safe_load(text)).model.kwargs == {"num_classes": 3}


def test_init_rejects_what_it_cannot_write():
    with pytest.raises(ValueError, match="start with one of pretrained, zoo, torchvision, timm, factory"):
        study_template("tv:resnet18")
    with pytest.raises(ValueError, match="give the folder after the colon"):
        study_template("torchvision:resnet18", "cifar10")
    with pytest.raises(StudyFileError, match="Did you mean 'tpe'"):
        study_template(strategy="tpee")


def test_the_wheel_runs_init_and_a_search_from_an_empty_directory(tmp_path):
    wheels = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(ROOT)],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("autoprune-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "autoprune/zoo/weights/resnet20_fashion_mnist.pt" in names and not any(n.startswith("tests/") for n in names)

    # A fresh venv that sees the installed dependencies (torch, optuna, ...) through a plain path entry, so the
    # developer's editable install of autoprune (a meta-path finder run by the system site's .pth) stays out of it.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (purelib,) = venv.glob("lib/python*/site-packages")
    (purelib / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    python = venv / "bin" / "python"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "COLUMNS": "200", "PYTHONWARNINGS": "ignore"}  # no PYTHONPATH
    where = subprocess.run(
        [str(python), "-c", "import autoprune; print(autoprune.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert where.stdout.strip().startswith(str(purelib)), where.stdout + where.stderr

    empty = tmp_path / "empty"
    empty.mkdir()
    init = subprocess.run(
        [str(venv / "bin" / "autoprune"), "init", "--name", "smoke", "--n-trials", "3", "--finetune", "20"],
        capture_output=True,
        text=True,
        cwd=empty,
        env=env,
    )
    assert init.returncode == 0, init.stderr
    (empty / "smoke.yaml").write_text(init.stdout)
    run = subprocess.run(
        [str(venv / "bin" / "autoprune"), "search", "smoke.yaml"],
        capture_output=True,
        text=True,
        cwd=empty,
        env=env,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = empty / "out" / "smoke"
    structure = json.loads((out / "structure.json").read_text())
    assert structure["finetune"]["steps"] == 20 and structure["macs"] <= 0.5 * structure["base_macs"]
    assert structure["report"]["unpruned"]["test_accuracy"] > 0.9  # the shipped weights, scored on the test set
    assert (out / "REPORT.md").exists() and "latency, batch" in run.stdout
