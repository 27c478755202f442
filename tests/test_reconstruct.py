"""Least-squares reconstruction (space.apply(..., reconstruct=batches)) on real data and real models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import autoprune as ap
from autoprune.data import fashion_mnist_splits, load_digits
from autoprune.engine.reconstruct import reconstruct
from autoprune.evaluators import AccuracyEvaluator


@pytest.fixture(scope="module")
def digits():
    x, _ = load_digits("train").tensors
    return [x[i : i + 64] for i in range(0, 512, 64)], x[512:768]


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv2(torch.relu(self.conv1(x))))).flatten(1))


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def _group_of(space: ap.PruningSpace, layer: str):
    return next(g for g in space.groups if any(m.module == layer and m.role == "output" for m in g.members))


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_a_duplicated_channel_removed_is_reconstructed_exactly(digits, kind) -> None:
    torch.manual_seed(0)
    model = (ConvNet() if kind == "conv" else MLP()).eval()
    first = model.conv1 if kind == "conv" else model.fc1
    with torch.no_grad():  # channel 7 is channel 3 again: the next layer can do without it
        first.weight[7] = first.weight[3]
        first.bias[7] = first.bias[3]
    calibration, held_out = digits
    space = ap.PruningSpace(model, held_out[:2])
    group = _group_of(space, "conv1" if kind == "conv" else "fc1")
    keep = {group.name: [c for c in range(group.channels) if c != 7]}
    plain = space.build(keep)
    fixed = space.build(keep)
    fits = space.reconstruct(fixed, keep, calibration, ridge=0.0)
    consumer = "conv2" if kind == "conv" else "fc2"
    assert list(fits) == [consumer] and fits[consumer].after < 1e-10 < fits[consumer].before
    with torch.no_grad():
        want, before, after = model(held_out), plain.eval()(held_out), fixed.eval()(held_out)
    scale = want.abs().max()
    assert (before - want).abs().max() > 1e-2 * scale  # removing it alone changes the outputs
    assert (after - want).abs().max() < 1e-4 * scale  # refitted: the original outputs up to float error


def _layer_errors(original: nn.Module, pruned: nn.Module, indices: dict, layers: list[str], x: torch.Tensor):
    """Squared error of each layer's output in ``pruned`` against the original's (its kept channels)."""
    got: dict[str, dict[str, torch.Tensor]] = {"original": {}, "pruned": {}}
    for key, net in (("original", original), ("pruned", pruned)):
        modules = dict(net.named_modules())
        handles = [
            modules[n].register_forward_hook(lambda m, a, out, n=n, key=key: got[key].__setitem__(n, out.detach()))
            for n in layers
        ]
        with torch.no_grad():
            net.eval()(x)
        for h in handles:
            h.remove()
    errors = {}
    for n in layers:
        want = got["original"][n]
        keep = indices.get(f"{n}.weight", {}).get(0)
        want = want if keep is None else want[:, keep]
        errors[n] = float(((got["pruned"][n] - want) ** 2).sum() / (want**2).sum())
    return errors


@pytest.mark.parametrize("shape", ["uniform", "uneven"])
def test_reconstruction_never_increases_a_layers_output_error_on_held_out_batches(shape) -> None:
    torch.set_num_threads(1)
    model = ap.zoo.pretrained("resnet20_fashion_mnist")
    splits = fashion_mnist_splits(None, val_size=5000, seed=0)
    x, _ = splits.train.tensors
    held_out, labels = splits.val.tensors
    held_out, labels = held_out[:512], labels[:512]
    space = ap.PruningSpace(model, x[:2])
    plan = {g.name: (0.5 if shape == "uniform" else 0.2 + 0.6 * (i % 3) / 2) for i, g in enumerate(space.groups)}
    keep = space.keep_indices(plan)
    indices = space.parameter_indices(keep)
    plain = space.build(keep)
    fixed = space.apply(plan, reconstruct=[x[i : i + 64] for i in range(0, 256, 64)])
    refitted = [n for n, m in fixed.named_modules() if 1 in indices.get(f"{n}.weight", {})]
    assert len(refitted) >= 15  # every conv that lost inputs, and the classifier
    worse, better = _layer_errors(model, plain, indices, refitted, held_out), None
    better = _layer_errors(model, fixed, indices, refitted, held_out)
    for n in refitted:
        assert better[n] <= worse[n], (n, better[n], worse[n])
    with torch.no_grad():
        accuracy = [float((net(held_out).argmax(1) == labels).float().mean()) for net in (plain, fixed)]
    assert accuracy[1] > accuracy[0] + 0.2  # one-shot 50%-pruned ResNet-20 without fine-tuning, BN left as it was


def test_grouped_convs_refit_per_group_and_depthwise_ones_are_left_as_they_are() -> None:
    torch.manual_seed(0)
    model = ap.zoo.mobilenet_v2(num_classes=10, width_mult=0.5).eval()
    x = torch.randn(32, 3, 32, 32)
    space = ap.PruningSpace(model, x[:1])
    plan = {g.name: 0.4 for g in space.groups}
    keep = space.keep_indices(plan)
    pruned = space.build(keep)
    fits = space.reconstruct(pruned, keep, [x[:16], x[16:]], positions=None)
    modules = dict(pruned.named_modules())
    kinds = {n: getattr(modules[n], "groups", 1) for n in fits}
    assert fits and all(g == 1 for g in kinds.values())  # depthwise convs never lose inputs alone: not refitted
    assert all(f.after <= f.before for f in fits.values())

    grouped = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, groups=2), nn.Flatten())
    grouped.eval()
    with torch.no_grad():
        out_before = grouped(x)
    indices = {"0.weight": {0: torch.tensor([0, 1, 2, 4, 5, 6])}, "0.bias": {0: torch.tensor([0, 1, 2, 4, 5, 6])}}
    indices["2.weight"] = {1: torch.tensor([0, 1, 2])}  # each of the two groups keeps 3 of its 4 inputs
    small = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, groups=2), nn.Flatten())
    with torch.no_grad():
        small[0].weight.copy_(grouped[0].weight[indices["0.weight"][0]])
        small[0].bias.copy_(grouped[0].bias[indices["0.weight"][0]])
        small[2].weight.copy_(grouped[2].weight[:, :3])
        small[2].bias.copy_(grouped[2].bias)
        plain_error = float(((small.eval()(x) - out_before) ** 2).sum())
    fits = reconstruct(grouped, small, indices, [x], positions=None, ridge=0.0)
    assert list(fits) == ["2"] and fits["2"].after < fits["2"].before
    with torch.no_grad():
        assert float(((small(x) - out_before) ** 2).sum()) < plain_error


def test_bad_reconstruction_input_is_refused(digits) -> None:
    calibration, held_out = digits
    model = ConvNet().eval()
    space = ap.PruningSpace(model, held_out[:2])
    plan = {g.name: 0.5 for g in space.groups}
    with pytest.raises(ValueError, match="empty"):
        space.apply(plan, reconstruct=[])
    with pytest.raises(ValueError, match="positions"):
        space.reconstruct(space.apply(plan), space.keep_indices(plan), calibration, positions=0)


def test_a_reconstructed_search_scores_and_rebuilds_the_same_networks(tmp_path, digits) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = ap.zoo.resnet20(in_channels=1, stage_widths=(8, 16, 32)).eval()
    space = ap.PruningSpace(model, torch.zeros(1, 1, 8, 8))
    calibration, _ = digits
    evaluator = AccuracyEvaluator(load_digits("test"), bn_recalibration_batches=0)
    url = f"sqlite:///{tmp_path / 's.db'}"
    budget = ap.Budget(macs=0.5)
    with pytest.raises(ValueError, match="calibration"):
        ap.search(space, evaluator, budget, storage=url, n_trials=2, reconstruct=True)
    with pytest.raises(ValueError, match="cannot be reconstructed"):
        ap.search(
            space,
            evaluator,
            budget,
            storage=url,
            n_trials=2,
            reconstruct=True,
            strategy="metapruning",
            calibration=calibration,
        )
    study = ap.search(
        space, evaluator, budget, storage=url, n_trials=3, strategy="random", reconstruct=True, calibration=calibration
    )
    plain = ap.search(space, evaluator, budget, storage=url, study_name="plain", n_trials=3, strategy="random", seed=0)
    for trial in study.trials:
        net = ap.trial_network(study, trial, space)
        assert net.reconstruct
        with pytest.raises(ValueError, match="calibration"):
            net.build()
        assert evaluator(net.build(calibration))["accuracy"] == trial.values[0]
    assert study.user_attrs["autoprune"]["reconstruct"] is True
    assert [t.user_attrs["plan"] for t in study.trials] == [t.user_attrs["plan"] for t in plain.trials]
    trial = study.trials[0]
    rebuilt = ap.trial_network(study, trial, space).build(calibration)
    unreconstructed = ap.trial_network(plain, plain.trials[0], space).build()
    assert not torch.equal(rebuilt.fc.weight, unreconstructed.fc.weight)  # the same plan, refitted
    with pytest.raises(ValueError, match="different configuration"):
        ap.search(space, evaluator, budget, storage=url, n_trials=4, strategy="random", calibration=calibration)


def test_lasso_scores_channels_in_the_order_they_enter_the_lasso_path() -> None:
    from sklearn.linear_model import lars_path_gram

    from autoprune.engine.criteria import Lasso

    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        z = torch.randn(300, 10, generator=generator, dtype=torch.float64)
        z = z @ torch.randn(10, 10, generator=generator, dtype=torch.float64)  # correlated contributions
        gram = z.T @ z
        scores = Lasso()._entry_order(gram)
        _, active, _ = lars_path_gram(Xy=gram.sum(1).numpy(), Gram=gram.numpy(), n_samples=1, method="lasso")
        assert torch.argsort(scores, descending=True).tolist()[:6] == [int(i) for i in active[:6]]


def test_lasso_drops_a_channel_the_next_layer_barely_uses_where_l1_keeps_it(digits) -> None:
    torch.manual_seed(0)
    model = ConvNet().eval()
    with torch.no_grad():
        model.conv1.weight[5] *= 4  # the largest filter ...
        model.conv2.weight[:, 5] *= 1e-3  # ... whose output the next layer ignores
    calibration, held_out = digits
    space = ap.PruningSpace(model, held_out[:2])
    group = _group_of(space, "conv1")
    l1 = space.scores("l1", groups=[group])[group.name]
    lasso = space.scores("lasso", calibration, groups=[group])[group.name]
    assert int(l1.argmax()) == 5 and int(lasso.argmin()) == 5
    plan = {group.name: 1 / 8}
    assert 5 not in space.keep_indices(plan, "lasso", calibration=calibration)[group.name].tolist()
