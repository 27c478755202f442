"""Image transforms named in a study file, applied on tensors (so they work for decoded images and tensor datasets).

A study file lists them in order, each a bare name or a one-key mapping::

    transforms: [grayscale, {resize: 32}, {center_crop: 28}, {normalize: auto}, hflip]

* ``grayscale``                 — 3 channels -> 1 (ITU-R 601 luma); a folder of images is then decoded as greyscale;
* ``resize: N`` / ``[H, W]``    — an int resizes the *smaller* edge to N (torchvision's rule), a pair to exactly H x W;
* ``center_crop: N`` / ``[H, W]``;
* ``random_crop: N`` or ``{size: N, padding: P}`` — zero-pad by P, then crop N x N at a random place;
* ``normalize: auto``           — per-channel mean/std measured on up to `AUTO_NORMALIZE_SAMPLES` *training* images
  (seeded choice) after the transforms before it; or ``normalize: {mean: [...], std: [...]}``;
* ``hflip`` / ``{hflip: p}``    — random horizontal flip with probability p (0.5).

``hflip`` and ``random_crop`` are augmentation: the training split gets them, drawn afresh for every sample; val and
test never do (``random_crop`` becomes a centre crop of the same size there, so every split has the same shape).
The deterministic transforms apply to every split. A TensorDataset is transformed once, up front (chunked), and stays a
TensorDataset; a training split with augmentation becomes a `TransformedDataset` that applies the remaining
transforms per sample. Any other dataset is wrapped lazily in a `TransformedDataset`.

Inputs are float tensors ``(C, H, W)`` (or batches ``(N, C, H, W)`` for the deterministic transforms); uint8 tensors,
numpy arrays and PIL images are first converted to float32 in [0, 1] (see `to_float_image`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from ..utils import did_you_mean, unknown_name

AUTO_NORMALIZE_SAMPLES = 2000
"""At most this many training images (a seeded choice) measure ``normalize: auto``'s mean and std."""
MATERIALISE_LIMIT_BYTES = 4 << 30
"""A TensorDataset whose transformed float32 images would exceed this stays lazy (transformed per sample)."""
_CHUNK = 1024


def to_float_image(x: Any) -> torch.Tensor:
    """An image as a float tensor: PIL images ``(H, W[, C])`` and uint8 arrays become float32 ``(C, H, W)`` in
    [0, 1] (a batch ``(N, C, H, W)`` of uint8 keeps its layout); float tensors pass through unchanged."""
    if not isinstance(x, torch.Tensor):
        if hasattr(x, "mode") and hasattr(x, "size") and hasattr(x, "getbands"):  # a PIL image
            array = np.asarray(x)
            x = torch.from_numpy(array.copy())
            x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)
        else:
            x = torch.as_tensor(np.asarray(x))
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    if not x.is_floating_point():
        return x.to(torch.float32)
    return x


class Transform:
    """One named transform of an image tensor ``(..., C, H, W)``."""

    name: ClassVar[str] = ""
    random: ClassVar[bool] = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def for_eval(self) -> Transform | None:
        """What val and test get instead (None: nothing); deterministic transforms are their own."""
        return self


@dataclass(frozen=True)
class Grayscale(Transform):
    name: ClassVar[str] = "grayscale"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[-3]
        if channels == 1:
            return x
        if channels != 3:
            raise ValueError(
                f"grayscale needs 1- or 3-channel images, got {channels} channels (shape {tuple(x.shape)})"
            )
        from torchvision.transforms.v2 import functional as F

        return F.rgb_to_grayscale(x, num_output_channels=1)


@dataclass(frozen=True)
class Resize(Transform):
    size: tuple[int, ...]
    name: ClassVar[str] = "resize"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as F

        return F.resize(x, list(self.size), antialias=True)


@dataclass(frozen=True)
class CenterCrop(Transform):
    size: tuple[int, int]
    name: ClassVar[str] = "center_crop"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as F

        return F.center_crop(x, list(self.size))


@dataclass(frozen=True)
class RandomCrop(Transform):
    size: tuple[int, int]
    padding: int = 0
    name: ClassVar[str] = "random_crop"
    random: ClassVar[bool] = True

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding:
            x = torch.nn.functional.pad(x, (self.padding,) * 4)
        (h, w), (height, width) = self.size, x.shape[-2:]
        if h > height or w > width:
            raise ValueError(
                f"random_crop: size {h}x{w} is larger than the (padded) image {height}x{width}; "
                f"resize first or crop smaller"
            )
        top = int(torch.randint(0, height - h + 1, ()))
        left = int(torch.randint(0, width - w + 1, ()))
        return x[..., top : top + h, left : left + w]

    def for_eval(self) -> Transform:
        return CenterCrop(self.size)


@dataclass(frozen=True)
class HFlip(Transform):
    p: float = 0.5
    name: ClassVar[str] = "hflip"
    random: ClassVar[bool] = True

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(-1) if float(torch.rand(())) < self.p else x

    def for_eval(self) -> None:
        return None


@dataclass(frozen=True)
class Normalize(Transform):
    """``(x - mean) / std`` per channel; ``mean is None`` means ``auto`` (measured by `Transforms.fit`)."""

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    name: ClassVar[str] = "normalize"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is None or self.std is None:
            raise RuntimeError("normalize: auto has not been measured yet; call Transforms.fit(train) first")
        channels = x.shape[-3]
        if len(self.mean) not in (1, channels):
            raise ValueError(
                f"normalize: {len(self.mean)} mean/std values for images with {channels} channels "
                f"(give 1 or {channels} values)"
            )
        mean = torch.tensor(self.mean, dtype=x.dtype).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(-1, 1, 1)
        return (x - mean) / std


_CLASSES: dict[str, type[Transform]] = {
    cls.name: cls for cls in (Grayscale, Resize, CenterCrop, RandomCrop, Normalize, HFlip)
}
TRANSFORM_NAMES = tuple(_CLASSES)


def _size(value: Any, where: str, pair: bool) -> tuple[int, ...]:
    items = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if (
        not isinstance(items, (list, tuple))
        or len(items) not in (1, 2)
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in items)
    ):
        raise ValueError(f"{where}: the size is a positive int N or a pair [H, W], got {value!r}")
    items = tuple(items)
    return items * 2 if pair and len(items) == 1 else items


def _floats(value: Any, where: str, positive: bool) -> tuple[float, ...]:
    items = [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    if (
        not isinstance(items, (list, tuple))
        or not items
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items)
    ):
        raise ValueError(f"{where} is a number or a list of numbers (one per channel), got {value!r}")
    if positive and any(v <= 0 for v in items):
        raise ValueError(f"{where} values must be positive, got {value!r}")
    return tuple(float(v) for v in items)


def _keys(mapping: Mapping, allowed: Sequence[str], required: Sequence[str], where: str) -> None:
    extra = [k for k in mapping if k not in allowed]
    if extra:
        raise ValueError(
            f"{where}: unknown key {extra[0]!r}; allowed keys: {', '.join(allowed)}.{did_you_mean(extra[0], allowed)}"
        )
    missing = [k for k in required if k not in mapping]
    if missing:
        raise ValueError(f"{where} needs {', '.join(missing)} (allowed keys: {', '.join(allowed)})")


def _build(name: str, arg: Any, where: str) -> Transform:
    if name not in _CLASSES:
        raise ValueError(f"{where}: " + unknown_name(name, TRANSFORM_NAMES, "transform"))
    given = arg is not None
    if name == "grayscale":
        if arg not in (None, True):
            raise ValueError(f"{where}: grayscale takes no value; write it as a bare 'grayscale'")
        return Grayscale()
    if name == "hflip":
        if arg in (None, True):
            return HFlip()
        if isinstance(arg, bool) or not isinstance(arg, (int, float)) or not 0 <= arg <= 1:
            raise ValueError(f"{where}: hflip's value is its probability, a number in [0, 1], got {arg!r}")
        return HFlip(float(arg))
    if name == "normalize":
        if arg in (None, "auto"):
            return Normalize()
        if not isinstance(arg, Mapping):
            raise ValueError(f"{where}: normalize is 'auto' or {{mean: [...], std: [...]}}, got {arg!r}")
        _keys(arg, ("mean", "std"), ("mean", "std"), f"{where} (normalize)")
        mean = _floats(arg["mean"], f"{where}: normalize.mean", positive=False)
        std = _floats(arg["std"], f"{where}: normalize.std", positive=True)
        if len(mean) != len(std):
            raise ValueError(f"{where}: normalize has {len(mean)} mean values but {len(std)} std values")
        return Normalize(mean, std)
    if not given:
        example = "{random_crop: {size: 32, padding: 4}}" if name == "random_crop" else f"{{{name}: 32}}"
        raise ValueError(f"{where}: {name} needs a size; write it as {example}")
    if name == "resize":
        return Resize(_size(arg, f"{where}: resize", pair=False))
    if name == "center_crop":
        return CenterCrop(_size(arg, f"{where}: center_crop", pair=True))  # type: ignore[arg-type]
    padding: Any = 0
    if isinstance(arg, Mapping):
        _keys(arg, ("size", "padding"), ("size",), f"{where} (random_crop)")
        arg, padding = arg["size"], arg.get("padding", 0)
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"{where}: random_crop.padding is an int >= 0, got {padding!r}")
    return RandomCrop(_size(arg, f"{where}: random_crop", pair=True), padding)  # type: ignore[arg-type]


class Transforms:
    """An ordered list of transforms: the training split gets all of them, val and test the deterministic ones."""

    def __init__(self, ops: Sequence[Transform] = ()) -> None:
        self.ops = tuple(ops)

    def __len__(self) -> int:
        return len(self.ops)

    def __bool__(self) -> bool:
        return bool(self.ops)

    def __repr__(self) -> str:
        return f"Transforms({list(self.ops)!r})"

    def has(self, name: str) -> bool:
        return any(op.name == name for op in self.ops)

    @property
    def needs_fit(self) -> bool:
        """True while a ``normalize: auto`` waits to be measured on the training split."""
        return any(isinstance(op, Normalize) and op.mean is None for op in self.ops)

    def eval_ops(self) -> tuple[Transform, ...]:
        """The transforms val and test get: no augmentation (random_crop -> center_crop, hflip -> nothing)."""
        return tuple(e for e in (op.for_eval() for op in self.ops) if e is not None)

    def train_stages(self) -> tuple[tuple[Transform, ...], tuple[Transform, ...]]:
        """(up front, per sample): the deterministic transforms before the first random one can run once on the
        whole training set; the rest run per sample, drawn afresh each time."""
        first = next((i for i, op in enumerate(self.ops) if op.random), len(self.ops))
        return self.ops[:first], self.ops[first:]

    def fit(self, train: Dataset, seed: int = 0, max_samples: int = AUTO_NORMALIZE_SAMPLES) -> Transforms:
        """These transforms with every ``normalize: auto`` replaced by the per-channel mean and std of up to
        `max_samples` training images (a seeded choice), measured after the (non-random form of the) transforms
        before it."""
        ops = list(self.ops)
        for i, op in enumerate(ops):
            if isinstance(op, Normalize) and op.mean is None:
                before = tuple(e for e in (o.for_eval() for o in ops[:i]) if e is not None)
                ops[i] = Normalize(*channel_stats(train, before, seed, max_samples))
        return Transforms(ops)


def parse_transforms(spec: Transforms | Sequence[str | Mapping[str, Any]] | None) -> Transforms:
    """The `Transforms` a study file's ``transforms:`` list names; a ValueError says which item is wrong and why."""
    if spec is None:
        return Transforms()
    if isinstance(spec, Transforms):
        return spec
    if isinstance(spec, (str, Mapping)) or not isinstance(spec, Sequence):
        raise ValueError(f"transforms is a list, e.g. [grayscale, {{resize: 32}}, hflip], got {spec!r}")
    ops = []
    for i, item in enumerate(spec):
        where = f"transforms[{i}]"
        if isinstance(item, Transform):
            ops.append(item)
        elif isinstance(item, str):
            ops.append(_build(item, None, where))
        elif isinstance(item, Mapping) and len(item) == 1:
            ((name, arg),) = item.items()
            ops.append(_build(str(name), arg, where))
        else:
            raise ValueError(
                f"{where}: a transform is a name (hflip) or a one-key mapping ({{resize: 32}}), got {item!r}; "
                f"allowed names: {', '.join(TRANSFORM_NAMES)}"
            )
    return Transforms(ops)


def _compose(ops: Sequence[Transform], x: torch.Tensor) -> torch.Tensor:
    for op in ops:
        x = op(x)
    return x


def _tensor_view(dataset: Dataset) -> TensorDataset | None:
    """`dataset` as a TensorDataset when it is one, or a (nested) Subset of one; None otherwise."""
    index = None
    while isinstance(dataset, Subset):
        step = torch.as_tensor(list(dataset.indices), dtype=torch.long)
        index = step if index is None else step[index]
        dataset = dataset.dataset
    if not isinstance(dataset, TensorDataset):
        return None
    return dataset if index is None else TensorDataset(*(t[index] for t in dataset.tensors))


def channel_stats(
    dataset: Dataset, ops: Sequence[Transform] = (), seed: int = 0, max_samples: int = AUTO_NORMALIZE_SAMPLES
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) over every pixel of up to `max_samples` images of `dataset` (a seeded choice), after
    `ops`. Images may differ in size."""
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("normalize: auto needs training images, and the training split is empty")
    index = np.sort(np.random.default_rng(seed).choice(n, size=min(n, max_samples), replace=False))
    total = total_sq = None
    count = 0
    tensors = _tensor_view(dataset)

    def add(x: torch.Tensor) -> None:
        nonlocal total, total_sq, count
        x = x.to(torch.float64).transpose(0, -3).reshape(x.shape[-3], -1)  # (C, pixels)
        s, sq = x.sum(1), (x * x).sum(1)
        total, total_sq = (s, sq) if total is None else (total + s, total_sq + sq)
        count += x.shape[1]

    if tensors is not None:
        images = tensors.tensors[0]
        for start in range(0, len(index), _CHUNK):
            add(_compose(ops, to_float_image(images[torch.from_numpy(index[start : start + _CHUNK])])))
    else:
        for i in index.tolist():
            add(_compose(ops, to_float_image(dataset[i][0])))
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0).sqrt()
    if bool((std < 1e-8).any()):
        raise ValueError(
            f"normalize: auto: channel(s) {(std < 1e-8).nonzero().flatten().tolist()} of the training images are "
            f"constant (std 0); give normalize: {{mean: [...], std: [...]}} instead"
        )
    return tuple(mean.tolist()), tuple(std.tolist())


class TransformedDataset(Dataset):
    """``(transform(x), *rest)`` for every sample ``(x, *rest)`` of `base`, computed when the sample is read (random
    transforms draw from torch's global generator, which a DataLoader seeds per worker)."""

    def __init__(self, base: Dataset, ops: Sequence[Transform] | Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.base = base
        self.ops = tuple(ops) if not callable(ops) else ops
        classes = getattr(base, "classes", None)
        if classes is not None:
            self.classes = classes

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple:
        sample = self.base[index]
        if not isinstance(sample, (tuple, list)) or len(sample) < 2:
            raise TypeError(f"transforms need (input, target) samples, got {type(sample).__name__}")
        x = to_float_image(sample[0])
        x = self.ops(x) if callable(self.ops) else _compose(self.ops, x)
        return (x, *sample[1:])


def _materialise(images: torch.Tensor, ops: Sequence[Transform]) -> torch.Tensor:
    if not ops:
        return to_float_image(images).contiguous()
    out = [_compose(ops, to_float_image(images[s : s + _CHUNK])) for s in range(0, len(images), _CHUNK)]
    return torch.cat(out).contiguous()


def transform_dataset(dataset: Dataset, upfront: Sequence[Transform], per_sample: Sequence[Transform] = ()) -> Dataset:
    """`dataset` with `upfront` then `per_sample` applied to its inputs. A TensorDataset (or a Subset of one) gets
    `upfront` once, as float32 tensors, and stays a TensorDataset unless `per_sample` is not empty (or the result
    would exceed `MATERIALISE_LIMIT_BYTES`); anything else is wrapped lazily."""
    tensors = _tensor_view(dataset)
    if tensors is not None and len(tensors):
        images, *rest = tensors.tensors
        first = _compose(upfront, to_float_image(images[:1]))
        if first.numel() * 4 * len(images) <= MATERIALISE_LIMIT_BYTES:
            materialised = TensorDataset(_materialise(images, upfront), *rest)
            return TransformedDataset(materialised, per_sample) if per_sample else materialised
    if not upfront and not per_sample:
        return dataset
    return TransformedDataset(dataset, tuple(upfront) + tuple(per_sample))


def apply_transforms(
    transforms: Transforms | Sequence[Any] | None,
    train: Dataset,
    val: Dataset,
    test: Dataset | None,
    seed: int = 0,
) -> tuple[Dataset, Dataset, Dataset | None]:
    """(train, val, test) with `transforms` applied: all of them to train (augmentation drawn per sample), the
    deterministic ones to val and test; ``normalize: auto`` is measured on `train` first (seeded). Tensor datasets of
    uint8 images become float32 in [0, 1] even with no transforms."""
    transforms = parse_transforms(transforms)
    if transforms.needs_fit:
        transforms = transforms.fit(train, seed)
    upfront, per_sample = transforms.train_stages()
    eval_ops = transforms.eval_ops()
    return (
        transform_dataset(train, upfront, per_sample),
        transform_dataset(val, eval_ops),
        None if test is None else transform_dataset(test, eval_ops),
    )


__all__ = [
    "AUTO_NORMALIZE_SAMPLES",
    "MATERIALISE_LIMIT_BYTES",
    "TRANSFORM_NAMES",
    "CenterCrop",
    "Grayscale",
    "HFlip",
    "Normalize",
    "RandomCrop",
    "Resize",
    "Transform",
    "TransformedDataset",
    "Transforms",
    "apply_transforms",
    "channel_stats",
    "parse_transforms",
    "to_float_image",
    "transform_dataset",
]
