"""A user's own data (autoprune.data.sources / .transforms, and the study file's data: section), on real files.

Every source is tested on files the test writes in the real formats: PNG class folders made of real Fashion-MNIST
images (from Debian's dataset-fashion-mnist), CIFAR-10/100 python pickles, MNIST IDX files, and a factory module.
"""

from __future__ import annotations

import copy
import gzip
import pickle
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch.utils.data import Dataset, TensorDataset

import autoprune as ap
from autoprune import data
from autoprune.data import sources, transforms
from autoprune.studyfile import DataSpec, StudyFileError, parse_study

CLASS_NAMES = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]


# ------------------------------------------------------------------ fixtures: real files


@pytest.fixture(scope="module")
def fmnist_pixels() -> tuple[np.ndarray, np.ndarray]:
    """400 real Fashion-MNIST test images as their uint8 pixels (N, 28, 28), and their labels."""
    x, y = data.load_fashion_mnist(data.DEBIAN_ROOT, "test").tensors
    pixels = torch.round(x[:400, 0] * (255 * data.FASHION_MNIST_STD) + 255 * data.FASHION_MNIST_MEAN)
    return pixels.to(torch.uint8).numpy(), y[:400].numpy()


def write_folder(root: Path, pixels: np.ndarray, labels: np.ndarray, offset: int = 0) -> dict[str, tuple]:
    """PNG files root/<class name>/<i>.png; returns {path: (pixels, class name)}."""
    written = {}
    for i, (image, label) in enumerate(zip(pixels, labels)):
        folder = root / CLASS_NAMES[label]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{offset + i:04d}.png"
        Image.fromarray(image, mode="L").save(path)
        written[str(path)] = (image, CLASS_NAMES[label])
    return written


@pytest.fixture(scope="module")
def single_folder(tmp_path_factory, fmnist_pixels) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("single")
    pixels, labels = fmnist_pixels
    return root, write_folder(root, pixels[:300], labels[:300])


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as handle:
            handle.write(raw)
    else:
        path.write_bytes(raw)


def write_cifar(root: Path, name: str, rng: np.random.Generator, per_file: int = 20) -> dict[str, tuple]:
    """A CIFAR root with the real python-pickle layout (py2-style bytes keys); returns {file: (data, labels)}."""
    if name == "cifar10":
        folder, files, key, meta = (
            root / "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)],
            b"labels",
            (
                "batches.meta",
                b"label_names",
                [n.encode() for n in CLASS_NAMES],
            ),
        )
        classes = 10
    else:
        folder, files, key, meta = (
            root / "cifar-100-python",
            ["train"],
            b"fine_labels",
            (
                "meta",
                b"fine_label_names",
                [f"c{i:02d}".encode() for i in range(100)],
            ),
        )
        classes = 100
    folder.mkdir(parents=True)
    written = {}
    for file in [*files, "test_batch" if name == "cifar10" else "test"]:
        n = per_file * (5 if name == "cifar100" and file == "train" else 1)
        batch = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, classes, size=n).tolist()
        with open(folder / file, "wb") as handle:
            pickle.dump({b"batch_label": b"x", key: labels, b"data": batch, b"filenames": [b"f"] * n}, handle, 2)
        written[file] = (batch, np.asarray(labels))
    with open(folder / meta[0], "wb") as handle:
        pickle.dump({meta[1]: meta[2]}, handle, 2)
    return written


def rows(x: torch.Tensor) -> set[bytes]:
    """Every image of a [0, 1] float batch, as its uint8 pixel bytes."""
    u8 = torch.round(x * 255).to(torch.uint8).flatten(1).numpy()
    return {r.tobytes() for r in u8}


# ------------------------------------------------------------------ image folders


def test_image_folder_single_folder_split_by_fractions(single_folder) -> None:
    root, written = single_folder
    splits = data.image_folder_splits(root, val_fraction=0.2, test_fraction=0.1, seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (216, 54, 30)
    assert list(splits.classes) == sorted(CLASS_NAMES) and splits.num_classes == 10
    assert splits.input_shape == (3, 28, 28)
    paths = [{p for p, _ in part.samples} for part in (splits.train, splits.val, splits.test)]
    assert not (paths[0] & paths[1]) and not (paths[0] & paths[2]) and not (paths[1] & paths[2])
    assert set().union(*paths) == set(written)
    for part in (splits.train, splits.val, splits.test):
        for i in range(0, len(part), 7):
            x, label = part[i]
            pixels, name = written[part.samples[i][0]]
            assert part.classes[label] == name  # labels index the sorted class folders
            assert x.dtype == torch.float32 and x.shape == (3, 28, 28)
            assert torch.equal(torch.round(x * 255).to(torch.uint8), torch.from_numpy(pixels).expand(3, 28, 28))
    # the seed moves val, never test
    other = data.image_folder_splits(root, val_fraction=0.2, test_fraction=0.1, seed=1)
    assert other.test.samples == splits.test.samples and other.val.samples != splits.val.samples
    assert data.image_folder_splits(root, val_fraction=0.2, test_fraction=0.1, seed=0).val.samples == splits.val.samples
    no_test = data.image_folder_splits(root, val_size=30, test_fraction=0)
    assert no_test.test is None and (len(no_test.train), len(no_test.val)) == (270, 30)
    with pytest.raises(ValueError, match="a test split"):
        no_test.require_test("the export report")


def test_image_folder_train_val_test_layout(tmp_path, fmnist_pixels) -> None:
    pixels, labels = fmnist_pixels
    train = write_folder(tmp_path / "train", pixels[:200], labels[:200])
    val = write_folder(tmp_path / "val", pixels[200:260], labels[200:260], offset=200)
    test = write_folder(tmp_path / "test", pixels[260:300], labels[260:300], offset=260)
    splits = data.image_folder_splits(tmp_path, transforms=["grayscale"])
    assert {p for p, _ in splits.train.samples} == set(train)
    assert {p for p, _ in splits.val.samples} == set(val)
    assert {p for p, _ in splits.test.samples} == set(test)
    x, label = splits.test[5]
    pixels5, name = test[splits.test.samples[5][0]]
    assert x.shape == (1, 28, 28) and splits.input_shape == (1, 28, 28)
    assert splits.test.classes[label] == name and torch.equal(
        torch.round(x[0] * 255).to(torch.uint8), torch.tensor(pixels5)
    )
    # no val/: val is carved from train/; no test/: no test set (unless test_fraction carves one from train/)
    for name in ("val", "test"):
        for f in (tmp_path / name).rglob("*.png"):
            f.unlink()
        for d in sorted((tmp_path / name).iterdir()):
            d.rmdir()
        (tmp_path / name).rmdir()
    carved = data.image_folder_splits(tmp_path, val_size=40)
    assert (len(carved.train), len(carved.val), carved.test) == (160, 40, None)
    assert {p for p, _ in carved.train.samples} | {p for p, _ in carved.val.samples} == set(train)
    with_test = data.image_folder_splits(tmp_path, val_size=40, test_fraction=0.25)
    assert (len(with_test.train), len(with_test.val), len(with_test.test)) == (110, 40, 50)
    assert repr(carved).startswith("Splits(train=160, val=40, test=None")


def test_image_folder_errors(tmp_path, fmnist_pixels) -> None:
    pixels, labels = fmnist_pixels
    with pytest.raises(ValueError, match=r"does not exist.*one sub-folder per class") as err:
        data.image_folder_splits(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(err.value) and isinstance(err.value, FileNotFoundError)
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(pixels[0]).save(flat / "a.png")
    with pytest.raises(ValueError, match=r"flat has no class folders \(it holds 1 files"):
        data.image_folder_splits(flat)
    write_folder(tmp_path / "one", pixels[:20], labels[:20])
    (tmp_path / "one" / "empty").mkdir()
    (tmp_path / "one" / "empty" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=r"one/empty hold no images; expected files ending in \.jpg"):
        data.image_folder_splits(tmp_path / "one")
    split = tmp_path / "split"
    write_folder(split / "train", pixels[:40], labels[:40])
    write_folder(split / "val", pixels[40:80], labels[40:80])
    (split / "val" / "zebra").mkdir()
    Image.fromarray(pixels[0]).save(split / "val" / "zebra" / "z.png")
    missing = sorted(
        set(CLASS_NAMES[label] for label in labels[:40]) - set(CLASS_NAMES[label] for label in labels[40:80])
    )
    with pytest.raises(ValueError, match="differ from those of") as err:
        data.image_folder_splits(split)
    message = str(err.value)
    assert str(split / "val") in message and "extra ['zebra']" in message
    assert (f"missing {missing}" in message) if missing else "missing" not in message
    (split / "train" / "zebra").mkdir()
    Image.fromarray(pixels[0]).save(split / "train" / "zebra" / "z.png")
    (split / "cat").mkdir()
    with pytest.raises(ValueError, match=r"has a train/ folder but also the folder\(s\) \['cat'\]"):
        data.image_folder_splits(split)


# ------------------------------------------------------------------ CIFAR and MNIST


def test_cifar10_and_cifar100_pickles(tmp_path) -> None:
    rng = np.random.default_rng(0)
    written = write_cifar(tmp_path / "c10", "cifar10", rng)
    splits = data.cifar_splits(tmp_path / "c10", "cifar10", val_size=10, seed=3)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (90, 10, 20)
    assert isinstance(splits.train, TensorDataset) and splits.train.tensors[0].dtype == torch.float32
    assert splits.input_shape == (3, 32, 32) and splits.classes == tuple(CLASS_NAMES) and splits.num_classes == 10
    test_data, test_labels = written["test_batch"]
    assert torch.equal(
        torch.round(splits.test.tensors[0] * 255).to(torch.uint8), torch.from_numpy(test_data).view(-1, 3, 32, 32)
    )
    assert torch.equal(splits.test.tensors[1], torch.from_numpy(test_labels))
    train_rows = {b.tobytes() for f in written if f != "test_batch" for b in written[f][0]}
    x_train, x_val = splits.train.tensors[0], splits.val.tensors[0]
    assert rows(x_train) | rows(x_val) == train_rows and not rows(x_train) & rows(x_val)
    # the same seeded permutation as split_train_val: the first batch's label order is kept
    labels = np.concatenate([written[f"data_batch_{i}"][1] for i in range(1, 6)])
    _, val_index = sources._split_index(100, 10, 3)
    assert torch.equal(splits.val.tensors[1], torch.from_numpy(labels[val_index]))

    written = write_cifar(tmp_path / "c100", "cifar100", rng)
    splits = data.cifar_splits(tmp_path / "c100", "cifar100", val_fraction=0.2)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (80, 20, 20)
    assert splits.num_classes == 100 and splits.classes[7] == "c07"
    assert torch.equal(splits.test.tensors[1], torch.from_numpy(written["test"][1]))


def test_cifar_missing_files_download_failure_and_unsafe_pickles(tmp_path, monkeypatch) -> None:
    with pytest.raises(FileNotFoundError) as err:
        data.cifar_splits(tmp_path, "cifar10")
    message = str(err.value)
    assert f"{tmp_path}/cifar-10-batches-py/{{data_batch_1, data_batch_2" in message and "test_batch}" in message
    assert "download: true" in message and "cifar-10-python.tar.gz" in message
    (tmp_path / "cifar-100-python.tar.gz").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"is there but not extracted: run  tar -xzf"):
        data.cifar_splits(tmp_path, "cifar100")

    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(FileNotFoundError, match=r"(?s)cifar-10-batches-py.*The download failed: <urlopen error"):
        data.cifar_splits(tmp_path / "dl", "cifar10", download=True)

    write_cifar(tmp_path / "evil", "cifar10", np.random.default_rng(1))

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "evil" / "cifar-10-batches-py" / "data_batch_3", "wb") as handle:
        pickle.dump({b"data": Evil()}, handle)
    with pytest.raises(
        ValueError, match=r"data_batch_3: not a CIFAR python batch \(refusing to unpickle builtins.print"
    ):
        data.cifar_splits(tmp_path / "evil")


@pytest.mark.parametrize("layout", ["torchvision-gz", "flat"])
def test_mnist_idx_files(tmp_path, fmnist_pixels, layout) -> None:
    pixels, labels = fmnist_pixels
    folder = tmp_path / "MNIST" / "raw" if layout == "torchvision-gz" else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    compress = layout == "torchvision-gz"
    write_idx(folder / "train-images-idx3-ubyte", pixels[:100], compress)
    write_idx(folder / "train-labels-idx1-ubyte", labels[:100], compress)
    write_idx(folder / "t10k-images-idx3-ubyte", pixels[100:130], compress)
    write_idx(folder / "t10k-labels-idx1-ubyte", labels[100:130], compress)
    splits = data.mnist_splits(tmp_path, val_size=20, seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (80, 20, 30)
    assert splits.input_shape == (1, 28, 28) and splits.num_classes == 10
    assert torch.equal(
        torch.round(splits.test.tensors[0][:, 0] * 255).to(torch.uint8), torch.from_numpy(pixels[100:130])
    )
    train_index, val_index = sources._split_index(100, 20, 0)
    assert torch.equal(splits.val.tensors[1], torch.from_numpy(labels[val_index].astype(np.int64)))
    assert torch.equal(
        torch.round(splits.train.tensors[0][:, 0] * 255).to(torch.uint8), torch.from_numpy(pixels[train_index])
    )


def test_mnist_missing_files_shows_the_layout(tmp_path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        data.mnist_splits(tmp_path)
    message = str(err.value)
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        assert name in message
    assert f"{tmp_path}/MNIST/raw/" in message and "download: true" in message and isinstance(err.value, ValueError)


# ------------------------------------------------------------------ factories

FACTORY_MODULE = '''
import torch
from torch.utils.data import Dataset, TensorDataset
from autoprune.data import Splits


class Pictures(Dataset):
    """PIL images, like a torchvision dataset without a transform."""

    classes = ["dark", "light"]

    def __init__(self, n, offset=0):
        self.n, self.offset = n, offset

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        from PIL import Image
        value = (i + self.offset) % 256
        return Image.new("RGB", (12, 10), (value, value, 0)), int(value >= 128)


def only_train(n=50):
    return {"train": TensorDataset(torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 4, 4).clone(),
                                   torch.arange(n) % 3)}


def triple(n=40):
    return Pictures(n), Pictures(10, 100), Pictures(12, 200)


def as_splits():
    t = only_train(30)["train"]
    return Splits(t, t, None, classes=("a", "b", "c"))


def wrong():
    return 42


def wrong_key():
    return {"train": Pictures(4), "validation": Pictures(2)}


def wrong_part():
    return [Pictures(4), [1, 2], None]
'''


@pytest.fixture
def factory_module(tmp_path, monkeypatch) -> str:
    name = f"user_data_{tmp_path.name}"
    (tmp_path / f"{name}.py").write_text(FACTORY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_factory_returning_a_mapping_tuple_or_splits(factory_module) -> None:
    splits = data.factory_splits(f"{factory_module}:only_train", {"n": 60}, val_size=12, seed=0)
    assert (len(splits.train), len(splits.val), splits.test) == (48, 12, None)
    values = torch.cat([splits.train.tensors[0][:, 0, 0, 0], splits.val.tensors[0][:, 0, 0, 0]])
    assert sorted(values.tolist()) == list(range(60)) and splits.num_classes == 3
    with pytest.raises(ValueError, match="needs a test split"):
        splits.require_test()

    splits = data.factory_splits(f"{factory_module}:triple", transforms=[{"resize": [8, 8]}, "hflip"])
    assert (len(splits.train), len(splits.val), len(splits.test)) == (40, 10, 12)
    assert splits.num_classes == 2 and splits.input_shape == (3, 8, 8)
    x, label = splits.val[3]  # PIL (12 x 10, value 103) -> float (3, 8, 8)
    assert x.shape == (3, 8, 8) and label == 0 and torch.allclose(x[0], torch.full((8, 8), 103 / 255))
    assert torch.all(x[2] == 0)
    untouched = data.factory_splits(f"{factory_module}:triple")
    assert type(untouched.test).__name__ == "Pictures"  # no transforms: the user's datasets as they are

    splits = data.factory_splits(f"{factory_module}:as_splits")
    assert splits.classes == ("a", "b", "c") and splits.num_classes == 3 and len(splits.val) == 30


def test_factory_errors_name_the_factory(factory_module) -> None:
    must = (
        r"it must return a Splits, a mapping \{train, val \(optional\), test \(optional\)\} or a \(train, val, test\)"
    )
    with pytest.raises(ValueError, match=f"data factory '{factory_module}:wrong' returned a int; {must}"):
        data.factory_splits(f"{factory_module}:wrong")
    with pytest.raises(ValueError, match=r"returned a mapping with unknown key\(s\) \['validation'\]"):
        data.factory_splits(f"{factory_module}:wrong_key")
    with pytest.raises(ValueError, match=r"wrong_part' returned val as a list; it must be a map-style"):
        data.factory_splits(f"{factory_module}:wrong_part")
    with pytest.raises(ValueError, match=r"has no attribute 'nothing'"):
        data.factory_splits(f"{factory_module}:nothing")
    with pytest.raises(ValueError, match=r"returns its own val set"):
        data.factory_splits(f"{factory_module}:triple", val_size=3)


# ------------------------------------------------------------------ transforms


def test_transform_names_and_their_errors() -> None:
    parsed = transforms.parse_transforms(
        [
            "grayscale",
            {"resize": 32},
            {"center_crop": 28},
            {"normalize": "auto"},
            "hflip",
            {"random_crop": {"size": 28, "padding": 4}},
        ]
    )
    assert [op.name for op in parsed.ops] == ["grayscale", "resize", "center_crop", "normalize", "hflip", "random_crop"]
    assert parsed.ops[2].size == (28, 28) and parsed.ops[5].padding == 4 and parsed.needs_fit
    assert [op.name for op in parsed.eval_ops()] == ["grayscale", "resize", "center_crop", "normalize", "center_crop"]
    upfront, per_sample = parsed.train_stages()
    assert [op.name for op in upfront] == ["grayscale", "resize", "center_crop", "normalize"] and len(per_sample) == 2
    cases = [
        ("hfilp", r"transforms\[0\]: unknown transform 'hfilp'. Did you mean 'hflip'\? Available: grayscale, resize"),
        ("resize", r"resize needs a size; write it as \{resize: 32\}"),
        ({"random_crop": {"size": 3, "pad": 1}}, r"\(random_crop\): unknown key 'pad'; allowed keys: size, padding"),
        ({"resize": [1, 2, 3]}, r"the size is a positive int N or a pair \[H, W\], got \[1, 2, 3\]"),
        ({"normalize": {"mean": [0.5]}}, r"needs std"),
        ({"normalize": {"mean": [0.5, 0.4], "std": [0.2]}}, r"2 mean values but 1 std values"),
        ({"hflip": 2}, r"probability, a number in \[0, 1\]"),
        ({"resize": 3, "hflip": None}, "a one-key mapping"),
    ]
    for item, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            transforms.parse_transforms([item])


def test_transforms_on_real_images(tmp_path, fmnist_pixels) -> None:
    rng = np.random.default_rng(2)
    write_cifar(tmp_path, "cifar10", rng, per_file=100)
    spec = [
        {"resize": 40},
        {"center_crop": 36},
        {"normalize": "auto"},
        "hflip",
        {"random_crop": {"size": 32, "padding": 2}},
    ]
    splits = data.cifar_splits(tmp_path, transforms=spec, val_size=50, seed=0)
    raw = data.cifar_splits(tmp_path, val_size=50, seed=0)
    # deterministic transforms reach every split, augmentation only train (random_crop is a centre crop elsewhere)
    assert splits.val.tensors[0].shape == (50, 3, 32, 32) and splits.test.tensors[0].shape == (100, 3, 32, 32)
    assert isinstance(splits.train, transforms.TransformedDataset) and splits.input_shape == (3, 32, 32)
    ops = transforms.parse_transforms(spec).fit(raw.train)
    mean = ops.ops[2].mean
    assert len(mean) == 3 and all(0.4 < m < 0.6 for m in mean)  # uniform random pixels
    expected_val = transforms._compose(ops.eval_ops(), raw.val.tensors[0])
    assert torch.allclose(splits.val.tensors[0], expected_val, atol=1e-5)
    # normalize: auto measured on train -> ~0 mean / ~1 std there (and not far off elsewhere)
    torch.manual_seed(0)
    train_x = torch.stack([splits.train[i][0] for i in range(len(splits.train))])
    assert train_x.shape == (450, 3, 32, 32)
    centre = transforms._compose(ops.eval_ops()[:3], raw.train.tensors[0])
    assert centre.mean().abs() < 0.02 and abs(centre.std() - 1) < 0.02
    assert abs(train_x.mean()) < 0.05
    # augmentation differs draw to draw on train, never on val/test
    draws = [splits.train[7][0] for _ in range(8)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])
    assert all(torch.equal(splits.val[3][0], splits.val[3][0]) for _ in range(3))

    # hflip alone: train samples are the image or its mirror, val exactly the image
    pixels, labels = fmnist_pixels
    plain = TensorDataset(torch.from_numpy(pixels[:60]).unsqueeze(1), torch.from_numpy(labels[:60]).long())
    train, val, test = transforms.apply_transforms(["hflip"], plain, plain, plain)
    assert isinstance(val, TensorDataset) and torch.equal(val.tensors[0], plain.tensors[0].float() / 255)
    torch.manual_seed(1)
    flips = 0
    for _ in range(40):
        x = train[5][0]
        image = plain.tensors[0][5].float() / 255
        assert torch.equal(x, image) or torch.equal(x, image.flip(-1))
        flips += torch.equal(x, image.flip(-1)) and not torch.equal(image, image.flip(-1))
    assert 5 < flips < 35
    # grayscale on 3-channel tensors, normalize with given values
    rgb = TensorDataset(torch.rand(8, 3, 6, 6), torch.zeros(8, dtype=torch.long))
    g, _, _ = transforms.apply_transforms(["grayscale", {"normalize": {"mean": 0.5, "std": 0.25}}], rgb, rgb, None)
    expected = (
        0.2989 * rgb.tensors[0][:, 0] + 0.587 * rgb.tensors[0][:, 1] + 0.114 * rgb.tensors[0][:, 2] - 0.5
    ) / 0.25
    assert g.tensors[0].shape == (8, 1, 6, 6) and torch.allclose(g.tensors[0][:, 0], expected, atol=1e-4)


def test_normalize_auto_on_a_lazy_image_folder(single_folder) -> None:
    root, _ = single_folder
    splits = data.image_folder_splits(
        root, transforms=["grayscale", {"normalize": "auto"}], val_size=50, test_fraction=0.1
    )
    assert isinstance(splits.train, Dataset) and not isinstance(splits.train, TensorDataset)
    x = torch.stack([splits.train[i][0] for i in range(len(splits.train))])
    assert x.shape == (220, 1, 28, 28) and abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-3


class InWorkersOnly(Dataset):
    """A dataset that refuses to be read outside a DataLoader worker process."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        if torch.utils.data.get_worker_info() is None:
            raise RuntimeError("read in the main process")
        return self.dataset[i]


def test_num_workers_load_the_same_batches_in_worker_processes(single_folder) -> None:
    from autoprune.evaluators import AccuracyEvaluator

    root, _ = single_folder
    plain = data.image_folder_splits(root, transforms=["grayscale"], val_size=50, test_fraction=0)
    flipped = data.image_folder_splits(root, transforms=["grayscale", "hflip"], val_size=50, test_fraction=0)
    model = ap.zoo.pretrained("resnet20_fashion_mnist")

    def score(splits, workers: int, wrap=lambda d: d) -> dict:
        evaluator = AccuracyEvaluator(
            wrap(splits.val),
            train_data=wrap(splits.train),
            batch_size=16,
            bn_recalibration_batches=3,
            recalibration_batch_size=32,
            finetune_steps=2,
            finetune_batch_size=16,
            num_workers=workers,
        )
        return evaluator(copy.deepcopy(model))

    in_process, in_workers = score(plain, 0), score(plain, 2, InWorkersOnly)
    assert in_workers["samples"] == in_process["samples"] == 50
    assert in_workers["loss"] == pytest.approx(in_process["loss"], rel=1e-6)
    assert in_workers["finetune_loss"] == pytest.approx(in_process["finetune_loss"], rel=1e-6)
    # A random (train-only) transform in workers is seeded from the evaluator's seed: the same on every call.
    assert score(flipped, 2)["loss"] == score(flipped, 2)["loss"]
    with pytest.raises(RuntimeError, match="read in the main process"):
        score(plain, 0, InWorkersOnly)
    with pytest.raises(ValueError, match="num_workers"):
        AccuracyEvaluator(plain.val, bn_recalibration_batches=0, num_workers=-1)


# ------------------------------------------------------------------ study files

STUDY = """\
study_name: data-forms
model:
  zoo: resnet20
  input_shape: [1, 28, 28]
data:
{data}
"""


def study(data_yaml: str, path: Path) -> tuple[dict, str]:
    text = STUDY.format(data=textwrap.indent(textwrap.dedent(data_yaml).strip(), "  "))
    path.write_text(text)
    return yaml.safe_load(text), text


def test_study_file_data_forms(tmp_path, fmnist_pixels, factory_module) -> None:
    pixels, labels = fmnist_pixels
    write_folder(tmp_path / "images" / "train", pixels[:100], labels[:100])
    write_folder(tmp_path / "images" / "test", pixels[100:150], labels[100:150], offset=100)
    write_cifar(tmp_path / "cifar", "cifar10", np.random.default_rng(0))
    write_cifar(tmp_path / "cifar", "cifar100", np.random.default_rng(1))
    mnist = tmp_path / "mnist" / "MNIST" / "raw"
    mnist.mkdir(parents=True)
    for stem, array in [
        ("train-images-idx3-ubyte", pixels[:60]),
        ("train-labels-idx1-ubyte", labels[:60]),
        ("t10k-images-idx3-ubyte", pixels[60:80]),
        ("t10k-labels-idx1-ubyte", labels[60:80]),
    ]:
        write_idx(mnist / stem, array, compress=True)
    forms = {
        "image_folder": (
            "dataset: image_folder\nroot: images\nval_fraction: 0.2\nnum_workers: 2\n"
            "transforms: [grayscale, {resize: 32}, {center_crop: 28}, {normalize: auto}, hflip]",
            (80, 20, 50, (1, 28, 28)),
        ),
        "cifar10": (
            "dataset: cifar10\nroot: cifar\nval_size: 10\ntransforms: [{random_crop: {size: 32, padding: 4}}]",
            (90, 10, 20, (3, 32, 32)),
        ),
        "cifar100": (
            "dataset: cifar100\nroot: cifar\nval_fraction: 0.5\ntransforms: [grayscale]",
            (50, 50, 20, (1, 32, 32)),
        ),
        "mnist": ("dataset: mnist\nroot: mnist\nval_size: 15\ndownload: false", (45, 15, 20, (1, 28, 28))),
        "factory": (f"factory: {factory_module}:only_train\nkwargs: {{n: 25}}\nval_size: 5", (20, 5, None, (1, 4, 4))),
        "digits": ("dataset: digits\nval_size: 287", (1150, 287, 360, (1, 8, 8))),
    }
    for name, (data_yaml, (n_train, n_val, n_test, shape)) in forms.items():
        raw, text = study(data_yaml, tmp_path / f"{name}.yaml")
        config = parse_study(raw, tmp_path / f"{name}.yaml", text)
        splits = config.data.splits(tmp_path)
        assert (len(splits.train), len(splits.val)) == (n_train, n_val), name
        assert (None if splits.test is None else len(splits.test)) == n_test, name
        assert splits.input_shape == shape, name
        assert splits.num_workers == (2 if name == "image_folder" else 0)
        again = parse_study(config.model_dump(mode="json"))  # the study stores the validated file; it re-validates
        assert again.data == config.data
    assert DataSpec().dataset == "fashion_mnist" and DataSpec(factory="m:f").dataset is None


def test_study_file_data_errors(tmp_path) -> None:
    cases = {
        "dataset: image_folder": r"bad.yaml, line 5: data: data.dataset image_folder needs data.root",
        "dataset: cifar10\nfactory: mod:fn": r"give data.dataset \(cifar10\) or data.factory, not both",
        "dataset: cifar10\ntransforms: [hfilp]": r"line 7: data.transforms: transforms\[0\]: "
        r"unknown transform 'hfilp'. Did you mean 'hflip'",
        "dataset: cifar10\nval_size: 5\nval_fraction: 0.1": "give data.val_size or data.val_fraction, not both",
        "dataset: cifar10\ntest_fraction: 0.1": "data.test_fraction applies to image_folder only",
        "dataset: digits\ndownload: true": "data.download applies to cifar10, cifar100, mnist, fashion_mnist only",
        "dataset: cifar10\nkwargs: {a: 1}": "data.kwargs are the arguments of a data.factory",
        "dataset: cifar10\nnum_workers: -1": r"data.num_workers: Input should be greater than or equal to 0",
        "dataset: cifar1O": r"data.dataset: Input should be 'fashion_mnist', 'digits', 'mnist', 'cifar10'",
        "factory: mod.fn": r"not an import path; write 'package.module:function'",
        "dataset: cifar10\nworkers: 2": r"data.workers: unknown key; allowed keys here: dataset, factory, kwargs, "
        r"root.*Did you mean 'num_workers'",
    }
    for data_yaml, pattern in cases.items():
        raw, text = study(data_yaml, tmp_path / "bad.yaml")
        with pytest.raises(StudyFileError, match=pattern):
            parse_study(raw, tmp_path / "bad.yaml", text)
    raw, text = study("dataset: image_folder\nroot: not-there", tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match=f"image folder root {tmp_path / 'not-there'} does not exist"):
        parse_study(raw, tmp_path / "missing.yaml", text).data.splits(tmp_path)


def test_fashion_mnist_data_section_keeps_its_split(fmnist_pixels) -> None:
    default = DataSpec(dataset="fashion_mnist", val_size=5000).splits()
    normalised = DataSpec(dataset="fashion_mnist", val_size=5000, transforms=[{"normalize": "auto"}]).splits()
    assert (len(normalised.train), len(normalised.val), len(normalised.test)) == (55000, 5000, 10000)
    assert torch.equal(default.val.tensors[1], normalised.val.tensors[1])  # the same seeded val split
    x = normalised.train.tensors[0]
    assert abs(float(x.mean())) < 0.01 and abs(float(x.std()) - 1) < 0.01


# ------------------------------------------------------------------ through the CLI, to the result card

CLI_STUDY = """\
study_name: own
model:
  zoo: resnet20
  kwargs: {{in_channels: {channels}, stage_widths: [8, 16, 32]}}
  input_shape: [1, {channels}, {size}, {size}]
data:
{data}
evaluator:
  name: accuracy
  kwargs: {{bn_recalibration_batches: 2, recalibration_batch_size: 32, batch_size: 64}}
budget: {{macs: 0.5}}
strategy: {{name: random}}
n_trials: 2
threads: 1
export: {{finetune_steps: 5}}
"""

CLI_FACTORY = """
import torch
from torch.utils.data import TensorDataset


def splits(n=120):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 1, 12, 12, generator=g), torch.arange(n) % 4
    return {"train": TensorDataset(x[:80], y[:80]), "test": TensorDataset(x[80:], y[80:])}
"""


@pytest.mark.parametrize("source", ["image_folder", "cifar10", "factory"])
def test_autoprune_search_on_a_users_data_ends_with_the_result_card(tmp_path, fmnist_pixels, source) -> None:
    import json
    import subprocess

    pixels, labels = fmnist_pixels
    if source == "image_folder":  # one folder of PNGs: val and test held out of it by fractions
        write_folder(tmp_path / "images", pixels[:240], labels[:240])
        spec, channels, size = "dataset: image_folder\nroot: images\nval_fraction: 0.2\ntransforms: [grayscale]", 1, 28
    elif source == "cifar10":
        write_cifar(tmp_path / "cifar", "cifar10", np.random.default_rng(0))
        spec, channels, size = (
            "dataset: cifar10\nroot: cifar\nval_size: 20\ntransforms: [{normalize: auto}, hflip]",
            3,
            32,
        )
    else:
        (tmp_path / "own_data.py").write_text(CLI_FACTORY)  # next to the study file: importable from there
        spec, channels, size = 'factory: "own_data:splits"\nkwargs: {n: 120}\nval_size: 16', 1, 12
    study = tmp_path / "own.yaml"
    study.write_text(CLI_STUDY.format(data=textwrap.indent(spec, "  "), channels=channels, size=size))
    run = subprocess.run(
        [sys.executable, "-m", "autoprune.cli", "search", str(study)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={"PYTHONWARNINGS": "ignore", "COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Traceback" not in run.stdout + run.stderr
    out = tmp_path / "out" / "own"
    card = json.loads((out / "structure.json").read_text())["report"]
    assert card["finetune"]["steps"] == 5 and card["pruned"]["macs"] <= 0.5 * card["unpruned"]["macs"]
    for key in ("unpruned", "pruned"):  # scored on the held-out test data of that source
        assert 0 <= card[key]["test_accuracy"] <= 1
    assert "test accuracy" in (out / "REPORT.md").read_text()
