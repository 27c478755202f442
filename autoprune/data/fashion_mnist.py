"""Fashion-MNIST (Xiao et al., 2017) read straight from its IDX files, offline.

The data is looked for, in this order, in

1. the ``root`` argument, when one is given (and nowhere else);
2. otherwise the directory named by the ``AUTOPRUNE_DATA`` environment
   variable, when set;
3. then Debian's ``dataset-fashion-mnist`` package, which installs the four
   IDX files under ``/usr/share/datasets/fashion-mnist``
   (``apt-get install dataset-fashion-mnist``).

Each root may be a flat directory holding ``train-images-idx3-ubyte[.gz]``,
``train-labels-idx1-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]`` and
``t10k-labels-idx1-ubyte[.gz]``, or a torchvision-style root with the files in
``<root>/FashionMNIST/raw/``.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

ENV_VAR = "AUTOPRUNE_DATA"
DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_DOWNLOAD_ROOT = Path("~/.cache/autoprune/data")

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10000),
}
# Sub-directories of a root that may hold the files: flat, torchvision, and a
# named sub-directory (so AUTOPRUNE_DATA can hold several datasets).
_LAYOUTS = (Path("."), Path("FashionMNIST") / "raw", Path("fashion-mnist"))

# IDX type codes -> numpy dtypes (big-endian on disk).
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class IDXFormatError(ValueError):
    """An IDX file is truncated, corrupt, or not the array it should be."""


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a fresh, writable numpy array.

    Raises IDXFormatError naming the file when the gzip stream is damaged, the
    magic number is wrong, or the payload size disagrees with the header.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                raw = handle.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        if isinstance(exc, FileNotFoundError):
            raise
        raise IDXFormatError(
            f"{path}: cannot decompress/read IDX file ({exc}); the file is corrupt or truncated, reinstall it"
        ) from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise IDXFormatError(
            f"{path}: bad IDX magic number {raw[:4].hex() or '(empty file)'}; "
            f"expected 0x0000TTDD (TT = type code, DD = number of dimensions)"
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IDXFormatError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header})")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise IDXFormatError(
            f"{path}: IDX header says shape {tuple(dims)} ({expected} bytes in all) "
            f"but the file holds {len(raw)} bytes; it is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="), copy=True)


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None


def _candidate_roots(root: str | os.PathLike | None) -> list[Path]:
    if root is not None:
        return [Path(root).expanduser()]
    roots = []
    env = os.environ.get(ENV_VAR)
    if env:
        roots.append(Path(env).expanduser())
    roots.append(DEBIAN_ROOT)
    return roots


def find_fashion_mnist(root: str | os.PathLike | None = None, split: str = "train") -> tuple[Path, Path]:
    """Return the (images, labels) IDX paths of `split`, searching as the module docstring says.

    Raises FileNotFoundError listing every directory tried and how to get the data.
    """
    images, labels, _ = _split_files(split)
    tried = []
    for base in _candidate_roots(root):
        for layout in _LAYOUTS:
            directory = (base / layout) if layout != Path(".") else base
            found = (_find(directory, images), _find(directory, labels))
            if found[0] is not None and found[1] is not None:
                return found  # type: ignore[return-value]
            tried.append(directory)
    listing = "\n".join(f"  - {d}/{{{images},{labels}}}[.gz]" for d in tried)
    env_note = "" if root is not None or os.environ.get(ENV_VAR) else f" (${ENV_VAR} is not set)"
    raise FileNotFoundError(
        f"Fashion-MNIST {split!r} split not found{env_note}. Looked for:\n{listing}\n"
        f"Fix it in one of two ways:\n"
        f"  1. offline, on Debian/Ubuntu: apt-get install dataset-fashion-mnist "
        f"(installs {DEBIAN_ROOT}), or point root=/${ENV_VAR} at a directory holding the IDX files;\n"
        f"  2. with internet access: load_fashion_mnist(..., download=True) (needs torchvision)."
    )


def _split_files(split: str) -> tuple[str, str, int]:
    if split not in _FILES:
        raise ValueError(f"split must be one of {', '.join(map(repr, _FILES))}, got {split!r}")
    return _FILES[split]


_CACHE: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def _read_split(images_path: Path, labels_path: Path, expected_count: int) -> tuple[np.ndarray, np.ndarray]:
    key = tuple((str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size) for p in (images_path, labels_path))
    if key in _CACHE:
        return _CACHE[key]
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise IDXFormatError(
            f"{images_path}: expected uint8 images of shape (N, 28, 28), got {images.dtype} {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise IDXFormatError(f"{labels_path}: expected a 1-d uint8 label array, got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise IDXFormatError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    if len(images) != expected_count:
        raise IDXFormatError(
            f"{images_path}: Fashion-MNIST has {expected_count} images in this split, the file holds {len(images)}"
        )
    if labels.max(initial=0) >= len(FASHION_MNIST_CLASSES):
        raise IDXFormatError(f"{labels_path}: labels must lie in 0..9, found {int(labels.max())}")
    while len(_CACHE) >= 2:  # train + test at most (~55 MB of uint8)
        del _CACHE[next(iter(_CACHE))]
    _CACHE[key] = (images, labels)
    return images, labels


def _download(root: str | os.PathLike | None, split: str) -> Path:
    try:
        from torchvision.datasets import FashionMNIST
    except ImportError as exc:
        raise ImportError(
            "load_fashion_mnist(download=True) needs torchvision: pip install torchvision "
            "(or install the data offline: apt-get install dataset-fashion-mnist)"
        ) from exc
    if root is None:
        root = os.environ.get(ENV_VAR) or DEFAULT_DOWNLOAD_ROOT
    root = Path(root).expanduser()
    FashionMNIST(str(root), train=(split == "train"), download=True)
    return root


def load_fashion_mnist(
    root: str | os.PathLike | None = None, split: str = "train", download: bool = False
) -> TensorDataset:
    """Fashion-MNIST `split` ("train": 60000 images, "test": 10000) as a TensorDataset.

    Images are float32 of shape (N, 1, 28, 28), normalised with mean 0.2860 and
    std 0.3530; labels are int64 in 0..9. See the module docstring for where
    the files are looked for. When they are not found, ``download=True``
    fetches them with torchvision into `root` (or $AUTOPRUNE_DATA, or
    ~/.cache/autoprune/data); otherwise FileNotFoundError lists the paths
    tried. A damaged file raises IDXFormatError (a ValueError).
    """
    _, _, count = _split_files(split)
    try:
        images_path, labels_path = find_fashion_mnist(root, split)
    except FileNotFoundError:
        if not download:
            raise
        images_path, labels_path = find_fashion_mnist(_download(root, split), split)
    images, labels = _read_split(images_path, labels_path, count)
    x = torch.from_numpy(images).unsqueeze(1).to(torch.float32)
    x = x.sub_(255.0 * FASHION_MNIST_MEAN).div_(255.0 * FASHION_MNIST_STD)
    y = torch.from_numpy(labels).to(torch.int64)
    return TensorDataset(x, y)
