"""Measured forward latency of a model, as an evaluator (score = -milliseconds) and a plain function.

Wall-clock latency is noisy on shared machines: another process on the same
cores can slow a run by far more than its share (2-thread OpenMP was seen to
collapse 50-fold under contention on a 2-core machine). Timing is the engine's
(:func:`autoprune.engine.latency.timing`): on a CPU, blocks in which the process
did not get its threads' CPU time are dropped and timed again, and `clean` says
what fraction of blocks was kept (well below 1: the machine was too busy to trust
the number). Still compare latencies measured with the same threads and batch
size, and prefer MACs or a per-layer lookup table where a deterministic cost
suffices.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Union

import numpy as np
import torch
from torch import nn

from ..engine.latency import timing
from ..utils import num_threads
from .base import Evaluator, check_count, resolve_device

Inputs = Union[torch.Tensor, Sequence[torch.Tensor]]


def _prepare_inputs(
    example_inputs: Inputs, batch_size: int | None, device: torch.device, channels_last: bool
) -> tuple[torch.Tensor, ...]:
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        raise TypeError("example_inputs must be a tensor or a sequence of tensors (the model's positional inputs)")
    prepared = []
    for tensor in inputs:
        if batch_size is not None:
            if tensor.dim() == 0 or tensor.shape[0] == 0:
                raise ValueError("batch_size needs example inputs with a non-empty batch dimension")
            tensor = tensor[torch.arange(batch_size) % tensor.shape[0]]  # repeat samples to fill the batch
        tensor = tensor.to(device)
        if channels_last and tensor.dim() == 4:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        prepared.append(tensor)
    return tuple(prepared)


def _check_options(batch_size: int | None, threads: int, min_run_time: float, warmup: int) -> None:
    if batch_size is not None:
        check_count("batch_size", batch_size, 1)
    check_count("threads", threads, 1)
    check_count("warmup", warmup, 0)
    if isinstance(min_run_time, bool) or not isinstance(min_run_time, (int, float)) or not min_run_time > 0:
        raise ValueError(f"min_run_time must be a positive number of seconds, got {min_run_time!r}")


def latency_stats(
    model: nn.Module,
    example_inputs: Inputs,
    *,
    batch_size: int | None,
    threads: int,
    device: str | torch.device,
    min_run_time: float,
    warmup: int,
    channels_last: bool,
    bf16: bool,
) -> dict[str, float]:
    """Forward latency of ``model`` with its spread (see :func:`measure_latency` for the arguments): the median
    ``latency_ms``, ``iqr_ms``, ``latency_mean_ms``, the ``runs`` (timed blocks) and ``clean``, the fraction of
    blocks no other process disturbed (low on a busy machine: the figure is then unreliable)."""
    _check_options(batch_size, threads, min_run_time, warmup)
    resolved = resolve_device(device)
    inputs = _prepare_inputs(example_inputs, batch_size, resolved, channels_last)
    model.to(resolved)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    was_training = model.training
    model.eval()
    autocast = torch.autocast(resolved.type, dtype=torch.bfloat16, enabled=bf16)
    try:
        with torch.inference_mode(), autocast, num_threads(threads):
            for _ in range(warmup):
                model(*inputs)
            got = timing(lambda: model(*inputs), min_run_time=min_run_time, device=resolved)
    finally:
        model.train(was_training)
    q25, q75 = np.percentile(got.blocks_ms, [25, 75])
    return {
        "latency_ms": got.ms,
        "iqr_ms": float(q75 - q25),
        "latency_mean_ms": float(np.mean(got.blocks_ms)),
        "runs": len(got.blocks_ms),
        "clean": got.clean,
    }


def measure_latency(
    model: nn.Module,
    example_inputs: Inputs,
    *,
    batch_size: int | None = None,
    threads: int = 1,
    device: str | torch.device = "cpu",
    min_run_time: float = 0.5,
    warmup: int = 3,
    channels_last: bool = False,
    bf16: bool = False,
) -> float:
    """Median forward latency of `model(*example_inputs)` in milliseconds, in eval mode under inference_mode.

    `batch_size` repeats the example samples to that batch size; `threads` is
    torch's intra-op thread count while timing. The model is moved to `device`
    (and to channels-last layout when asked); its train/eval mode is restored.
    Noisy on shared machines: see this module's docstring.
    """
    return latency_stats(
        model,
        example_inputs,
        batch_size=batch_size,
        threads=threads,
        device=device,
        min_run_time=min_run_time,
        warmup=warmup,
        channels_last=channels_last,
        bf16=bf16,
    )["latency_ms"]


class LatencyEvaluator(Evaluator):
    """Score = -median forward latency in milliseconds (higher is faster).

    Returns `score`, `latency_ms` (median), `iqr_ms`, `latency_mean_ms`, `runs`
    (timed blocks the median is over) and `clean` (the fraction of blocks no
    other process disturbed). Options are those of
    `measure_latency`. Latency is noisy on shared machines (see this module's
    docstring): measure candidates on an otherwise idle machine with fixed
    `threads`, and prefer batch sizes well above 1 on CPU, where batch-1 time
    is dominated by Python overhead.
    """

    def __init__(
        self,
        example_inputs: Inputs,
        *,
        batch_size: int | None = None,
        threads: int = 1,
        device: str | torch.device = "cpu",
        min_run_time: float = 0.5,
        warmup: int = 3,
        channels_last: bool = False,
        bf16: bool = False,
    ) -> None:
        _check_options(batch_size, threads, min_run_time, warmup)
        self.device = resolve_device(device)
        self.options: dict[str, Any] = dict(
            batch_size=batch_size,
            threads=threads,
            device=self.device,
            min_run_time=min_run_time,
            warmup=warmup,
            channels_last=channels_last,
            bf16=bf16,
        )
        self.example_inputs = example_inputs
        _prepare_inputs(example_inputs, batch_size, self.device, channels_last)  # fail early on bad inputs

    def __repr__(self) -> str:
        options = ", ".join(f"{key}={value!r}" for key, value in self.options.items())
        return f"{type(self).__name__}({options})"

    def __call__(self, model: nn.Module) -> dict[str, float]:
        result = latency_stats(model, self.example_inputs, **self.options)
        return {"score": -result["latency_ms"], **result}
