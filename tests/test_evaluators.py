"""Evaluators on a small conv net really trained on a learnable synthetic task (no mocks)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from autoprune.evaluators import (
    EVALUATORS,
    AccuracyEvaluator,
    Evaluator,
    LatencyEvaluator,
    measure_latency,
    normalize_result,
    resolve_evaluator,
)
from autoprune.evaluators.accuracy import cpu_supports_bf16, recalibrate_batchnorm

CLASSES = 10
TEMPLATES = torch.randn(CLASSES, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def make_split(samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy copies of one fixed 8x8 template per class: learnable, but not trivially (about 88% top-1)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (samples,), generator=generator)
    images = TEMPLATES[labels] + 2.5 * torch.randn(samples, 1, 8, 8, generator=generator)
    return images, labels


def small_net(width: int = 16) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * width * 16, CLASSES),
    )


@pytest.fixture(scope="module")
def task() -> dict:
    train, val = make_split(4096, 1), make_split(1024, 2)
    torch.manual_seed(0)
    model = small_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(150):
            index = torch.randint(0, len(train[1]), (64,), generator=generator)
            loss = F.cross_entropy(model(train[0][index]), train[1][index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return {"model": model, "train": train, "val": val}


def accuracy(task: dict, **kwargs) -> AccuracyEvaluator:
    kwargs.setdefault("train_data", task["train"])
    kwargs.setdefault("bn_recalibration_batches", 10)
    return AccuracyEvaluator(task["val"], threads=1, **kwargs)


def batchnorms(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def test_trained_model_is_well_above_chance(task):
    result = accuracy(task, bn_recalibration_batches=0, train_data=None)(copy.deepcopy(task["model"]))
    assert result["score"] == result["accuracy"] > 0.75
    assert result["samples"] == 1024 and result["recalibration_batches"] == 0
    assert 0 < result["loss"] < 1 and result["eval_seconds"] > 0


def test_recalibration_restores_accuracy_after_bn_statistics_are_corrupted(task):
    corrupted = copy.deepcopy(task["model"])
    for bn in batchnorms(corrupted):
        bn.running_mean.fill_(3.0)
        bn.running_var.fill_(50.0)
    plain = accuracy(task, bn_recalibration_batches=0, train_data=None)(copy.deepcopy(corrupted))
    recalibrated = accuracy(task)(copy.deepcopy(corrupted))
    assert plain["accuracy"] < 0.3
    assert recalibrated["accuracy"] > 0.75
    assert recalibrated["recalibration_batches"] == 10


def test_recalibration_restores_momentum_and_mode_and_skips_models_without_batchnorm(task):
    model = copy.deepcopy(task["model"])
    first, second = batchnorms(model)
    second.momentum = 0.3
    batches = [(task["train"][0][i : i + 128],) for i in range(0, 384, 128)]
    assert recalibrate_batchnorm(model, batches) == 3
    assert (first.momentum, second.momentum) == (0.1, 0.3)
    assert not model.training
    assert int(first.num_batches_tracked) == 3
    expected_mean = model[0](task["train"][0][:384]).mean(dim=(0, 2, 3))
    torch.testing.assert_close(first.running_mean, expected_mean.detach(), rtol=1e-4, atol=1e-5)

    no_batchnorm = nn.Sequential(nn.Flatten(), nn.Linear(64, CLASSES))
    assert accuracy(task)(no_batchnorm)["recalibration_batches"] == 0


def test_finetune_changes_weights_and_recovers_a_perturbed_model(task):
    perturbed = copy.deepcopy(task["model"])
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for parameter in perturbed.parameters():
            if parameter.dim() > 1:
                parameter.add_(1.5 * parameter.std() * torch.randn(parameter.shape, generator=generator))
    recalibrated_only = accuracy(task)(copy.deepcopy(perturbed))

    candidate = copy.deepcopy(perturbed)
    before = [p.detach().clone() for p in candidate.parameters()]
    finetuned = accuracy(task, finetune_steps=60, finetune_lr=0.02, finetune_batch_size=64)(candidate)
    assert any(not torch.equal(a, b) for a, b in zip(before, candidate.parameters()))
    assert finetuned["finetune_steps"] == 60 and math.isfinite(finetuned["finetune_loss"])
    assert recalibrated_only["accuracy"] < 0.7
    assert finetuned["accuracy"] > recalibrated_only["accuracy"] + 0.15


def test_score_is_identical_across_calls_on_copies_of_one_model(task):
    evaluator = accuracy(task, finetune_steps=5, batches=2, batch_size=200)
    first, second = evaluator(copy.deepcopy(task["model"])), evaluator(copy.deepcopy(task["model"]))
    assert first["samples"] == 400
    assert (first["score"], first["loss"]) == (second["score"], second["loss"])

    shuffling = DataLoader(TensorDataset(*task["train"]), batch_size=128, shuffle=True)
    evaluator = accuracy(task, train_data=shuffling, finetune_steps=3)
    first, second = evaluator(copy.deepcopy(task["model"])), evaluator(copy.deepcopy(task["model"]))
    assert (first["score"], first["loss"]) == (second["score"], second["loss"])


class PlainDataset(Dataset):
    """A map-style dataset that is not a TensorDataset: goes through default_collate."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


def test_every_data_form_scores_the_same_samples(task):
    images, labels = task["val"]
    forms = [
        (images, labels),
        TensorDataset(images, labels),
        PlainDataset(images, labels),
        Subset(TensorDataset(images, labels), range(len(labels))),
        DataLoader(TensorDataset(images, labels), batch_size=100, shuffle=True),
    ]
    train_forms = [task["train"], TensorDataset(*task["train"]), PlainDataset(*task["train"])]
    results = [
        AccuracyEvaluator(data, train_data=train, bn_recalibration_batches=4, threads=1)(copy.deepcopy(task["model"]))
        for data, train in zip(forms, train_forms + train_forms[:2])
    ]
    assert len({r["accuracy"] for r in results[:4]}) == 1
    assert abs(results[4]["accuracy"] - results[0]["accuracy"]) <= 2 / len(labels)  # same samples, other batches
    assert all(r["samples"] == len(labels) for r in results)


def test_recalibration_and_finetune_need_train_data(task):
    with pytest.raises(ValueError, match="train_data is needed.*bn_recalibration_batches=0"):
        AccuracyEvaluator(task["val"])
    with pytest.raises(ValueError, match="train_data is needed for fine-tuning"):
        AccuracyEvaluator(task["val"], bn_recalibration_batches=0, finetune_steps=10)
    with pytest.raises(ValueError, match="batch_size"):
        AccuracyEvaluator(task["val"], bn_recalibration_batches=0, batch_size=0)
    with pytest.raises(TypeError, match="data given as a tuple must hold tensors"):
        AccuracyEvaluator([1, 2, 3], bn_recalibration_batches=0)
    with pytest.raises(TypeError, match="data must be a Dataset, a DataLoader or a tuple"):
        AccuracyEvaluator("images.npz", bn_recalibration_batches=0)
    with pytest.raises(ValueError, match="data is empty"):
        AccuracyEvaluator((torch.zeros(0, 1), torch.zeros(0)), bn_recalibration_batches=0)


def test_unavailable_devices_are_rejected_at_construction(task):
    missing = "cuda:99" if torch.cuda.is_available() else "cuda"
    with pytest.raises(ValueError, match="CUDA"):
        AccuracyEvaluator(task["val"], bn_recalibration_batches=0, device=missing)
    with pytest.raises(ValueError, match="device"):
        AccuracyEvaluator(task["val"], bn_recalibration_batches=0, device="not-a-device")
    with pytest.raises(ValueError, match="CUDA"):
        LatencyEvaluator(torch.zeros(1, 1, 8, 8), device=missing)


def test_threads_are_set_for_the_call_and_restored(task):
    seen = []

    class Probe(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(torch.get_num_threads())
            return task["model"](x)

    before = torch.get_num_threads()
    accuracy(task, bn_recalibration_batches=0, train_data=None, batches=1)(Probe())
    assert seen == [1] and torch.get_num_threads() == before


def test_bf16_is_automatic_on_capable_cpus_and_as_accurate_as_fp32(task):
    assert accuracy(task).bf16 == cpu_supports_bf16()
    fp32 = accuracy(task, bf16=False)(copy.deepcopy(task["model"]))
    bf16 = accuracy(task, bf16=True)(copy.deepcopy(task["model"]))
    assert abs(fp32["accuracy"] - bf16["accuracy"]) < 0.03


def conv_stack(width: int, depth: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.ReLU()]
    for _ in range(depth):
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers)


def test_latency_is_positive_and_a_much_bigger_model_is_slower():
    inputs = torch.randn(2, 3, 32, 32)
    evaluator = LatencyEvaluator(inputs, batch_size=8, min_run_time=0.1, warmup=1)
    tiny, big = conv_stack(4, 0), conv_stack(48, 2)  # about 750x the MACs
    tiny.train()
    small_result, big_result = evaluator(tiny), evaluator(big)
    for result in (small_result, big_result):
        assert math.isfinite(result["latency_ms"]) and result["latency_ms"] > 0
        assert result["score"] == -result["latency_ms"] and result["iqr_ms"] >= 0
        assert result["runs"] >= 5 and 0 <= result["clean"] <= 1
    assert big_result["latency_ms"] > 3 * small_result["latency_ms"]
    assert tiny.training, "the model's train/eval mode is restored"

    milliseconds = measure_latency(tiny, inputs, min_run_time=0.05, warmup=0)
    assert isinstance(milliseconds, float) and milliseconds > 0


def test_latency_options_are_checked_early():
    with pytest.raises(ValueError, match="threads"):
        LatencyEvaluator(torch.zeros(1, 3), threads=0)
    with pytest.raises(ValueError, match="min_run_time"):
        LatencyEvaluator(torch.zeros(1, 3), min_run_time=0)
    with pytest.raises(TypeError, match="example_inputs"):
        LatencyEvaluator([1, 2])


def test_resolve_evaluator_builds_builtins_by_name(task):
    assert set(EVALUATORS) == {"accuracy", "latency"}
    built = resolve_evaluator("accuracy", data=task["val"], bn_recalibration_batches=0)
    assert isinstance(built, AccuracyEvaluator) and isinstance(built, Evaluator)
    assert isinstance(resolve_evaluator("latency", example_inputs=torch.zeros(1, 3)), LatencyEvaluator)

    def score(model: nn.Module) -> float:
        return 1.0

    assert resolve_evaluator(score) is score
    with pytest.raises(TypeError, match="keyword arguments"):
        resolve_evaluator(score, threads=1)
    with pytest.raises(TypeError, match="callable"):
        resolve_evaluator(42)
    with pytest.raises(ValueError, match="Did you mean 'accuracy'.*accuracy, latency"):
        resolve_evaluator("acuracy")


def test_resolve_evaluator_imports_paths_with_helpful_errors():
    assert resolve_evaluator("math:sqrt") is math.sqrt
    built = resolve_evaluator("autoprune.evaluators:LatencyEvaluator", example_inputs=torch.zeros(1, 3))
    assert isinstance(built, LatencyEvaluator)
    with pytest.raises(ValueError, match="no_such_module_xyz.*Built-in evaluators: accuracy, latency"):
        resolve_evaluator("no_such_module_xyz:score")
    with pytest.raises(ValueError, match="'math' has no attribute 'no_such_function'.*accuracy, latency"):
        resolve_evaluator("math:no_such_function")
    with pytest.raises(TypeError, match="'math:pi' is a float"):
        resolve_evaluator("math:pi")
    with pytest.raises(ValueError, match="package.module:function"):
        resolve_evaluator("math:")


def test_normalize_result_accepts_numbers_and_dicts_and_rejects_bad_scores():
    assert normalize_result(0.5) == (0.5, {})
    assert normalize_result(torch.tensor(2)) == (2.0, {})
    assert normalize_result({"score": 0.9, "loss": torch.tensor(0.25), "samples": 7}) == (
        0.9,
        {"loss": 0.25, "samples": 7},
    )
    with pytest.raises(ValueError, match="finite"):
        normalize_result(float("nan"))
    with pytest.raises(ValueError, match="finite"):
        normalize_result({"score": float("inf")})
    with pytest.raises(ValueError, match="without a 'score' key.*'accuracy'"):
        normalize_result({"accuracy": 0.9})
    with pytest.raises(TypeError, match="real number"):
        normalize_result("0.9")
    with pytest.raises(TypeError, match="real number"):
        normalize_result({"score": True})
