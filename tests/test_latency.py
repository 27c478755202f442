"""The per-layer latency lookup table: building, interpolation, storage, and latency budgets in a search."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import agreement

import autoprune as ap
from autoprune.data import load_digits
from autoprune.engine.latency import LatencyTable
from autoprune.evaluators import AccuracyEvaluator
from autoprune.search import Projector
from autoprune.search.strategies.netadapt import NetAdapt
from autoprune.search.strategy import SearchContext


@pytest.fixture(scope="module")
def space():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    # Full widths at 28x28, so that convolutions (not per-op overhead) dominate and a 60% budget is reachable;
    # the digits evaluator runs the pruned models on its own 8x8 images.
    model = ap.zoo.resnet20(in_channels=1).eval()
    return ap.PruningSpace(model, torch.zeros(1, 1, 28, 28))


@pytest.fixture(scope="module")
def table(space):
    return LatencyTable.build(space, min_run_time=0.005)


@pytest.fixture(scope="module")
def evaluator():
    return AccuracyEvaluator(
        load_digits("test"), train_data=load_digits("train"), bn_recalibration_batches=2, recalibration_batch_size=64
    )


def _random_plans(space, n: int, seed: int = 0) -> list[dict[str, float]]:
    rng = np.random.default_rng(seed)
    return [{g.name: float(rng.uniform(0, 0.9)) for g in space.groups} for _ in range(n)]


def test_table_covers_every_conv_and_linear_layer(space, table):
    names = [layer["name"] for layer in table.layers]
    assert "conv1:convolution" in names and "fc:addmm" in names
    assert sum(n.endswith(":convolution") for n in names) == sum(
        isinstance(m, torch.nn.Conv2d) for m in space.model.modules()
    )
    by_name = {g.name: g for g in space.groups}
    for layer in table.layers:
        assert 1 <= len(layer["groups"]) <= 2
        for group, grid in zip(layer["groups"], layer["grids"]):
            assert grid[-1] == by_name[group].channels and grid == sorted(set(grid))


def test_memory_bound_ops_are_timed_on_their_group(space, table):
    kinds = {layer["name"]: layer["kind"] for layer in table.layers}
    by_name = {layer["name"]: layer for layer in table.layers}
    # Every norm, activation, residual add and the pooling: each sized by one group, on that group's 1-D grid.
    for op, count in (("native_batch_norm", 21), ("relu", 19), ("add", 9), ("mean", 1)):
        names = [n for n in kinds if n.split(":")[-1].split("#")[0] == op]
        assert len(names) == count, op
        assert all(kinds[n] == "memory" and len(by_name[n]["groups"]) == 1 for n in names)
    assert by_name["layer1.0.bn1:native_batch_norm"]["groups"] == ["layer1.0.conv1"]
    assert by_name["layer2.0:add"]["groups"] == ["layer2.0.conv2"]  # the residual stream of stage 2
    assert by_name["avgpool:mean"]["groups"] == ["layer3.0.conv2"]
    assert by_name["layer3.1.bn1:native_batch_norm"]["grids"] == [
        next(lay for lay in table.layers if lay["name"] == "layer3.1.conv1:convolution")["grids"][1]
    ]
    # Views move no data: not timed.
    assert not any(n.split(":")[-1] in ("view", "t", "empty") for n in kinds)
    assert all(kinds[n] == "compute" for n in kinds if n.endswith((":convolution", ":addmm")))


def test_pruning_a_group_shrinks_its_memory_bound_ops(space, table):
    plan = {g.name: 0.8 for g in space.groups}
    full, pruned = table.breakdown({}), table.breakdown(plan)
    assert sum(full.values()) == pytest.approx(table.predict({})) and full["constant"] == table.constant_ms
    assert sum(pruned.values()) == pytest.approx(table.predict(plan))
    memory = [layer["name"] for layer in table.layers if layer["kind"] == "memory"]
    assert sum(pruned[n] for n in memory) < sum(full[n] for n in memory)
    assert all(pruned[n] <= full[n] for n in memory)
    # What was one constant (the full model minus the conv / linear ops) is now mostly ops that follow the plan.
    assert table.constant_ms < table.full_ms - sum(full[n] for n in full if n not in memory and n != "constant")
    # Pruning one group moves only the ops it sizes.
    one = {"layer1.0.conv1": 0.75}
    moved = {n for n, v in table.breakdown(one).items() if v != full[n]}
    assert moved <= {layer["name"] for layer in table.layers if "layer1.0.conv1" in layer["groups"]}
    assert moved & set(memory)


def test_ops_sized_by_more_than_two_groups_scale_with_their_work():
    class ThreeWay(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = (torch.nn.Conv2d(3, n, 3, padding=1) for n in (8, 16, 24))
            self.head = torch.nn.Conv2d(48, 8, 1)

        def forward(self, x):
            return self.head(torch.relu(torch.cat([self.a(x), self.b(x), self.c(x)], 1)))

    torch.manual_seed(0)
    space = ap.PruningSpace(ThreeWay().eval(), torch.zeros(1, 3, 16, 16))
    table = LatencyTable.build(space, grid_step=8, min_run_time=0.002)
    by_name = {layer["name"]: layer for layer in table.layers}
    cat, relu = by_name["cat"], by_name["relu"]
    assert cat["kind"] == relu["kind"] == "memory" and cat["grids"] == relu["grids"] == []
    assert sorted(cat["groups"]) == ["a", "b", "c"]
    assert by_name["head:convolution"]["kind"] == "compute" and by_name["head:convolution"]["grids"] == []
    plan = {"c": 0.5}  # 24 -> 12 of 48 channels: the cat and the ReLU move a quarter fewer elements
    got = table.breakdown(plan)
    assert got["cat"] == pytest.approx(cat["values"][0][0] * 36 / 48)
    assert got["relu"] == pytest.approx(relu["values"][0][0] * 36 / 48)
    assert table.predict(plan) < table.predict({}) == pytest.approx(table.full_ms)


def test_empty_plan_predicts_the_measured_full_latency(table):
    assert table.predict({}) == pytest.approx(table.full_ms, rel=1e-9)
    assert table.full_ms > 0


def test_pruning_more_never_predicts_slower(space, table):
    for plan in _random_plans(space, 30):
        more = {k: min(0.95, v + 0.1) for k, v in plan.items()}
        assert table.predict(more) <= table.predict(plan) + 1e-12
    assert table.predict({g.name: 0.9 for g in space.groups}) < table.predict({})


def test_interpolation_hits_grid_points_exactly(space, table):
    index = {g.name: i for i, g in enumerate(space.groups)}
    layer = next(lay for lay in table.layers if len(lay["groups"]) == 2 and lay["groups"][0] != lay["groups"][1])
    position = table.layers.index(layer)
    values = np.asarray(layer["values"])
    full = np.array([g.channels for g in space.groups])
    for i in (0, len(layer["grids"][0]) // 2, len(layer["grids"][0]) - 1):
        for j in (0, len(layer["grids"][1]) - 2, len(layer["grids"][1]) - 1):
            counts = full.copy()
            counts[index[layer["groups"][0]]] = layer["grids"][0][i]
            counts[index[layer["groups"][1]]] = layer["grids"][1][j]
            assert table.layer_latencies(counts)[position] == values[i, j]
    # Between two grid points: between their values.
    a, b = layer["grids"][0][-2], layer["grids"][0][-1]
    if b - a > 1:
        counts = full.copy()
        counts[index[layer["groups"][0]]] = (a + b) // 2
        got = table.layer_latencies(counts)[position]
        assert values[-2, -1] <= got <= values[-1, -1]


def test_round_trip_through_json_and_refuse_another_model(space, table):
    import json

    data = json.loads(json.dumps(table.to_dict()))
    assert data["fingerprint"] == space.fingerprint() and data["threads"] == 1 and data["device"] == "cpu"
    again = LatencyTable.from_dict(data, space)
    for plan in [{}, *_random_plans(space, 5, seed=1)]:
        assert again.predict(plan) == pytest.approx(table.predict(plan), rel=1e-12)
    assert again.layers == table.layers and again.constant_ms == pytest.approx(table.constant_ms)
    assert again.matches(device="cpu", threads=1) and not again.matches(device="cpu", threads=2)
    with pytest.raises(ValueError, match="format"):
        LatencyTable.from_dict({**data, "format": 1}, space)  # a table of conv / linear ops only: rebuilt
    with pytest.raises(ValueError, match="traced ops"):
        LatencyTable.from_dict({**data, "layers": data["layers"][::-1]}, space)
    other = ap.PruningSpace(ap.zoo.resnet20(in_channels=1, stage_widths=(8, 16, 24)).eval(), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="another model"):
        LatencyTable.from_dict(data, other)


def test_batch_size_scales_the_measured_layers(space):
    small = LatencyTable.build(space, batch_size=2, grid_step=32, min_run_time=0.002)
    big = LatencyTable.build(space, batch_size=64, grid_step=32, min_run_time=0.002)
    assert big.info["batch_size"] == 64
    assert (
        big.layer_latencies(np.array([g.channels for g in space.groups])).sum()
        > small.layer_latencies(np.array([g.channels for g in space.groups])).sum()
    )


def _reachable_fraction(space, table) -> float:
    """Halfway between the smallest model's predicted latency and the full one (the machine is noisy)."""
    smallest = table.predict({g.name: 0.95 for g in space.groups})
    return round((smallest / table.full_ms + 1.0) / 2, 3)


def test_projector_meets_a_latency_budget(space, table):
    fraction = _reachable_fraction(space, table)
    projector = Projector(space, ap.Budget(latency=fraction), latency_table=table)
    target = projector.targets["latency_ms"]
    assert target == pytest.approx(fraction * table.full_ms)
    for plan in _random_plans(space, 5, seed=2):
        projected = projector.project(plan)
        assert projector.costs(projected)["latency_ms"] <= target
    with pytest.raises(ValueError, match="latency table"):
        ap.Budget(latency=0.6).targets(space)


def test_latency_budget_search_records_and_caches_the_table(space, table, evaluator, tmp_path: Path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    fraction = _reachable_fraction(space, table)
    study = ap.search(
        space,
        evaluator,
        ap.Budget(latency=fraction),
        strategy="random",
        n_trials=3,
        storage=url,
        study_name="lat",
        latency_table=table,
    )
    cached = study.user_attrs["latency_table"]
    target = fraction * cached["full_ms"] * (1 - 0.03)  # the default latency_margin: 3% of the budget
    trials = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(trials) == 3
    for t in trials:  # projected onto the budget as calibrated by the measurements before it
        assert t.user_attrs["latency_ms"] * t.user_attrs["latency_scale"] <= target + 1e-9
        assert t.user_attrs["macs"] < space.macs({})
        assert t.constraints == {
            "latency_ms": pytest.approx(t.user_attrs["measured_latency_ratio"] * table.full_ms - target)
        }

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cached latency table should have been reused")

    monkeypatch.setattr(LatencyTable, "build", no_rebuild)
    study = ap.search(
        space, evaluator, ap.Budget(latency=fraction), strategy="random", n_trials=5, storage=url, study_name="lat"
    )
    assert study.user_attrs["latency_table"] == cached
    assert len([t for t in study.trials if t.state.name == "COMPLETE"]) == 5
    assert all(t.user_attrs["latency_ms"] * t.user_attrs["latency_scale"] <= target + 1e-9 for t in study.trials)


def test_study_file_accepts_a_latency_budget():
    from autoprune.studyfile import parse_study

    config = parse_study(
        {"study_name": "s", "model": {"zoo": "resnet20", "input_shape": [1, 1, 28, 28]}, "budget": {"latency": 0.6}}
    )
    assert config.budget == ap.Budget(latency=0.6) and config.search_config().budget == ap.Budget(latency=0.6)


# -- a latency budget is met as measured, whatever the table says ------------------------------------------------


class MacsTable(LatencyTable):
    """A table that is wrong by construction: it predicts latency proportional to MACs.

    On CPU at batch 1 a conv's time hardly falls until its channel count drops a
    whole vector block, so this table under-predicts lightly pruned networks badly.
    """

    def predict(self, plan):
        return self.full_ms * self.space.macs(plan) / self.space.macs({})


@pytest.fixture(scope="module")
def conv_space():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(32, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(32, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(32, 10),
    ).eval()
    return ap.PruningSpace(model, torch.zeros(1, 3, 32, 32), round_to=8)


@pytest.fixture(scope="module")
def macs_table(conv_space):
    real = LatencyTable.build(conv_space, min_run_time=0.005)
    return MacsTable(conv_space, real.layers, real.full_ms, real.info)


def _agreement(space):
    return agreement(space, torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0)))


def test_measure_times_a_network_beside_the_unpruned_one(conv_space, macs_table):
    plan = {g.name: 0.5 for g in conv_space.groups}
    pruned = conv_space.apply(plan).train()
    before = [p.detach().clone() for p in pruned.parameters()]
    m = macs_table.measure(pruned)
    assert m["ms"] > 0 and m["full_ms"] > 0
    assert 0.1 < m["ratio"] < 0.9  # half the channels of every conv: clearly faster, never free
    assert m["ratio_min"] <= m["ratio"] <= m["ratio_max"] and 0 <= m["clean"] <= 1
    assert pruned.training and all(torch.equal(a, b) for a, b in zip(before, pruned.parameters()))  # untouched
    with pytest.raises(ValueError, match="rounds"):
        macs_table.measure(pruned, rounds=0)


def test_timing_drops_blocks_without_the_cpu(monkeypatch):
    """A block in which the process did not run (here: it slept, as when another process has the core) is not
    trusted: calls that sleep 20 ms are timed only when no block that computed is left."""
    import time

    from autoprune.engine.latency import timing

    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # the spinning calls below use one thread
    calls = []

    def fn():
        calls.append(None)
        if len(calls) % 2:  # odd calls sleep: no CPU time
            time.sleep(0.02)
        else:  # even calls compute for 5 ms
            end = time.perf_counter() + 0.005
            while time.perf_counter() < end:
                pass

    slept = timing(lambda: time.sleep(0.02), min_run_time=0.01, device=torch.device("cpu"), patience=1.0)
    assert slept.clean == 0.0 and slept.ms >= 20  # nothing clean: the median of what there is, and it says so
    mixed = timing(fn, min_run_time=0.05, device=torch.device("cpu"), block_time=0.0)
    assert mixed.clean < 1  # every other block slept
    assert mixed.clean == 0 or mixed.ms < 10  # with a clean block, the median is over the computing ones


def _search(space, table, path, strategy: str, n_trials: int, **options):
    return ap.search(
        space,
        _agreement(space),
        ap.Budget(latency=0.6),
        strategy=strategy,
        n_trials=n_trials,
        storage=f"sqlite:///{path}",
        latency_table=table,
        **options,
    )


def test_netadapt_walks_on_until_the_measured_latency_meets_the_budget(conv_space, macs_table, tmp_path):
    """The table calls a network done long before it is; NetAdapt keeps walking until the measurement agrees."""
    options = {"initial_reduction": 0.1}
    study = _search(conv_space, macs_table, tmp_path / "na.db", "netadapt", 60, strategy_options=options)
    projector = Projector(conv_space, ap.Budget(latency=0.6), latency_table=macs_table)
    st = NetAdapt().replay(SearchContext(conv_space, projector, study, 0, 0.95))
    assert st.done
    picked = [study.trials[n] for n in st.history]
    limit = 0.6 * (1 - 0.03)  # the budget less the default latency_margin
    target = limit * macs_table.full_ms
    assert picked[-1].user_attrs["measured_latency_ratio"] <= limit  # done only once measured under the budget
    assert all(t.user_attrs["measured_latency_ratio"] > limit for t in picked[:-1])
    # The table said "done" at an earlier network, which measured over the budget: the walk went on from there,
    # aiming lower (the target scaled by that network's prediction over its measurement).
    fooled = [i for i, t in enumerate(picked) if t.user_attrs["latency_ms"] <= target]
    assert fooled and fooled[0] < len(picked) - 1
    assert st.target < target
    # Every candidate's latency constraint is its measurement, so the best trial meets the budget as measured.
    assert study.best_trial.user_attrs["measured_latency_ratio"] <= limit


def test_projection_is_calibrated_by_the_measurements(conv_space, macs_table, tmp_path):
    study = _search(conv_space, macs_table, tmp_path / "rnd.db", "random", 8)
    trials = [t for t in study.trials if t.state.name == "COMPLETE"]
    full = macs_table.full_ms
    assert trials[0].user_attrs["latency_scale"] == 1.0
    for k, t in enumerate(trials):
        # the scale each trial was projected with: the 0.75 quantile of the table's bias on the trials before it
        bias = [u.user_attrs["measured_latency_ratio"] / (u.user_attrs["latency_ms"] / full) for u in trials[:k]]
        expected = float(np.quantile(bias, Projector.CALIBRATION_QUANTILE)) if bias else 1.0
        assert t.user_attrs["latency_scale"] == pytest.approx(expected)
        assert t.user_attrs["latency_ms"] * t.user_attrs["latency_scale"] <= 0.6 * (1 - 0.03) * full + 1e-9
    assert trials[-1].user_attrs["latency_scale"] > 1.2  # the table under-predicts; the projection learned it
    assert study.best_trial.user_attrs["measured_latency_ratio"] <= 0.6 * (1 - 0.03)


def test_verify_latency_false_trusts_the_table(conv_space, macs_table, tmp_path):
    study = _search(conv_space, macs_table, tmp_path / "trust.db", "random", 2, verify_latency=False)
    for t in study.trials:
        assert "measured_latency_ratio" not in t.user_attrs
        assert t.constraints == {"latency_ms": pytest.approx(t.user_attrs["latency_ms"] - 0.6 * macs_table.full_ms)}


def test_latency_margin_is_a_fraction_of_the_budget(conv_space, macs_table, tmp_path):
    study = _search(conv_space, macs_table, tmp_path / "margin.db", "random", 1, latency_margin=0.25)
    (t,) = study.trials
    assert t.constraints == {
        "latency_ms": pytest.approx((t.user_attrs["measured_latency_ratio"] - 0.6 * 0.75) * macs_table.full_ms)
    }
    with pytest.raises(ValueError, match="latency_margin"):
        _search(conv_space, macs_table, tmp_path / "bad.db", "random", 1, latency_margin=1.5)
    assert not (tmp_path / "bad.db").exists()  # refused before anything was created
