"""Training-aware methods (autoprune.training) in a hand-written training loop on real data (scikit-learn digits)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import autoprune as ap
from autoprune import training
from autoprune.studyfile import DataSpec


@pytest.fixture(scope="module")
def digits():
    splits = DataSpec(dataset="digits", val_size=200).splits()
    return splits.train.tensors, splits.val.tensors


def small_space() -> ap.PruningSpace:
    torch.manual_seed(0)
    model = ap.zoo.resnet20(in_channels=1, stage_widths=(8, 16, 32))
    return ap.PruningSpace(model, torch.zeros(1, 1, 8, 8))


def a_plan(space: ap.PruningSpace) -> dict[str, float]:
    return {g.name: 0.25 + 0.5 * (i % 2) for i, g in enumerate(space.groups)}


def user_loop(
    method: training.Method,
    data,
    steps: int,
    lr: float = 0.05,
    check: Callable[[int, str, torch.optim.Optimizer], None] | None = None,
) -> torch.optim.Optimizer:
    """A plain loop of the user's own: the method's two hooks around the optimiser step. ``check(step, when,
    optimizer)`` is called after the optimiser's step (``when="stepped"``) and after the method's ``after_step``
    (``"hooked"``)."""
    x, y = data
    model = method.model
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for step in range(steps):
        idx = torch.randint(len(x), (32,), generator=generator)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        method.before_step(model, optimizer)
        optimizer.step()
        if check:
            check(step, "stepped", optimizer)
        method.after_step(model, optimizer)
        if check:
            check(step, "hooked", optimizer)
    return optimizer


def test_agp_cubic_schedule_ends_exactly_at_the_plan() -> None:
    space = small_space()
    plan = a_plan(space)
    agp = training.get("agp", space, plan, total_steps=200, start=0.1, end=0.6, frequency=7)
    sizes = {g.name: g.channels for g in space.groups}
    final = {g.name: int(k) for g, k in zip(space.groups, space.kept_counts(plan)) if k < g.channels}
    assert agp.removed(0.0) == {g: 0 for g in final}
    assert agp.removed(1.0) == {g: sizes[g] - k for g, k in final.items()}
    g = max(final, key=lambda g: sizes[g] - final[g])
    total = sizes[g] - final[g]
    assert agp.removed(0.5)[g] == round(total * (1 - 0.5**3))  # 7/8 of the way after half the window
    steps = sorted(agp.events)
    assert steps[0] == 20 and steps[-1] == 119 and all(b - a <= 7 for a, b in zip(steps, steps[1:]))
    taus = [agp.events[t] for t in steps]
    assert taus[0] == 0.0 and taus[-1] == 1.0 and taus == sorted(taus)


def test_agp_in_a_users_loop_ends_physically_smaller_with_the_masked_models_outputs(digits) -> None:
    train, val = digits
    space = small_space()
    plan = a_plan(space)
    agp = training.get("agp", space, plan, total_steps=40, end=0.5, frequency=4)
    before = {k: v.clone() for k, v in space.model.state_dict().items()}
    optimizer = user_loop(agp, train, 40)
    assert all(torch.equal(v, space.model.state_dict()[k]) for k, v in before.items())  # the user's model untouched

    model = agp.model
    # HARD: every pruned channel is zero in every parameter it runs through, and so is SGD's momentum for it.
    masks = training.masks(space, agp.keep)
    assert masks and agp.masked() == sum(g.channels - k for g, k in zip(space.groups, space.kept_counts(plan)))
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert torch.all(params[name][mask == 0] == 0), name
        buf = optimizer.state[params[name]]["momentum_buffer"]
        assert torch.all(buf[mask == 0] == 0), name

    pruned = agp.finalize(model)
    assert ap.count_macs(pruned, torch.zeros(1, 1, 8, 8)) == space.macs(plan)
    assert ap.count_params(pruned) == space.params(plan)
    model.eval(), pruned.eval()
    with torch.no_grad():
        assert torch.allclose(pruned(val[0][:64]), model(val[0][:64]), atol=1e-5)  # BN's constant is not left
    pruned.train()
    pruned(val[0][:8]).sum().backward()  # trains too


def test_an_agp_pruned_channel_never_comes_back(digits) -> None:
    train, _ = digits
    space = small_space()
    agp = training.get("agp", space, a_plan(space), total_steps=30, end=0.8, frequency=3)
    kept_history = []

    def record(step: int, when: str, optimizer: torch.optim.Optimizer) -> None:
        if when == "hooked":
            kept_history.append({g: set(idx.tolist()) for g, idx in agp.keep.items()})

    user_loop(agp, train, 30, lr=0.1, check=record)
    assert len(kept_history) == 30 and kept_history[-1]
    for earlier, later in zip(kept_history, kept_history[1:]):
        for g, kept in later.items():
            assert kept <= earlier.get(g, kept), g  # the survivors only shrink


def test_finetune_trains_the_one_shot_network(digits) -> None:
    train, _ = digits
    space = small_space()
    plan = a_plan(space)
    method = training.get("finetune", space, plan, total_steps=5)
    assert ap.count_params(method.model) == space.params(plan)  # physically small from the start
    start = {k: v.clone() for k, v in method.model.state_dict().items()}
    user_loop(method, train, 5)
    pruned = method.finalize()
    assert ap.count_macs(pruned, torch.zeros(1, 1, 8, 8)) == space.macs(plan)
    assert any(not torch.equal(v, pruned.state_dict()[k]) for k, v in start.items())


def test_bad_input_is_refused_before_training() -> None:
    space = small_space()
    plan = a_plan(space)
    with pytest.raises(ValueError, match="unknown training method 'agb'. Did you mean 'agp'"):
        training.get("agb", space, plan, total_steps=10)
    with pytest.raises(ValueError, match="total_steps must be a positive integer"):
        training.get("agp", space, plan, total_steps=0)
    with pytest.raises(ValueError, match="start < end"):
        training.get("agp", space, plan, total_steps=10, start=0.5, end=0.5)
    with pytest.raises(ValueError, match="frequency"):
        training.get("agp", space, plan, total_steps=10, frequency=0)
    with pytest.raises((KeyError, ValueError), match="layer9"):
        training.get("agp", space, {"layer9.conv": 0.5}, total_steps=10)  # a plan for another model
    with pytest.raises(ValueError, match="calibration"):
        training.get("agp", space, plan, total_steps=10, criterion="taylor")


def exact_removal(method: training.Method, x: torch.Tensor) -> None:
    """The method's final network is at the plan and computes what the trained, masked network computes."""
    space, plan = method.space, method.plan
    pruned = method.finalize()
    assert ap.count_macs(pruned, torch.zeros(1, 1, 8, 8)) == space.macs(plan)
    assert ap.count_params(pruned) == space.params(plan)
    method.model.eval(), pruned.eval()
    with torch.no_grad():
        assert torch.allclose(pruned(x), method.model(x), atol=1e-5)


@pytest.mark.parametrize("name", ["sfp", "fpgm"])
def test_soft_pruning_lets_a_zeroed_filter_grow_back_and_ends_exact(digits, name) -> None:
    train, val = digits
    space = small_space()
    method = training.get(name, space, a_plan(space), total_steps=24, frequency=6, ramp=0)
    assert method.events == [5, 11, 17, 23]
    model = method.model
    grew_back = False

    def check(step: int, when: str, optimizer: torch.optim.Optimizer) -> None:
        nonlocal grew_back
        params = dict(model.named_parameters())
        if step == 6 and when == "stepped":  # one optimiser step after the first event: the zeroed filters trained on
            zeroed = training.masks(space, method.keep)
            grew_back = any(bool(params[n][m == 0].abs().sum() > 0) for n, m in zeroed.items() if n.endswith("weight"))
        if step == 5 and when == "hooked":  # the first event zeroed the filters, and only them
            filters = {m.param for g in space.groups if g.name in method.keep for m in g.producers}
            assert method._masks and set(method._masks) <= filters
            assert all(torch.all(params[n][mk == 0] == 0) for n, mk in method._masks.items())

    user_loop(method, train, 24, check=check)
    assert grew_back  # SOFT: the event zeroed them, their gradients did not stop
    exact_removal(method, val[0][:64])


def test_slimming_adds_the_l1_gradient_on_the_plans_norm_scales_then_prunes_by_them(digits) -> None:
    train, val = digits
    space = small_space()
    slim = training.get("slim", space, a_plan(space), total_steps=10, penalty=1e-2, prune_at=0.5)
    modules = dict(space.model.named_modules())
    assert slim.scales and all(
        name.endswith(".weight") and isinstance(modules[name[: -len(".weight")]], torch.nn.BatchNorm2d)
        for name in slim.scales
    )
    model = slim.model
    x, y = train
    F.cross_entropy(model(x[:32]), y[:32]).backward()
    params = dict(model.named_parameters())
    plain = {n: params[n].grad.clone() for n in slim.scales}
    slim.before_step(model)
    for n in slim.scales:
        assert torch.allclose(params[n].grad, plain[n] + 1e-2 * torch.sign(params[n].detach()))
    model.zero_grad()
    user_loop(slim, train, 10)
    assert slim.keep and slim.masked() > 0
    exact_removal(slim, val[0][:64])


def test_taylor_accumulates_the_squared_sum_of_gradient_times_weight_per_channel(digits) -> None:
    train, val = digits
    space = small_space()
    taylor = training.get("taylor", space, a_plan(space), total_steps=20, frequency=5, end=0.5)
    assert taylor.events == [4, 9]
    model = taylor.model
    x, y = train
    F.cross_entropy(model(x[:32]), y[:32]).backward()
    taylor.before_step(model)
    params = dict(model.named_parameters())
    checked = 0
    for g in taylor.groups:
        if any(m.rows is not None for m in g.members):
            continue
        checked += 1
        by_hand = torch.zeros(g.channels, dtype=torch.float64)
        for m in g.members:
            if m.param not in params:  # a buffer (running statistics): no gradient
                continue
            p = params[m.param]
            by_hand += (p.grad * p).detach().movedim(m.dim, 0).reshape(g.channels, -1).sum(1).double()
        assert torch.allclose(taylor._sum[g.name], by_hand**2)
    assert checked == len(taylor.groups)
    model.zero_grad()
    taylor.after_step(model)
    user_loop(taylor, train, 19)
    assert set(taylor.importance) == set(taylor.target)
    exact_removal(taylor, val[0][:64])


def test_distillation_loss_math() -> None:
    torch.manual_seed(0)
    logits, target = torch.randn(16, 10), torch.randint(10, (16,))
    ce = F.cross_entropy(logits, target)
    assert torch.allclose(training.distillation_loss(logits, logits, target, 4.0, 0.3), 0.7 * ce)  # KL(p‖p) = 0
    other = torch.randn(16, 10)
    p, q = F.softmax(other / 2, 1), F.log_softmax(logits / 2, 1)
    kl = (p * (p.log() - q)).sum(1).mean()
    assert torch.allclose(training.distillation_loss(logits, other, target, 2.0, 1.0), 4 * kl, atol=1e-6)


def test_run_trains_any_method_with_distillation_and_records_the_test_accuracy(digits) -> None:
    space = small_space()
    plan = a_plan(space)
    data = DataSpec(dataset="digits", val_size=200).splits()
    plain = training.run(space, plan, data, method="agp", steps=30, lr=0.05, batch_size=32, progress=False, end=0.5)
    kd = training.run(space, plan, data, method="agp", steps=30, lr=0.05, batch_size=32, progress=False, distill=True)
    for result in (plain, kd):
        assert ap.count_params(result.model) == space.params(plan)
        assert ap.count_macs(result.model, torch.zeros(1, 1, 8, 8)) == space.macs(plan)
        record = result.record
        assert record["steps"] == 30 and 0 <= record["test"] <= 1 and 0 <= record["test_one_shot"] <= 1
    assert kd.record["distill"] == {"temperature": 4.0, "alpha": 0.5} and plain.record["distill"] is None
    assert kd.record["loss_first"] != plain.record["loss_first"]
    again = training.run(space, plan, data, method="agp", steps=30, lr=0.05, batch_size=32, progress=False, end=0.5)
    assert all(torch.equal(a, b) for a, b in zip(plain.model.state_dict().values(), again.model.state_dict().values()))
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        training.run(space, plan, data, steps=0)
    with pytest.raises(ValueError, match="alpha"):
        training.run(space, plan, data, steps=5, distill=True, alpha=2)


def test_imp_removes_the_same_fraction_each_round_and_rewinds_the_survivors(digits) -> None:
    train, val = digits
    space = small_space()
    plan = a_plan(space)
    imp = training.get("imp", space, plan, total_steps=30, rounds=3, rewind=0.2)
    assert imp.restarts == [0, 10, 20] and imp.rewind_step == 2
    g = max(imp.target, key=lambda g: imp.sizes[g] - imp.target[g])
    c, k = imp.sizes[g], imp.target[g]
    rounds = [imp.counts_after(r)[g] for r in (1, 2, 3)]
    assert rounds == [round(c * (k / c) ** (r / 3)) for r in (1, 2)] + [k]  # (1 - p)^(1/R) of what is left
    assert int(imp.keep[g].numel()) == rounds[0]  # pruned once before training, on the trained weights
    seen = {}

    def check(step: int, when: str, optimizer: torch.optim.Optimizer) -> None:
        if when != "hooked":
            return
        if step == 1:
            seen[step] = {n: v.clone() for n, v in imp.model.state_dict().items()}
        if step in (9, 19):  # a round ended: pruned further, the survivors rewound to θ_2
            assert int(imp.keep[g].numel()) == rounds[(step + 1) // 10]
            mask = training.masks(space, imp.keep)
            for name, value in imp.model.state_dict().items():
                expected = imp._rewound[name] * mask[name] if name in mask else imp._rewound[name]
                assert torch.equal(value, expected), name
            assert not optimizer.state  # the optimiser's momentum belonged to the trained weights

    user_loop(imp, train, 30, check=check)
    assert all(torch.equal(seen[1][n], imp._rewound[n]) for n in imp._rewound)  # θ_k is the weights after step 2
    exact_removal(imp, val[0][:64])

    fresh = training.get("imp", space, plan, total_steps=30, reinit=True)
    trained = dict(space.model.named_parameters())
    assert all(
        not torch.equal(v, trained[n]) for n, v in fresh._rewound.items() if n.endswith("conv1.weight")
    )  # the control: rewinding to a random initialisation


def test_admm_projection_is_exact_and_the_dual_and_penalty_follow_the_formulas(digits) -> None:
    import itertools

    train, val = digits
    space = small_space()
    plan = a_plan(space)
    admm = training.get("admm", space, plan, total_steps=40, admm=0.5, rounds=4, rho=1e-2, growth=2.0)
    assert admm.updates == [4, 9, 14] and admm.prune_step == 19
    model = admm.model
    params = dict(model.named_parameters())
    # Z starts as Π_S(W) in its own storage: exactly K_g non-zero channels, the ones of largest filter norm,
    # and the nearest such point: no other choice of K_g channels is closer to W.
    for g in admm.groups:
        zero = {n: z for n, z in admm.Z.items() if n in admm.filters[g.name]}
        norms = admm.channel_norms(zero, g)
        assert int((norms > 0).sum()) == admm.target[g.name]
        assert all(z.data_ptr() != params[n].data_ptr() for n, z in zero.items())
    g = min(admm.groups, key=lambda g: g.channels)
    w = {n: params[n].detach() for n in admm.filters[g.name]}
    norms = admm.channel_norms(w, g) ** 2
    subsets = itertools.combinations(range(g.channels), admm.target[g.name])
    best = min(subsets, key=lambda s: float(norms.sum() - norms[list(s)].sum()))  # the nearest point of the set
    assert sorted(best) == admm.projection(w)[g.name].tolist()

    x, y = train
    F.cross_entropy(model(x[:32]), y[:32]).backward()
    plain = {n: params[n].grad.clone() for n in admm.Z}
    admm.before_step(model)
    for n in admm.Z:
        assert torch.allclose(params[n].grad, plain[n] + 1e-2 * (params[n].detach() - admm.Z[n] + admm.U[n]))
    model.zero_grad()
    admm.step = 4
    before_u = {n: u.clone() for n, u in admm.U.items()}
    admm.after_step(model)  # step 4: a Z- and U-step, ρ doubles
    for n in admm.U:
        assert torch.allclose(admm.U[n], before_u[n] + params[n].detach() - admm.Z[n])
    assert admm.rho == 2e-2 and not admm.keep
    admm.step = 5
    user_loop(admm, train, 35)
    assert admm.keep and {g: int(i.numel()) for g, i in admm.keep.items()} == admm.target
    exact_removal(admm, val[0][:64])

    def distance_to_the_constraint_set(method: training.Method) -> float:
        """‖W − Π_S(W)‖: the filter mass outside the K_g strongest channels of every group."""
        w = {n: p.detach() for n, p in method.model.named_parameters()}
        kept = method.projection(w)
        return (
            sum(
                float(method.channel_norms(w, g).pow(2).sum() - method.channel_norms(w, g)[kept[g.name]].pow(2).sum())
                for g in method.groups
            )
            ** 0.5
        )

    # The penalty pulls the weights onto the constraint set: after the ADMM phase (19 steps, before the hard
    # prune) a strong ρ leaves far less mass outside the K_g kept channels than a negligible one.
    reached = {}
    for rho in (1.0, 1e-9):
        method = training.get("admm", space, plan, total_steps=40, rounds=4, rho=rho, growth=1.0, rho_max=1.0)
        user_loop(method, train, 19)
        assert not method.keep
        reached[rho] = distance_to_the_constraint_set(method)
    assert reached[1.0] < 0.5 * reached[1e-9]


def test_scratch_baselines_train_the_plans_architecture_from_a_fresh_initialisation(digits) -> None:
    train, _ = digits
    space = small_space()
    plan = a_plan(space)
    e = training.get("scratch_e", space, plan, total_steps=10, seed=3)
    assert ap.count_params(e.model) == space.params(plan)
    one_shot = space.apply(plan)
    for name, value in e.model.state_dict().items():
        if name.endswith("bn1.weight"):
            assert torch.equal(value, torch.ones_like(value))  # a BatchNorm as initialised, not as trained
        if name.endswith("conv1.weight"):
            assert not torch.equal(value, one_shot.state_dict()[name])
    again = training.get("scratch_e", space, plan, total_steps=10, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(e.model.state_dict().values(), again.model.state_dict().values()))
    b = training.get("scratch_b", space, plan, total_steps=10)
    ratio = space.macs({}) / space.macs(plan)
    assert b.total_steps == round(10 * min(2.0, ratio)) and b.total_steps > 10
    user_loop(b, train, b.total_steps)
    assert ap.count_macs(b.finalize(), torch.zeros(1, 1, 8, 8)) == space.macs(plan)


def test_method_options_out_of_range_are_refused_before_training() -> None:
    space = small_space()
    plan = a_plan(space)
    for name, options, message in [
        ("imp", {"total_steps": 5, "rounds": 3}, "at least 2 steps per round"),
        ("imp", {"total_steps": 30, "rewind": 1.0}, "rewind"),
        ("admm", {"total_steps": 30, "admm": 1.0}, "admm"),
        ("admm", {"total_steps": 30, "rho": 0}, "rho > 0"),
        ("scratch_b", {"total_steps": 30, "cap": 0.5}, "cap"),
    ]:
        with pytest.raises(ValueError, match=message):
            training.get(name, space, plan, **options)


KILLED_RUN = """
import os, signal, sys
import torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from test_training import a_plan, small_space
from autoprune import training
from autoprune.studyfile import DataSpec

cls = training.METHODS[{name!r}]
plain = cls.after_step

def after_step(self, model, optimizer=None):
    plain(self, model, optimizer)
    if self.step == 17:
        os.kill(os.getpid(), signal.SIGKILL)  # the OOM killer, a pre-empted node, a closed laptop

cls.after_step = after_step
space = small_space()
data = DataSpec(dataset="digits", val_size=200).splits()
training.run(space, a_plan(space), data, method={name!r}, steps=30, lr=0.05, batch_size=32, progress=False,
             checkpoint={checkpoint!r}, checkpoint_every=5)
"""


@pytest.mark.parametrize("name", ["imp", "admm"])
def test_a_training_killed_by_sigkill_resumes_from_its_checkpoint_and_ends_as_if_uninterrupted(tmp_path, name) -> None:
    import os
    import subprocess
    import sys

    checkpoint = tmp_path / "train.ckpt"
    script = KILLED_RUN.format(tests=os.path.dirname(__file__), name=name, checkpoint=str(checkpoint))
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr
    state = torch.load(checkpoint, weights_only=True)
    assert state["done"] == 15 and len(state["losses"]) == 15  # the last checkpoint before the kill

    space = small_space()
    plan = a_plan(space)
    data = DataSpec(dataset="digits", val_size=200).splits()
    options = dict(method=name, steps=30, lr=0.05, batch_size=32, progress=False, test=data.val)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the killed process ran: the same arithmetic, bit for bit
    try:
        resumed = training.run(space, plan, data, checkpoint=checkpoint, checkpoint_every=5, **options)
        whole = training.run(space, plan, data, **options)
    finally:
        torch.set_num_threads(threads)
    assert resumed.record["resumed_at"] == 15 and "resumed_at" not in whole.record
    assert resumed.record["loss_last"] == whole.record["loss_last"]
    assert resumed.record["test"] == whole.record["test"]
    for (key, a), b in zip(resumed.model.state_dict().items(), whole.model.state_dict().values()):
        assert torch.equal(a, b), key

    with pytest.raises(ValueError, match="written by another training run"):
        training.run(space, plan, data, checkpoint=checkpoint, **{**options, "lr": 0.1})
    checkpoint.write_bytes(b"truncated")
    with pytest.raises(ValueError, match="cannot be read.*delete it"):
        training.run(space, plan, data, checkpoint=checkpoint, **options)


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_level_prunes_single_weights_to_the_planned_sparsity_and_saves_masked_and_csr(digits, tmp_path, scope) -> None:
    from autoprune.training import level

    train, val = digits
    space = small_space()
    plan = {"conv1": 0.5, "layer2.0.conv1": 0.8, "layer3.2.conv2": 0.9, "fc": 0.3}
    method = training.get("level", space, plan, total_steps=20, scope=scope, end=0.5, frequency=2)
    assert method.events and max(method.events) == 9
    zeros = []

    def count(step: int, when: str, optimizer: torch.optim.Optimizer) -> None:
        if when == "hooked":
            zeros.append({n: int((m == 0).sum()) for n, m in method._masks.items()})

    user_loop(method, train, 20, check=count)
    for earlier, later in zip(zeros, zeros[1:]):
        assert all(later[n] >= earlier.get(n, 0) for n in later)  # HARD: a pruned weight never comes back
    model = method.finalize()
    fresh = training.get("level", space, plan, total_steps=20, scope=scope, end=0.5, frequency=2).one_shot()
    after = method.one_shot()  # what run() records as the one-shot baseline: the original weights' own ranking
    assert all(torch.equal(p, q) for p, q in zip(fresh.state_dict().values(), after.state_dict().values()))
    reached = level.sparsity(model)
    modules = dict(model.named_modules())
    zero = {n: int((modules[n].weight == 0).sum()) for n in plan}
    sizes = {n: modules[n].weight.numel() for n in plan}
    if scope == "layer":  # exactly the planned share of each layer
        assert zero == {n: round(s * sizes[n]) for n, s in plan.items()}
    else:  # one threshold over the listed layers: the planned number of zeros in all, shared unevenly
        assert sum(zero.values()) == round(sum(s * sizes[n] for n, s in plan.items()))
        assert zero != {n: round(s * sizes[n]) for n, s in plan.items()}
    assert all(reached[n] == 0 for n in reached if n not in plan)
    assert ap.count_macs(model, torch.zeros(1, 1, 8, 8)) == space.macs({})  # unstructured: the shape stays

    model.eval()
    with torch.no_grad():
        expected = model(val[0][:64])
    torch.save(model.state_dict(), tmp_path / "masked.pt")
    state = torch.load(tmp_path / "masked.pt", weights_only=True)
    assert any(k.endswith("weight_mask") for k in state) and any(k.endswith("weight_orig") for k in state)
    back = level.load_masked(small_space().model, state).eval()
    assert level.sparsity(back) == reached  # its weights are the masked ones before any forward pass
    torch.save(level.to_sparse_csr(model), tmp_path / "csr.pt")
    csr = torch.load(tmp_path / "csr.pt", weights_only=True)
    assert csr["layer3.2.conv2.weight"].layout == torch.sparse_csr
    dense = level.load_sparse_csr(small_space().model, csr).eval()
    with torch.no_grad():
        assert torch.equal(back(val[0][:64]), expected)
        assert torch.allclose(dense(val[0][:64]), expected, atol=1e-6)
    assert (tmp_path / "csr.pt").stat().st_size < (tmp_path / "masked.pt").stat().st_size

    with pytest.raises(ValueError, match="'layer9.conv1' is not a layer with a weight to prune"):
        training.get("level", space, {"layer9.conv1": 0.5}, total_steps=10)
    with pytest.raises(ValueError, match="must be a number in \\[0, 1\\)"):
        training.get("level", space, {"fc": 1.5}, total_steps=10)
    with pytest.raises(ValueError, match="scope"):
        training.get("level", space, 0.5, total_steps=10, scope="network")
    one_shot = training.get("level", space, 0.5, total_steps=10, schedule="one_shot")
    assert all(abs(s - 0.5) < 0.01 for s in level.sparsity(one_shot.model).values())


def test_level_with_a_2_4_pattern_keeps_two_of_every_four_inputs_through_training(digits, tmp_path) -> None:
    from autoprune.training import level

    weight = torch.tensor([[0.1, -0.9, 0.3, 0.2, 5.0, 4.0, -6.0, 0.0]])
    assert level.pattern_mask(weight, 2, 4).tolist() == [[0, 1, 1, 0, 1, 0, 1, 0]]  # |-0.9|, 0.3; |-6|, 5
    conv = torch.randn(3, 8, 2, 2)  # groups of 4 run along the input channels at each kernel position
    mask = level.pattern_mask(conv, 2, 4)
    assert mask.shape == conv.shape and (mask.sum(dim=1) == 4).all()
    kept = mask[0, :4, 1, 0].bool()
    assert set(conv[0, :4, 1, 0].abs()[kept].tolist()) == set(conv[0, :4, 1, 0].abs().topk(2).values.tolist())

    train, val = digits
    space = small_space()
    method = training.get("level", space, 0.5, total_steps=20, pattern="2:4")
    assert "conv1.weight" not in method.sparsity  # its one input cannot be cut into fours
    assert set(method.sparsity) == {f"{n}.weight" for n in level.prunable_layers(space.model)} - {"conv1.weight"}
    user_loop(method, train, 20)
    model = method.finalize()
    modules = dict(model.named_modules())
    for name in method.sparsity:  # the pattern held through 20 steps of training
        assert level.follows_pattern(modules[name[: -len(".weight")]].weight), name
    assert not level.follows_pattern(space.model.fc.weight)  # the original stays dense
    torch.save(model.state_dict(), tmp_path / "masked.pt")
    back = level.load_masked(small_space().model, torch.load(tmp_path / "masked.pt", weights_only=True)).eval()
    with torch.no_grad():
        assert torch.equal(back(val[0][:32]), model.eval()(val[0][:32]))
    with pytest.raises(ValueError, match="CUDA GPUs only"):
        level.to_semi_structured(model)

    # Linear layers in the layout the GPU kernels take: torch's own CUTLASS packer (pure Python, what
    # SparseSemiStructuredTensorCUTLASS.from_dense runs) stores a trained 2:4 weight exactly, a dense one not
    from torch.sparse import SparseSemiStructuredTensorCUSPARSELT, SparseSemiStructuredTensorCUTLASS
    from torch.sparse._semi_structured_conversions import (
        sparse_semi_structured_from_dense_cutlass as pack,
    )
    from torch.sparse._semi_structured_conversions import (
        sparse_semi_structured_to_dense_cutlass as unpack,
    )

    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    method = training.get("level", ap.PruningSpace(mlp, torch.zeros(1, 1, 8, 8)), 0.5, total_steps=10, pattern="2:4")
    user_loop(method, train, 10)
    trained = method.finalize()
    for weight, stored in ((trained[1].weight, True), (mlp[1].weight, False)):
        half = weight.detach().half()
        assert torch.equal(unpack(*pack(half)), half) is stored
    assert level.follows_pattern(trained[3].weight)  # sparse, but 10 rows: no kernel takes it, so it stays dense

    # the conversion's steps before the GPU, on the network as saved and loaded back (no forward pass between)
    def fresh() -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

    torch.save(trained.state_dict(), tmp_path / "mlp.pt")
    loaded = level.load_masked(fresh(), torch.load(tmp_path / "mlp.pt", weights_only=True)).eval()
    fit, dense = level.semi_structured_layers(loaded, torch.float16, SparseSemiStructuredTensorCUSPARSELT)
    assert fit == ["1"] and list(dense) == ["3"] and "10 x 64" in dense["3"]
    assert level.semi_structured_layers(fresh(), torch.float16, SparseSemiStructuredTensorCUSPARSELT) == ([], {})
    folded = level.fold_masks(loaded)
    assert not level.masked_layers(folded) and isinstance(folded[1].weight, nn.Parameter)
    with torch.no_grad():
        assert torch.equal(folded(val[0][:32]), trained.eval()(val[0][:32]))
    for backend in (SparseSemiStructuredTensorCUSPARSELT, SparseSemiStructuredTensorCUTLASS):
        assert level.semi_structured_unfit((64, 64), torch.float16, backend) is None
        assert "10 x 64" in level.semi_structured_unfit((10, 64), torch.float16, backend)
    assert "multiple of 64" in level.semi_structured_unfit((64, 32), torch.bfloat16, SparseSemiStructuredTensorCUTLASS)
    with pytest.raises(ValueError, match="float16 or bfloat16"):
        level.to_semi_structured(trained, dtype=torch.float32)

    with pytest.raises(ValueError, match="'N:M' with 0 < N < M"):
        training.get("level", space, 0.5, total_steps=10, pattern="4:2")
    with pytest.raises(ValueError, match="set once on the trained weights"):
        training.get("level", space, 0.5, total_steps=10, pattern="2:4", schedule="agp")
    with pytest.raises(ValueError, match="zeroes 0.5 of every layer it prunes; the plan gives 'fc' 0.3"):
        training.get("level", space, {"fc": 0.3}, total_steps=10, pattern="2:4")
    with pytest.raises(ValueError, match="'conv1' has 1 inputs, not a multiple of 4"):
        training.get("level", space, {"conv1": 0.5}, total_steps=10, pattern="2:4")
