"""Study files: a search described in YAML, validated before anything expensive runs.

A wrong key or value is reported with the file, the line, the key and what is
allowed. The validated file is stored in the study, so ``autoprune export`` and
``autoprune show`` can rebuild everything from the study alone.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .search import Budget, SearchConfig
from .search.strategies import DEFAULT
from .utils import did_you_mean, import_object, lookup, unknown_name


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
                raise ValueError(unknown_name(self.zoo, zoo.MODELS, "zoo model"))
        if any(s < 1 for s in self.input_shape):
            raise ValueError("input_shape entries must be positive")
        return self


class DataSpec(_Strict):
    """The dataset: search scores on ``val`` (carved from the training set), never on ``test``.

    ``dataset`` names a built-in source (``fashion_mnist``, the default, ``digits``, ``mnist``, ``cifar10``,
    ``cifar100`` read from ``root``, or ``image_folder``: a folder of class folders at ``root``); ``factory`` names
    a ``package.module:function`` of yours instead, called with ``kwargs``. A relative ``root`` is relative to the
    study file's folder. ``transforms`` are named (see `autoprune.data.transforms`); ``num_workers`` is the
    DataLoader worker count, passed on as ``Splits.num_workers``.
    """

    dataset: Literal["fashion_mnist", "digits", "mnist", "cifar10", "cifar100", "image_folder"] | None = "fashion_mnist"
    factory: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    root: str | None = None
    transforms: list[str | dict[str, Any]] = Field(default_factory=list)
    val_size: int | None = Field(default=None, gt=0)
    val_fraction: float | None = Field(default=None, gt=0, lt=1)
    test_fraction: float | None = Field(default=None, ge=0, lt=1)
    download: bool = False
    num_workers: int = Field(default=0, ge=0)
    seed: int = 0

    @field_validator("transforms")
    @classmethod
    def _transforms(cls, v: list) -> list:
        from .data.transforms import parse_transforms

        parse_transforms(v)
        return v

    @model_validator(mode="after")
    def _one_source(self) -> "DataSpec":
        from .data.sources import DOWNLOADABLE

        if self.factory is not None:
            if self.dataset is not None and "dataset" in self.model_fields_set:
                raise ValueError(f"give data.dataset ({self.dataset}) or data.factory, not both")
            if ":" not in self.factory:
                raise ValueError(
                    f"data.factory {self.factory!r} is not an import path; write 'package.module:function'"
                )
            self.dataset = None
            for key in ("root", "download", "test_fraction"):
                if key in self.model_fields_set and getattr(self, key) not in (None, False):
                    raise ValueError(f"data.{key} does not apply to a data.factory (pass what it needs in kwargs)")
        else:
            if self.dataset is None:
                self.dataset = "fashion_mnist"
            if self.kwargs:
                raise ValueError("data.kwargs are the arguments of a data.factory; this data section names none")
        if self.val_size is not None and self.val_fraction is not None:
            raise ValueError("give data.val_size or data.val_fraction, not both")
        if self.dataset == "image_folder" and self.root is None:
            raise ValueError(
                "data.dataset image_folder needs data.root: the folder holding one sub-folder per class "
                "(or train/ with optional val/ and test/ folders of them)"
            )
        if self.dataset == "digits" and self.root is not None:
            raise ValueError("data.root does not apply to digits (scikit-learn ships them)")
        if self.download and self.dataset not in DOWNLOADABLE:
            raise ValueError(
                f"data.download applies to {', '.join(DOWNLOADABLE)} only, not to {self.dataset or 'a factory'}"
            )
        if self.test_fraction is not None and self.dataset != "image_folder":
            raise ValueError("data.test_fraction applies to image_folder only (the other datasets have a test set)")
        return self

    def splits(self, base_dir: str | Path | None = None):  # noqa: ANN201
        """The train/val/test `autoprune.data.Splits`; a relative ``root`` is relative to `base_dir` (None: the
        current directory)."""
        from .data import build_splits

        return build_splits(
            self.dataset,
            factory=self.factory,
            kwargs=self.kwargs,
            root=self.root,
            base_dir=base_dir,
            transforms=self.transforms,
            val_size=self.val_size,
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction,
            download=self.download,
            num_workers=self.num_workers,
            seed=self.seed,
        )


class EvaluatorSpec(_Strict):
    """A built-in evaluator (``accuracy``, ``latency``) or a ``package.module:function`` path."""

    name: str = "accuracy"
    kwargs: dict[str, Any] = Field(default_factory=dict)


class StrategySpec(_Strict):
    """A registered strategy's name, or ``module:Class`` for one of your own (importable from where the command runs
    or from the study file's folder), and its constructor's options."""

    name: str = DEFAULT
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from .search.strategy import strategy_class

        strategy_class(v)  # a registered name, or an import path that names a Strategy subclass
        return v


class ExportSpec(_Strict):
    """Where the best structure goes; ``finetune_steps`` > 0 fine-tunes it first on the training split; ``report``
    measures it against the unpruned model (the result card)."""

    dir: str | None = None
    formats: list[Literal["pt2", "onnx"]] = Field(default_factory=list)
    finetune_steps: int = Field(default=0, ge=0)
    finetune_lr: float = Field(default=0.01, gt=0)
    report: bool = True  # the result card: REPORT.md, PNGs and figures in structure.json (test accuracy, latency)


class StudyFile(_Strict):
    """A whole search: the model, data and evaluator it scores with, and the :class:`SearchConfig` fields."""

    study_name: str = Field(min_length=1)
    storage: str | None = None
    model: ModelSpec
    data: DataSpec = Field(default_factory=DataSpec)
    evaluator: EvaluatorSpec = Field(default_factory=EvaluatorSpec)
    budget: Budget | None = None
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

        lookup(CRITERIA, v, "criterion")
        return v

    def search_config(self, storage: Any = None, n_trials: int | None = None) -> SearchConfig:
        """The search this file describes, on ``storage`` (a URL the caller resolved) with ``n_trials`` (default:
        the file's)."""
        return SearchConfig(
            budget=self.budget,
            strategy=self.strategy.name,
            strategy_options=dict(self.strategy.options),
            study_name=self.study_name,
            storage=storage,
            criterion=self.criterion,
            seed=self.seed,
            n_trials=n_trials or self.n_trials,
            multi_objective=self.multi_objective,
            max_sparsity=self.max_sparsity,
            verify_latency=self.verify_latency,
            latency_margin=self.latency_margin,
        )


class StudyFileError(ValueError):
    """A study file that does not validate; the message names file, line, key and what is allowed."""


def load_study_file(path: str | Path) -> tuple[StudyFile, Path]:
    """Read and validate a study file. Import paths in it (``module:function``) may name modules next to it."""
    path = Path(path)
    if not path.exists():
        raise StudyFileError(f"study file {path} does not exist")
    importable_from(path.resolve().parent)
    text = path.read_text()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise StudyFileError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise StudyFileError(f"{path}: a study file is a YAML mapping (key: value), got {type(raw).__name__}")
    return parse_study(raw, path, text), path


def importable_from(folder: str | Path) -> None:
    """Let import paths in a study file (``module:function``) name modules in ``folder``, the study file's own
    (appended to ``sys.path``, so a module there never shadows an installed one)."""
    folder = str(folder)
    if folder not in sys.path:
        sys.path.append(folder)


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
            if e["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
                allowed = _keys_at(loc[:-1])
                msg = f"unknown key; allowed keys here: {', '.join(allowed)}.{did_you_mean(loc[-1], allowed, n=1)}"
            lines.append(f"{where}: {key}: {msg}")
        raise StudyFileError("invalid study file:\n  " + "\n  ".join(lines)) from None


def _keys_at(loc: list[str]) -> list[str]:
    """The keys the study file allows at ``loc`` (a pydantic model's fields, or a dataclass's such as Budget)."""
    node: Any = StudyFile
    for part in loc:
        fields = _fields(node)
        ann = fields.get(part)
        node = next((a for a in getattr(ann, "__args__", (ann,)) if _fields(a)), None) if ann is not None else None
        if node is None:
            return []
    return list(_fields(node))


def _fields(node: Any) -> dict[str, Any]:
    if isinstance(node, type) and issubclass(node, BaseModel):
        return {k: f.annotation for k, f in node.model_fields.items()}
    if dataclasses.is_dataclass(node):
        return {f.name: f.type for f in dataclasses.fields(node)}
    return {}


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


def build_model(spec: ModelSpec, base_dir: Path) -> torch.nn.Module:
    if spec.pretrained is not None:
        from .zoo.pretrained import pretrained

        return pretrained(spec.pretrained)
    if spec.zoo is not None:
        from . import zoo

        model = zoo.create_model(spec.zoo, **spec.kwargs)
    else:
        model = import_object(spec.factory, "model factory")(**spec.kwargs)
    if spec.checkpoint:
        path = Path(spec.checkpoint)
        path = path if path.is_absolute() else base_dir / path
        model.load_state_dict(torch.load(path, weights_only=True, map_location="cpu"))
    return model.eval()
