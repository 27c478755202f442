"""Offline datasets for searching and reporting pruned models.

Every dataset comes as a `Splits` of three in-memory TensorDatasets:

* ``train`` — for fine-tuning and BN recalibration;
* ``val``   — carved out of the *training* set by a fixed seed; a search
  scores its candidates here;
* ``test``  — the dataset's official test set, used only for final reports.

``dataset_by_name("fashion_mnist")`` and ``dataset_by_name("digits")`` build
them; `split_train_val` carves a validation split out of any TensorDataset.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

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


@dataclass
class Splits:
    """Train / validation / test TensorDatasets of one dataset.

    ``val`` comes from the training data (never from ``test``), so a search
    may score on it freely; ``test`` is reserved for the final report.
    """

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, e.g. (1, 28, 28)."""
        return tuple(self.train.tensors[0].shape[1:])

    @property
    def num_classes(self) -> int:
        """Number of classes, read from the labels of all three splits."""
        return 1 + max(int(part.tensors[1].max()) for part in (self.train, self.val, self.test) if len(part))

    def __repr__(self) -> str:
        return (
            f"Splits(train={len(self.train)}, val={len(self.val)}, test={len(self.test)}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes})"
        )


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
    "IDXFormatError",
    "Splits",
    "dataset_by_name",
    "digits_splits",
    "fashion_mnist_splits",
    "find_fashion_mnist",
    "load_digits",
    "load_fashion_mnist",
    "read_idx",
    "split_train_val",
]
