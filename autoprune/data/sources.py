"""A user's own data: an image folder, CIFAR-10/100 or MNIST from their files, or a factory function of theirs.

Every source returns a `Splits` whose ``val`` is a seeded split of the *training* data (unless the user gives a
validation set of their own: a ``val/`` folder, or a factory that returns one), so a search never scores on ``test``.

* `image_folder_splits` — torchvision's ImageFolder layout, one sub-folder per class (sorted names are the classes,
  as in torchvision): either ``root/train/`` with optional ``root/val/`` and ``root/test/``, or one folder split by
  fractions. Images are decoded lazily with PIL, so the folder may be as large as ImageNet.
* `cifar_splits` (``cifar10``, ``cifar100``) and `mnist_splits` — the files torchvision's dataset classes download,
  read here with numpy/pickle; `fashion_mnist_source` wraps `load_fashion_mnist`. These are small enough to be
  materialised as float32 TensorDatasets (in [0, 1], or normalised when the transforms say so).
* `factory_splits` — ``package.module:function`` returning a `Splits`, a mapping ``{train, val?, test?}`` or a
  ``(train, val, test)`` tuple of map-style Datasets.

A source without a test split (a factory that returns none, a ``train/`` folder without ``test/``) has
``Splits.test = None``; `Splits.require_test` raises a clear error for whatever needs one (a final test report).
`build_splits` dispatches on a study file's ``data:`` keys.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset, TensorDataset

from ..utils import import_object, unknown_name
from .transforms import Transforms, apply_transforms, parse_transforms, to_float_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
"""File endings (case-insensitive) that `image_folder_splits` reads as images; other files are ignored."""
DEFAULT_VAL_FRACTION = 0.1
"""The share of the training data held out as val when neither val_size nor val_fraction is given."""
DEFAULT_TEST_FRACTION = 0.1
"""The share of a single image folder (no train/ sub-folder) held out as test by default."""
DEFAULT_VAL_SIZE = 5000
"""CIFAR and MNIST hold out min(5000, 10%) of their training images as val by default, like Fashion-MNIST."""
TEST_SEED = 0
"""A single image folder's test split is drawn with this fixed seed, so changing ``seed`` only moves val."""
SPLIT_FOLDERS = ("train", "val", "test")
DOWNLOADABLE = ("cifar10", "cifar100", "mnist", "fashion_mnist")
TENSOR_SOURCES = ("fashion_mnist", "digits", "mnist", "cifar10", "cifar100")


class DataNotFoundError(FileNotFoundError, ValueError):
    """A dataset's files (or folder) are not where they should be; the message shows the layout expected."""


# ------------------------------------------------------------------ splitting


def _count(n: int, size: int | None, fraction: float | None, what: str, default: float = DEFAULT_VAL_FRACTION) -> int:
    """How many of `n` samples go to `what`: `size`, else round(`fraction` * n) (at least 1)."""
    if size is not None and fraction is not None:
        raise ValueError(f"give {what}_size or {what}_fraction, not both")
    if size is None:
        fraction = default if fraction is None else fraction
        if not 0 < fraction < 1:
            raise ValueError(f"{what}_fraction must lie in (0, 1), got {fraction!r}")
        size = max(1, round(fraction * n))
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 0 < size < n:
        raise ValueError(f"{what}_size must be an integer in [1, {n - 1}] for {n} training samples, got {size!r}")
    return int(size)


def _split_index(n: int, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rest, held out): a seeded permutation's first `count` indices are held out; both keep their order.
    The same permutation as `split_train_val`, so the two agree."""
    permutation = np.random.default_rng(seed).permutation(n)
    return np.sort(permutation[count:]), np.sort(permutation[:count])


def carve_val(
    dataset: Dataset, val_size: int | None = None, val_fraction: float | None = None, seed: int = 0
) -> tuple[Dataset, Dataset]:
    """(train, val): a seeded split of `dataset`. A TensorDataset is split into TensorDatasets (as
    `split_train_val` does); any other map-style dataset into two Subsets, so nothing is decoded."""
    n = _length(dataset, "the training set")
    count = _count(n, val_size, val_fraction, "val")
    train_index, val_index = _split_index(n, count, seed)
    if isinstance(dataset, TensorDataset):
        tr, va = torch.from_numpy(train_index), torch.from_numpy(val_index)
        return TensorDataset(*(t[tr] for t in dataset.tensors)), TensorDataset(*(t[va] for t in dataset.tensors))
    return Subset(dataset, train_index.tolist()), Subset(dataset, val_index.tolist())


def _length(dataset: Any, what: str) -> int:
    try:
        return len(dataset)
    except TypeError:
        raise ValueError(f"{what} must be a map-style dataset with __len__, got {type(dataset).__name__}") from None


def _resolve_root(root: str | os.PathLike | None, base_dir: str | os.PathLike | None) -> Path | None:
    if root is None:
        return None
    path = Path(root).expanduser()
    return path if path.is_absolute() or base_dir is None else Path(base_dir) / path


def _default_root() -> Path:
    from .fashion_mnist import DEFAULT_DOWNLOAD_ROOT, ENV_VAR

    return Path(os.environ.get(ENV_VAR) or DEFAULT_DOWNLOAD_ROOT).expanduser()


def _finish(train: Dataset, val: Dataset, test: Dataset | None, transforms: Any, seed: int, classes: Any) -> Any:
    from . import Splits

    train, val, test = apply_transforms(transforms, train, val, test, seed)
    return Splits(train, val, test, classes=tuple(classes) if classes is not None else None)


# ------------------------------------------------------------------ image folders


class ImageFolderDataset(Dataset):
    """``(image, label)`` samples read from image files when indexed: float32 ``(C, H, W)`` in [0, 1], RGB (3
    channels) or, with ``grayscale``, greyscale (1 channel); ``label`` is the index of the class in `classes`."""

    def __init__(self, samples: Sequence[tuple[str, int]], classes: Sequence[str], grayscale: bool = False) -> None:
        self.samples = list(samples)
        self.classes = list(classes)
        self.targets = [label for _, label in self.samples]
        self.mode = "L" if grayscale else "RGB"

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        from PIL import Image

        try:
            with Image.open(path) as image:
                image = image.convert(self.mode)
        except OSError as err:
            raise ValueError(f"{path}: cannot decode this image ({err})") from err
        return to_float_image(image), label


def _class_folders(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _images_in(folder: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if f.lower().endswith(IMAGE_EXTENSIONS))
    return found


def scan_image_folder(folder: str | os.PathLike) -> tuple[list[str], list[tuple[str, int]]]:
    """(classes, samples) of one ImageFolder-style folder: the sorted names of its sub-folders (hidden ones
    skipped), and (path, class index) for every image file under each (recursively, sorted). A ValueError names
    the folder when it has no class folders or a class folder holds no images."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataNotFoundError(
            f"image folder {folder} does not exist (or is not a directory); expected one sub-folder per class "
            f"with the images inside, e.g. {folder}/cat/0001.png"
        )
    classes = _class_folders(folder)
    if not classes:
        files = sum(1 for e in os.scandir(folder) if e.is_file())
        raise ValueError(
            f"{folder} has no class folders (it holds {files} files and no sub-folders); image_folder expects one "
            f"sub-folder per class with the images inside, e.g. {folder}/cat/0001.png, {folder}/dog/0001.png"
        )
    samples, empty = [], []
    for label, name in enumerate(classes):
        images = _images_in(folder / name)
        if not images:
            empty.append(name)
        samples.extend((path, label) for path in images)
    if empty:
        raise ValueError(
            f"class folder(s) {', '.join(str(folder / e) for e in empty)} hold no images; expected files ending in "
            f"{', '.join(IMAGE_EXTENSIONS)} (remove the folder, or put its images in it)"
        )
    return classes, samples


def _same_classes(reference: list[str], other: list[str], root: Path, name: str) -> None:
    missing = sorted(set(reference) - set(other))
    extra = sorted(set(other) - set(reference))
    if missing or extra:
        parts = [f"missing {missing}" if missing else "", f"extra {extra}" if extra else ""]
        raise ValueError(
            f"the class folders of {root / name} differ from those of {root / 'train'}: "
            f"{'; '.join(p for p in parts if p)} ({name}/ needs exactly the class folders train/ has)"
        )


def image_folder_splits(
    root: str | os.PathLike,
    transforms: Transforms | Sequence[Any] | None = None,
    val_size: int | None = None,
    val_fraction: float | None = None,
    test_fraction: float | None = None,
    seed: int = 0,
) -> Any:
    """An ImageFolder-style `root` as `Splits` of lazily decoded images.

    With a ``root/train/`` folder: train is it, val is ``root/val/`` when present (else carved from train by
    `val_size`/`val_fraction`, seeded), test is ``root/test/`` when present, else carved from train when
    `test_fraction` is given, else None. Without one, `root` itself holds the class folders and is split:
    `test_fraction` (default 0.1; 0 = no test) with the fixed `TEST_SEED`, then val from the rest with `seed`.
    The default val share is 10% of the training images.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataNotFoundError(
            f"image folder root {root} does not exist (or is not a directory); expected one sub-folder per class "
            f"with the images inside ({root}/<class>/<image files>), or train/ with optional val/ and test/ "
            f"folders of class folders ({root}/train/<class>/<image files>)"
        )
    transforms = parse_transforms(transforms)
    grayscale = transforms.has("grayscale")  # decoded as greyscale: the transform itself has nothing left to do
    transforms = Transforms([op for op in transforms.ops if op.name != "grayscale"])
    if (root / "train").is_dir():
        others = [c for c in _class_folders(root) if c not in SPLIT_FOLDERS]
        if others:
            raise ValueError(
                f"{root} has a train/ folder but also the folder(s) {others}: with train/ the root may hold only "
                f"train/, val/ and test/ (each with one sub-folder per class); move the class folders into train/"
            )
        classes, train_samples = scan_image_folder(root / "train")
        parts: dict[str, list[tuple[str, int]] | None] = {"val": None, "test": None}
        for name in parts:
            if (root / name).is_dir():
                their_classes, samples = scan_image_folder(root / name)
                _same_classes(classes, their_classes, root, name)
                parts[name] = samples
        if parts["test"] is None and test_fraction:
            rest, held = _split_index(
                len(train_samples), _count(len(train_samples), None, test_fraction, "test"), TEST_SEED
            )
            parts["test"] = [train_samples[i] for i in held]
            train_samples = [train_samples[i] for i in rest]
        elif parts["test"] is not None and test_fraction:
            raise ValueError(f"{root} has a test/ folder, so test_fraction does not apply; remove it")
        if parts["val"] is not None and (val_size is not None or val_fraction is not None):
            raise ValueError(f"{root} has a val/ folder, so val_size/val_fraction do not apply; remove them")
    else:
        classes, train_samples = scan_image_folder(root)
        parts = {"val": None, "test": None}
        test_fraction = DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction
        if test_fraction:
            rest, held = _split_index(
                len(train_samples), _count(len(train_samples), None, test_fraction, "test"), TEST_SEED
            )
            parts["test"] = [train_samples[i] for i in held]
            train_samples = [train_samples[i] for i in rest]
    if parts["val"] is None:
        rest, held = _split_index(len(train_samples), _count(len(train_samples), val_size, val_fraction, "val"), seed)
        parts["val"] = [train_samples[i] for i in held]
        train_samples = [train_samples[i] for i in rest]

    def dataset(samples: list[tuple[str, int]] | None) -> ImageFolderDataset | None:
        return None if samples is None else ImageFolderDataset(samples, classes, grayscale)

    return _finish(dataset(train_samples), dataset(parts["val"]), dataset(parts["test"]), transforms, seed, classes)


# ------------------------------------------------------------------ CIFAR


_CIFAR = {
    "cifar10": {
        "title": "CIFAR-10",
        "folder": "cifar-10-batches-py",
        "archive": "cifar-10-python.tar.gz",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "labels": "labels",
        "meta": ("batches.meta", "label_names"),
        "classes": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        "torchvision": "CIFAR10",
    },
    "cifar100": {
        "title": "CIFAR-100",
        "folder": "cifar-100-python",
        "archive": "cifar-100-python.tar.gz",
        "train": ["train"],
        "test": ["test"],
        "labels": "fine_labels",
        "meta": ("meta", "fine_label_names"),
        "classes": None,
        "torchvision": "CIFAR100",
    },
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a CIFAR batch needs nothing else, and nothing in a
    downloaded file gets to run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes in a protocol-2 pickle written by Python 3
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: a CIFAR batch holds only arrays and lists")


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            raw = _ArrayUnpickler(handle, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise ValueError(f"{path}: not a CIFAR python batch ({err}); the file is corrupt or of another format") from err
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a CIFAR batch is a pickled dict, this file holds a {type(raw).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in raw.items()}


def _cifar_layout(name: str, root: Path) -> str:
    info = _CIFAR[name]
    files = ", ".join(info["train"] + info["test"])
    return f"{root}/{info['folder']}/{{{files}}}"


def _cifar_missing(name: str, root: Path, missing: list[str], download_error: Exception | None) -> DataNotFoundError:
    info = _CIFAR[name]
    archive = root / info["archive"]
    hint = (
        f"\n{archive} is there but not extracted: run  tar -xzf {archive} -C {root}"
        if archive.is_file()
        else f"\nGet it with `download: true` (needs internet: torchvision's {info['torchvision']} downloads and "
        f"extracts it into {root}), or download {info['archive']} (the python version) from "
        f"https://www.cs.toronto.edu/~kriz/cifar.html and extract it into {root}."
    )
    failed = f"\nThe download failed: {download_error}" if download_error is not None else ""
    return DataNotFoundError(
        f"{info['title']} not found under {root}: missing {', '.join(missing)}.\n"
        f"Expected layout (torchvision's): {_cifar_layout(name, root)}{hint}{failed}"
    )


def _download(name: str, cls_name: str, root: Path) -> Exception | None:
    """Let torchvision's dataset class fetch the files into `root`; the exception when it cannot (None: done)."""
    try:
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        root.mkdir(parents=True, exist_ok=True)
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as err:  # noqa: BLE001 - no network, no torchvision, a bad mirror: all end in the same advice
        return err
    return None


def load_cifar(
    root: str | os.PathLike, name: str = "cifar10", split: str = "train", download: bool = False
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """(images uint8 (N, 3, 32, 32), labels int64 (N,), class names) of CIFAR-10/100's `split` under `root`,
    read from the python pickles (``cifar-10-batches-py/data_batch_1..5``, ``test_batch``; ``cifar-100-python/
    train``, ``test``). Missing files raise DataNotFoundError showing the layout; ``download=True`` first lets
    torchvision fetch them."""
    if name not in _CIFAR:
        raise ValueError(unknown_name(name, _CIFAR, "CIFAR dataset"))
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    info = _CIFAR[name]
    root = Path(root).expanduser()
    folder = root / info["folder"]

    def missing() -> list[str]:
        return [f"{info['folder']}/{f}" for f in info["train"] + info["test"] if not (folder / f).is_file()]

    if missing():
        error = _download(name, info["torchvision"], root) if download else None
        if missing():
            raise _cifar_missing(name, root, missing(), error)
    images, labels = [], []
    for file in info[split]:
        path = folder / file
        batch = _unpickle(path)
        if "data" not in batch or info["labels"] not in batch:
            raise ValueError(
                f"{path}: a {info['title']} batch holds 'data' and {info['labels']!r}; this one has {sorted(batch)}"
            )
        data = np.asarray(batch["data"])
        batch_labels = np.asarray(batch[info["labels"]], dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"{path}: 'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}")
        if batch_labels.shape != (len(data),):
            raise ValueError(f"{path}: {len(data)} images but {batch_labels.shape} labels")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(batch_labels)
    classes = info["classes"]
    meta_file, meta_key = info["meta"]
    if (folder / meta_file).is_file():
        meta = _unpickle(folder / meta_file)
        if meta_key in meta:
            classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta[meta_key])
    all_labels = np.concatenate(labels)
    if classes is None:
        classes = tuple(str(i) for i in range(100))
    if len(all_labels) and (all_labels.min() < 0 or all_labels.max() >= len(classes)):
        raise ValueError(
            f"{folder}: labels must lie in 0..{len(classes) - 1}, found {all_labels.min()}..{all_labels.max()}"
        )
    return np.concatenate(images), all_labels, tuple(classes)


def cifar_splits(
    root: str | os.PathLike | None = None,
    name: str = "cifar10",
    transforms: Transforms | Sequence[Any] | None = None,
    val_size: int | None = None,
    val_fraction: float | None = None,
    seed: int = 0,
    download: bool = False,
) -> Any:
    """CIFAR-10 (``name="cifar10"``) or CIFAR-100 from torchvision's layout under `root` (default $AUTOPRUNE_DATA or
    ~/.cache/autoprune/data): val is a seeded 5000 (or `val_size`/`val_fraction`) of the 50k training images,
    test the official 10k; float32 TensorDatasets in [0, 1] after the transforms."""
    root = _default_root() if root is None else Path(root)
    x, y, classes = load_cifar(root, name, "train", download)
    tx, ty, _ = load_cifar(root, name, "test")
    return _tensor_source(
        TensorDataset(torch.from_numpy(x), torch.from_numpy(y)),
        TensorDataset(torch.from_numpy(tx), torch.from_numpy(ty)),
        classes,
        transforms,
        val_size,
        val_fraction,
        seed,
    )


def _tensor_source(
    train: TensorDataset,
    test: TensorDataset | None,
    classes: Any,
    transforms: Any,
    val_size: int | None,
    val_fraction: float | None,
    seed: int,
) -> Any:
    n = len(train)
    if val_size is None and val_fraction is None:
        val_size = min(DEFAULT_VAL_SIZE, max(1, round(DEFAULT_VAL_FRACTION * n)))
    train, val = carve_val(train, val_size, val_fraction, seed)
    return _finish(train, val, test, transforms, seed, classes)


# ------------------------------------------------------------------ MNIST

_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find_mnist(root: Path) -> dict[str, tuple[Path, Path]] | None:
    from .fashion_mnist import _find

    for folder in (root / "MNIST" / "raw", root):
        found = {split: tuple(_find(folder, f) for f in files) for split, files in _MNIST_FILES.items()}
        if all(p is not None for pair in found.values() for p in pair):
            return found  # type: ignore[return-value]
    return None


def load_mnist(root: str | os.PathLike, split: str = "train", download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) of MNIST's `split` from its IDX files (optionally .gz) in
    ``root/MNIST/raw/`` (torchvision's layout) or directly in `root`. Missing files raise DataNotFoundError showing
    the layout; ``download=True`` first lets torchvision fetch them."""
    from .fashion_mnist import read_idx

    if split not in _MNIST_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root).expanduser()
    found = _find_mnist(root)
    if found is None:
        error = _download("mnist", "MNIST", root) if download else None
        found = _find_mnist(root)
        if found is None:
            names = ", ".join(f for files in _MNIST_FILES.values() for f in files)
            failed = f"\nThe download failed: {error}" if error is not None else ""
            raise DataNotFoundError(
                f"MNIST not found under {root}. Expected its four IDX files (each optionally .gz) in "
                f"{root}/MNIST/raw/ (torchvision's layout) or directly in {root}: {names}.\n"
                f"Get them with `download: true` (needs internet: torchvision's MNIST downloads them into "
                f'{root}/MNIST/raw/), or on a machine with internet run  python -c "import torchvision; '
                f"torchvision.datasets.MNIST('mnist-data', download=True)\"  and copy mnist-data/MNIST into "
                f"{root}.{failed}"
            )
    images_path, labels_path = found[split]
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"{images_path}: expected uint8 images of shape (N, H, W), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"{labels_path}: expected {len(images)} labels (one per image), got shape {labels.shape}")
    if len(labels) and labels.max() > 9:
        raise ValueError(f"{labels_path}: MNIST labels lie in 0..9, found {int(labels.max())}")
    return images, labels.astype(np.int64)


def mnist_splits(
    root: str | os.PathLike | None = None,
    transforms: Transforms | Sequence[Any] | None = None,
    val_size: int | None = None,
    val_fraction: float | None = None,
    seed: int = 0,
    download: bool = False,
) -> Any:
    """MNIST from `root` (default $AUTOPRUNE_DATA or ~/.cache/autoprune/data): val a seeded 5000 (or `val_size`/
    `val_fraction`) of the 60k training images, test the official 10k; float32 (N, 1, 28, 28) in [0, 1] after the
    transforms."""
    root = _default_root() if root is None else Path(root)
    x, y = load_mnist(root, "train", download)
    tx, ty = load_mnist(root, "test")
    train = TensorDataset(torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y))
    test = TensorDataset(torch.from_numpy(tx).unsqueeze(1), torch.from_numpy(ty))
    return _tensor_source(train, test, tuple(str(i) for i in range(10)), transforms, val_size, val_fraction, seed)


def fashion_mnist_source(
    root: str | os.PathLike | None = None,
    transforms: Transforms | Sequence[Any] | None = None,
    val_size: int | None = None,
    val_fraction: float | None = None,
    seed: int = 0,
    download: bool = False,
) -> Any:
    """Fashion-MNIST through `load_fashion_mnist` (images normalised with its mean/std, as everywhere in autoprune),
    then `transforms`; with no transforms and no val_fraction it is exactly `fashion_mnist_splits`."""
    from . import FASHION_MNIST_CLASSES, fashion_mnist_splits, load_fashion_mnist

    transforms = parse_transforms(transforms)
    if not transforms and val_fraction is None:
        kw = {"val_size": val_size} if val_size else {}
        return fashion_mnist_splits(root, seed=seed, download=download, **kw)
    train = load_fashion_mnist(root, "train", download)
    if val_size is None and val_fraction is None:
        val_size = DEFAULT_VAL_SIZE
    return _tensor_source(
        train,
        load_fashion_mnist(root, "test", download),
        FASHION_MNIST_CLASSES,
        transforms,
        val_size,
        val_fraction,
        seed,
    )


def digits_source(
    transforms: Transforms | Sequence[Any] | None = None,
    val_size: int | None = None,
    val_fraction: float | None = None,
    seed: int = 0,
) -> Any:
    """scikit-learn's digits (`digits_splits`); a `val_size` becomes the fraction min(0.5, val_size / 1437)."""
    from . import digits_splits

    if val_size is not None and val_fraction is not None:
        raise ValueError("give val_size or val_fraction, not both")
    if val_size:
        val_fraction = min(0.5, val_size / 1437)
    splits = digits_splits(seed=seed, **({"val_fraction": val_fraction} if val_fraction else {}))
    transforms = parse_transforms(transforms)
    if transforms:
        splits.train, splits.val, splits.test = apply_transforms(
            transforms, splits.train, splits.val, splits.test, seed
        )
    return splits


# ------------------------------------------------------------------ factories

_FACTORY_KEYS = ("train", "val", "test")


def _check_dataset(value: Any, part: str, factory: str, optional: bool) -> Dataset | None:
    if value is None and optional:
        return None
    if isinstance(value, (IterableDataset, DataLoader)) or not isinstance(value, Dataset):
        raise ValueError(
            f"data factory {factory!r} returned {part} as a {type(value).__name__}; it must be a map-style "
            f"torch.utils.data.Dataset (with __len__ and __getitem__ giving (input, target) samples)"
            + ("" if not optional else ", or None")
        )
    _length(value, f"data factory {factory!r}'s {part}")
    return value


def factory_splits(
    factory: str | Callable[..., Any],
    kwargs: Mapping[str, Any] | None = None,
    transforms: Transforms | Sequence[Any] | None = None,
    val_size: int | None = None,
    val_fraction: float | None = None,
    seed: int = 0,
) -> Any:
    """The `Splits` a user function (``"package.module:function"``, or the function) builds when called with
    `kwargs`. It may return a `Splits`, a mapping ``{"train": ..., "val": ..., "test": ...}`` (val and test
    optional) or a ``(train, val, test)`` tuple (val and test may be None), each a map-style Dataset of
    (input, target) samples. A missing val is carved from train (`val_size`/`val_fraction`, default 10%, seeded);
    a missing test stays None. `transforms`, when given, apply as for every source; without them the datasets
    are used as returned."""
    from . import Splits

    name = factory if isinstance(factory, str) else getattr(factory, "__qualname__", repr(factory))
    function = import_object(factory, "data factory") if isinstance(factory, str) else factory
    if not callable(function):
        raise ValueError(f"data factory {name!r} is a {type(function).__name__}, not a function")
    result = function(**dict(kwargs or {}))
    must = (
        "a Splits, a mapping {train, val (optional), test (optional)} or a (train, val, test) tuple of map-style "
        "Datasets"
    )
    classes = None
    if isinstance(result, Splits):
        train, val, test, classes = result.train, result.val, result.test, result.classes
    elif isinstance(result, Mapping):
        extra = [k for k in result if k not in _FACTORY_KEYS]
        if "train" not in result or extra:
            problem = f"unknown key(s) {extra}" if extra else "no 'train' key"
            raise ValueError(f"data factory {name!r} returned a mapping with {problem}; it must return {must}")
        train, val, test = result["train"], result.get("val"), result.get("test")
    elif isinstance(result, (tuple, list)) and len(result) == 3:
        train, val, test = result
    else:
        kind = (
            f"a {len(result)}-item {type(result).__name__}"
            if isinstance(result, (tuple, list))
            else (f"a {type(result).__name__}")
        )
        raise ValueError(f"data factory {name!r} returned {kind}; it must return {must}")
    train = _check_dataset(train, "train", name, optional=False)
    val = _check_dataset(val, "val", name, optional=True)
    test = _check_dataset(test, "test", name, optional=True)
    if val is None:
        train, val = carve_val(train, val_size, val_fraction, seed)
    elif val_size is not None or val_fraction is not None:
        raise ValueError(f"data factory {name!r} returns its own val set, so val_size/val_fraction do not apply")
    transforms = parse_transforms(transforms)
    if transforms:
        train, val, test = apply_transforms(transforms, train, val, test, seed)
    return Splits(train, val, test, classes=classes)


# ------------------------------------------------------------------ dispatch

SOURCES = ("fashion_mnist", "digits", "mnist", "cifar10", "cifar100", "image_folder")


def build_splits(
    dataset: str | None = None,
    *,
    factory: str | Callable[..., Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    root: str | os.PathLike | None = None,
    base_dir: str | os.PathLike | None = None,
    transforms: Transforms | Sequence[Any] | None = None,
    val_size: int | None = None,
    val_fraction: float | None = None,
    test_fraction: float | None = None,
    download: bool = False,
    num_workers: int = 0,
    seed: int = 0,
) -> Any:
    """The `Splits` of a study file's ``data:`` section: a named `dataset` (one of `SOURCES`) or a `factory`.
    A relative `root` is relative to `base_dir` (None: the current directory)."""
    if factory is not None:
        if dataset is not None:
            raise ValueError("give a dataset or a factory, not both")
        splits = factory_splits(factory, kwargs, transforms, val_size, val_fraction, seed)
    else:
        dataset = dataset or "fashion_mnist"
        path = _resolve_root(root, base_dir)
        common = dict(transforms=transforms, val_size=val_size, val_fraction=val_fraction, seed=seed)
        if dataset == "image_folder":
            if path is None:
                raise ValueError("image_folder needs a root: the folder of class folders (or of train/, val/, test/)")
            splits = image_folder_splits(path, test_fraction=test_fraction, **common)
        elif dataset == "digits":
            splits = digits_source(**common)
        elif dataset == "fashion_mnist":
            splits = fashion_mnist_source(path, download=download, **common)
        elif dataset == "mnist":
            splits = mnist_splits(path, download=download, **common)
        elif dataset in _CIFAR:
            splits = cifar_splits(path, dataset, download=download, **common)
        else:
            raise ValueError(unknown_name(dataset, SOURCES, "dataset"))
    splits.num_workers = int(num_workers)
    return splits


__all__ = [
    "DEFAULT_TEST_FRACTION",
    "DEFAULT_VAL_FRACTION",
    "DEFAULT_VAL_SIZE",
    "IMAGE_EXTENSIONS",
    "SOURCES",
    "DataNotFoundError",
    "ImageFolderDataset",
    "build_splits",
    "carve_val",
    "cifar_splits",
    "digits_source",
    "factory_splits",
    "fashion_mnist_source",
    "image_folder_splits",
    "load_cifar",
    "load_mnist",
    "mnist_splits",
    "scan_image_folder",
]
