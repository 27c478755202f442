"""A ready trainer: any method on a plan, on a dataset, with optional distillation from the unpruned model."""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.batches import as_source, random_batches
from ..engine import PruningSpace
from ..evaluators.accuracy import logits_of
from .base import get


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, temperature: float, alpha: float
) -> torch.Tensor:
    """(1 − α)·CE(y, student) + α·T²·KL(softmax(teacher/T) ‖ softmax(student/T)) (Hinton et al. 2015), in fp32 with
    the batch-mean KL; the T² keeps the soft term's gradients on the scale of the hard one."""
    student, teacher = student.float(), teacher.float()
    hard = F.cross_entropy(student, target)
    soft = F.kl_div(
        F.log_softmax(student / temperature, dim=1),
        F.log_softmax(teacher / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return (1 - alpha) * hard + alpha * temperature**2 * soft


@dataclass
class Trained:
    """What :func:`run` returns: the physically smaller network and a record of the training."""

    model: nn.Module
    record: dict[str, Any] = field(default_factory=dict)
    #: The channels the network kept, per pruned group (indices into the space's model).
    keep: dict[str, torch.Tensor] = field(default_factory=dict)


def run(
    space: PruningSpace,
    plan: dict[str, float] | float,
    data: Any,
    *,
    method: str = "finetune",
    steps: int,
    lr: float = 0.01,
    batch_size: int = 128,
    weight_decay: float = 5e-5,
    distill: bool = False,
    temperature: float = 4.0,
    alpha: float = 0.5,
    test: Any = None,
    seed: int = 0,
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 200,
    **options: Any,
) -> Trained:
    """Train ``space``'s model under ``method`` towards ``plan`` for ``steps`` SGD steps and return it physically
    smaller at exactly the plan (``level``: with its weights masked; its plan is per layer, or one number).

    ``data``: the training samples (a Dataset, a ``(inputs, targets)`` tuple of tensors) or an object with
    ``.train`` (and ``.test``, used for the record unless ``test`` is given) such as `autoprune.data.Splits`.
    SGD with Nesterov momentum 0.9, ``weight_decay`` and a cosine-decayed learning rate (restarted where the
    method starts a new phase: IMP's rounds); batches drawn epoch by epoch from permutations seeded by ``seed``.
    Scratch-B trains its own stretched number of steps (``steps`` × the MACs ratio). ``distill`` adds the
    unpruned model's soft targets (``temperature``, weight ``alpha``) to every step, whatever the method.
    ``options`` go to the method (``criterion``, ``calibration`` and its own, e.g. AGP's ``end``).

    ``checkpoint``: a file that receives the whole training state (model, optimiser, schedule, the method's
    state, RNG, losses) every ``checkpoint_every`` steps, written atomically; when the file exists, training
    resumes from it, so a killed run continues where its last checkpoint left it and ends as if it had not been
    interrupted. A checkpoint written by a run with other arguments is refused.

    The record holds the method, the steps, the mean training loss of the first and last tenth, the wall time
    and, with test data, the test top-1 of the one-shot network (``space.apply(plan)``) and of the result.
    """
    for key, value in (("steps", steps), ("batch_size", batch_size), ("checkpoint_every", checkpoint_every)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    if not lr > 0 or weight_decay < 0 or not temperature > 0 or not 0 <= alpha <= 1:
        raise ValueError(
            f"need lr > 0, weight_decay >= 0, temperature > 0 and 0 <= alpha <= 1; got lr={lr}, "
            f"weight_decay={weight_decay}, temperature={temperature}, alpha={alpha}"
        )
    train = getattr(data, "train", data)
    test = test if test is not None else getattr(data, "test", None)
    source = as_source(train, "data")
    trainer = get(method, space, plan, total_steps=steps, **options)  # checks the plan and options first
    total = trainer.total_steps  # Scratch-B stretches it
    arguments = {
        "method": method,
        "plan": float(plan) if isinstance(plan, (int, float)) else {str(g): float(v) for g, v in sorted(plan.items())},
        "steps": steps,
        "lr": lr,
        "batch_size": batch_size,
        "weight_decay": weight_decay,
        "distill": [temperature, alpha] if distill else None,
        "seed": seed,
        "options": repr(sorted((k, v) for k, v in options.items() if k not in ("calibration", "pruned"))),
    }
    generator = torch.Generator().manual_seed(seed)
    batches = random_batches(len(source), batch_size, total, generator)
    teacher = copy.deepcopy(space.model).eval() if distill else None  # the user's model keeps its mode
    model = trainer.model
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine_phases(trainer.restarts, total))
    losses: list[float] = []
    done, elapsed = 0, 0.0
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if checkpoint is not None and os.path.exists(checkpoint):
            done, elapsed = _resume(checkpoint, arguments, model, optimizer, schedule, trainer, losses)
        start = time.perf_counter() - elapsed
        bar = _progress(progress, f"{method}{' + distillation' if distill else ''}", total, done)
        model.train()
        with bar as tick:
            for step in range(done, total):
                inputs, target = source.batch(batches[step])
                logits = logits_of(model(*inputs))
                if teacher is not None:
                    with torch.no_grad():
                        soft = logits_of(teacher(*inputs))
                    loss = distillation_loss(logits, soft, target, temperature, alpha)
                else:
                    loss = F.cross_entropy(logits.float(), target)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                trainer.before_step(model, optimizer)
                optimizer.step()
                trainer.after_step(model, optimizer)
                schedule.step()
                losses.append(float(loss.detach()))
                tick()
                if checkpoint is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == total):
                    state = {
                        "arguments": arguments,
                        "done": step + 1,
                        "seconds": time.perf_counter() - start,
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(),
                        "method": trainer.state_dict(),
                        "rng": torch.get_rng_state(),
                        "losses": losses,
                    }
                    _save_atomically(state, checkpoint)
    pruned = trainer.finalize(model)
    tenth = max(1, total // 10)
    record: dict[str, Any] = {
        "method": method,
        "steps": total,
        "lr": lr,
        "distill": {"temperature": temperature, "alpha": alpha} if distill else None,
        "loss_first": sum(losses[:tenth]) / tenth,
        "loss_last": sum(losses[-tenth:]) / tenth,
        "seconds": time.perf_counter() - start,
    }
    if done:
        record["resumed_at"] = done
    if test is not None:
        from ..evaluators import AccuracyEvaluator

        score = AccuracyEvaluator(test, bn_recalibration_batches=0)
        record["test_one_shot"] = score(trainer.one_shot())["accuracy"]
        record["test"] = score(pruned)["accuracy"]
    pruned.eval()
    return Trained(pruned, record, dict(getattr(trainer, "final", {})))


def _cosine_phases(restarts: list[int], total: int) -> Any:
    """The learning-rate factor at each step: a cosine from 1 to 0 over each phase between restarts."""
    bounds = [*sorted(set(restarts) | {0}), total]

    def factor(step: int) -> float:
        for begin, end in zip(bounds, bounds[1:]):
            if begin <= step < end:
                return 0.5 * (1 + math.cos(math.pi * (step - begin) / max(end - begin, 1)))
        return 0.0

    return factor


def _save_atomically(state: dict[str, Any], path: str | os.PathLike) -> None:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = f"{path}.{os.getpid()}.tmp"
    torch.save(state, temporary)
    os.replace(temporary, path)


def _resume(
    path: str | os.PathLike,
    arguments: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: Any,
    trainer: Any,
    losses: list[float],
) -> tuple[int, float]:
    """Load a checkpoint of this very run into the live objects; returns (steps done, seconds spent)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - a truncated or foreign file: say which and what to do
        raise ValueError(f"checkpoint {os.fspath(path)!r} cannot be read ({error}); delete it to start over") from None
    if not isinstance(state, dict) or state.get("arguments") != arguments:
        theirs = state.get("arguments") if isinstance(state, dict) else None
        raise ValueError(
            f"checkpoint {os.fspath(path)!r} was written by another training run ({theirs}), not this one "
            f"({arguments}); pass another checkpoint path or delete it to start over"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    trainer.load_state_dict(state["method"])
    torch.set_rng_state(state["rng"])
    losses.extend(state["losses"])
    return int(state["done"]), float(state["seconds"])


class _progress:
    """A rich progress bar over the steps (or nothing), used as ``with _progress(...) as tick: tick()``."""

    def __init__(self, show: bool, label: str, total: int, done: int = 0) -> None:
        self.show, self.label, self.total, self.done = show, label, total, done

    def __enter__(self):  # noqa: ANN204
        if not self.show:
            return lambda: None
        from rich.progress import Progress

        self._bar = Progress(transient=True)
        self._bar.start()
        task = self._bar.add_task(self.label, total=self.total, completed=self.done)
        return lambda: self._bar.advance(task)

    def __exit__(self, *exc: Any) -> None:
        if self.show:
            self._bar.stop()
