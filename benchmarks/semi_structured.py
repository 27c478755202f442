"""2:4 semi-structured sparsity on a CUDA GPU: ``level`` with ``pattern="2:4"``, then ``to_semi_structured``.

    python benchmarks/semi_structured.py [--width 4096] [--batch 4096] [--steps 50] [--out results.json]

An MLP of two ``--width`` × ``--width`` Linear layers and a 10-output head is trained ``--steps`` steps under
the 2:4 pattern (random regression data: what is measured is the conversion, not accuracy), finalized, saved and
loaded back with its masks, then converted: the two wide weights become ``torch.sparse.SparseSemiStructuredTensor``
(float16), and the head, 2:4 sparse but 10 rows (no kernel takes it), stays dense with a warning. The converted
network's outputs are compared with the masked dense network's in float16, and both are timed at batch
``--batch`` (CUDA events, median of 50 calls after 10 warm-up ones). It needs a CUDA GPU of compute capability
8.0 or later; on anything else it stops with the reason.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import warnings

import torch
from torch import nn

import autoprune as ap
from autoprune import training
from autoprune.training import level


def mlp(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))


def timed(model: nn.Module, x: torch.Tensor) -> float:
    """Median milliseconds of one forward pass."""
    times = []
    with torch.inference_mode():
        for i in range(60):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            model(x)
            end.record()
            torch.cuda.synchronize()
            if i >= 10:
                times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0):
        raise SystemExit("2:4 semi-structured kernels need a CUDA GPU of compute capability 8.0 or later")
    torch.manual_seed(0)
    width = args.width
    space = ap.PruningSpace(mlp(width), torch.zeros(1, width))
    method = training.get("level", space, 0.5, total_steps=args.steps, pattern="2:4")
    net = method.model.cuda()
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    for _ in range(args.steps):
        x = torch.randn(256, width, device="cuda")
        loss = (net(x) - x[:, :10]).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        method.before_step(net, optimizer)
        optimizer.step()
        method.after_step(net, optimizer)
    pruned = method.finalize(net)
    buffer = io.BytesIO()
    torch.save(pruned.state_dict(), buffer)
    saved = buffer.getvalue()

    def loaded() -> nn.Module:
        return level.load_masked(mlp(width), torch.load(io.BytesIO(saved), weights_only=True)).cuda().eval()

    dense = loaded().half()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sparse = level.to_semi_structured(loaded())
    x = torch.randn(args.batch, width, device="cuda", dtype=torch.float16)
    with torch.inference_mode():
        reference, out = dense(x), sparse(x)
    error = float((out - reference).abs().max() / reference.abs().max())
    kinds = [type(m.weight).__name__ for m in sparse.modules() if isinstance(m, nn.Linear)]
    result = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "width": width,
        "batch": args.batch,
        "backend": level.semi_structured_backend().__name__,
        "weights": kinds,
        "warnings": [str(w.message) for w in caught],
        "max_relative_error": error,
        "dense_ms": timed(dense, x),
        "sparse_ms": timed(sparse, x),
    }
    result["speedup"] = result["dense_ms"] / result["sparse_ms"]
    print(json.dumps(result, indent=2))
    assert error < 1e-2, "the semi-structured network does not compute what the masked one does"
    assert kinds[:2] == [result["backend"]] * 2 and kinds[2] == "Parameter", kinds
    assert any("left dense" in w and "4: its weight is 10 x" in w for w in result["warnings"]), result["warnings"]
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
