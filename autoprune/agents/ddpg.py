"""AMC's DDPG agent, in plain torch, as the reference code trains it (mit-han-lab/amc, ``lib/agent.py``).

- Actor ``Linear(S, 300) - ReLU - Linear(300, 300) - ReLU - Linear(300, 1) - Sigmoid``;
  critic ``ReLU(W_s s + W_a a) - Linear(300, 300) - ReLU - Linear(300, 1)`` (the action
  joins at the first hidden layer, as in the code); PyTorch's default initialisation.
- Adam, learning rates 1e-4 (actor) and 1e-3 (critic); critic loss MSE against
  ``y = (R - b) + discount * (1 - done) * Q'(s', mu'(s'))`` with discount 1; actor loss
  ``-mean Q(s, mu(s))``; soft target updates with tau 0.01; batch 64.
- Every transition of an episode is stored with the episode's final reward ``R``;
  ``b`` is a moving average of the sampled rewards, ``b += 0.5 (mean(R_batch) - b)``
  at each update (initialised to the first batch's mean).
- One update per transition once the warm-up episodes are over; warm-up episodes
  act uniformly at random in [0, 1]; later ones sample a normal around the actor's
  output truncated to [0, 1], with sigma ``0.5 * 0.95 ** (episode - warmup)``.
- Replay memory: a ring buffer of ``100 x layers`` transitions by default (the
  paper says 2000).

The reference keeps its transitions in keras-rl's ``SequentialMemory``, which
rebuilds ``s'`` as the next stored observation and needs one filler transition
after each episode so that the next episode's first step can be sampled; storing
``(s, a, R, s', done)`` explicitly gives the same transitions without the filler.

Randomness comes from generators seeded by ``(seed, episode)``, not from a
running global state: the episode's actions and its updates are the same
whichever process runs them, so a resumed or a shared search learns exactly
what an uninterrupted one does, and an agent's state is its networks, optimisers,
memory and baseline (:meth:`DDPGAgent.state_dict`).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..utils import seeded_generator


def truncated_normal(
    mean: torch.Tensor, sigma: float, low: float, high: float, generator: torch.Generator
) -> torch.Tensor:
    """Samples of a normal around ``mean`` with standard deviation ``sigma`` truncated to ``[low, high]``
    (inverse-CDF sampling in float64; the clipped mean where the interval holds no probability at all)."""
    mu = mean.double()
    a = torch.special.ndtr((low - mu) / sigma)
    b = torch.special.ndtr((high - mu) / sigma)
    u = a + (b - a) * torch.rand(mu.shape, generator=generator, dtype=torch.float64)
    x = mu + sigma * torch.special.ndtri(u.clamp(1e-300, 1 - 1e-16))
    x = torch.where((b - a) > 1e-12, x, mu)
    return x.clamp(low, high).to(mean.dtype)


def _adam(net: nn.Module, lr: float) -> torch.optim.Adam:
    """Adam; the fused kernel (the same algorithm, several times faster on these small networks) where torch has it
    for the CPU."""
    try:
        return torch.optim.Adam(net.parameters(), lr=lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(net.parameters(), lr=lr)


class Actor(nn.Module):
    def __init__(self, n_states: int, hidden: int = 300) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_states, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(state))


class Critic(nn.Module):
    def __init__(self, n_states: int, hidden: int = 300) -> None:
        super().__init__()
        self.state_in = nn.Linear(n_states, hidden)
        self.action_in = nn.Linear(1, hidden)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.head(self.state_in(state) + self.action_in(action))


class ReplayMemory:
    """A ring buffer of ``(s, a, R, s', done)`` transitions."""

    def __init__(self, size: int, n_states: int) -> None:
        self.size = size
        self.states = torch.zeros(size, n_states)
        self.next_states = torch.zeros(size, n_states)
        self.actions = torch.zeros(size, 1)
        self.rewards = torch.zeros(size, 1)
        self.dones = torch.zeros(size, 1)
        self.count = 0  # transitions ever stored

    def __len__(self) -> int:
        return min(self.count, self.size)

    def append(self, state: Any, action: float, reward: float, next_state: Any, done: bool) -> None:
        i = self.count % self.size
        self.states[i] = torch.as_tensor(state, dtype=torch.float32)
        self.next_states[i] = torch.as_tensor(next_state, dtype=torch.float32)
        self.actions[i, 0], self.rewards[i, 0], self.dones[i, 0] = float(action), float(reward), float(done)
        self.count += 1

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """A minibatch: without replacement when the memory holds enough, else with replacement (as keras-rl)."""
        n = len(self)
        if n >= batch_size:
            idx = torch.randperm(n, generator=generator)[:batch_size]
        else:
            idx = torch.randint(n, (batch_size,), generator=generator)
        return self.states[idx], self.actions[idx], self.rewards[idx], self.next_states[idx], self.dones[idx]

    def state_dict(self) -> dict[str, Any]:
        n = len(self)
        return {
            "size": self.size,
            "count": self.count,
            **{k: getattr(self, k)[:n].clone() for k in ("states", "next_states", "actions", "rewards", "dones")},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["size"] != self.size:
            raise ValueError(f"replay memory of {state['size']} transitions, this agent holds {self.size}")
        n = min(state["count"], self.size)
        for k in ("states", "next_states", "actions", "rewards", "dones"):
            getattr(self, k)[:n] = state[k]
        self.count = state["count"]


class DDPGAgent:
    """AMC's DDPG agent (see the module docstring); ``act`` proposes a keep ratio, ``learn`` takes an episode.

    Args:
        n_states: the observation's length.
        memory_size: replay memory size (the reference: ``100 x`` the number of layers).
        warmup: episodes of uniform random actions before the agent learns.
        seed: seeds the networks' initialisation and every episode's randomness.
    """

    def __init__(
        self,
        n_states: int,
        memory_size: int,
        *,
        warmup: int = 100,
        hidden: int = 300,
        lr_actor: float = 1e-4,
        lr_critic: float = 1e-3,
        tau: float = 0.01,
        batch_size: int = 64,
        discount: float = 1.0,
        init_delta: float = 0.5,
        delta_decay: float = 0.95,
        seed: int = 0,
    ) -> None:
        for name, value, ok in (
            ("memory_size", memory_size, isinstance(memory_size, int) and memory_size >= 1),
            ("warmup", warmup, isinstance(warmup, int) and warmup >= 0),
            ("batch_size", batch_size, isinstance(batch_size, int) and batch_size >= 1),
            ("tau", tau, 0 < tau <= 1),
            ("init_delta", init_delta, init_delta > 0),
            ("delta_decay", delta_decay, 0 < delta_decay <= 1),
            ("discount", discount, 0 <= discount <= 1),
        ):
            if isinstance(value, bool) or not ok:
                raise ValueError(f"DDPG option {name}={value!r} is out of range")
        self.n_states, self.warmup, self.tau, self.batch_size = n_states, warmup, tau, batch_size
        self.discount, self.init_delta, self.delta_decay, self.seed = discount, init_delta, delta_decay, seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.actor, self.critic = Actor(n_states, hidden), Critic(n_states, hidden)
        self.actor_target, self.critic_target = copy.deepcopy(self.actor), copy.deepcopy(self.critic)
        self.actor_optim = _adam(self.actor, lr_actor)
        self.critic_optim = _adam(self.critic, lr_critic)
        self.memory = ReplayMemory(memory_size, n_states)
        self.baseline: float | None = None
        self.updates = 0

    # -- acting ------------------------------------------------------------------------------------
    def sigma(self, episode: int) -> float:
        """The exploration noise of ``episode`` (after the warm-up)."""
        return self.init_delta * self.delta_decay ** (episode - self.warmup)

    def act(self, state: Any, episode: int, step: int) -> float:
        """The agent's action (a keep ratio in [0, 1]) in ``state`` at ``step`` of ``episode``: uniform during the
        warm-up, then the actor's output with truncated-normal exploration noise."""
        g = seeded_generator(self.seed, "act", episode, step)
        if episode < self.warmup:
            return float(torch.rand((), generator=g, dtype=torch.float64))
        with torch.no_grad():
            mu = self.actor(torch.as_tensor(state, dtype=torch.float32).reshape(1, -1))[0, 0]
        return float(truncated_normal(mu, self.sigma(episode), 0.0, 1.0, g))

    def policy(self, state: Any) -> float:
        """The actor's action in ``state``, without noise."""
        with torch.no_grad():
            return float(self.actor(torch.as_tensor(state, dtype=torch.float32).reshape(1, -1))[0, 0])

    # -- learning ----------------------------------------------------------------------------------
    def learn(self, episode: int, states: list[Any], actions: list[float], final_reward: float) -> list[dict]:
        """Store every transition of ``episode`` with its final reward and, after the warm-up, make one update per
        transition (as the reference's training loop). ``states`` has one observation per step plus the last one.
        Returns each update's losses."""
        if len(states) != len(actions) + 1:
            raise ValueError(f"an episode of {len(actions)} actions needs {len(actions) + 1} observations")
        g = seeded_generator(self.seed, "learn", episode)
        losses = []
        for t, a in enumerate(actions):
            self.memory.append(states[t], a, final_reward, states[t + 1], t == len(actions) - 1)
            if episode >= self.warmup:
                losses.append(self.update(g))
        return losses

    def update(self, generator: torch.Generator) -> dict[str, float]:
        """One DDPG update on a minibatch from the memory."""
        s, a, r, s1, done = self.memory.sample(self.batch_size, generator)
        mean = float(r.mean())
        self.baseline = mean if self.baseline is None else self.baseline + 0.5 * (mean - self.baseline)
        with torch.no_grad():
            target = (r - self.baseline) + self.discount * (1.0 - done) * self.critic_target(s1, self.actor_target(s1))
        value_loss = nn.functional.mse_loss(self.critic(s, a), target)
        self.critic_optim.zero_grad()
        value_loss.backward()
        self.critic_optim.step()
        policy_loss = -self.critic(s, self.actor(s)).mean()
        self.actor_optim.zero_grad()
        policy_loss.backward()
        self.actor_optim.step()
        with torch.no_grad():
            for target_net, net in ((self.actor_target, self.actor), (self.critic_target, self.critic)):
                targets, sources = list(target_net.parameters()), list(net.parameters())
                torch._foreach_mul_(targets, 1.0 - self.tau)
                torch._foreach_add_(targets, sources, alpha=self.tau)
        self.updates += 1
        return {"value_loss": value_loss.item(), "policy_loss": policy_loss.item(), "baseline": self.baseline}

    # -- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything the agent has learned: networks, targets, optimisers, memory, baseline, update count."""
        return {
            "n_states": self.n_states,
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "actor_target": self.actor_target.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "actor_optim": self.actor_optim.state_dict(),
            "critic_optim": self.critic_optim.state_dict(),
            "memory": self.memory.state_dict(),
            "baseline": self.baseline,
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["n_states"] != self.n_states:
            raise ValueError(f"agent state for {state['n_states']} features, this agent observes {self.n_states}")
        for name in ("actor", "critic", "actor_target", "critic_target", "actor_optim", "critic_optim"):
            getattr(self, name).load_state_dict(copy.deepcopy(state[name]))  # an optimiser would share the tensors
        self.memory.load_state_dict(state["memory"])
        self.baseline, self.updates = state["baseline"], state["updates"]
