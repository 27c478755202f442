"""Export a pruned structure and reload it on the unpruned architecture.

``structure.json`` holds what rebuilds the model without tracing: for every
parameter and buffer that shrinks, the indices it keeps along each dim; for
every module, the width attributes that changed. ``weights.pt`` is the pruned
``state_dict`` (plain tensors, loads with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..engine import PruningSpace
from ..engine.space import shrink, update_widths
from ..utils import fingerprint
from ..version import __version__
from .config import criterion_name

STRUCTURE = "structure.json"
WEIGHTS = "weights.pt"


def _architecture(model: nn.Module) -> str:
    """What ``load`` checks the unpruned model against: names, shapes and dtypes of its parameters and buffers."""
    return fingerprint(model, n=20)


def _attributes(base: nn.Module, pruned: nn.Module) -> dict[str, dict[str, Any]]:
    """Width-like attributes (ints, tuples of ints) that differ between base and pruned modules."""
    out: dict[str, dict[str, Any]] = {}
    pm = dict(pruned.named_modules())
    for name, m in base.named_modules():
        p = pm[name]
        for k, v in vars(m).items():
            if k.startswith("_"):
                continue
            w = vars(p).get(k)
            if _is_width(v) and _is_width(w) and v != w:
                out.setdefault(name, {})[k] = list(w) if isinstance(w, tuple) else w
    return out


def _is_width(v: Any) -> bool:
    return (type(v) is int) or (isinstance(v, tuple) and all(type(x) is int for x in v))


def export(
    space: PruningSpace,
    plan: Mapping[str, float],
    out_dir: str | Path,
    *,
    criterion: Any = "l1",
    calibration: Any = None,
    model: nn.Module | None = None,
    score: float | None = None,
    budget: Any = None,
    formats: tuple[str, ...] = (),
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``structure.json`` and ``weights.pt`` (and ``model.pt2`` / ``model.onnx`` if in ``formats``).

    ``model``: an already pruned (e.g. fine-tuned) model built from this plan, whose
    weights are saved instead of freshly pruned ones.
    """
    unknown = set(formats) - {"pt2", "onnx"}
    if unknown:
        raise ValueError(f"unknown export formats {sorted(unknown)}; choose from 'pt2', 'onnx'")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file: export writes structure.json and weights.pt into a folder")
    out.mkdir(parents=True, exist_ok=True)
    keep = space.keep_indices(plan, criterion, calibration=calibration)
    indices = space.parameter_indices(keep)
    built = space.build(keep)
    pruned = model if model is not None else built
    if [tuple(t.shape) for t in pruned.state_dict().values()] != [tuple(t.shape) for t in built.state_dict().values()]:
        raise ValueError("model does not have the structure of this plan (export it from the same space and plan)")
    inputs = space.example_inputs
    structure = {
        "format": "autoprune-structure/1",
        "autoprune_version": __version__,
        "base_fingerprint": _architecture(space.model),
        "base_class": f"{type(space.model).__module__}.{type(space.model).__qualname__}",
        "example_input_shapes": [list(x.shape) for x in inputs if isinstance(x, torch.Tensor)],
        "criterion": criterion_name(criterion),
        "plan": dict(plan),
        "kept_channels": space.kept_channels(plan),
        "budget": budget.to_dict() if hasattr(budget, "to_dict") else budget,
        "score": score,
        "macs": space.macs(plan),
        "params": space.params(plan),
        "base_macs": space.macs({}),
        "base_params": space.params({}),
        "layers": {
            name: {"shape": list(t.shape), "kept": {str(d): indices[name][d].tolist() for d in sorted(indices[name])}}
            for name, t in built.state_dict().items()
            if name in indices
        },
        "attributes": _attributes(space.model, built),
        **dict(extra or {}),
    }
    (out / STRUCTURE).write_text(json.dumps(structure, indent=1))
    torch.save({k: v.detach().clone() for k, v in pruned.state_dict().items()}, out / WEIGHTS)
    if "pt2" in formats:
        _export_pt2(pruned, inputs, out / "model.pt2")
    if "onnx" in formats:
        _export_onnx(pruned, inputs, out / "model.onnx")
    return out


def load(out_dir: str | Path, base_model: nn.Module) -> nn.Module:
    """Rebuild an exported pruned model from the unpruned architecture (no tracing); eval mode."""
    out = Path(out_dir)
    path = out / STRUCTURE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: point load() at a directory written by autoprune.export")
    try:
        structure = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a valid autoprune structure file (truncated?): {err}") from None
    needed = ("base_fingerprint", "layers", "attributes")
    missing = [k for k in needed if not isinstance(structure, dict) or k not in structure]
    if missing:
        raise ValueError(
            f"{path} is not a valid autoprune structure file (truncated?): it has no {', '.join(missing)}; "
            "write it with autoprune.export"
        )
    if structure.get("base_fingerprint") != _architecture(base_model):
        raise ValueError(
            f"{path} was exported from a different architecture (fingerprint {structure.get('base_fingerprint')}, "
            f"this model {_architecture(base_model)}): pass the same unpruned model class and constructor arguments"
        )
    indices = {
        n: {int(d): torch.tensor(ix) for d, ix in spec["kept"].items()} for n, spec in structure["layers"].items()
    }
    model = shrink(base_model, indices)
    modules = dict(model.named_modules())
    for mod, attrs in structure["attributes"].items():
        for k, v in attrs.items():
            setattr(modules[mod], k, tuple(v) if isinstance(v, list) else v)
    update_widths(model)
    weights = out / WEIGHTS
    if not weights.exists():
        raise FileNotFoundError(f"{weights} not found: load() needs the weights autoprune.export wrote beside {path}")
    try:
        state = torch.load(weights, weights_only=True, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - a truncated or foreign file
        raise ValueError(f"{weights} is not a valid autoprune weights file (truncated?): {err}") from None
    model.load_state_dict(state)
    return model.eval()


def _export_pt2(model: nn.Module, inputs: tuple, path: Path) -> None:
    model = model.eval()
    program = torch.export.export(model, inputs)
    torch.export.save(program, str(path))
    back = torch.export.load(str(path)).module()
    with torch.no_grad():
        torch.testing.assert_close(back(*inputs), model(*inputs), rtol=1e-4, atol=1e-4)


def _export_onnx(model: nn.Module, inputs: tuple, path: Path) -> None:
    model = model.eval()
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise ImportError("ONNX export is checked with onnxruntime: pip install onnx onnxscript onnxruntime") from err
    torch.onnx.export(model, inputs, str(path), dynamo=True, verbose=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs)}
    got = session.run(None, feeds)[0]
    with torch.no_grad():
        want = model(*inputs)
    torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-3, atol=1e-4)
