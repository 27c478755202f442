"""AutoCompress: per-round targets, networks carried between rounds, SIGKILL resume in every phase.

The contract every strategy meets (budget, resume mid-trial, two workers) is in test_strategies.py; the searches
here run tests/scripts/search_digits.py (a tiny ResNet on scikit-learn's digits, MACs budget 0.6) in a subprocess.
"""

from __future__ import annotations

import optuna
import pytest
import torch
from helpers import kill_mid_trial, kill_when, run_search
from optuna.trial import TrialState

import autoprune as ap
from autoprune.data import load_digits
from autoprune.evaluators import AccuracyEvaluator
from autoprune.search.artifacts import artifact_dir
from autoprune.search.ledger import make_storage
from autoprune.search.strategies.autocompress import KEEP, RESULT, TAG

# Training long enough (about 200 steps after the first checkpoint) that a kill lands inside it.
OPTIONS = {
    "rounds": 2,
    "round_trials": 3,
    "admm_steps": 150,
    "finetune_steps": 55,
    "batch_size": 32,
    "checkpoint_every": 5,
    "annealing": {"calibration_moves": 1},
}
N_TRIALS = 8  # 2 rounds x (3 candidates + the trained network)
BUDGET = 0.6


def _study(url: str) -> optuna.Study:
    return optuna.load_study(study_name="digits", storage=make_storage(url, "digits", create=False))


def _space() -> ap.PruningSpace:
    torch.manual_seed(0)
    model = ap.zoo.resnet20(in_channels=1, stage_widths=(8, 16, 32)).eval()
    return ap.PruningSpace(model, torch.zeros(1, 1, 8, 8))


def _candidates(url: str) -> list[tuple]:
    """Every completed candidate: round, kind, plan and score, in the order of the rounds."""
    out = []
    for t in _study(url).trials:
        if t.state == TrialState.COMPLETE:
            tag = t.user_attrs[TAG]
            out.append((tag["round"], tag["kind"], tuple(sorted(t.user_attrs["plan"].items())), t.values[0]))
    return sorted(out, key=lambda c: (c[0], c[1] == "trained"))


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('whole') / 'w.db'}"
    run_search(url, N_TRIALS, strategy="autocompress", options=OPTIONS)
    return url


def test_every_round_meets_its_target_and_the_last_network_is_physically_smaller_at_the_budget(whole) -> None:
    space = _space()
    full = space.macs({})
    study = _study(whole)
    trials = study.trials
    results = {t.user_attrs[TAG]["round"]: t.user_attrs[RESULT] for t in trials if RESULT in t.user_attrs}
    assert sorted(results) == [0, 1]
    for t in trials:
        if t.state != TrialState.COMPLETE:
            continue
        r = t.user_attrs[TAG]["round"]
        target = int(BUDGET ** ((r + 1) / 2) * full) if r == 0 else int(BUDGET * full)
        assert t.user_attrs["macs"] <= target  # round 1 of 2 at 0.6^(1/2), round 2 at 0.6 of the MACs
        assert t.user_attrs["macs"] > 0.9 * target  # and the round's budget is used
        kept = t.user_attrs[KEEP]
        if r == 1:  # pruned from round 1's trained network: never a channel it had lost
            for group, alive in results[0]["keep"].items():
                assert set(kept[group]) <= set(alive)
        if t.user_attrs[TAG]["kind"] == "trained":
            result = results[r]
            assert all(kept[g] == idx for g, idx in result["keep"].items())
            assert t.user_attrs["plan"] == result["plan"]
            assert result["training"]["steps"] == OPTIONS["admm_steps"] + OPTIONS["finetune_steps"]
    final = next(t for t in trials if t.user_attrs.get(TAG) == {"round": 1, "kind": "trained"})
    assert final.state == TrialState.COMPLETE and final.user_attrs["macs"] <= int(BUDGET * full)
    net = ap.trial_network(study, final, space)
    model = net.build()
    assert ap.count_macs(model, torch.zeros(1, 1, 8, 8)) == final.user_attrs["macs"]
    assert ap.count_params(model) == space.params(final.user_attrs["plan"])
    evaluator = AccuracyEvaluator(  # the script's evaluator: the exported network is the one that was scored
        load_digits("test"),
        train_data=load_digits("train"),
        bn_recalibration_batches=2,
        recalibration_batch_size=64,
        finetune_batch_size=64,
    )
    assert evaluator(model)["accuracy"] == final.values[0]
    model.train()(torch.zeros(2, 1, 8, 8)).sum().backward()  # trains on as a smaller network


def _kill_in_training(url: str) -> None:
    """SIGKILL the search once round 1's training has written a checkpoint (about 200 steps before it ends: the
    kill lands inside it whatever the machine's speed)."""

    def checkpointed() -> bool:
        return any(artifact_dir(_study(url)).glob("autocompress-*-round0.ckpt"))

    kill_when(url, N_TRIALS, "autocompress", OPTIONS, checkpointed)


def test_a_search_killed_in_any_phase_resumes_to_the_same_result(tmp_path, whole) -> None:
    expected = _candidates(whole)
    assert len(expected) == N_TRIALS

    in_search = f"sqlite:///{tmp_path / 's.db'}"
    kill_mid_trial(in_search, N_TRIALS, 0.0, "autocompress", completed=1, options=OPTIONS)  # round 1's 2nd move

    in_training = f"sqlite:///{tmp_path / 't.db'}"
    _kill_in_training(in_training)
    task = next(t for t in _study(in_training).trials if "task" in t.user_attrs)
    assert task.state == TrialState.RUNNING  # killed inside round 1's training

    in_scoring = f"sqlite:///{tmp_path / 'e.db'}"  # the 4th evaluation: round 1's trained network
    kill_mid_trial(in_scoring, N_TRIALS, 0.0, "autocompress", completed=3, options=OPTIONS)
    held = [t for t in _study(in_scoring).trials if t.state == TrialState.RUNNING]
    assert [t.user_attrs[TAG]["kind"] for t in held] == ["trained"]

    for url in (in_search, in_training, in_scoring):
        run_search(url, N_TRIALS, strategy="autocompress", options=OPTIONS)
        assert _candidates(url) == expected  # the same candidates in the same rounds, with the same scores
    tasks = [t for t in _study(in_training).trials if RESULT in t.user_attrs]
    assert tasks[0].user_attrs[RESULT]["training"]["resumed_at"] >= OPTIONS["checkpoint_every"]


def test_bad_options_are_refused_before_anything_runs(tmp_path) -> None:
    space = _space()
    evaluator = AccuracyEvaluator(load_digits("test"), train_data=load_digits("train"))
    budget = ap.Budget(macs=0.5)
    url = iter(f"sqlite:///{tmp_path / f'{k}.db'}" for k in range(4))
    with pytest.raises(ValueError, match="n_trials >= rounds"):
        ap.search(space, evaluator, budget, strategy="autocompress", n_trials=10, storage=next(url))
    with pytest.raises(ValueError, match="round_trials must be an integer >= 2"):
        ap.search(
            space, evaluator, budget, strategy="autocompress", storage=next(url), strategy_options={"round_trials": 1}
        )
    with pytest.raises(ValueError, match="train_data"):
        no_training = AccuracyEvaluator(load_digits("test"))
        ap.search(space, no_training, budget, strategy="autocompress", n_trials=93, storage=next(url))
    with pytest.raises(ValueError, match="towards a budget"):
        ap.search(space, evaluator, None, strategy="autocompress", n_trials=93, storage=next(url), multi_objective=True)
