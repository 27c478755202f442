"""scikit-learn's bundled 8x8 handwritten digits: a tiny offline dataset for smoke tests.

1797 images in 10 classes. A fixed permutation (seed 0, independent of any
argument) holds out 360 images as the test split, leaving 1437 for training;
a validation split can then be carved out of those 1437 with `val_fraction`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset

DIGITS_TEST_SIZE = 360
_TEST_SEED = 0
_ALL: TensorDataset | None = None


def _all_digits() -> TensorDataset:
    global _ALL
    if _ALL is None:
        try:
            from sklearn.datasets import load_digits as sklearn_load_digits
        except ImportError as exc:
            raise ImportError(
                "autoprune.data.load_digits needs scikit-learn, which ships the digits data: pip install scikit-learn"
            ) from exc
        bunch = sklearn_load_digits()
        images = np.asarray(bunch.images, dtype=np.float32) / 16.0  # 17 grey levels, 0..16 -> [0, 1]
        x = torch.from_numpy(images).unsqueeze(1).contiguous()
        y = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
        _ALL = TensorDataset(x, y)
    return _ALL


def load_digits(split: str = "train", val_fraction: float = 0.0, seed: int = 0) -> TensorDataset:
    """The 8x8 digits `split` as float32 images (N, 1, 8, 8) in [0, 1] and int64 labels.

    "test" is always the same 360 images. With ``val_fraction=0`` "train" is
    the other 1437; with ``val_fraction=f > 0`` a seeded ``round(f * 1437)``
    of them form "val" (disjoint from "train"), exactly as
    ``split_train_val(load_digits("train"), round(f * 1437), seed)`` would.
    """
    # The package defines split_train_val and imports this module, so import it here, not at the top.
    from . import split_train_val

    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction!r}")
    train_val, test = split_train_val(_all_digits(), DIGITS_TEST_SIZE, seed=_TEST_SEED)
    if split == "test":
        return test
    val_size = round(val_fraction * len(train_val))
    if val_size == 0:
        if split == "val":
            raise ValueError("split='val' needs val_fraction > 0 (e.g. load_digits('val', val_fraction=0.2))")
        return train_val
    train, val = split_train_val(train_val, val_size, seed=seed)
    return train if split == "train" else val
