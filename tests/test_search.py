"""The search loop on real parts: SQLite studies, a real model and dataset, crashes and resumes."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch
from helpers import kill_mid_trial, run_search
from optuna.trial import TrialState

import autoprune as ap
from autoprune.data import load_digits
from autoprune.evaluators import AccuracyEvaluator
from autoprune.search import Projector


@pytest.fixture(scope="module")
def digits_space():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = ap.zoo.resnet20(in_channels=1, stage_widths=(8, 16, 32)).eval()
    return ap.PruningSpace(model, torch.zeros(1, 1, 8, 8))


@pytest.fixture(scope="module")
def evaluator():
    return AccuracyEvaluator(
        load_digits("test"), train_data=load_digits("train"), bn_recalibration_batches=2, recalibration_batch_size=64
    )


def _url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'study.db'}"


def test_projection_meets_the_budget_and_keeps_the_plan_shape(digits_space):
    budget = ap.Budget(macs=0.5)
    proj = Projector(digits_space, budget)
    target = budget.targets(digits_space)["macs"]
    raw = {g.name: 0.1 * (i % 5) for i, g in enumerate(digits_space.groups)}
    plan = proj.project(raw)
    assert digits_space.macs(plan) <= target
    assert digits_space.macs(plan) > 0.9 * target  # the budget is used, not wasted
    order = sorted(raw, key=raw.get)
    assert [plan[n] for n in order] == sorted(plan[n] for n in order)  # same shape: more pruned stays more pruned
    uniform = proj.uniform()
    assert len(set(round(v, 9) for v in uniform.values())) == 1 and digits_space.macs(uniform) <= target


def test_budget_errors_are_clear(digits_space):
    with pytest.raises(ValueError, match="unreachable"):
        Projector(digits_space, ap.Budget(macs=0.001))
    with pytest.raises(ValueError, match="at least one limit"):
        ap.Budget()
    with pytest.raises(ValueError, match="positive number"):
        ap.Budget(macs=-1)
    absolute = ap.Budget(params=50_000).targets(digits_space)
    assert absolute == {"params": 50_000}


def test_search_records_every_candidate_and_resumes(tmp_path, digits_space, evaluator):
    url = _url(tmp_path)
    budget = ap.Budget(macs=0.5)
    study = ap.search(digits_space, evaluator, budget, n_trials=4, storage=url, study_name="s")
    trials = study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert trials[0].user_attrs["seed_plan"] == "uniform"
    target = budget.targets(digits_space)["macs"]
    for t in trials:
        a = t.user_attrs
        assert a["macs"] == digits_space.macs(a["plan"]) <= target
        assert a["params"] == digits_space.params(a["plan"])
        assert a["strategy"] == "tpe" and a["criterion"] == "l1" and a["eval_seconds"] > 0
        assert 0 <= t.value <= 1 and t.constraints == {"macs": a["macs"] - target}
    # Running again with a larger total resumes: old trials kept, new ones added, no plan repeated.
    study = ap.search(digits_space, evaluator, budget, n_trials=7, storage=url, study_name="s")
    assert len(study.trials) == 7 and all(t.state == TrialState.COMPLETE for t in study.trials)
    assert [t.value for t in study.trials[:4]] == [t.value for t in trials]
    params = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(params)) == 7
    # Asking again for the same total does nothing.
    assert len(ap.search(digits_space, evaluator, budget, n_trials=7, storage=url, study_name="s").trials) == 7
    plan = ap.best_plan(study)
    assert plan == max(study.trials, key=lambda t: t.value).user_attrs["plan"]


def test_a_failing_evaluator_fails_its_trial_not_the_study(tmp_path, digits_space, evaluator):
    calls = []

    def flaky(model):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory (simulated)")
        if len(calls) == 3:
            return float("nan")
        return evaluator(model)

    study = ap.search(
        digits_space,
        flaky,
        ap.Budget(macs=0.6),
        strategy="random",
        n_trials=5,
        storage=_url(tmp_path),
        study_name="flaky",
    )
    states = [t.state for t in study.trials]
    assert states.count(TrialState.FAIL) == 2 and states.count(TrialState.COMPLETE) == 3 and len(states) == 5
    assert "out of memory (simulated)" in study.trials[1].user_attrs["error"]
    assert "score" in study.trials[2].user_attrs["error"].lower()


def test_a_different_configuration_is_refused_on_resume(tmp_path, digits_space, evaluator):
    url = _url(tmp_path)
    ap.search(digits_space, evaluator, ap.Budget(macs=0.5), strategy="uniform", n_trials=1, storage=url, study_name="c")
    with pytest.raises(ValueError, match="different configuration.*budget"):
        ap.search(
            digits_space, evaluator, ap.Budget(macs=0.4), strategy="uniform", n_trials=1, storage=url, study_name="c"
        )


def test_uniform_strategy_evaluates_one_plan(tmp_path, digits_space, evaluator):
    study = ap.search(
        digits_space,
        evaluator,
        ap.Budget(params=0.5),
        strategy="uniform",
        n_trials=5,
        storage=_url(tmp_path),
        study_name="u",
    )
    assert len(study.trials) == 1
    assert len({round(v, 9) for v in study.trials[0].user_attrs["plan"].values()}) == 1


def test_multi_objective_reports_a_pareto_front(tmp_path, digits_space, evaluator):
    study = ap.search(
        digits_space,
        evaluator,
        ap.Budget(macs=0.8),
        n_trials=6,
        storage=_url(tmp_path),
        study_name="mo",
        multi_objective=True,
    )
    front = study.best_trials
    assert front and all(t.values[1] == t.user_attrs["macs"] for t in front)
    assert len({t.user_attrs["macs"] for t in study.trials}) > 1  # not all projected onto the same cost
    assert ap.best_plan(study) in [t.user_attrs["plan"] for t in front]


def _states(url: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name="digits", storage=url).trials
    except KeyError:
        return []


def test_resume_after_sigkill_mid_trial(tmp_path):
    url = _url(tmp_path)
    kill_mid_trial(url, 6, 1.0, "tpe", completed=2)
    before = _states(url)
    killed = [t for t in before if t.state == TrialState.RUNNING]
    assert len(killed) == 1
    completed = {t.number: t.value for t in before if t.state == TrialState.COMPLETE}

    run_search(url, 6)
    after = _states(url)
    stale = after[killed[0].number]
    assert stale.state == TrialState.FAIL and stale.user_attrs["stale"] is True
    retry = [t for t in after if t.user_attrs.get("retry_of") == stale.number]
    assert len(retry) == 1 and retry[0].params == stale.params and retry[0].state == TrialState.COMPLETE
    assert all(after[n].value == v for n, v in completed.items())  # nothing recorded is lost
    assert sum(t.state == TrialState.COMPLETE for t in after) == 6  # the study-wide total is exact


def test_a_trial_killed_before_it_recorded_its_worker_is_retried_at_once(tmp_path, digits_space, evaluator):
    """A process killed between asking for a trial and recording its worker leaves a RUNNING trial no heartbeat
    can clear. A SQLite study has one process at a time, so reopening it fails that trial as stale and retries its
    plan at once (with a 10-minute heartbeat, waiting for it to look dead would outlast the search's timeout)."""
    url = _url(tmp_path)
    budget = ap.Budget(macs=0.6)
    ap.search(digits_space, evaluator, budget, n_trials=3, storage=url, study_name="s", seed=0)
    study = optuna.load_study(study_name="s", storage=url)
    orphan = study.ask(fixed_distributions=study.trials[-1].distributions)  # what the killed process left behind

    ap.search(
        digits_space, evaluator, budget, n_trials=4, storage=url, study_name="s", heartbeat_interval=600, timeout=120
    )
    after = optuna.load_study(study_name="s", storage=url).trials
    failed = after[orphan.number]
    assert failed.state == TrialState.FAIL and failed.user_attrs["stale"] is True
    retry = [t for t in after if t.user_attrs.get("retry_of") == orphan.number]
    assert len(retry) == 1 and retry[0].params == failed.params and retry[0].state == TrialState.COMPLETE
    assert sum(t.state == TrialState.COMPLETE for t in after) == 4


def test_export_then_load_gives_identical_outputs(tmp_path, digits_space, evaluator):
    study = ap.search(digits_space, evaluator, ap.Budget(macs=0.5), n_trials=3, storage=_url(tmp_path), study_name="e")
    plan = ap.best_plan(study)
    out = ap.export(
        digits_space,
        plan,
        tmp_path / "out",
        score=study.best_value,
        budget=ap.Budget(macs=0.5),
        formats=("pt2", "onnx"),
    )
    assert {p.name for p in out.iterdir()} >= {"structure.json", "weights.pt", "model.pt2", "model.onnx"}
    state = torch.load(out / "weights.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    base = ap.zoo.resnet20(in_channels=1, stage_widths=(8, 16, 32))
    model = ap.load(out, base)
    expected = digits_space.apply(plan).eval()
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), expected(x))
    assert ap.count_macs(model, torch.zeros(1, 1, 8, 8)) == digits_space.macs(plan)
    with pytest.raises(ValueError, match="different architecture"):
        ap.load(out, ap.zoo.resnet20(in_channels=1))


def test_search_rejects_bad_arguments(tmp_path, digits_space, evaluator):
    with pytest.raises(ValueError, match="unknown strategy 'annealing'.*tpe"):
        ap.search(digits_space, evaluator, strategy="annealing", storage=_url(tmp_path))
    with pytest.raises(TypeError, match="callable"):
        ap.search(digits_space, 42, storage=_url(tmp_path))
    with pytest.raises(ValueError, match="n_trials"):
        ap.search(digits_space, evaluator, n_trials=0, storage=_url(tmp_path))
    # A criterion that scores channels on data, without data: refused at once, not one failed trial after another.
    with pytest.raises(ValueError, match="criterion 'apoz' scores channels on data: pass calibration="):
        ap.search(digits_space, evaluator, ap.Budget(macs=0.5), criterion="apoz", storage=_url(tmp_path))
    assert not list(tmp_path.glob("*.db")) or not optuna.get_all_study_summaries(_url(tmp_path))
