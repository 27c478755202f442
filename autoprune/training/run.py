"""A ready trainer: any method on a plan, on a dataset, with optional distillation from the unpruned model."""

from __future__ import annotations

import copy
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


def run(
    space: PruningSpace,
    plan: dict[str, float],
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
    **options: Any,
) -> Trained:
    """Train ``space``'s model under ``method`` towards ``plan`` for ``steps`` SGD steps and return it physically
    smaller at exactly the plan.

    ``data``: the training samples (a Dataset, a ``(inputs, targets)`` tuple of tensors) or an object with
    ``.train`` (and ``.test``, used for the record unless ``test`` is given) such as `autoprune.data.Splits`.
    SGD with Nesterov momentum 0.9, ``weight_decay`` and a cosine-decayed learning rate; batches drawn epoch by
    epoch from permutations seeded by ``seed``. ``distill`` adds the unpruned model's soft targets
    (``temperature``, weight ``alpha``) to every step, whatever the method. ``options`` go to the method
    (``criterion``, ``calibration`` and its own, e.g. AGP's ``end``). The record holds the method, the steps, the
    mean training loss of the first and last tenth, the wall time and, with test data, the test top-1 of the
    one-shot network (``space.apply(plan)``) and of the result.
    """
    for key, value in (("steps", steps), ("batch_size", batch_size)):
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
    generator = torch.Generator().manual_seed(seed)
    batches = random_batches(len(source), batch_size, steps, generator)
    teacher = copy.deepcopy(space.model).eval() if distill else None  # the user's model keeps its mode
    model = trainer.model
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    losses: list[float] = []
    start = time.perf_counter()
    bar = _progress(progress, f"{method}{' + distillation' if distill else ''}", steps)
    model.train()
    with torch.random.fork_rng(), bar as tick:
        torch.manual_seed(seed)
        for key in batches:
            inputs, target = source.batch(key)
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
    pruned = trainer.finalize(model)
    tenth = max(1, steps // 10)
    record: dict[str, Any] = {
        "method": method,
        "steps": steps,
        "lr": lr,
        "distill": {"temperature": temperature, "alpha": alpha} if distill else None,
        "loss_first": sum(losses[:tenth]) / tenth,
        "loss_last": sum(losses[-tenth:]) / tenth,
        "seconds": time.perf_counter() - start,
    }
    if test is not None:
        from ..evaluators import AccuracyEvaluator

        score = AccuracyEvaluator(test, bn_recalibration_batches=0)
        record["test_one_shot"] = score(space.apply(plan, trainer.criterion, calibration=trainer.calibration))[
            "accuracy"
        ]
        record["test"] = score(pruned)["accuracy"]
    pruned.eval()
    return Trained(pruned, record)


class _progress:
    """A rich progress bar over the steps (or nothing), used as ``with _progress(...) as tick: tick()``."""

    def __init__(self, show: bool, label: str, total: int) -> None:
        self.show, self.label, self.total = show, label, total

    def __enter__(self):  # noqa: ANN204
        if not self.show:
            return lambda: None
        from rich.progress import Progress

        self._bar = Progress(transient=True)
        self._bar.start()
        task = self._bar.add_task(self.label, total=self.total)
        return lambda: self._bar.advance(task)

    def __exit__(self, *exc: Any) -> None:
        if self.show:
            self._bar.stop()
