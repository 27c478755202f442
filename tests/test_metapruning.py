"""MetaPruning: the PruningNet over any space (shapes, warm start, training, resume) and the ``metapruning``
strategy's evolution, resume and workers.

The contract every strategy meets (budget, SIGKILL resume with nothing lost, two workers) is in
test_strategies.py; here is what is particular to a weight generator trained once and an evolution.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import optuna
import pytest
import torch
import torch.nn.functional as F
from helpers import kill_mid_trial, kill_when, run_search, start_search
from optuna.trial import TrialState
from torch import nn

import autoprune as ap
from autoprune.search import Projector, SearchContext, get_strategy
from autoprune.search.artifacts import artifact_store, load_state
from autoprune.search.ledger import make_storage
from autoprune.search.pruningnet import PruningNet, PruningNetTrainer, generator_size, width_choices
from autoprune.search.strategies.metapruning import NET, TAG

X = torch.zeros(1, 1, 8, 8)
BUDGET = ap.Budget(macs=0.6)  # what tests/scripts/search_digits.py searches under


@pytest.fixture(scope="module")
def space() -> ap.PruningSpace:
    torch.manual_seed(0)  # the model tests/scripts/search_digits.py searches
    return ap.PruningSpace(ap.zoo.resnet20(in_channels=1, stage_widths=(8, 16, 32)).eval(), X)


def _vit() -> nn.Module:
    from torchvision.models import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128)


def _torchvision(name: str) -> nn.Module:
    import torchvision

    return getattr(torchvision.models, name)(num_classes=10)


MODELS = {
    "resnet20": (lambda: ap.zoo.resnet20(), (1, 3, 32, 32)),
    "vgg16_bn": (lambda: ap.zoo.vgg16_bn(), (1, 3, 32, 32)),
    "mobilenet_v2": (lambda: ap.zoo.mobilenet_v2(width_mult=0.5), (1, 3, 32, 32)),
    "torchvision_resnet18": (lambda: _torchvision("resnet18"), (1, 3, 64, 64)),
    "torchvision_mobilenet_v2": (lambda: _torchvision("mobilenet_v2"), (1, 3, 64, 64)),
    "vit": (_vit, (1, 3, 32, 32)),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_generated_weights_have_the_pruned_shapes_and_start_as_the_l1_pruned_model(name):
    """At any encoding, before training, the PruningNet's network is the trained model pruned by L1 (the same
    shapes, the same outputs); at the full encoding it is the trained model."""
    torch.manual_seed(0)
    make, shape = MODELS[name]
    model = make().eval()
    x = torch.randn(*shape)
    space = ap.PruningSpace(model, x)
    forms = ("compact", "faithful") if name in ("resnet20", "mobilenet_v2") else ("compact",)
    for form in forms:
        net = PruningNet(space, form=form)
        assert sum(p.numel() for p in net.parameters()) == generator_size(space, form)
        with torch.no_grad():
            torch.testing.assert_close(net.network(net.full).eval()(x), model(x))
        g = torch.Generator().manual_seed(1)
        for _ in range(2):
            counts = net.sample(g)
            plan = net.plan(counts)
            assert space.kept_counts(plan).tolist() == counts.tolist()
            reference = space.apply(plan, "l1").eval()
            generated = net.network(counts).eval()
            assert [tuple(p.shape) for p in generated.parameters()] == [tuple(p.shape) for p in reference.parameters()]
            with torch.no_grad():
                torch.testing.assert_close(generated(x), reference(x))
                net.eval()
                torch.testing.assert_close(net(counts, x), reference(x))  # the differentiable path agrees


def test_the_faithful_generator_is_about_hidden_times_the_model_and_the_compact_one_bounded(space):
    params = ap.count_params(space.model)
    assert generator_size(space, "faithful", hidden=64) > 60 * params
    assert generator_size(space, "compact", hidden=64) < 3 * params


def test_widths_are_the_reference_ratios_rounded_as_the_space_rounds(space):
    choices = width_choices(space, "reference")
    for g, c in zip(space.groups, choices):
        assert c == sorted(set(c)) and c[-1] == g.channels and c[0] >= 1
        if g.channels == 32:  # 0.10 ... 1.00 of 32, rounded to the nearest channel
            assert c[:3] == [3, 4, 5] and c[-3:] == [30, 31, 32] and len(c) == 30  # 3.2, 4.16, ..., 31.04, 32
    rounded = ap.PruningSpace(space.model, X, round_to=4)
    assert all(all(k % 4 == 0 for k in c) for c in width_choices(rounded, "round_to"))


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from autoprune.data import load_digits

    train = load_digits("train")
    return train.tensors if hasattr(train, "tensors") else train


@pytest.mark.parametrize("kind", ["tensors", "loader"])
def test_training_resumed_from_a_checkpoint_takes_the_same_steps(space, kind):
    data = _digits()
    if kind == "loader":  # a shuffling DataLoader: iterated under a seed per epoch, skipped ahead on resume
        dataset = torch.utils.data.TensorDataset(*data[:2]) if isinstance(data, tuple) else data
        data = torch.utils.data.DataLoader(dataset, batch_size=32, shuffle=True)

    def trainer() -> PruningNetTrainer:
        return PruningNetTrainer(PruningNet(space), data, steps=6, batch_size=32, seed=3)

    whole = trainer()
    whole.run()
    first = trainer()
    saved = []
    first.run(every=3, checkpoint=lambda t: saved.append(copy.deepcopy(t.state_dict())) if t.step == 3 else None)
    resumed = trainer()
    resumed.load_state_dict(saved[0])
    assert resumed.step == 3
    resumed.run()
    assert resumed.losses == whole.losses
    for a, b in zip(resumed.net.state_dict().values(), whole.net.state_dict().values()):
        assert torch.equal(a, b)


def test_training_learns_width_dependent_corrections(space):
    net = PruningNet(space)
    PruningNetTrainer(net, _digits(), steps=5, batch_size=32, lr=0.05).run()
    assert any(float(h.weight.detach().abs().sum()) > 0 for gen in net.generators for h in gen.heads)
    a, b = net.full.copy(), net.full.copy()
    b[0] = width_choices(space)[0][0]
    name = net.generated[-1]  # the classifier's weight depends on the last group only, not on group 0
    assert not torch.equal(net.full_weights(a)[name], net.full_weights(b)[name]) or name.startswith("fc")


def test_distillation_trains_from_the_unpruned_model(space):
    net = PruningNet(space)
    trainer = PruningNetTrainer(net, _digits(), steps=3, batch_size=32, distill=0.5)
    trainer.run()
    assert len(trainer.losses) == 3 and all(np.isfinite(trainer.losses))


class _CachesItsWeight(nn.Module):
    """Computes with a copy of its weight made at its first call (as modules with a weight cache do)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)
        self.cache: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cache is None:
            self.cache = self.conv.weight * 1
        return self.head(F.conv2d(x, self.cache, self.conv.bias, padding=1).relu().mean((2, 3)))


def test_a_module_that_caches_its_weights_is_named():
    space = ap.PruningSpace(_CachesItsWeight(), torch.randn(2, 1, 6, 6), verify=False)
    with pytest.raises(ValueError, match="'conv'.*exclude"):
        PruningNet(space)


def test_bad_options_and_budgets_are_refused_before_training(space, tmp_path):
    with pytest.raises(ValueError, match="train_steps must be an integer >= 1"):
        get_strategy("metapruning", train_steps=0)
    with pytest.raises(ValueError, match="form must be one of"):
        get_strategy("metapruning", form="huge")
    with pytest.raises(ValueError, match="exceed the population"):
        get_strategy("metapruning", population=10, mutations=8, crossovers=8)
    evaluator = lambda m: 0.0  # noqa: E731 - never called
    with pytest.raises(ValueError, match="under a budget"):
        ap.search(space, evaluator, None, strategy="metapruning", storage=f"sqlite:///{tmp_path / 'a.db'}")
    # Reachable by the projector (5% of a group), but below MetaPruning's narrowest width (10%).
    strat = get_strategy("metapruning")
    narrowest = {g.name: 1 - c[0] / g.channels for g, c in zip(space.groups, strat.choices(_ctx(space, BUDGET)))}
    floor = Projector(space, ap.Budget(macs=0.99)).costs({g.name: 0.95 for g in space.groups})["macs"]
    limit = (floor + space.macs(narrowest)) / 2
    with pytest.raises(ValueError, match="no MetaPruning candidate meets the budget"):
        ap.search(
            space, evaluator, ap.Budget(macs=limit), strategy="metapruning", storage=f"sqlite:///{tmp_path / 'b.db'}"
        )
    with pytest.raises(ValueError, match="training data"):
        ap.search(space, evaluator, BUDGET, strategy="metapruning", storage=f"sqlite:///{tmp_path / 'c.db'}")


def _ctx(space: ap.PruningSpace, budget: ap.Budget, study: optuna.Study | None = None) -> SearchContext:
    return SearchContext(space, Projector(space, budget), study, 0, 0.95)


def test_every_generation_meets_the_budget_and_breeds_from_the_best(space):
    strat = get_strategy("metapruning", population=12, parents=3, mutations=4, crossovers=4)
    ctx = _ctx(space, ap.Budget(macs=0.3))
    limit = ctx.projector.limit("macs")
    first = strat.generation(ctx, 0, [])
    assert len(first) == 12 and {o for _, o in first} == {"random"}
    assert strat.generation(ctx, 0, []) == first  # a function of the study and the seed only
    study = optuna.create_study(directions=["maximize"])
    for i, (genes, _) in enumerate(first):
        study.add_trial(optuna.trial.create_trial(value=float(i), user_attrs={TAG: {"generation": 0, "genes": genes}}))
    trials = study.get_trials()
    second = strat.generation(ctx, 1, trials)
    parents = [g for g, _ in first[-3:]]  # the three best scores
    origins = [o for _, o in second]
    assert origins.count("mutation") == 4 and origins.count("crossover") == 4 and len(second) == 12
    seen = {tuple(g) for g, _ in first}
    for genes, origin in second:
        assert tuple(genes) not in seen
        seen.add(tuple(genes))
        assert space.macs(strat.plan(ctx, genes)) <= limit
        if origin == "crossover":
            assert all(any(genes[k] == p[k] for p in parents) for k in range(len(genes)))
        if origin == "mutation":
            assert min(sum(a != b for a, b in zip(genes, p)) for p in parents) >= 1
    assert all(space.macs(strat.plan(ctx, g)) <= limit for g, _ in first)


# The options of the resume and worker runs: training long enough (seconds) that a kill lands inside it.
OPTIONS = {
    "train_steps": 40,
    "checkpoint_every": 5,
    "batch_size": 64,
    "population": 4,
    "parents": 2,
    "mutations": 1,
    "crossovers": 1,
    "recalibration_batches": 0,
}
N_TRIALS = 8  # two generations


def _study(url: str) -> optuna.Study:
    return optuna.load_study(study_name="digits", storage=make_storage(url, "digits", create=False))


def _candidates(url: str) -> dict[tuple, float]:
    """Every completed candidate: its (generation, genes) and score."""
    out = {}
    for t in _study(url).trials:
        if t.state == TrialState.COMPLETE:
            tag = t.user_attrs[TAG]
            out[(tag["generation"], tuple(tag["genes"]))] = t.values[0]
    return out


def _net_state(url: str, path) -> dict[str, torch.Tensor]:  # noqa: ANN001
    study = _study(url)
    return load_state(artifact_store(study), study.user_attrs[NET][0]["artifact"])["net"]


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('whole') / 'w.db'}"
    run_search(url, N_TRIALS, strategy="metapruning", options=OPTIONS)
    return url


def _kill_in_training(url: str) -> None:
    """SIGKILL the search once a checkpoint of the first half of training is saved (so the kill lands in the
    training, whatever the machine's speed: the other half takes 20 steps, the kill a few milliseconds)."""

    def first_half_saved() -> bool:
        saved = _study(url).user_attrs.get(NET, [])
        return bool(saved) and saved[0]["step"] <= OPTIONS["train_steps"] // 2

    kill_when(url, N_TRIALS, "metapruning", OPTIONS, first_half_saved)


def test_a_search_killed_in_training_or_in_evolution_resumes_to_the_same_result(tmp_path, whole):
    in_training = f"sqlite:///{tmp_path / 't.db'}"
    _kill_in_training(in_training)
    task = _study(in_training).trials[0]
    assert task.state == TrialState.RUNNING and task.user_attrs["task"]  # killed inside the training task
    run_search(in_training, N_TRIALS, strategy="metapruning", options=OPTIONS)
    trials = _study(in_training).trials
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs["stale"]
    assert [t.user_attrs.get("retry_of") for t in trials if "task" in t.user_attrs] == [None, 0]

    in_evolution = f"sqlite:///{tmp_path / 'e.db'}"
    kill_mid_trial(in_evolution, N_TRIALS, 1.5, "metapruning", completed=4, options=OPTIONS)  # in generation 1
    run_search(in_evolution, N_TRIALS, strategy="metapruning", options=OPTIONS)

    expected = _candidates(whole)
    assert len(expected) == N_TRIALS
    for url in (in_training, in_evolution):
        assert _candidates(url) == expected  # the same encodings in the same generations, with the same scores
        for a, b in zip(_net_state(url, tmp_path).values(), _net_state(whole, tmp_path).values()):
            assert torch.equal(a, b)


def test_two_workers_on_a_journal_file_make_the_same_generations_as_one(tmp_path, whole, space):
    url = f"journal:{tmp_path / 'w.journal'}"
    config = ap.SearchConfig(
        budget=BUDGET,
        strategy="metapruning",
        strategy_options=OPTIONS,
        n_trials=N_TRIALS,
        storage=url,
        study_name="digits",
        seed=0,
    )
    ap.create_study(space, config=config)
    workers = [start_search(url, N_TRIALS, strategy="metapruning", mode="join", options=OPTIONS) for _ in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=900)
        assert w.returncode == 0, err[-3000:]
    trials = _study(url).trials
    assert sum("task" in t.user_attrs for t in trials) == 1  # one worker trained, the other waited
    assert _candidates(url) == _candidates(whole)


def test_the_exported_network_is_the_one_that_was_scored(whole, space):
    from autoprune.data import load_digits
    from autoprune.evaluators import AccuracyEvaluator

    study = _study(whole)
    best = ap.best_trial(study)
    evaluator = AccuracyEvaluator(
        load_digits("test"), train_data=load_digits("train"), bn_recalibration_batches=0, threads=1
    )
    net = ap.trial_network(study, best, space).build()  # generated weights with the statistics it was scored with
    assert ap.count_macs(net, X) == best.user_attrs["macs"] <= BUDGET.targets(space)["macs"]
    assert evaluator(net)["score"] == best.values[0]
    original = ap.trial_network(study, best, space, weights="original").build()
    assert [p.shape for p in original.parameters()] == [p.shape for p in net.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(original.parameters(), net.parameters()))
    scratch = ap.trial_network(study, best, space, weights="scratch").build()
    assert [p.shape for p in scratch.parameters()] == [p.shape for p in net.parameters()]
    assert all(not torch.equal(a, b) for a, b in zip(scratch.parameters(), original.parameters()) if a.dim() > 1)
    with pytest.raises(ValueError, match="weights must be one of"):
        ap.trial_network(study, best, space, weights="mine")
    assert json.dumps(best.user_attrs[TAG])  # the encoding is plain JSON in the study


def test_show_plots_the_training_loss_and_the_score_per_generation(whole, tmp_path):
    from autoprune.plots import plot_study

    names = {p.name for p in plot_study(_study(whole), tmp_path)}
    assert {"rounds.png", "pruningnet_training_loss.png", "progress.png"} <= names
    curve = _study(whole).user_attrs["curves"]["PruningNet training loss"]
    assert curve["x"][-1] == OPTIONS["train_steps"] and len(curve["y"]) == len(curve["x"])
