"""Pretrain a zoo ResNet on Fashion-MNIST and commit its weights to autoprune/zoo/weights/.

    python benchmarks/pretrain.py --epochs 10             # ResNet-20, about 93% test accuracy
    python benchmarks/pretrain.py --model resnet56 --threads 1

Data: the 60k Fashion-MNIST training set split by `fashion_mnist_splits` into
55k train / 5k val (seed 0). Only the 55k train images are trained on; val is
evaluated after each epoch for the log, and the 10k test set once, at the end.

Recipe: SGD (nesterov, momentum 0.9, weight decay 5e-4), OneCycle with max_lr
0.2, batch 128, random crop with 2 px padding + horizontal flip. bf16 autocast
with channels_last when the CPU runs bf16 on AMX (amx_bf16 in /proc/cpuinfo),
fp32 + channels_last otherwise (`--precision` overrides it).

Writes `<name>.pt` (fp32 state_dict of plain tensors, loadable with
`torch.load(weights_only=True)`), `<name>.json` (accuracies, recipe, timing,
versions) and the `pretrain` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import random
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from report import BENCHMARKS_MD, write_section  # noqa: E402 - benchmarks/ is on sys.path when a script runs
from torch import nn

from autoprune import zoo
from autoprune.data import FASHION_MNIST_MEAN, FASHION_MNIST_STD, fashion_mnist_splits

REPO = Path(__file__).resolve().parents[1]
WEIGHTS_DIR = REPO / "autoprune" / "zoo" / "weights"
MARKER = "pretrain"
MODELS = {"resnet20": zoo.resnet20, "resnet56": zoo.resnet56}
MODEL_KWARGS = {"in_channels": 1, "num_classes": 10}
BACKGROUND = (0.0 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD  # a black pixel after normalisation


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pick_precision(choice: str) -> str:
    """ "auto" -> bf16 only where AMX runs it (amx_bf16); fp32 otherwise.

    On a Sapphire Rapids CPU with AMX, bf16 autocast + channels_last trains
    ResNet-20 2.3x faster than fp32 at the same accuracy. On a CPU with
    avx512_bf16 but no AMX it was measured no faster than fp32 (about 350
    img/s per CPU-second either way), so fp32 is kept there.
    """
    if choice != "auto":
        return choice
    return "bf16" if "amx_bf16" in cpu_flags() else "fp32"


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random crop with `pad` px of background padding plus a random horizontal flip, per sample."""
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), value=BACKGROUND)
    oy = torch.randint(0, 2 * pad + 1, (b, 1), generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (b, 1), generator=generator)
    rows = (oy + torch.arange(h))[:, None, :, None]  # (b, 1, h, 1)
    cols = (ox + torch.arange(w))[:, None, None, :]  # (b, 1, 1, w)
    out = padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    flip = torch.rand(b, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str, batch_size: int = 500) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size].contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
            correct += int((model(xb).argmax(1) == y[start : start + batch_size]).sum())
    return correct / len(x)


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def benchmarks_section(weights_dir: Path) -> str:
    """Markdown for every `*_fashion_mnist.json` in `weights_dir`."""
    rows = []
    for meta_path in sorted(weights_dir.glob("*.json")):
        meta = json.loads(meta_path.read_text())
        rows.append(
            f"| `{meta['name']}` | {meta['params']:,} | {meta['epochs']} | {100 * meta['val_accuracy']:.2f}% "
            f"| **{100 * meta['test_accuracy']:.2f}%** | {meta['train_seconds'] / 60:.1f} min "
            f"| {meta['precision']}, {meta['threads']} thr | {meta['weights_bytes'] / 1e6:.2f} MB "
            f"| {meta['torch_version']}, {meta['date'][:10]} |"
        )
    return "\n".join(
        [
            "## Pretrained checkpoints (`benchmarks/pretrain.py`)",
            "",
            "Fashion-MNIST, trained on the 55k train split; val = 5k held out of the 60k training set",
            "(seed 0); test = the official 10k test set, evaluated once at the end in fp32.",
            "Recipe: SGD nesterov 0.9, wd 5e-4, OneCycle max_lr 0.2, batch 128, crop (pad 2) + flip.",
            "Load with `autoprune.zoo.pretrained.pretrained(name)`. Training times are wall-clock on a",
            "shared machine (other jobs ran alongside); per-epoch seconds are in the JSON next to the weights.",
            "",
            "| checkpoint | params | epochs | val acc | test acc | train time | precision | file | torch, date |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=sorted(MODELS), default="resnet20")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch threads; use 1 when another process may share the cores (default 2)",
    )
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-lr", type=float, default=0.2)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument(
        "--train-subset",
        type=int,
        default=None,
        metavar="N",
        help="train on the first N of the 55k train images only (smoke tests)",
    )
    parser.add_argument("--data-root", default=None, help="Fashion-MNIST root (default: $AUTOPRUNE_DATA, Debian)")
    parser.add_argument("--out-dir", type=Path, default=WEIGHTS_DIR)
    parser.add_argument(
        "--benchmarks-md", default=str(BENCHMARKS_MD), help="file whose `pretrain` section is rewritten ('' to skip)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    precision = pick_precision(args.precision)
    name = f"{args.model}_fashion_mnist"

    def log(msg: str) -> None:
        print(msg, flush=True)

    log(
        f"{name}: {args.epochs} epochs, {precision}, {args.threads} thread(s), seed {args.seed}, "
        f"torch {torch.__version__}, {cpu_model()}"
    )

    splits = fashion_mnist_splits(args.data_root, val_size=5000, seed=0)
    x_train, y_train = splits.train.tensors
    if args.train_subset is not None:
        x_train, y_train = x_train[: args.train_subset], y_train[: args.train_subset]
    x_val, y_val = splits.val.tensors
    x_test, y_test = splits.test.tensors

    model = MODELS[args.model](**MODEL_KWARGS).to(memory_format=torch.channels_last)
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.SGD(
        model.parameters(), lr=args.max_lr, momentum=0.9, nesterov=True, weight_decay=args.weight_decay
    )
    steps = len(x_train) // args.batch_size  # drop the ragged last batch
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.max_lr, epochs=args.epochs, steps_per_epoch=steps
    )
    generator = torch.Generator().manual_seed(args.seed)

    history = []
    train_seconds = 0.0
    for epoch in range(1, args.epochs + 1):
        model.train()
        wall, cpu = time.perf_counter(), time.process_time()
        order = torch.randperm(len(x_train), generator=generator)
        loss_sum = correct = seen = 0
        for step in range(steps):
            index = order[step * args.batch_size : (step + 1) * args.batch_size]
            xb = augment(x_train[index], generator).contiguous(memory_format=torch.channels_last)
            yb = y_train[index]
            with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
                logits = model(xb)
                loss = F.cross_entropy(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += float(loss.detach()) * len(yb)
            correct += int((logits.argmax(1) == yb).sum())
            seen += len(yb)
        epoch_seconds = time.perf_counter() - wall
        train_seconds += epoch_seconds
        utilisation = (time.process_time() - cpu) / epoch_seconds
        val_acc = evaluate(model, x_val, y_val, precision)
        history.append(
            {
                "epoch": epoch,
                "train_loss": round(loss_sum / seen, 4),
                "train_accuracy": round(correct / seen, 4),
                "val_accuracy": val_acc,
                "seconds": round(epoch_seconds, 1),
            }
        )
        log(
            f"epoch {epoch:2d}/{args.epochs}  loss {loss_sum / seen:.4f}  train {100 * correct / seen:.2f}%  "
            f"val {100 * val_acc:.2f}%  {epoch_seconds:.0f} s ({seen / epoch_seconds:.0f} img/s, "
            f"{utilisation:.2f} CPU-s/s)"
        )

    model = model.float().to(memory_format=torch.contiguous_format).eval()
    val_acc, test_acc = evaluate(model, x_val, y_val, "fp32"), evaluate(model, x_test, y_test, "fp32")
    test_acc_bf16 = evaluate(model, x_test, y_test, "bf16") if precision == "bf16" else None
    log(f"final (fp32 eval): val {100 * val_acc:.2f}%  test {100 * test_acc:.2f}%  train time {train_seconds:.0f} s")

    state = {key: value.detach().to("cpu").clone().contiguous() for key, value in model.state_dict().items()}
    state = {key: value.float() if value.is_floating_point() else value for key, value in state.items()}
    weights_path = args.out_dir / f"{name}.pt"
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    write_atomic(weights_path, payload)
    torch.load(weights_path, weights_only=True)  # fail here, not in a user's hands

    meta = {
        "name": name,
        "arch": args.model,
        "arch_kwargs": MODEL_KWARGS,
        "dataset": "fashion_mnist",
        "normalisation": {"mean": FASHION_MNIST_MEAN, "std": FASHION_MNIST_STD},
        "splits": {"train": len(x_train), "val": len(x_val), "test": len(x_test), "val_seed": 0},
        "test_accuracy": test_acc,
        "val_accuracy": val_acc,
        "test_accuracy_bf16": test_acc_bf16,
        "params": params,
        "epochs": args.epochs,
        "seed": args.seed,
        "recipe": {
            "optimizer": "SGD nesterov",
            "momentum": 0.9,
            "weight_decay": args.weight_decay,
            "schedule": "OneCycleLR",
            "max_lr": args.max_lr,
            "batch_size": args.batch_size,
            "augment": "random crop pad 2 + horizontal flip",
        },
        "precision": precision,
        "threads": args.threads,
        "train_seconds": round(train_seconds, 1),
        "history": history,
        "weights_file": weights_path.name,
        "weights_bytes": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "cpu": cpu_model(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
    }
    write_atomic(weights_path.with_suffix(".json"), (json.dumps(meta, indent=2) + "\n").encode())
    log(f"wrote {weights_path} ({len(payload) / 1e6:.2f} MB) and {weights_path.with_suffix('.json').name}")

    if args.benchmarks_md:
        write_section(MARKER, benchmarks_section(args.out_dir), path=Path(args.benchmarks_md))
        log(f"updated the '{MARKER}' section of {args.benchmarks_md}")
    return meta


if __name__ == "__main__":
    main()
