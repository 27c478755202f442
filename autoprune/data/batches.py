"""Fixed batches from any form of data a user hands over: a tuple of tensors, a (Subset of a) TensorDataset, a
map-style Dataset or a DataLoader.

`as_source` classifies the data once; tensors take a fast path of plain indexing. Evaluators and trainers draw
their batches as index lists fixed by a seed (`scoring_plan`, `random_batches`), so every candidate and every
resumed run sees the same samples in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset, TensorDataset, default_collate

Batch = tuple[tuple[torch.Tensor, ...], torch.Tensor]


def split_batch(batch: Any, name: str) -> Batch:
    """(inputs..., target) -> ((inputs...), target)."""
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise TypeError(f"{name} must yield (inputs..., target) samples, got {type(batch).__name__}")
    *inputs, target = batch
    return tuple(inputs), target


class TensorSource:
    """Samples held in tensors (a tuple, a TensorDataset or Subsets of one): batches are plain indexing."""

    def __init__(self, tensors: Sequence[torch.Tensor], index_map: torch.Tensor | None, name: str) -> None:
        sizes = {int(t.shape[0]) for t in tensors}
        if len(sizes) != 1:
            raise ValueError(f"{name}: all tensors must have the same number of samples, got sizes {sorted(sizes)}")
        self.tensors = list(tensors)
        self.index_map = index_map
        self.name = name
        self.size = len(index_map) if index_map is not None else sizes.pop()

    def __len__(self) -> int:
        return self.size

    def batch(self, key: slice | torch.Tensor) -> Batch:
        if self.index_map is not None:
            key = self.index_map[key]
        return split_batch([t[key] for t in self.tensors], self.name)


class DatasetSource:
    """A map-style dataset of (inputs..., target) samples, collated with `default_collate`."""

    def __init__(self, dataset: Dataset, name: str) -> None:
        self.dataset = dataset
        self.name = name
        self.size = len(dataset)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.size

    def batch(self, key: slice | torch.Tensor) -> Batch:
        indices = range(self.size)[key] if isinstance(key, slice) else key.tolist()
        return split_batch(default_collate([self.dataset[i] for i in indices]), self.name)


def as_source(data: Any, name: str) -> TensorSource | DatasetSource | DataLoader:
    """Classify one data argument; tensors and TensorDatasets (also through Subsets) take the fast path."""
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, (tuple, list)):
        if len(data) < 2 or not all(isinstance(t, torch.Tensor) for t in data):
            raise TypeError(
                f"{name} given as a tuple must hold tensors (inputs..., targets), "
                f"got {[type(t).__name__ for t in data]}"
            )
        source: Any = TensorSource(data, None, name)
    elif isinstance(data, IterableDataset):
        raise TypeError(f"{name} is an IterableDataset; wrap it in a DataLoader")
    elif isinstance(data, Dataset):
        index_map = None
        base = data
        while isinstance(base, Subset):
            indices = torch.as_tensor(list(base.indices), dtype=torch.long)
            index_map = indices if index_map is None else indices[index_map]
            base = base.dataset
        if isinstance(base, TensorDataset):
            source = TensorSource(base.tensors, index_map, name)
        elif hasattr(data, "__len__"):
            source = DatasetSource(data, name)
        else:
            raise TypeError(f"{name} is a Dataset without __len__; wrap it in a DataLoader")
    else:
        raise TypeError(
            f"{name} must be a Dataset, a DataLoader or a tuple (inputs, targets) of tensors, got {type(data).__name__}"
        )
    if len(source) == 0:
        raise ValueError(f"{name} is empty")
    return source


def scoring_plan(size: int, batch_size: int, batches: int | None, generator: torch.Generator) -> list[Any]:
    """All samples in order, or a fixed random subset of `batches` full batches."""
    if batches is None or batches * batch_size >= size:
        return [slice(start, start + batch_size) for start in range(0, size, batch_size)]
    chosen = torch.randperm(size, generator=generator)[: batches * batch_size].sort().values
    return list(chosen.split(batch_size))


def random_batches(size: int, batch_size: int, count: int, generator: torch.Generator) -> list[torch.Tensor]:
    """`count` batches drawn epoch by epoch from fixed random permutations (the whole set if it is smaller)."""
    batch_size = min(batch_size, size)
    per_epoch = size // batch_size
    result: list[torch.Tensor] = []
    while len(result) < count:
        result.extend(torch.randperm(size, generator=generator)[: per_epoch * batch_size].split(batch_size))
    return result[:count]
