"""Measured cost of a model: the reference the analytic cost model must equal."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from .trace import plain_kernels


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args: Any, out_shape=None, **kwargs: Any) -> int:  # noqa: ANN001
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# torch's counter knows the CUDA attention kernels but not the CPU one.
_EXTRA = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops}


def count_macs(model: nn.Module, example_inputs: Any) -> int:
    """Multiply-accumulates of one eval-mode forward pass, as ``FlopCounterMode`` counts them / 2.

    Fused kernels (nn.MultiheadAttention's fast path, oneDNN / cuDNN RNNs) are
    switched off so that their matmuls are counted like any other. Parameters
    stop requiring grad meanwhile: FlopCounterMode's module tracker fails under
    no_grad when a parameter itself is a module's input (timm's CaiT class token).
    """
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    was_training = model.training
    grads = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    try:
        for p, _ in grads:
            p.requires_grad_(False)
        counter = FlopCounterMode(display=False, custom_mapping=_EXTRA)
        with plain_kernels(model), torch.no_grad(), counter:
            model(*inputs)
    finally:
        model.train(was_training)
        for p, flag in grads:
            p.requires_grad_(flag)
    return counter.get_total_flops() // 2


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared parameters counted once; buffers not counted)."""
    return sum(p.numel() for p in model.parameters())
