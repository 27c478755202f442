"""Study files: a search described in YAML, validated before anything expensive runs.

A wrong key or value is reported with the file, the line, the key and what is
allowed. The validated file is stored in the study, so ``autoprune export`` and
``autoprune show`` can rebuild everything from the study alone.
"""

from __future__ import annotations

import difflib
import importlib
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


def _one_of(value: str, registry: dict, what: str) -> str:
    if value not in registry:
        raise ValueError(f"unknown {what} {value!r}; allowed: {', '.join(sorted(registry))}")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Strict):
    """The network to prune: a zoo name or a ``package.module:function`` factory, and its weights."""

    zoo: str | None = None
    factory: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    pretrained: str | None = None
    checkpoint: str | None = None
    input_shape: list[int] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_source(self) -> "ModelSpec":
        if (self.zoo is None) == (self.factory is None) and self.pretrained is None:
            raise ValueError("give exactly one of model.zoo, model.factory or model.pretrained")
        if self.zoo is not None:
            from . import zoo

            if self.zoo not in zoo.MODELS:
                close = difflib.get_close_matches(self.zoo, list(zoo.MODELS), n=3)
                raise ValueError(
                    f"unknown zoo model {self.zoo!r}; allowed: {', '.join(zoo.MODELS)}"
                    + (f" (did you mean {close[0]!r}?)" if close else "")
                )
        if any(s < 1 for s in self.input_shape):
            raise ValueError("input_shape entries must be positive")
        return self


class DataSpec(_Strict):
    """The dataset: search scores on ``val`` (carved from the training set), never on ``test``."""

    dataset: Literal["fashion_mnist", "digits"] = "fashion_mnist"
    root: str | None = None
    val_size: int | None = Field(default=None, gt=0)
    seed: int = 0

    def splits(self):  # noqa: ANN201
        from .data import dataset_by_name

        if self.dataset == "digits":
            kw = {"val_fraction": min(0.5, self.val_size / 1437)} if self.val_size else {}
            return dataset_by_name("digits", seed=self.seed, **kw)
        kw = {"val_size": self.val_size} if self.val_size else {}
        return dataset_by_name("fashion_mnist", root=self.root, seed=self.seed, **kw)


class EvaluatorSpec(_Strict):
    """A built-in evaluator (``accuracy``, ``latency``) or a ``package.module:function`` path."""

    name: str = "accuracy"
    kwargs: dict[str, Any] = Field(default_factory=dict)


class StrategySpec(_Strict):
    name: str = "tpe"
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from .search import STRATEGIES

        return _one_of(v, STRATEGIES, "strategy")


class BudgetSpec(_Strict):
    macs: float | None = Field(default=None, gt=0)
    params: float | None = Field(default=None, gt=0)
    latency: float | None = Field(default=None, gt=0)


class ExportSpec(_Strict):
    """Where the best structure goes; ``finetune_steps`` > 0 fine-tunes it first on the training split."""

    dir: str | None = None
    formats: list[Literal["pt2", "onnx"]] = Field(default_factory=list)
    finetune_steps: int = Field(default=0, ge=0)
    finetune_lr: float = Field(default=0.01, gt=0)


class StudyFile(_Strict):
    study_name: str = Field(min_length=1)
    storage: str | None = None
    model: ModelSpec
    data: DataSpec = Field(default_factory=DataSpec)
    evaluator: EvaluatorSpec = Field(default_factory=EvaluatorSpec)
    budget: BudgetSpec | None = None
    strategy: StrategySpec = Field(default_factory=StrategySpec)
    criterion: str = "l1"
    n_trials: int = Field(default=50, gt=0)
    seed: int = 0
    round_to: int = Field(default=1, gt=0)
    exclude: list[str] = Field(default_factory=list)
    max_sparsity: float = Field(default=0.95, gt=0, lt=1)
    multi_objective: bool = False
    verify_latency: bool = True
    latency_margin: float = Field(default=0.03, ge=0, lt=1)
    threads: int | None = Field(default=None, gt=0)
    export: ExportSpec = Field(default_factory=ExportSpec)

    @field_validator("criterion")
    @classmethod
    def _criterion(cls, v: str) -> str:
        from .engine import CRITERIA

        return _one_of(v, CRITERIA, "criterion")


class StudyFileError(ValueError):
    """A study file that does not validate; the message names file, line, key and what is allowed."""


def load_study_file(path: str | Path) -> tuple[StudyFile, Path]:
    path = Path(path)
    if not path.exists():
        raise StudyFileError(f"study file {path} does not exist")
    text = path.read_text()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise StudyFileError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise StudyFileError(f"{path}: a study file is a YAML mapping (key: value), got {type(raw).__name__}")
    return parse_study(raw, path, text), path


def parse_study(raw: dict, path: Path | str = "<study>", text: str | None = None) -> StudyFile:
    try:
        return StudyFile.model_validate(raw)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            loc = [str(x) for x in e["loc"]]
            key = ".".join(loc)
            line = _line_of(text, e["loc"]) if text else None
            where = f"{path}, line {line}" if line else f"{path}"
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] == "extra_forbidden":
                parent = StudyFile
                for part in loc[:-1]:
                    fld = getattr(parent, "model_fields", {}).get(part)
                    ann = getattr(fld, "annotation", None)
                    parent = (
                        next(
                            (
                                a
                                for a in getattr(ann, "__args__", (ann,))
                                if isinstance(a, type) and issubclass(a, BaseModel)
                            ),
                            None,
                        )
                        if ann
                        else None
                    )
                    if parent is None:
                        break
                allowed = list(parent.model_fields) if parent is not None else []
                close = difflib.get_close_matches(loc[-1], allowed, n=1)
                msg = f"unknown key; allowed keys here: {', '.join(allowed)}" + (
                    f" (did you mean {close[0]!r}?)" if close else ""
                )
            lines.append(f"{where}: {key}: {msg}")
        raise StudyFileError("invalid study file:\n  " + "\n  ".join(lines)) from None


def _line_of(text: str, loc: tuple) -> int | None:
    """1-based line of the key at ``loc`` in the YAML text (the deepest key that exists)."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            hit = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if hit is None:
                break
            line, node = hit[0].start_mark.line + 1, hit[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def import_object(spec: str) -> Any:
    """Import ``package.module:attribute``."""
    if ":" not in spec:
        raise ValueError(f"{spec!r} is not an import path; write it as package.module:attribute")
    mod, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(mod)
    except ImportError as err:
        raise ValueError(f"cannot import module {mod!r} from {spec!r}: {err}") from err
    try:
        return getattr(module, attr)
    except AttributeError as err:
        raise ValueError(f"module {mod!r} has no attribute {attr!r}") from err


def build_model(spec: ModelSpec, base_dir: Path) -> torch.nn.Module:
    if spec.pretrained is not None:
        from .zoo.pretrained import pretrained

        return pretrained(spec.pretrained)
    if spec.zoo is not None:
        from . import zoo

        model = zoo.create_model(spec.zoo, **spec.kwargs)
    else:
        model = import_object(spec.factory)(**spec.kwargs)
    if spec.checkpoint:
        path = Path(spec.checkpoint)
        path = path if path.is_absolute() else base_dir / path
        model.load_state_dict(torch.load(path, weights_only=True, map_location="cpu"))
    return model.eval()
