"""The ``amc`` search strategy: AMC's DDPG agent (He et al., ECCV 2018) walking the channel groups, one episode
per trial.

Each trial is one episode: the agent takes one keep ratio per group
(:class:`~autoprune.agents.env.LayerWalk`: the reference's state embedding, its
action wall, so every episode meets the budget), the plan is evaluated as any
other trial, and the trial's score gives the episode's reward. The trial records
the episode (``amc``: its index, the agent's actions, the observations, the
effective keep ratios and how many episodes the acting agent had taken in).

**State in the study.** The agent learns episodes in episode order, each
exactly once, with randomness seeded by the search's seed and the episode
(:mod:`~autoprune.agents.ddpg`), so the agent after episode ``k`` is the same
whoever computed it. After learning, a worker saves the agent (networks,
optimisers, replay memory, baseline, the episodes learned) in the study's
artifact store (the two newest are kept) and points the study's ``amc_agent``
attribute at it; a resumed run or a new worker loads the newest and learns the
episodes since. A SIGKILLed search therefore resumes at the next episode with
the same agent, and takes the same actions as an uninterrupted run would.

**Several workers.** Before enqueueing episode ``n``, a worker learns every
finished episode up to the first one still running; episodes then run in
parallel, each acting with the agent that had learned all episodes finished
before it started (with ``w`` workers, up to ``w - 1`` of the latest episodes may
not be learned yet: the staleness of asynchronous DDPG). Learning order is the
episode order, never the order in which workers finish, so every worker holds
the same agent. An episode whose evaluation failed is skipped (the agent does
not learn from it); an episode whose worker died is retried with the same
actions by the runner, and learned once, from the retry.

**Warm-up**: ``warmup`` episodes of uniform random actions (default: the
reference's 100 when the search has at least 400 trials, else a quarter of its
trials, as NNI does); the first episode records the value, so a resumed search
with another ``n_trials`` keeps it.
"""

from __future__ import annotations

import uuid
from typing import Any

import optuna
from optuna.trial import TrialState

from ..search import attrs
from ..search.artifacts import artifact_store, load_state, remove, save_state
from ..search.ledger import counted
from ..search.queue import enqueue_batch
from ..search.strategy import Action, SearchContext, Strategy
from .ddpg import DDPGAgent
from .env import LayerWalk, check_budget, check_options
from .env import reward as episode_reward

TAG = "amc"  # a trial's episode: {"episode", "actions", "states", "keep", "learned", "warmup"}
AGENT = "amc_agent"  # the study's saved agents, newest first: [{"position", "artifact"}]
KEEP_SAVED = 2


class AMC(Strategy):
    """AMC: a DDPG agent chooses each group's keep ratio, one episode per trial (see the module docstring).

    Args:
        warmup: episodes of random actions before the agent learns (default: see the module docstring).
        lbound: the smallest keep ratio of a group (the reference's 0.2).
        reward: ``"acc"`` (the score; needs a budget), ``"acc_flops"`` or ``"acc_params"``
            (``-(1 - score) * log(cost)``, the paper's accuracy-guaranteed search).
        state: ``"code"`` (the reference code's 10 features) or ``"paper"`` (the paper's 11).
        memory_size: replay memory in transitions (default ``100 x`` the number of groups, as the code;
            the paper uses 2000).
        delta_decay: the exploration noise's decay per episode (0.95; NNI uses 0.99).
        artifact_dir: where the agent is saved (default: next to the study's file); with workers on several
            machines, a folder they all share.
        **ddpg: the agent's other hyper-parameters (``hidden``, ``lr_actor``, ``lr_critic``, ``tau``,
            ``batch_size``, ``discount``, ``init_delta``), see :class:`~autoprune.agents.ddpg.DDPGAgent`.
    """

    name = "amc"
    projects = False  # the action wall meets the budget; a projection would change the agent's actions
    queued_only = True

    def __init__(
        self,
        warmup: int | None = None,
        lbound: float = 0.2,
        reward: str = "acc",
        state: str = "code",
        memory_size: int | None = None,
        delta_decay: float = 0.95,
        artifact_dir: str | None = None,
        **ddpg: Any,
    ) -> None:
        check_options(lbound, reward, state)
        if warmup is not None and (isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0):
            raise ValueError(f"warmup must be a number of episodes >= 0, got {warmup!r}")
        allowed = {"hidden", "lr_actor", "lr_critic", "tau", "batch_size", "discount", "init_delta"}
        if set(ddpg) - allowed:
            raise ValueError(f"unknown AMC options {sorted(set(ddpg) - allowed)}; the agent takes {sorted(allowed)}")
        self.warmup, self.lbound, self.reward, self.state = warmup, lbound, reward, state
        self.memory_size, self.delta_decay, self.artifact_dir, self.ddpg = memory_size, delta_decay, artifact_dir, ddpg
        self._walk: LayerWalk | None = None
        self._agent: DDPGAgent | None = None
        self._position = 0  # the next episode the agent has to consider learning
        self._learned: list[int] = []

    def sampler(self, ctx: SearchContext) -> optuna.samplers.BaseSampler:
        return optuna.samplers.RandomSampler(seed=ctx.seed)  # never asked: every episode is enqueued

    def setup(self, ctx: SearchContext) -> None:
        check_budget(self.reward, ctx.projector.budget)
        self.walk(ctx)

    def walk(self, ctx: SearchContext) -> LayerWalk:
        """The episode's bookkeeping over the search's space and budget (raises if the wall cannot meet it)."""
        if self._walk is None or self._walk.projector is not ctx.projector:
            self._walk = LayerWalk(ctx.space, ctx.projector, self.lbound, self.state)
        return self._walk

    # -- the agent, re-derived from the study --------------------------------------------------------
    def _episodes(self, trials: list[optuna.trial.FrozenTrial]) -> dict[int, list[optuna.trial.FrozenTrial]]:
        out: dict[int, list[optuna.trial.FrozenTrial]] = {}
        for t in trials:
            if TAG in t.user_attrs and not t.user_attrs.get(attrs.DISCARDED):
                out.setdefault(int(t.user_attrs[TAG]["episode"]), []).append(t)
        return out

    def _warmup(self, ctx: SearchContext, episodes: dict[int, list]) -> int:
        if episodes:
            return int(episodes[min(episodes)][0].user_attrs[TAG]["warmup"])
        if self.warmup is not None:
            return self.warmup
        n = ctx.n_trials
        return 100 if n is None or n >= 400 else n // 4

    def agent(self, ctx: SearchContext, trials: list[optuna.trial.FrozenTrial] | None = None) -> DDPGAgent:
        """The agent after learning every finished episode up to the first unfinished one (loading the newest
        saved agent first, in a new process)."""
        trials = ctx.study.get_trials(deepcopy=False) if trials is None else trials
        episodes = self._episodes(trials)
        if self._agent is None:
            self._agent = self._new_agent(ctx, self._warmup(ctx, episodes))
            self._load(ctx)
        agent = self._agent
        end = max(episodes, default=-1) + 1
        while self._position < end:
            status, trial = _status(episodes.get(self._position, []))
            if status == "pending":
                break
            if status == "complete":
                episode = trial.user_attrs[TAG]
                costs = trial.user_attrs[attrs.MACS], trial.user_attrs[attrs.PARAMS]
                r = episode_reward(self.reward, trial.values[0], *costs)
                agent.learn(self._position, episode["states"], episode["actions"], r)
                self._learned.append(self._position)
            self._position += 1
        return agent

    def learned(self) -> list[int]:
        """The episodes the agent has learned from, in the order it did."""
        return list(self._learned)

    def _new_agent(self, ctx: SearchContext, warmup: int) -> DDPGAgent:
        walk = self.walk(ctx)
        size = self.memory_size or 100 * len(walk.groups)
        return DDPGAgent(
            walk.n_features, size, warmup=warmup, delta_decay=self.delta_decay, seed=ctx.base_seed, **self.ddpg
        )

    def _store(self, ctx: SearchContext):  # noqa: ANN202
        return artifact_store(ctx.study, self.artifact_dir)

    def _load(self, ctx: SearchContext) -> None:
        store = self._store(ctx)
        for saved in ctx.study.user_attrs.get(AGENT, []):
            state = load_state(store, saved["artifact"])
            if state is not None:
                self._agent.load_state_dict(state["agent"])
                self._position, self._learned = int(state["position"]), list(state["learned"])
                return

    def _save(self, ctx: SearchContext) -> None:
        """Save the agent if it has learned further than the newest saved one."""
        saved = ctx.study.user_attrs.get(AGENT, [])
        if saved and saved[0]["position"] >= self._position:
            return
        store = self._store(ctx)
        artifact = f"amc-agent-{self._position}-{uuid.uuid4().hex[:12]}.pt"
        state = {"agent": self._agent.state_dict(), "position": self._position, "learned": self._learned}
        save_state(store, artifact, state)
        saved = ctx.study.user_attrs.get(AGENT, [])  # again: another worker may have saved meanwhile
        if saved and saved[0]["position"] >= self._position:
            remove(store, artifact)
            return
        kept = [{"position": self._position, "artifact": artifact}, *saved][:KEEP_SAVED]
        ctx.study.set_user_attr(AGENT, kept)
        for old in saved[KEEP_SAVED - 1 :]:
            remove(store, old["artifact"])

    # -- proposing -------------------------------------------------------------------------------------
    def next_action(self, ctx: SearchContext) -> Action:
        """Evaluate a queued episode if there is one; else learn what has finished, save the agent, and enqueue
        the next episode."""
        trials = ctx.study.get_trials(deepcopy=False)
        if any(t.state == TrialState.WAITING and TAG in t.user_attrs for t in trials):
            return Action.ASK
        if ctx.n_trials is not None:
            if counted(trials) + sum(t.state == TrialState.RUNNING for t in trials) >= ctx.n_trials:
                return Action.WAIT  # the others' episodes fill the budget: enqueue nothing that will not run
        agent = self.agent(ctx, trials)
        self._save(ctx)
        episodes = self._episodes(trials)
        n = max(episodes, default=-1) + 1
        plan, record = self.episode(ctx, agent, n)
        record["warmup"] = agent.warmup
        phase = "warm-up" if n < agent.warmup else "learning"
        enqueue_batch(ctx, f"{TAG}:{n}", [(plan, {TAG: record, attrs.PHASE: phase})])
        return Action.ASK

    def episode(self, ctx: SearchContext, agent: DDPGAgent, n: int) -> tuple[dict[str, float], dict[str, Any]]:
        """Episode ``n`` of ``agent`` over the groups: the plan and what the trial records of it."""
        walk = self.walk(ctx)
        states = [walk.reset()]
        actions = []
        done = False
        while not done:
            a = agent.act(states[-1], n, len(actions))
            obs, done = walk.step(a)
            actions.append(a)
            states.append(obs)
        record = {
            "episode": n,
            "actions": actions,
            "states": [[float(x) for x in s] for s in states],
            "keep": list(walk.actions),
            "learned": self._position,
        }
        return walk.plan, record


def _status(trials: list[optuna.trial.FrozenTrial]) -> tuple[str, optuna.trial.FrozenTrial | None]:
    """An episode's state from its trials (the first, and retries of a dead worker's): ``complete`` (with the
    trial), ``pending`` (still to run, or a dead worker's not yet re-enqueued), or ``failed``."""
    for t in trials:
        if t.state == TrialState.COMPLETE:
            return "complete", t
    if any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials):
        return "pending", None
    retried = {t.user_attrs.get(attrs.RETRY_OF) for t in trials}
    if any(t.user_attrs.get(attrs.STALE) and t.number not in retried for t in trials):
        return "pending", None
    return "failed", None
