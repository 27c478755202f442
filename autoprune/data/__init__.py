"""Datasets for searching and reporting pruned models.

Every dataset comes as a `Splits` of three datasets:

* ``train`` — for fine-tuning, BN recalibration and MetaPruning's training;
* ``val``   — carved out of the *training* set by a fixed seed; a search
  scores its candidates here;
* ``test``  — the dataset's official test set, used only for final reports
  (None when a user's data has no test set).

``dataset_by_name("fashion_mnist")`` and ``dataset_by_name("digits")`` build
the bundled offline ones as in-memory TensorDatasets; `split_train_val` carves
a validation split out of any TensorDataset. A user's own data (an image
folder, CIFAR-10/100, MNIST, a factory function) comes from `autoprune.data.sources`
(`build_splits`), with named transforms from `autoprune.data.transforms`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from ..utils import unknown_name
from .digits import DIGITS_TEST_SIZE, load_digits
from .fashion_mnist import (
    DEBIAN_ROOT,
    ENV_VAR,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    IDXFormatError,
    find_fashion_mnist,
    load_fashion_mnist,
    read_idx,
)
from .sources import (
    SOURCES,
    DataNotFoundError,
    ImageFolderDataset,
    build_splits,
    carve_val,
    cifar_splits,
    factory_splits,
    image_folder_splits,
    load_cifar,
    load_mnist,
    mnist_splits,
)
from .transforms import TRANSFORM_NAMES, TransformedDataset, Transforms, apply_transforms, parse_transforms


@dataclass
class Splits:
    """Train / validation / test datasets of one dataset.

    ``val`` comes from the training data (never from ``test``), so a search
    may score on it freely; ``test`` is reserved for the final report and may
    be None when the source has no test set (see `require_test`). The splits
    are TensorDatasets for the built-in small datasets, any map-style Dataset
    of (input, target) samples otherwise. ``num_workers`` is the DataLoader
    worker count the data section asked for; ``classes`` the class names, when
    the source knows them.
    """

    train: Dataset
    val: Dataset
    test: Dataset | None = None
    num_workers: int = 0
    classes: tuple[str, ...] | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, e.g. (1, 28, 28) (a non-tensor dataset's first training sample's)."""
        if isinstance(self.train, TensorDataset):
            return tuple(self.train.tensors[0].shape[1:])
        x = self.train[0][0]
        if not hasattr(x, "shape"):
            raise TypeError(f"the training samples' inputs are {type(x).__name__}, not tensors; give transforms")
        return tuple(x.shape)

    @property
    def num_classes(self) -> int:
        """Number of classes: ``len(classes)``, or a dataset's ``classes`` attribute, or 1 + the largest label of
        the three splits (read from tensors or a ``targets`` attribute when there is one, else sample by sample)."""
        if self.classes is not None:
            return len(self.classes)
        parts = [p for p in (self.train, self.val, self.test) if p is not None]
        for part in parts:
            classes = _classes_of(part)
            if classes is not None:
                return len(classes)
        return 1 + max(int(_labels_of(part).max()) for part in parts if len(part))

    def require_test(self, what: str = "a test-set report") -> Dataset:
        """``test``, or a ValueError saying that `what` needs a test set this data source does not have."""
        if self.test is None:
            raise ValueError(
                f"{what} needs a test split, and this data has none (a factory that returns no test set, or an "
                f"image folder with train/ but no test/): add one (test/ folder, test_fraction, or return 'test')"
            )
        return self.test

    def __repr__(self) -> str:
        test = "None" if self.test is None else len(self.test)
        return (
            f"Splits(train={len(self.train)}, val={len(self.val)}, test={test}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes})"
        )


def _unwrap(dataset: Any) -> Any:
    while True:
        if isinstance(dataset, Subset):
            dataset = dataset.dataset
        elif hasattr(dataset, "base") and isinstance(dataset.base, Dataset):
            dataset = dataset.base
        else:
            return dataset


def _classes_of(dataset: Any) -> Any:
    for d in (dataset, _unwrap(dataset)):
        classes = getattr(d, "classes", None)
        if classes is not None:
            return classes
    return None


def _labels_of(dataset: Any) -> torch.Tensor:
    """The labels of a dataset's samples, without decoding its inputs when tensors or ``targets`` hold them."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[-1]
    if isinstance(dataset, Subset):
        return _labels_of(dataset.dataset)[torch.as_tensor(list(dataset.indices), dtype=torch.long)]
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return torch.as_tensor(targets)
    base = getattr(dataset, "base", None)
    if isinstance(base, Dataset):
        return _labels_of(base)
    return torch.as_tensor([int(dataset[i][-1]) for i in range(len(dataset))])


def _tensors(dataset: Dataset) -> tuple[torch.Tensor, ...]:
    if isinstance(dataset, TensorDataset):
        return dataset.tensors
    items = [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]
    if not items:
        raise ValueError("cannot split an empty dataset")
    columns = zip(*(item if isinstance(item, (tuple, list)) else (item,) for item in items))
    return tuple(torch.stack([torch.as_tensor(v) for v in column]) for column in columns)


def split_train_val(dataset: Dataset, val_size: int, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """Split `dataset` into disjoint (train, val) TensorDatasets by a fixed seeded permutation.

    ``val`` holds `val_size` samples, ``train`` the rest; both keep the
    original order of their samples, and the same `seed` always gives the
    same split (numpy's PCG64 generator). A TensorDataset is indexed directly;
    any other map-style dataset is materialised into tensors first.
    """
    tensors = _tensors(dataset)
    n = len(tensors[0])
    if isinstance(val_size, bool) or not isinstance(val_size, (int, np.integer)) or not 0 < val_size < n:
        raise ValueError(f"val_size must be an integer in [1, {n - 1}] for a dataset of {n} samples, got {val_size!r}")
    permutation = np.random.default_rng(seed).permutation(n)
    val_index = torch.from_numpy(np.sort(permutation[:val_size]))
    train_index = torch.from_numpy(np.sort(permutation[val_size:]))
    return (TensorDataset(*(t[train_index] for t in tensors)), TensorDataset(*(t[val_index] for t in tensors)))


def fashion_mnist_splits(
    root: str | os.PathLike | None = None, val_size: int = 5000, seed: int = 0, download: bool = False
) -> Splits:
    """Fashion-MNIST as 55k train / 5k val / 10k test (with the defaults).

    ``train`` and ``val`` are a seeded split of the official 60k *training*
    set; ``test`` is the official 10k test set. Score search candidates on
    ``val`` and report final accuracies on ``test`` only, so the test set
    never steers the search. See `load_fashion_mnist` for `root`/`download`.
    """
    train, val = split_train_val(load_fashion_mnist(root, "train", download), val_size, seed)
    return Splits(train, val, load_fashion_mnist(root, "test", download))


def digits_splits(val_fraction: float = 0.2, seed: int = 0) -> Splits:
    """scikit-learn's 8x8 digits: val is `val_fraction` of the 1437 training images, test the fixed 360."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction!r}")
    return Splits(load_digits("train", val_fraction, seed), load_digits("val", val_fraction, seed), load_digits("test"))


DATASETS: dict[str, Callable[..., Splits]] = {
    "fashion_mnist": fashion_mnist_splits,
    "digits": digits_splits,
}


def dataset_by_name(name: str, **kwargs: Any) -> Splits:
    """Build the registered dataset `name` ("fashion_mnist", "digits"), passing `kwargs` to its builder."""
    if name not in DATASETS:
        raise ValueError(unknown_name(name, DATASETS, "dataset"))
    return DATASETS[name](**kwargs)


__all__ = [
    "DATASETS",
    "DEBIAN_ROOT",
    "DIGITS_TEST_SIZE",
    "ENV_VAR",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "SOURCES",
    "TRANSFORM_NAMES",
    "DataNotFoundError",
    "IDXFormatError",
    "ImageFolderDataset",
    "Splits",
    "TransformedDataset",
    "Transforms",
    "apply_transforms",
    "build_splits",
    "carve_val",
    "cifar_splits",
    "dataset_by_name",
    "digits_splits",
    "factory_splits",
    "fashion_mnist_splits",
    "find_fashion_mnist",
    "image_folder_splits",
    "load_cifar",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist",
    "mnist_splits",
    "parse_transforms",
    "read_idx",
    "split_train_val",
]
