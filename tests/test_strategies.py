"""Every registered strategy, held to the same contract (as Optuna's tests parametrize over its samplers).

A strategy joins these tests by being registered: on a small real model, it
(a) returns a best trial that meets the budget (every completed trial does, when it
projects its proposals); (b) resumes after SIGKILL mid-trial with nothing lost and
the study-wide ``n_trials`` exact; (c) runs with two workers on a journal file
without evaluating any plan twice.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import optuna
import pytest
import torch
from helpers import agreement, kill_mid_trial, run_search, start_search
from optuna.trial import TrialState

import autoprune as ap
from autoprune.search import Action, Projector, SearchContext, get_strategy
from autoprune.search.ledger import counted, make_storage, proposal

STRATEGIES = sorted(ap.STRATEGIES)
BUDGET = ap.Budget(macs=0.6)  # what tests/scripts/search_digits.py searches under
sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from search_digits import OPTIONS  # noqa: E402 - the options the script's searches use

WALKS_DOWN = {"netadapt"}  # proposes networks over the budget until its last iterations: needs many more trials
ROUNDS = {"autocompress"}  # aims at a share of the budget per round: over it until its last round


@pytest.fixture(scope="module")
def space() -> ap.PruningSpace:
    torch.manual_seed(0)
    model = ap.zoo.resnet20(in_channels=1, stage_widths=(8, 16, 32)).eval()
    return ap.PruningSpace(model, torch.zeros(1, 1, 8, 8))


def _study(url: str) -> optuna.Study:
    return optuna.load_study(study_name="digits", storage=make_storage(url, "digits", create=False))


def _finished(space: ap.PruningSpace, study: optuna.Study, strategy: str) -> bool:
    """The strategy has nothing more to propose (it may stop short of n_trials: uniform, NetAdapt at the budget).

    Asks it as the runner would, so a strategy that enqueues may enqueue its next batch: call it last.
    """
    strat = get_strategy(strategy, **OPTIONS.get(strategy, {}))
    ctx = SearchContext(space, Projector(space, BUDGET), study, 0, 0.95)
    return strat.next_action(ctx) is Action.STOP


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_the_best_trial_meets_the_budget(tmp_path, space, strategy):
    strat = get_strategy(strategy, **OPTIONS.get(strategy, {}))
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(16) % 10  # training samples for a strategy that trains (MetaPruning)
    study = ap.search(
        space,
        agreement(space, x),
        BUDGET,
        strategy=strat,
        n_trials=300 if strategy in WALKS_DOWN else 8,
        storage=f"sqlite:///{tmp_path / 'a.db'}",
        study_name="a",
        train_data=(x, labels),
    )
    limit = BUDGET.targets(space)["macs"]
    best = ap.best_trial(study)
    assert best.user_attrs["macs"] <= limit and best.user_attrs["macs"] == space.macs(best.user_attrs["plan"])
    net = ap.trial_network(study, best, space, strategy=strat).build()
    assert ap.count_macs(net, torch.zeros(1, 1, 8, 8)) == best.user_attrs["macs"]  # the network that was scored
    if strategy not in WALKS_DOWN | ROUNDS:
        assert all(t.user_attrs["macs"] <= limit for t in study.trials if t.state == TrialState.COMPLETE)


# Trials per strategy for the resume and worker tests: fewer than NetAdapt needs to reach the budget.
N_TRIALS = 6


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_killed_search_resumes_with_nothing_lost(tmp_path, space, strategy):
    url = f"sqlite:///{tmp_path / 'k.db'}"
    completed = 0 if strategy == "uniform" else 2  # uniform evaluates one plan: kill during it
    kill_mid_trial(url, N_TRIALS, 1.5, strategy, completed=completed)
    before = _study(url).trials
    killed = [t for t in before if t.state == TrialState.RUNNING]
    done = {t.number: (t.values, t.user_attrs["plan"]) for t in before if t.state == TrialState.COMPLETE}

    run_search(url, N_TRIALS, strategy=strategy)
    after = _study(url).trials
    assert {t.number: (t.values, t.user_attrs["plan"]) for t in after if t.number in done} == done  # nothing lost
    total = counted(after)
    assert total == N_TRIALS or (total < N_TRIALS and _finished(space, _study(url), strategy))
    assert sum(t.state == TrialState.COMPLETE for t in after) == total  # every counted trial completed
    for k in killed:  # whenever the kill landed: a trial it interrupted is failed as stale and retried exactly
        stale = after[k.number]
        assert stale.state == TrialState.FAIL and stale.user_attrs["stale"] is True
        retry = [t for t in after if t.user_attrs.get("retry_of") == k.number]
        assert len(retry) == 1 and proposal(retry[0]) == proposal(k)
        # evaluated, or still queued behind earlier proposals (NetAdapt's iteration) when n_trials ran out
        assert retry[0].state == TrialState.COMPLETE or (retry[0].state == TrialState.WAITING and total == N_TRIALS)
        if retry[0].state == TrialState.COMPLETE:
            assert retry[0].params == stale.params


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_two_workers_on_a_journal_file_evaluate_no_plan_twice(tmp_path, space, strategy):
    url = f"journal:{tmp_path / 'w.journal'}"
    config = ap.SearchConfig(  # what the script's workers search: they check it against the study's
        budget=BUDGET,
        strategy=strategy,
        strategy_options=OPTIONS.get(strategy, {}),
        n_trials=N_TRIALS,
        storage=url,
        study_name="digits",
        seed=0,
    )
    ap.create_study(space, config=config)
    workers = [start_search(url, N_TRIALS, strategy=strategy, mode="join") for _ in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=600)
        assert w.returncode == 0, err[-3000:]
    trials = _study(url).trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    plans = [json.dumps(t.user_attrs["plan"], sort_keys=True) for t in complete]
    assert len(set(plans)) == len(plans)
    assert counted(trials) == len(complete)  # nothing failed
    assert len(complete) == N_TRIALS or _finished(space, _study(url), strategy)
