"""``autoprune init``: a commented study file to start from, so an installed autoprune needs no repository.

With no arguments it is the quickstart (the pretrained Fashion-MNIST ResNet-20 the package ships, half the MACs,
TPE, fine-tuned and measured at the end). ``model`` and ``data`` take ``SOURCE:NAME`` strings:

* model: ``pretrained:resnet20_fashion_mnist``, ``zoo:resnet56``, ``torchvision:resnet18``, ``timm:resnet18``,
  ``factory:my_models:build``;
* data: ``fashion_mnist``, ``digits``, ``mnist[:ROOT]``, ``cifar10:ROOT``, ``cifar100:ROOT``, ``image_folder:ROOT``,
  ``factory:my_data:splits``.
"""

from __future__ import annotations

from pathlib import Path

from .utils import did_you_mean

MODEL_SOURCES = ("pretrained", "zoo", "torchvision", "timm", "factory")
DATASETS = ("fashion_mnist", "digits", "mnist", "cifar10", "cifar100", "image_folder", "factory")

# (input shape, classes, channels) of each dataset; image folders are resized to 224 (ImageNet-style models).
_SHAPES = {
    "fashion_mnist": ([1, 1, 28, 28], 10),
    "mnist": ([1, 1, 28, 28], 10),
    "digits": ([1, 1, 8, 8], 10),
    "cifar10": ([1, 3, 32, 32], 10),
    "cifar100": ([1, 3, 32, 32], 100),
    "image_folder": ([1, 3, 224, 224], None),
    "factory": ([1, 3, 224, 224], None),
}


def _split(text: str, allowed: tuple[str, ...], what: str) -> tuple[str, str | None]:
    source, _, rest = text.partition(":")
    if source not in allowed:
        raise ValueError(
            f"{what} {text!r}: start with one of {', '.join(allowed)} (e.g. "
            + ("'torchvision:resnet18'" if what == "--model" else "'image_folder:path/to/images'")
            + f").{did_you_mean(source, allowed)}"
        )
    return source, rest or None


def _classes(dataset: str, root: str | None) -> int | None:
    known = _SHAPES[dataset][1]
    if known is not None or dataset != "image_folder" or root is None:
        return known
    folder = Path(root) / "train" if (Path(root) / "train").is_dir() else Path(root)
    return sum(1 for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else None


def study_template(
    model: str = "pretrained:resnet20_fashion_mnist",
    data: str | None = None,
    *,
    name: str = "my_study",
    strategy: str = "tpe",
    macs: float = 0.5,
    n_trials: int = 150,
    finetune_steps: int = 500,
) -> str:
    """The text of a commented study file (YAML) for ``model`` on ``data`` (default: the model's own dataset for a
    pretrained zoo model, else Fashion-MNIST)."""
    source, model_name = _split(model, MODEL_SOURCES, "--model")
    if model_name is None:
        raise ValueError(f"--model {model!r}: name the model after the colon, e.g. '{source}:resnet18'")
    if data is None:
        data = "fashion_mnist"
    dataset, root = _split(data, DATASETS, "--data")
    if dataset in ("cifar10", "cifar100", "image_folder") and root is None:
        raise ValueError(f"--data {data!r}: give the folder after the colon, e.g. '{dataset}:path/to/{dataset}'")
    shape, _ = _SHAPES[dataset]
    classes = _classes(dataset, root)
    lines = [
        "# An autoprune study: what to prune, how to score it, under which budget, and how to search.",
        f"#   autoprune search {name}.yaml             runs it; run it again to resume",
        f"#   autoprune show {name}.yaml               the best trials so far (--plots DIR for PNGs)",
        f"#   autoprune export {name}.yaml --out DIR   another trial, or again with --finetune N",
        f"study_name: {name}",
        "model:",
    ]
    if source == "pretrained":
        lines.append(f"  pretrained: {model_name}  # a trained model shipped with autoprune")
    else:
        comment = {
            "zoo": "an autoprune zoo model (resnet20/32/44/56/110, vgg16_bn, mobilenet_v2)",
            "torchvision": "torchvision.models.get_model(NAME); weights come from checkpoint:",
            "timm": "timm.create_model(NAME); weights come from checkpoint:",
            "factory": "your function returning an nn.Module (importable from here or the study file's folder)",
        }[source]
        value = f'"{model_name}"' if source == "factory" else model_name
        lines.append(f"  {source}: {value}  # {comment}")
        kwargs = []
        if source in ("torchvision", "timm", "zoo") and classes:
            kwargs.append(f"num_classes: {classes}")
        if source == "zoo" and shape[1] != 3:
            kwargs.append(f"in_channels: {shape[1]}")
        if kwargs:
            lines.append(f"  kwargs: {{{', '.join(kwargs)}}}")
        elif source in ("torchvision", "timm") and dataset == "image_folder":
            lines.append("  # kwargs: {num_classes: N}  # N = the number of class folders")
        lines.append("  checkpoint: model.pt  # your trained weights: torch.save(model.state_dict(), 'model.pt')")
    lines.append(f"  input_shape: {shape}  # one example input (batch 1): MACs are counted at this size")
    lines.append("data:")
    if dataset == "factory":
        lines.append(
            f'  factory: "{root or "my_data:splits"}"  # returns (train, val, test) datasets or a dict of them'
        )
    else:
        lines.append(f"  dataset: {dataset}" + "  # also: digits, mnist, cifar10, cifar100, image_folder, factory")
        if root:
            lines.append(f"  root: {root}  # relative paths are relative to this file")
    if dataset == "image_folder":
        lines.append("  transforms: [{resize: 256}, {center_crop: 224}, {normalize: auto}, hflip]  # hflip: train only")
        lines.append("  num_workers: 2  # processes decoding images")
    elif dataset in ("cifar10", "cifar100"):
        lines.append("  transforms: [{normalize: auto}, {random_crop: {size: 32, padding: 4}}, hflip]")
    else:
        lines.append("  # transforms: [grayscale, {resize: 32}, {center_crop: 28}, {normalize: auto}, hflip]")
    if dataset in ("fashion_mnist", "mnist", "cifar10", "cifar100"):
        lines.append("  val_size: 5000  # TRAINING images held out to score candidates; test is for the report")
    lines += [
        "evaluator:",
        '  name: accuracy  # top-1 on the held-out images; or latency, or "pkg.module:function"',
        "  kwargs:",
        "    batches: 8  # 8 x 256 held-out images per candidate",
        "    bn_recalibration_batches: 10  # adaptive BN: re-estimate BatchNorm statistics on 10 x 128 training images",
        "budget:",
        f"  macs: {macs}  # at most this fraction of the MACs; also params:, latency: (measured)",
        "strategy:",
        f"  name: {strategy}  # random, uniform, tpe, sa, netadapt, amc, metapruning",
        "criterion: l1  # which channels a group keeps: l1, l2, fpgm, bn_scale, random",
        f"n_trials: {n_trials}  # evaluations in all (every worker together)",
        "threads: 1  # CPU threads per evaluation",
        "seed: 0",
        "export:",
        f"  dir: out/{name}",
        f"  finetune_steps: {finetune_steps}  # SGD steps on the training data before the best is written",
        "  report: true  # REPORT.md: test accuracy, MACs, size, latency against the unpruned model",
    ]
    text = "\n".join(_align(lines)) + "\n"
    import yaml

    from .studyfile import parse_study

    raw = yaml.safe_load(text)
    # Valid by construction; a factory of the user's need not exist yet, so the rest is checked around it.
    if source == "factory":
        raw["model"] = {"pretrained": "resnet20_fashion_mnist", "input_shape": raw["model"]["input_shape"]}
    if dataset == "factory":
        raw["data"] = {"dataset": "fashion_mnist"}
    parse_study(raw, f"autoprune init --model {model} --data {data}", text)
    return text


def _align(lines: list[str], column: int = 34) -> list[str]:
    """Line up the comments after values at ``column`` (or one space after a longer value)."""
    out = []
    for line in lines:
        value, sep, comment = line.partition("  # ")
        if sep and value.strip() and not value.lstrip().startswith("#"):
            line = f"{value.rstrip():<{column - 1}} # {comment.strip()}"
        out.append(line)
    return out
