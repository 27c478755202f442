"""Trained zoo models whose weights ship with the package (autoprune/zoo/weights/).

    from autoprune.zoo.pretrained import pretrained, PRETRAINED
    model = pretrained("resnet20_fashion_mnist")          # eval mode, fp32, CPU
    PRETRAINED["resnet20_fashion_mnist"]["test_accuracy"]  # 0.945

The weights were written by ``benchmarks/pretrain.py``, which also writes the
JSON metadata next to them (accuracies, recipe, seed, timing, sha256). The
models expect inputs normalised as `autoprune.data.load_fashion_mnist` does.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..utils import unknown_name
from .resnet import resnet20, resnet56

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

_BUILDERS = {"resnet20": resnet20, "resnet56": resnet56}
_SPECS: dict[str, dict[str, Any]] = {
    "resnet20_fashion_mnist": {
        "arch": "resnet20",
        "arch_kwargs": {"in_channels": 1, "num_classes": 10},
        "dataset": "fashion_mnist",
        "input_shape": (1, 28, 28),
        "weights_file": "resnet20_fashion_mnist.pt",
    },
}


def _metadata(name: str) -> dict[str, Any]:
    meta = dict(_SPECS[name])
    meta_path = WEIGHTS_DIR / Path(meta["weights_file"]).with_suffix(".json")
    if meta_path.is_file():
        recorded = json.loads(meta_path.read_text())
        meta.update({key: value for key, value in recorded.items() if key not in meta})
    meta["weights_path"] = str(WEIGHTS_DIR / meta["weights_file"])
    return meta


PRETRAINED: dict[str, dict[str, Any]] = {name: _metadata(name) for name in _SPECS}
"""name -> metadata: arch, arch_kwargs, dataset, input_shape, weights_path, and
(from the JSON next to the weights) test_accuracy, val_accuracy, epochs, seed,
train_seconds, sha256, torch_version, date, ..."""


def pretrained(name: str = "resnet20_fashion_mnist") -> nn.Module:
    """Build zoo model `name` and load its shipped weights (weights_only=True); returned in eval mode.

    Raises ValueError for an unknown name (listing the known ones),
    FileNotFoundError when the weights file is missing, and RuntimeError when
    it does not match the sha256 recorded in its metadata.
    """
    if name not in PRETRAINED:
        raise ValueError(unknown_name(name, PRETRAINED, "pretrained model"))
    meta = PRETRAINED[name]
    path = Path(meta["weights_path"])
    if not path.is_file():
        raise FileNotFoundError(
            f"weights of {name!r} not found at {path}; recreate them with "
            f"`python benchmarks/pretrain.py --model {meta['arch']}`"
        )
    payload = path.read_bytes()
    if "sha256" in meta and hashlib.sha256(payload).hexdigest() != meta["sha256"]:
        raise RuntimeError(
            f"{path} does not match the sha256 recorded in its metadata JSON; the file is "
            f"corrupt, or it was replaced without its JSON (rerun benchmarks/pretrain.py)"
        )
    state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    model = _BUILDERS[meta["arch"]](**meta["arch_kwargs"])
    model.load_state_dict(state)
    return model.eval()


__all__ = ["PRETRAINED", "WEIGHTS_DIR", "pretrained"]
