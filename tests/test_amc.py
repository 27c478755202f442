"""AMC: the gymnasium environment, its action wall, the DDPG agent, and the ``amc`` strategy's resume and workers.

The strategy's contract shared with every strategy (budget, SIGKILL resume with nothing lost, two workers)
is in test_strategies.py; here is what is particular to an agent that learns across trials.
"""

from __future__ import annotations

import math

import gymnasium
import numpy as np
import optuna
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from helpers import kill_mid_trial, run_search, start_search
from optuna.trial import TrialState
from torch import nn

import autoprune as ap
from autoprune.agents import AMCEnv, DDPGAgent, LayerWalk
from autoprune.agents.amc import AGENT
from autoprune.agents.ddpg import truncated_normal
from autoprune.engine.latency import LatencyTable
from autoprune.search import Projector, SearchContext, get_strategy
from autoprune.search.artifacts import artifact_store, load_state
from autoprune.search.ledger import make_storage
from autoprune.utils import seeded_generator

X = torch.zeros(1, 1, 8, 8)
BUDGET = ap.Budget(macs=0.6)  # what tests/scripts/search_digits.py searches under


@pytest.fixture(scope="module")
def space() -> ap.PruningSpace:
    torch.manual_seed(0)  # the model tests/scripts/search_digits.py searches
    model = ap.zoo.resnet20(in_channels=1, stage_widths=(8, 16, 32)).eval()
    return ap.PruningSpace(model, X)


def measuring(space: ap.PruningSpace, limits: dict[str, float], seen: list) -> callable:
    """An evaluator that records the pruned network's measured MACs and parameters and fails one over a limit."""

    def evaluate(model: nn.Module) -> float:
        macs, params = ap.count_macs(model, X), ap.count_params(model)
        seen.append((macs, params))
        assert macs <= limits.get("macs", math.inf) and params <= limits.get("params", math.inf)
        return 1.0 - macs / space.macs({})

    return evaluate


def test_the_environment_is_registered_and_passes_the_gymnasium_checker(space):
    env = gymnasium.make("autoprune/AMC-v0", space=space, evaluator=lambda m: 0.5, budget=BUDGET)
    assert isinstance(env.unwrapped, AMCEnv)
    check_env(env.unwrapped, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (10,) and obs.dtype == np.float32 and env.observation_space.contains(obs)
    paper = AMCEnv(space, lambda m: 0.5, BUDGET, state="paper")
    assert paper.observation_space.shape == (11,)
    check_env(paper, skip_render_check=True)


def test_the_environment_scores_each_episode_reconstructed_when_asked(space):
    x = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    batches = [x[:32], x[32:]]

    def score(model: nn.Module) -> float:
        with torch.no_grad():
            return float(model.eval()(x).square().mean())

    env = AMCEnv(space, score, BUDGET, reconstruct=batches)
    env.reset(seed=0)
    done, info = False, {}
    while not done:
        _, _, done, _, info = env.step(np.array([0.5], dtype=np.float32))
    assert info["score"] == score(space.apply(info["plan"], reconstruct=batches))
    assert info["score"] != score(space.apply(info["plan"]))


@pytest.mark.parametrize("budget", [ap.Budget(macs=0.5), ap.Budget(params=0.4), ap.Budget(macs=0.7, params=0.5)])
def test_every_episode_of_a_random_policy_meets_the_budget(space, budget):
    limits = budget.targets(space)
    seen: list = []
    env = AMCEnv(space, measuring(space, limits, seen), budget)
    env.action_space.seed(0)
    steps = 0
    for _ in range(25):
        env.reset()
        done = False
        while not done:
            _, r, done, _, info = env.step(env.action_space.sample())
            steps += 1
        assert set(info) >= {"plan", "macs", "params", "score", "kept"} and r == info["score"]
        assert info["macs"] == space.macs(info["plan"]) and info["params"] == space.params(info["plan"])
    assert len(seen) == 25 and steps == 25 * len(space.groups)  # one step per group, one evaluation per episode


def test_every_episode_meets_a_latency_budget_by_the_table(space):
    table = LatencyTable.build(space, min_run_time=0.002)
    walk = LayerWalk(space, Projector(space, None), lbound=0.2)
    walled = walk._plan_at([c[0] for c in walk.counts])  # every group at its minimum, lbound = 0.2
    smallest = {g.name: 0.95 for g in space.groups}  # what the projector checks; timings need not be monotone
    full = table.predict({})
    fraction = (max(table.predict(walled), table.predict(smallest)) + full) / 2 / full  # reachable, always
    limit = fraction * full
    env = AMCEnv(space, lambda m: 0.5, ap.Budget(latency=fraction), latency_table=table)
    env.action_space.seed(1)
    for _ in range(15):
        env.reset()
        done = False
        while not done:
            _, _, done, _, info = env.step(env.action_space.sample())
        assert info["latency_ms"] <= limit and info["latency_ms"] == table.predict(info["plan"])


def test_the_wall_holds_a_budget_only_just_reachable(space):
    walk = LayerWalk(space, Projector(space, None), lbound=0.2)
    smallest = walk._plan_at([c[0] for c in walk.counts])
    exact = ap.Budget(macs=space.macs(smallest))  # an absolute count: the smallest network the wall allows
    env = AMCEnv(space, lambda m: 0.5, exact)
    for action in (1.0, 0.2, 0.6):
        env.reset()
        done = False
        while not done:
            _, _, done, _, info = env.step(np.array([action], dtype=np.float32))
        assert info["plan"] == smallest  # the only network under the budget, whatever the agent asks
    with pytest.raises(ValueError, match="action wall cannot meet the macs budget.*Lower lbound"):
        AMCEnv(space, lambda m: 0.5, ap.Budget(macs=space.macs(smallest) - 1))


def test_the_wall_caps_an_action_and_feeds_back_the_effective_one(space):
    env = AMCEnv(space, lambda m: 0.5, ap.Budget(macs=0.3))
    obs, _ = env.reset()
    assert obs[-1] == 1.0 and obs[-3] > 0  # no action yet; the later groups at their minimum already reduce
    kept = []
    done = False
    while not done:
        obs, _, done, _, info = env.step(np.array([1.0], dtype=np.float32))  # ask for every channel
        kept.append(env.walk.actions[-1])
        if not done:
            assert obs[-1] == pytest.approx(kept[-1])  # the previous *effective* action
    assert kept[0] == 1.0 and min(kept) < 1.0  # greedy at first, until the wall bites
    assert info["macs"] <= ap.Budget(macs=0.3).targets(space)["macs"]


def test_reward_options(space):
    env = AMCEnv(space, lambda m: 0.75, None, reward="acc_flops")
    env.reset()
    done = False
    while not done:
        _, r, done, _, info = env.step(np.array([1.0], dtype=np.float32))
    assert info["macs"] == space.macs({})  # no budget, no wall
    assert r == pytest.approx(-(1 - 0.75) * math.log(space.macs({})))


def test_bad_input_is_refused_before_anything_runs(space, tmp_path):
    with pytest.raises(ValueError, match=r"lbound .* must be in \(0, 1\]"):
        AMCEnv(space, lambda m: 0.5, BUDGET, lbound=0.0)
    with pytest.raises(ValueError, match=r"lbound .* must be in \(0, 1\]"):
        get_strategy("amc", lbound=1.5)
    with pytest.raises(ValueError, match="reward 'acc' needs a budget"):
        AMCEnv(space, lambda m: 0.5, None)
    with pytest.raises(ValueError, match="reward must be one of"):
        get_strategy("amc", reward="accuracy")
    with pytest.raises(ValueError, match="unknown AMC options"):
        get_strategy("amc", learning_rate=0.1)
    one = ap.PruningSpace(nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)), X)
    assert len(one.groups) == 1
    with pytest.raises(ValueError, match="this space has 1"):
        AMCEnv(one, lambda m: 0.5, BUDGET)
    walk = LayerWalk(space, Projector(space, None), lbound=0.2)
    walled = space.macs(walk._plan_at([c[0] for c in walk.counts]))
    between = ap.Budget(macs=(walled + space.macs({g.name: 0.95 for g in space.groups})) // 2)
    with pytest.raises(ValueError, match="action wall cannot meet"):  # reachable at max_sparsity, not at lbound
        ap.search(space, lambda m: 0.5, between, strategy="amc", n_trials=2, storage=f"sqlite:///{tmp_path / 'b.db'}")


# -- the agent -----------------------------------------------------------------------------------------
def test_truncated_noise_stays_in_bounds_and_has_the_truncated_mean():
    g = torch.Generator().manual_seed(0)
    x = truncated_normal(torch.full((20000,), 0.9), 0.5, 0.0, 1.0, g)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    a, b = (0 - 0.9) / 0.5, (1 - 0.9) / 0.5  # the mean of a truncated normal: mu + sigma (phi(a) - phi(b)) / Z
    phi = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    cdf = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
    expected = 0.9 + 0.5 * (phi(a) - phi(b)) / (cdf(b) - cdf(a))
    assert float(x.mean()) == pytest.approx(expected, abs=0.01)
    far = truncated_normal(torch.tensor([3.0, -2.0]), 1e-6, 0.0, 1.0, g)  # no probability mass inside at all
    assert far.tolist() == [1.0, 0.0]


def test_one_ddpg_update_follows_the_reference_math():
    torch.manual_seed(0)
    agent = DDPGAgent(3, 50, warmup=0, hidden=8, batch_size=4, tau=0.1, seed=1)
    states = [torch.rand(3).tolist() for _ in range(5)]
    agent.learn(0, states[:2], [0.3], 0.8)  # one transition, one update
    assert agent.baseline == pytest.approx(0.8) and agent.updates == 1
    before = {n: {k: v.clone() for k, v in getattr(agent, n).state_dict().items()} for n in ("actor", "critic")}
    targets = {
        n: {k: v.clone() for k, v in getattr(agent, n).state_dict().items()} for n in ("actor_target", "critic_target")
    }
    memory_before = len(agent.memory)
    s, a, r, s1, done = (t.clone() for t in agent.memory.sample(4, torch.Generator().manual_seed(5)))

    # the same update by hand, on the minibatch the agent will draw (same generator seed)
    critic = type(agent.critic)(3, 8)
    critic.load_state_dict(before["critic"])
    baseline = 0.8 + 0.5 * (0.8 - 0.8)  # every stored reward is 0.8
    with torch.no_grad():
        y = (r - baseline) + 1.0 * (1 - done) * agent.critic_target(s1, agent.actor_target(s1))
    expected_loss = float(((critic(s, a) - y) ** 2).mean().detach())
    out = agent.update(torch.Generator().manual_seed(5))
    assert out["value_loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert out["baseline"] == pytest.approx(baseline) and len(agent.memory) == memory_before
    for net in ("actor", "critic"):  # soft target update: target <- (1 - tau) target + tau net
        new, old_t = getattr(agent, net).state_dict(), targets[f"{net}_target"]
        for k, v in getattr(agent, f"{net}_target").state_dict().items():
            assert torch.allclose(v, 0.9 * old_t[k] + 0.1 * new[k], atol=1e-6)
            assert not torch.equal(new[k], before[net][k])  # both networks moved


def test_the_baseline_is_a_moving_average_of_batch_rewards():
    agent = DDPGAgent(2, 10, warmup=0, hidden=4, batch_size=10, seed=0)
    agent.learn(0, [[0, 0], [1, 1]], [0.5], 1.0)
    assert agent.baseline == pytest.approx(1.0)
    agent.learn(1, [[0, 0], [1, 1]], [0.5], 0.0)  # memory now holds rewards 1 and 0; the batch samples with replacement
    drawn = agent.memory.rewards[torch.randint(2, (10,), generator=seeded_generator(0, "learn", 1))]  # the same draw
    assert agent.baseline == pytest.approx(1.0 + 0.5 * (float(drawn.mean()) - 1.0))


def test_warm_up_acts_uniformly_then_the_actor_with_decaying_noise():
    agent = DDPGAgent(4, 10, warmup=3, seed=0)
    warm = [agent.act([0.1] * 4, e, 0) for e in range(3)]
    assert len(set(warm)) == 3 and all(0 <= a <= 1 for a in warm)
    assert agent.act([0.1] * 4, 5, 2) == agent.act([0.1] * 4, 5, 2)  # seeded by (seed, episode, step)
    assert agent.sigma(3) == 0.5 and agent.sigma(13) == pytest.approx(0.5 * 0.95**10)
    late = [agent.act([0.1] * 4, 400, t) for t in range(5)]  # sigma ~ 1e-9: the actor's own output
    assert late == pytest.approx([agent.policy([0.1] * 4)] * 5, abs=1e-6)
    agent.learn(0, [[0.0] * 4] * 3, [0.5, 0.5], 1.0)  # a warm-up episode: stored, no update
    assert len(agent.memory) == 2 and agent.updates == 0


def test_agent_state_round_trips_exactly():
    agent = DDPGAgent(3, 20, warmup=0, hidden=8, batch_size=4, seed=2)
    for e in range(4):
        agent.learn(e, [[e, 0.5, 1.0]] * 4, [0.2, 0.4, 0.6], 0.1 * e)
    fresh = DDPGAgent(3, 20, warmup=0, hidden=8, batch_size=4, seed=2)
    copy = DDPGAgent(3, 20, warmup=0, hidden=8, batch_size=4, seed=2)
    copy.load_state_dict(agent.state_dict())
    for a in (agent, copy, fresh):
        a.learn(4, [[1.0, 1.0, 1.0]] * 2, [0.9], 0.7)
    assert _same_agent(agent, copy) and not _same_agent(agent, fresh)


def _same_agent(a: DDPGAgent, b: DDPGAgent) -> bool:
    def flat(state):  # noqa: ANN001, ANN202
        if isinstance(state, dict):
            return [x for k in sorted(state, key=str) for x in flat(state[k])]
        if isinstance(state, (list, tuple)):
            return [x for v in state for x in flat(v)]
        return [state]

    xs, ys = flat(a.state_dict()), flat(b.state_dict())
    return len(xs) == len(ys) and all(
        torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y for x, y in zip(xs, ys)
    )


# -- the strategy ---------------------------------------------------------------------------------------
N_TRIALS = 7  # warm-up: a quarter of them (1 episode), so the actor acts and learns in the rest


def _study(url: str) -> optuna.Study:
    return optuna.load_study(study_name="digits", storage=make_storage(url, "digits", create=False))


def _agent_of(space: ap.PruningSpace, url: str):  # noqa: ANN202
    """The agent a new worker on the study would act with, and the strategy that holds it."""
    strat = get_strategy("amc")
    ctx = SearchContext(space, Projector(space, BUDGET), _study(url), 0, 0.95, n_trials=N_TRIALS)
    return strat, strat.agent(ctx)


def _episodes(url: str) -> dict[int, tuple]:
    return {
        t.user_attrs["amc"]["episode"]: (t.user_attrs["plan"], t.user_attrs["amc"]["actions"], t.values)
        for t in _study(url).trials
        if t.state == TrialState.COMPLETE
    }


def test_a_killed_amc_search_resumes_with_the_same_agent_and_actions(tmp_path, space):
    whole, killed = f"sqlite:///{tmp_path / 'whole.db'}", f"sqlite:///{tmp_path / 'killed.db'}"
    run_search(whole, N_TRIALS, strategy="amc")
    kill_mid_trial(killed, N_TRIALS, 1.5, "amc", completed=3)  # the actor acts from episode 1 on
    assert _study(killed).user_attrs[AGENT]  # the agent was saved in the study before the kill
    run_search(killed, N_TRIALS, strategy="amc")

    assert _episodes(killed) == _episodes(whole)  # every episode: the same actions, plan and score
    (s1, a1), (s2, a2) = _agent_of(space, whole), _agent_of(space, killed)
    assert s1.learned() == s2.learned() == list(range(N_TRIALS))
    assert _same_agent(a1, a2)


def test_two_amc_workers_learn_every_episode_exactly_once(tmp_path, space):
    url = f"journal:{tmp_path / 'w.journal'}"
    config = ap.SearchConfig(budget=BUDGET, strategy="amc", n_trials=N_TRIALS, storage=url, study_name="digits", seed=0)
    ap.create_study(space, config=config)
    workers = [start_search(url, N_TRIALS, strategy="amc", mode="join") for _ in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=600)
        assert w.returncode == 0, err[-3000:]
    trials = _study(url).trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    episodes = sorted(t.user_attrs["amc"]["episode"] for t in complete)
    assert episodes == list(range(N_TRIALS))  # one trial per episode, none twice
    limit = BUDGET.targets(space)["macs"]
    assert all(t.user_attrs["macs"] <= limit for t in complete)
    # whoever saved the newest agent learned a prefix of the episodes, in order, each once
    store = artifact_store(_study(url))
    saved = load_state(store, _study(url).user_attrs[AGENT][0]["artifact"])
    assert saved["learned"] == list(range(len(saved["learned"])))
    strat, _ = _agent_of(space, url)
    assert strat.learned() == list(range(N_TRIALS))


def test_a_failing_evaluation_fails_its_episode_and_the_agent_skips_it(tmp_path, space):
    calls = []

    def sometimes_nan(model: nn.Module) -> float:
        calls.append(1)
        return float("nan") if len(calls) == 3 else 0.5

    url = f"sqlite:///{tmp_path / 'nan.db'}"
    study = ap.search(
        space, sometimes_nan, BUDGET, strategy="amc", n_trials=6, storage=url, study_name="digits", seed=0
    )
    states = [t.state for t in study.trials]
    assert states.count(TrialState.FAIL) == 1 and states.count(TrialState.COMPLETE) == 5
    failed = next(t for t in study.trials if t.state == TrialState.FAIL)
    assert "finite" in failed.user_attrs["error"]
    strat = get_strategy("amc")
    agent = strat.agent(SearchContext(space, Projector(space, BUDGET), study, 0, 0.95, n_trials=6))
    assert failed.user_attrs["amc"]["episode"] not in strat.learned() and len(strat.learned()) == 5
    assert len(agent.memory) == 5 * len(space.groups)


def test_a_standard_agent_trains_on_the_environment(space):
    """Bring your own agent: stable-baselines3's TD3 on AMCEnv; every finished episode meets the budget."""
    from stable_baselines3 import TD3

    limits = ap.Budget(macs=0.5).targets(space)
    seen: list = []
    env = AMCEnv(space, measuring(space, limits, seen), ap.Budget(macs=0.5))
    agent = TD3("MlpPolicy", env, learning_starts=48, seed=0, device="cpu")
    agent.learn(total_timesteps=240)
    assert len(seen) == 240 // len(space.groups)  # every episode finished and was measured under the budget
    assert all(macs <= limits["macs"] for macs, _ in seen)
