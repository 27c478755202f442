"""Top-1 accuracy of a pruned classifier, after adaptive-BN recalibration and an optional short fine-tune.

A freshly pruned model's BatchNorm running statistics describe the unpruned
network; scoring it without recalibrating them misranks candidates (adaptive BN,
EagleEye, Li et al., ECCV 2020; on this project's Fashion-MNIST ResNet-20 the
unrecalibrated accuracy of pruned candidates dropped by up to 38 points). So the
evaluator first re-estimates them on a few training batches, then scores on a
held-out split of the training set. Every candidate sees the same recalibration,
fine-tune and scoring samples, chosen once with a fixed seed, so scores compare fairly.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, Dataset

from ..data.batches import Batch, DatasetSource, as_source, random_batches, scoring_plan, split_batch
from ..utils import num_threads
from .base import Evaluator, check_count, resolve_device

Data = Union[Dataset, DataLoader, Sequence[torch.Tensor]]


@functools.lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 arithmetic (AVX512-BF16 or AMX), read from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def logits_of(output: Any) -> torch.Tensor:
    """The class scores in a model's output: the tensor itself, the first of a tuple, or `.logits`."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    raise TypeError(
        f"cannot find class scores in the model's output of type {type(output).__name__}; "
        "return a tensor, a tuple whose first item is the logits, or an object with .logits"
    )


def recalibrate_batchnorm(model: nn.Module, batches: Iterable[tuple[torch.Tensor, ...]]) -> int:
    """Adaptive-BN: re-estimate every BatchNorm's running statistics from `batches` of model inputs.

    Resets the statistics, switches to a cumulative average (momentum=None),
    forwards the batches in train mode without gradients, then restores each
    layer's momentum and the model's train/eval mode. Returns the number of
    batches used (0, and nothing touched, when the model has no BatchNorm).
    """
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    was_training = model.training
    count = 0
    try:
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None
        model.train()
        with torch.no_grad():
            for inputs in batches:
                model(*inputs)
                count += 1
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        model.train(was_training)
    if count == 0:
        raise ValueError("BatchNorm recalibration got no batches: the training data yielded nothing")
    return count


class AccuracyEvaluator(Evaluator):
    """Score = top-1 accuracy (a fraction) on a fixed held-out sample, after BN recalibration.

    Per call, on the candidate model (modified in place): an optional short
    fine-tune (`finetune_steps` of SGD, momentum 0.9, Nesterov, weight decay
    `finetune_weight_decay`, cosine-decayed learning rate, cross-entropy), then
    adaptive-BN recalibration on `bn_recalibration_batches` training batches,
    then top-1 accuracy in eval mode. Returns a dict with `score`, `accuracy`,
    `accuracy_top5`, `loss` (mean cross-entropy), `samples`, `eval_seconds`
    (the whole call), `recalibration_batches`, `finetune_steps` and, when
    fine-tuning, `finetune_loss` (mean training loss). The small default weight
    decay (5e-5) suits a recovery fine-tune of a few hundred steps: it should
    move the weights towards the data, not shrink them.

    Data (`data`, `train_data`) may be a `(inputs..., targets)` tuple of tensors,
    a map-style Dataset of `(inputs..., target)` samples, or a DataLoader.
    Scoring data should be a held-out split of the *training* set, never the
    test set: a search that scores on test reports a selected, optimistic
    number. For tensors and Datasets, the recalibration, fine-tune and scoring
    batches are index lists drawn once here from `seed`;
    tensors and TensorDatasets (also inside Subsets) are indexed directly, with
    no DataLoader. A DataLoader is used as given, iterated under a torch RNG
    seeded with `seed`, so a shuffling loader yields the same samples on every
    call (with num_workers=0 or torch-seeded workers). `num_workers` > 0 loads a
    map-style Dataset's samples (decoding, transforms) in that many worker
    processes, with the same fixed batches; worker seeds come from `seed`, so
    random transforms are the same on every call.

    `bf16` (None: on where the hardware supports it natively, i.e. CUDA or a
    CPU with AVX512-BF16/AMX) runs everything under bf16 autocast;
    `channels_last` (None: same as bf16) puts the model and 4-D inputs in
    channels-last layout. Both are much faster on such CPUs and as accurate
    (measured on this project's 2-core development machine); set `channels_last=False` for models that call
    `.view` on convolution outputs. `threads` sets torch's intra-op thread
    count during a call (prefer 1 when anything else shares the machine).
    """

    def __init__(
        self,
        data: Data,
        *,
        train_data: Data | None = None,
        batch_size: int = 256,
        batches: int | None = None,
        bn_recalibration_batches: int = 100,
        recalibration_batch_size: int = 128,
        finetune_steps: int = 0,
        finetune_lr: float = 0.01,
        finetune_batch_size: int = 128,
        finetune_weight_decay: float = 5e-5,
        device: str | torch.device = "cpu",
        threads: int | None = None,
        bf16: bool | None = None,
        channels_last: bool | None = None,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        check_count("batch_size", batch_size, 1)
        check_count("num_workers", num_workers, 0)
        if batches is not None:
            check_count("batches", batches, 1)
        check_count("bn_recalibration_batches", bn_recalibration_batches, 0)
        check_count("recalibration_batch_size", recalibration_batch_size, 1)
        check_count("finetune_steps", finetune_steps, 0)
        check_count("finetune_batch_size", finetune_batch_size, 1)
        if threads is not None:
            check_count("threads", threads, 1)
        check_count("seed", seed, 0)
        if not (isinstance(finetune_lr, (int, float)) and math.isfinite(finetune_lr) and finetune_lr > 0):
            raise ValueError(f"finetune_lr must be a positive number, got {finetune_lr!r}")
        if not (isinstance(finetune_weight_decay, (int, float)) and finetune_weight_decay >= 0):
            raise ValueError(f"finetune_weight_decay must be a number >= 0, got {finetune_weight_decay!r}")
        if train_data is None and (bn_recalibration_batches > 0 or finetune_steps > 0):
            wanted = "BN recalibration" if bn_recalibration_batches > 0 else "fine-tuning"
            raise ValueError(
                f"train_data is needed for {wanted} (bn_recalibration_batches={bn_recalibration_batches}, "
                f"finetune_steps={finetune_steps}); pass train_data, or bn_recalibration_batches=0 and "
                "finetune_steps=0 to score the model as it is"
            )

        self.device = resolve_device(device)
        if bf16 is None:
            bf16 = torch.cuda.is_bf16_supported() if self.device.type == "cuda" else cpu_supports_bf16()
        self.bf16 = bool(bf16)
        self.channels_last = self.bf16 if channels_last is None else bool(channels_last)
        self.batch_size = batch_size
        self.batches = batches
        self.bn_recalibration_batches = bn_recalibration_batches
        self.recalibration_batch_size = recalibration_batch_size
        self.finetune_steps = finetune_steps
        self.finetune_lr = float(finetune_lr)
        self.finetune_batch_size = finetune_batch_size
        self.finetune_weight_decay = float(finetune_weight_decay)
        self.threads = threads
        self.seed = seed
        self.num_workers = num_workers

        generator = torch.Generator().manual_seed(seed)
        self.train_data = train_data  # what a strategy that trains (MetaPruning) trains on, as given
        self._data = as_source(data, "data")
        self._train = as_source(train_data, "train_data") if train_data is not None else None
        self.scoring_plan: list[Any] = []
        self._recalibration_plan: list[torch.Tensor] = []
        self._finetune_plan: list[torch.Tensor] = []
        if not isinstance(self._data, DataLoader):
            self.scoring_plan = scoring_plan(len(self._data), batch_size, batches, generator)
        if self._train is not None and not isinstance(self._train, DataLoader):
            size = len(self._train)
            if bn_recalibration_batches:
                count = min(bn_recalibration_batches, max(1, size // recalibration_batch_size))
                self._recalibration_plan = random_batches(size, recalibration_batch_size, count, generator)
            if finetune_steps:
                self._finetune_plan = random_batches(size, finetune_batch_size, finetune_steps, generator)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(batch_size={self.batch_size}, batches={self.batches}, "
            f"bn_recalibration_batches={self.bn_recalibration_batches}, "
            f"finetune_steps={self.finetune_steps}, device='{self.device}', threads={self.threads}, "
            f"bf16={self.bf16}, channels_last={self.channels_last}, seed={self.seed})"
        )

    def _autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def _to_device(self, batch: Batch) -> Batch:
        inputs, target = batch
        moved = []
        for tensor in inputs:
            tensor = tensor.to(self.device, non_blocking=True)
            if self.channels_last and tensor.dim() == 4:
                tensor = tensor.contiguous(memory_format=torch.channels_last)
            moved.append(tensor)
        return tuple(moved), target.to(self.device, non_blocking=True)

    def _iterate(self, source: Any, plan: list[Any], limit: int | None, name: str) -> Iterator[Batch]:
        """Device batches: the fixed plan of an indexable source, or the first `limit` batches of a loader. A
        dataset's samples are loaded by `num_workers` processes when asked (the same batches, in the same order)."""
        if isinstance(source, DataLoader):
            for batch in itertools.islice(source, limit):
                yield self._to_device(split_batch(batch, name))
        elif isinstance(source, DatasetSource) and self.num_workers and plan:
            sampler = [range(source.size)[key] if isinstance(key, slice) else key.tolist() for key in plan]
            loader = DataLoader(source.dataset, batch_sampler=sampler, num_workers=self.num_workers)
            for batch in loader:
                yield self._to_device(split_batch(batch, name))
        else:
            for key in plan:
                yield self._to_device(source.batch(key))

    def _finetune_batches(self) -> Iterator[Batch]:
        if not isinstance(self._train, DataLoader):
            yield from self._iterate(self._train, self._finetune_plan, None, "train_data")
            return
        produced = 0
        while produced < self.finetune_steps:
            before = produced
            for batch in self._iterate(self._train, [], self.finetune_steps - produced, "train_data"):
                produced += 1
                yield batch
            if produced == before:
                raise ValueError("train_data yielded no batches for fine-tuning")

    def _finetune(self, model: nn.Module) -> float:
        parameters = [p for p in model.parameters() if p.requires_grad]
        if not parameters:
            raise ValueError("fine-tuning was requested but the model has no parameters that require grad")
        optimizer = torch.optim.SGD(
            parameters, lr=self.finetune_lr, momentum=0.9, nesterov=True, weight_decay=self.finetune_weight_decay
        )
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.finetune_steps)
        model.train()
        total = torch.zeros((), device=self.device)
        with torch.enable_grad():
            for inputs, target in self._finetune_batches():
                with self._autocast():
                    logits = logits_of(model(*inputs))
                loss = F.cross_entropy(logits.float(), target)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total += loss.detach()
        return float(total) / self.finetune_steps

    def _recalibrate(self, model: nn.Module) -> int:
        batches = (
            inputs
            for inputs, _ in self._iterate(
                self._train, self._recalibration_plan, self.bn_recalibration_batches, "train_data"
            )
        )
        with self._autocast():
            return recalibrate_batchnorm(model, batches)

    def _score(self, model: nn.Module) -> dict[str, float]:
        model.eval()
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        correct_top5 = torch.zeros((), dtype=torch.long, device=self.device)
        loss = torch.zeros((), dtype=torch.float64, device=self.device)
        samples = 0
        with torch.inference_mode():
            for inputs, target in self._iterate(self._data, self.scoring_plan, self.batches, "data"):
                if target.is_floating_point():
                    raise TypeError("data targets must be integer class indices, got a floating-point tensor")
                with self._autocast():
                    logits = logits_of(model(*inputs))
                logits = logits.float()
                loss += F.cross_entropy(logits, target, reduction="sum").double()
                top = logits.topk(min(5, logits.shape[1]), dim=1).indices
                hits = top == target.unsqueeze(1)
                correct += hits[:, 0].sum()
                correct_top5 += hits.any(dim=1).sum()
                samples += int(target.shape[0])
        if samples == 0:
            raise ValueError("the scoring data yielded no samples")
        accuracy = int(correct) / samples
        return {
            "score": accuracy,
            "accuracy": accuracy,
            "accuracy_top5": int(correct_top5) / samples,
            "loss": float(loss) / samples,
            "samples": samples,
        }

    def __call__(self, model: nn.Module) -> dict[str, float]:
        start = time.perf_counter()
        rng_devices = [self.device.index] if self.device.type == "cuda" else []
        with num_threads(self.threads), torch.random.fork_rng(devices=rng_devices):
            torch.manual_seed(self.seed)
            model.to(self.device)
            if self.channels_last:
                model.to(memory_format=torch.channels_last)
            extras: dict[str, float] = {}
            if self.finetune_steps:
                extras["finetune_loss"] = self._finetune(model)
            recalibrated = self._recalibrate(model) if self.bn_recalibration_batches else 0
            result = self._score(model)
        result.update(
            extras,
            recalibration_batches=recalibrated,
            finetune_steps=self.finetune_steps,
            eval_seconds=time.perf_counter() - start,
        )
        return result
