"""Datasets (autoprune.data) and the shipped pretrained checkpoint, on the real data.

These tests read Debian's dataset-fashion-mnist package (CI installs it with
`apt-get install dataset-fashion-mnist`). When it is missing they fail with
the loader's FileNotFoundError instead of skipping.
"""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from autoprune import data
from autoprune.data import fashion_mnist as fm
from autoprune.zoo.pretrained import PRETRAINED, pretrained

DEBIAN = data.DEBIAN_ROOT
FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


@pytest.fixture(scope="module")
def train() -> TensorDataset:
    return data.load_fashion_mnist(DEBIAN, "train")


@pytest.fixture(scope="module")
def test_set() -> TensorDataset:
    return data.load_fashion_mnist(DEBIAN, "test")


@pytest.fixture(scope="module")
def splits() -> data.Splits:
    return data.fashion_mnist_splits(DEBIAN)


def _row_keys(x: torch.Tensor, scale: float = 255 * 0.3530, offset: float = 255 * 0.2860) -> np.ndarray:
    """The images of `x`, mapped back to their integer pixels, as a sorted array of byte strings (a multiset)."""
    pixels = torch.round(x.flatten(1) * scale + offset).to(torch.uint8).numpy()
    return np.sort(np.ascontiguousarray(pixels).view(np.dtype((np.void, pixels.shape[1]))).ravel())


# ---------------------------------------------------------------- Fashion-MNIST


def test_debian_package_is_installed() -> None:
    missing = [f for f in FILES if not (DEBIAN / f"{f}.gz").is_file()]
    assert not missing, f"run `apt-get install dataset-fashion-mnist`; missing under {DEBIAN}: {missing}"


def test_shapes_dtypes_and_normalisation(train: TensorDataset, test_set: TensorDataset) -> None:
    for dataset, n in ((train, 60000), (test_set, 10000)):
        x, y = dataset.tensors
        assert x.shape == (n, 1, 28, 28) and x.dtype == torch.float32 and x.is_contiguous()
        assert y.shape == (n,) and y.dtype == torch.int64
        assert int(y.min()) == 0 and int(y.max()) == 9
    x = train.tensors[0]
    # mean 0.2860 / std 0.3530 are the training-set statistics, so they normalise it to ~N(0, 1)
    assert abs(float(x.mean())) < 2e-3 and abs(float(x.std()) - 1.0) < 2e-3
    assert float(x.min()) == pytest.approx(-0.2860 / 0.3530, abs=1e-5)
    assert float(x.max()) == pytest.approx((1 - 0.2860) / 0.3530, abs=1e-5)
    assert isinstance(train[0][1], torch.Tensor) and train[0][0].shape == (1, 28, 28)


def test_class_balance(train: TensorDataset, test_set: TensorDataset) -> None:
    assert torch.bincount(train.tensors[1], minlength=10).tolist() == [6000] * 10
    assert torch.bincount(test_set.tensors[1], minlength=10).tolist() == [1000] * 10


def test_default_root_is_debian(monkeypatch: pytest.MonkeyPatch, test_set: TensorDataset) -> None:
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    assert data.find_fashion_mnist(split="test")[0].parent == DEBIAN
    assert torch.equal(data.load_fashion_mnist(split="test").tensors[0], test_set.tensors[0])


def test_torchvision_style_root(tmp_path, test_set: TensorDataset) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in FILES:
        (raw / f"{name}.gz").symlink_to(DEBIAN / f"{name}.gz")
    loaded = data.load_fashion_mnist(tmp_path, "test")
    assert all(torch.equal(a, b) for a, b in zip(loaded.tensors, test_set.tensors))


def test_flat_uncompressed_root(tmp_path, test_set: TensorDataset) -> None:
    for name in FILES[2:]:
        with gzip.open(DEBIAN / f"{name}.gz", "rb") as src, open(tmp_path / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    loaded = data.load_fashion_mnist(tmp_path, "test")
    assert all(torch.equal(a, b) for a, b in zip(loaded.tensors, test_set.tensors))


def test_env_var_root_then_debian_fallback(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "FashionMNIST" / "raw").mkdir(parents=True)
    for name in FILES[2:]:
        (tmp_path / "FashionMNIST" / "raw" / f"{name}.gz").symlink_to(DEBIAN / f"{name}.gz")
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path))
    assert data.find_fashion_mnist(split="test")[0].parent == tmp_path / "FashionMNIST" / "raw"
    # the env root lacks the training files, so the search goes on to Debian
    assert data.find_fashion_mnist(split="train")[0].parent == DEBIAN


def test_missing_root_lists_tried_paths_and_fixes(tmp_path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as info:
        data.load_fashion_mnist(missing, "train")
    message = str(info.value)
    assert str(missing) in message and str(missing / "FashionMNIST" / "raw") in message
    assert "apt-get install dataset-fashion-mnist" in message and "download=True" in message


def test_nothing_found_lists_env_and_debian(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "env"))
    monkeypatch.setattr(fm, "DEBIAN_ROOT", tmp_path / "debian")
    with pytest.raises(FileNotFoundError) as info:
        data.load_fashion_mnist(split="test")
    assert str(tmp_path / "env") in str(info.value) and str(tmp_path / "debian") in str(info.value)


def test_bad_split_name() -> None:
    with pytest.raises(ValueError, match="'train', 'test'"):
        data.load_fashion_mnist(DEBIAN, "validation")


def _corrupt_root(tmp_path, labels: bytes):
    tmp_path.mkdir()
    (tmp_path / "t10k-images-idx3-ubyte.gz").symlink_to(DEBIAN / "t10k-images-idx3-ubyte.gz")
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(labels)
    return tmp_path


def test_corrupt_files_are_reported(tmp_path) -> None:
    good = gzip.decompress((DEBIAN / "t10k-labels-idx1-ubyte.gz").read_bytes())
    assert good[:4] == b"\x00\x00\x08\x01"
    cases = {
        "truncated": (good[:5000], "truncated or corrupt"),
        "magic": (b"\x12\x34" + good[2:], "bad IDX magic"),
        "count": (good[:4] + (9999).to_bytes(4, "big") + good[8:-1], "holds 9999 labels"),
    }
    for case, (payload, match) in cases.items():
        with pytest.raises(data.IDXFormatError, match=match):
            data.load_fashion_mnist(_corrupt_root(tmp_path / case, payload), "test")
    damaged_gz = tmp_path / "damaged.gz"
    damaged_gz.write_bytes((DEBIAN / "t10k-labels-idx1-ubyte.gz").read_bytes()[:2000])
    with pytest.raises(data.IDXFormatError, match="damaged.gz"):
        data.read_idx(damaged_gz)


# ---------------------------------------------------------------- splits


def test_split_train_val_is_deterministic_disjoint_and_complete() -> None:
    dataset = TensorDataset(torch.arange(1000) * 10, torch.arange(1000) % 7)
    train, val = data.split_train_val(dataset, 100, seed=3)
    again_train, again_val = data.split_train_val(dataset, 100, seed=3)
    assert len(train) == 900 and len(val) == 100
    assert torch.equal(val.tensors[0], again_val.tensors[0]) and torch.equal(train.tensors[0], again_train.tensors[0])
    ids = torch.cat([train.tensors[0], val.tensors[0]])
    assert sorted(ids.tolist()) == list(range(0, 10000, 10))  # disjoint and complete
    assert torch.equal(val.tensors[1], (val.tensors[0] // 10) % 7)  # rows stay aligned
    assert not torch.equal(data.split_train_val(dataset, 100, seed=4)[1].tensors[0], val.tensors[0])
    for bad in (0, 1000, 2.5, True):
        with pytest.raises(ValueError, match="val_size"):
            data.split_train_val(dataset, bad)


def test_fashion_mnist_splits_val_comes_from_training_set(
    splits: data.Splits, train: TensorDataset, test_set: TensorDataset
) -> None:
    assert (len(splits.train), len(splits.val), len(splits.test)) == (55000, 5000, 10000)
    assert splits.input_shape == (1, 28, 28) and splits.num_classes == 10
    assert torch.equal(splits.test.tensors[0], test_set.tensors[0])
    # train + val is exactly the 60k training set (as a multiset of images), so val is disjoint from train
    both = torch.cat([splits.train.tensors[0], splits.val.tensors[0]])
    assert np.array_equal(_row_keys(both), _row_keys(train.tensors[0]))
    assert torch.bincount(splits.val.tensors[1], minlength=10).min() > 400  # a random, not a sorted, slice
    # deterministic: the documented seeded split of the training set, whatever the call
    train_part, val_part = data.split_train_val(train, 5000, seed=0)
    assert torch.equal(val_part.tensors[0], splits.val.tensors[0])
    assert torch.equal(train_part.tensors[1], splits.train.tensors[1])


def test_dataset_by_name() -> None:
    assert set(data.DATASETS) == {"fashion_mnist", "digits"}
    digits = data.dataset_by_name("digits", val_fraction=0.2)
    assert isinstance(digits, data.Splits) and digits.input_shape == (1, 8, 8)
    assert data.DATASETS["fashion_mnist"] is data.fashion_mnist_splits  # loaded by the `splits` fixture
    with pytest.raises(ValueError, match="fashion_mnist, digits"):
        data.dataset_by_name("cifar10")


# ---------------------------------------------------------------- digits


def test_digits() -> None:
    train, test = data.load_digits("train"), data.load_digits("test")
    assert (len(train), len(test)) == (1437, 360)
    x, y = train.tensors
    assert x.shape == (1437, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.equal(data.load_digits("test").tensors[0], test.tensors[0])  # fixed test split
    splits = data.digits_splits(val_fraction=0.2, seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1150, 287, 360)
    assert torch.equal(splits.test.tensors[0], test.tensors[0])
    both = torch.cat([splits.train.tensors[0], splits.val.tensors[0]])
    assert np.array_equal(_row_keys(both, 16, 0), _row_keys(x, 16, 0))
    assert torch.equal(data.load_digits("val", 0.2).tensors[0], splits.val.tensors[0])
    with pytest.raises(ValueError, match="val_fraction"):
        data.load_digits("val")
    with pytest.raises(ValueError, match="split"):
        data.load_digits("validation")


# ---------------------------------------------------------------- pretrained checkpoint


def test_pretrained_checkpoint_accuracy(test_set: TensorDataset) -> None:
    meta = PRETRAINED["resnet20_fashion_mnist"]
    assert meta["test_accuracy"] > 0.9 and meta["dataset"] == "fashion_mnist"
    state = torch.load(meta["weights_path"], weights_only=True)
    assert all(v.dtype in (torch.float32, torch.int64) for v in state.values())
    model = pretrained("resnet20_fashion_mnist")
    assert not model.training
    x, y = test_set.tensors[0][:2000], test_set.tensors[1][:2000]
    with torch.inference_mode():
        predictions = torch.cat([model(x[i : i + 500]).argmax(1) for i in range(0, 2000, 500)])
    accuracy = float((predictions == y).float().mean())
    assert accuracy > 0.90, accuracy


def test_pretrained_unknown_name() -> None:
    with pytest.raises(ValueError, match="resnet20_fashion_mnist"):
        pretrained("resnet20_cifar10")
