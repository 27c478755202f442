"""Study files: a search described in YAML, validated before anything expensive runs.

A wrong key or value is reported with the file, the line, the key and what is
allowed. The validated file is stored in the study, so ``autoprune export`` and
``autoprune show`` can rebuild everything from the study alone.
"""

from __future__ import annotations

import dataclasses
import sys
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .search import Budget, SearchConfig
from .search.strategies import DEFAULT
from .utils import check_kwargs, did_you_mean, import_object, lookup, unknown_name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Strict):
    """The network to prune: one of a zoo name, a torchvision or timm model name, a ``package.module:function``
    factory or a shipped pretrained model, built with ``kwargs``; ``checkpoint`` (relative to the study file's
    folder) is a saved ``state_dict`` to load into it (torchvision and timm models are built without weights)."""

    zoo: str | None = None
    torchvision: str | None = None
    timm: str | None = None
    factory: str | None = None
    pretrained: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoint: str | None = None
    input_shape: list[int] = Field(min_length=1)

    @field_validator("zoo", "torchvision", "timm", "factory", "pretrained")
    @classmethod
    def _known(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None:
            builder(info.field_name, v)  # raises for a name the source does not have
        return v

    @field_validator("kwargs")
    @classmethod
    def _kwargs(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        given = [k for k in MODEL_SOURCES if info.data.get(k) is not None]
        if len(given) == 1 and v:
            source, name = given[0], info.data[given[0]]
            if source == "pretrained":
                raise ValueError(f"model.pretrained {name} is built as it was trained: it takes no kwargs")
            check_kwargs(builder(source, name), v, f"{source} model {name}", supplied=_SUPPLIED.get(source, ()))
        return v

    @model_validator(mode="after")
    def _one_source(self) -> "ModelSpec":
        given = [k for k in MODEL_SOURCES if getattr(self, k) is not None]
        if len(given) != 1:
            got = f" (got {', '.join(given)})" if given else ""
            raise ValueError(f"give exactly one of {', '.join('model.' + k for k in MODEL_SOURCES)}{got}")
        if self.pretrained is not None and self.checkpoint is not None:
            raise ValueError(f"model.pretrained {self.pretrained} brings its weights: it takes no checkpoint")
        if any(s < 1 for s in self.input_shape):
            raise ValueError("input_shape entries must be positive")
        return self


#: Where a study file's model can come from (``model.KEY: NAME``).
MODEL_SOURCES = ("zoo", "torchvision", "timm", "factory", "pretrained")
# What build_model passes itself: no weights (nor a detection model's backbone weights) are ever downloaded.
_SUPPLIED = {"torchvision": ("weights", "weights_backbone"), "timm": ("pretrained",)}


def builder(source: str, name: str) -> Any:
    """The callable that builds model ``name`` of ``source`` (one of `MODEL_SOURCES`), or a ValueError naming
    close matches and where the known names are listed."""
    if source == "factory":
        return import_object(name, "model factory")
    if source == "zoo":
        from . import zoo

        return lookup(zoo.MODELS, name, "zoo model")
    if source == "pretrained":
        from .zoo.pretrained import PRETRAINED, pretrained

        lookup(PRETRAINED, name, "pretrained model")
        return pretrained
    if source == "torchvision":
        import torchvision.models

        known = torchvision.models.list_models()
        if name not in known:
            raise ValueError(_unknown_model(name, known, "torchvision", "torchvision.models.list_models()"))
        return torchvision.models.get_model_builder(name)
    if source == "timm":
        import timm

        known = timm.list_models()
        if name not in known:
            raise ValueError(_unknown_model(name, known, "timm", "timm.list_models()"))
        return timm.create_model
    raise ValueError(unknown_name(source, MODEL_SOURCES, "model source"))


def _unknown_model(name: str, known: list[str], source: str, listing: str) -> str:
    return f"unknown {source} model {name!r}.{did_you_mean(name, known)} {listing} lists all {len(known)}"


class DataSpec(_Strict):
    """The dataset: search scores on ``val`` (carved from the training set), never on ``test``.

    ``dataset`` names a built-in source (``fashion_mnist``, the default, ``digits``, ``mnist``, ``cifar10``,
    ``cifar100`` read from ``root``, or ``image_folder``: a folder of class folders at ``root``); ``factory`` names
    a ``package.module:function`` of yours instead, called with ``kwargs``. A relative ``root`` is relative to the
    study file's folder. ``transforms`` are named (see `autoprune.data.transforms`); ``num_workers`` is the
    number of processes that load (decode, transform) samples for the evaluator, the fine-tune and a data-driven
    criterion's calibration batches; the batches are the same with any count.
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

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from .evaluators import EVALUATORS

        if v not in EVALUATORS and ":" not in v:
            raise ValueError(unknown_name(v, EVALUATORS, "evaluator", "; or an import path 'package.module:function'"))
        return v

    @field_validator("kwargs")
    @classmethod
    def _kwargs(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        from .evaluators import EVALUATORS

        name = info.data.get("name")
        if name is None or not v:
            return v
        if name in EVALUATORS:  # the command passes the data (accuracy) or the example inputs (latency) itself
            target = EVALUATORS[name]
            check_kwargs(target, v, target.__name__, supplied=("data", "example_inputs"))
        else:
            check_kwargs(import_object(name, "evaluator"), v, f"evaluator {name}")
        return v


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

    @field_validator("options")
    @classmethod
    def _options(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        from .search.strategy import strategy_class

        name = info.data.get("name")
        if name is not None and v:
            check_kwargs(strategy_class(name), v, f"strategy {name}")
        return v


class ExportSpec(_Strict):
    """Where the best structure goes; ``finetune_steps`` > 0 trains it first on the training split with the
    training-aware ``method`` (``autoprune.training``: finetune, agp, slim, sfp, fpgm, taylor, imp, admm, scratch_e,
    scratch_b) and its ``method_options``, optionally distilling from the unpruned model; ``report`` measures it
    against the unpruned model (the result card)."""

    dir: str | None = None
    formats: list[Literal["pt2", "onnx"]] = Field(default_factory=list)
    finetune_steps: int = Field(default=0, ge=0)
    finetune_lr: float = Field(default=0.01, gt=0)
    method: str = "finetune"
    method_options: dict[str, Any] = Field(default_factory=dict)
    distill: bool = False
    distill_temperature: float = Field(default=4.0, gt=0)
    distill_alpha: float = Field(default=0.5, ge=0, le=1)
    report: bool = True  # the result card: REPORT.md, PNGs and figures in structure.json (test accuracy, latency)

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        from . import training

        training.options(v)  # a registered method: a clear error naming the known ones otherwise
        if not training.METHODS[v].structured:
            raise ValueError(f"{v!r} prunes single weights, not channels: an export writes the searched channel plan")
        return v

    @field_validator("method_options")
    @classmethod
    def _method_options(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        from . import training

        name = info.data.get("method")
        if name is not None and v:
            training.check_options(name, v, supplied=SUPPLIED_TO_METHODS)
        return v


#: What the export's trainer gives every method itself (not a study file's ``method_options``).
SUPPLIED_TO_METHODS = ("total_steps", "calibration", "pruned")


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
    calibration_batches: int = Field(default=4, gt=0)  # for a criterion that needs data: training batches of 64
    # > 0: refit each candidate's layers by least squares on this many training batches of 64 (0: off)
    reconstruct_batches: int = Field(default=0, ge=0)
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
            n_trials=self.n_trials if n_trials is None else n_trials,
            multi_objective=self.multi_objective,
            max_sparsity=self.max_sparsity,
            verify_latency=self.verify_latency,
            latency_margin=self.latency_margin,
            reconstruct=self.reconstruct_batches > 0,
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
    """The study file's model with its ``checkpoint`` loaded (relative to ``base_dir``), in eval mode."""
    source = next(k for k in MODEL_SOURCES if getattr(spec, k) is not None)
    name = getattr(spec, source)
    if source == "pretrained":
        return builder(source, name)(name)
    model = _build(source, name, spec.kwargs)
    if spec.checkpoint:
        path = Path(spec.checkpoint)
        path = path if path.is_absolute() else base_dir / path
        state = read_state_dict(path)
        _check_fits(model, state, path, source, name, spec.kwargs)
        model.load_state_dict(state)
    return model.eval()


def _build(source: str, name: str, kwargs: dict[str, Any]) -> torch.nn.Module:
    make = builder(source, name)
    try:
        if source == "torchvision":  # no download: the weights come from model.checkpoint
            import inspect

            none = {k: None for k in _SUPPLIED[source] if k in inspect.signature(make).parameters}
            return make(**none, **kwargs)
        if source == "timm":
            return make(name, pretrained=False, **kwargs)
        return make(**kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"cannot build {source} model {name} with kwargs {kwargs}: {type(err).__name__}: {err}"
        ) from err


#: Keys under which training scripts commonly save the model's state_dict next to other things (optimiser, epoch).
STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict")
_SAVE = "save it with torch.save(model.state_dict(), path)"


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint file's state_dict, loaded with ``weights_only=True``: a plain state_dict, or a dict holding one
    under one of `STATE_DICT_KEYS` (a DataParallel ``module.`` prefix is dropped). A clear ValueError otherwise."""
    import pickle
    import re

    if not path.is_file():
        raise FileNotFoundError(f"model.checkpoint {path} does not exist")
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        what = str(err).split("\n")[0]
        if found:
            what = f"it pickles {found.group(1)}, which loading with weights_only refuses"
        raise ValueError(f"model.checkpoint {path} is not a plain state_dict: {what}; {_SAVE}") from None
    except Exception as err:  # noqa: BLE001 - not a torch file at all
        raise ValueError(
            f"cannot read model.checkpoint {path} as a torch file ({type(err).__name__}: {err}); {_SAVE}"
        ) from None
    state = obj
    if isinstance(obj, dict) and not _is_state_dict(obj):
        state = next((obj[k] for k in STATE_DICT_KEYS if k in obj and _is_state_dict(obj[k])), None)
    if not _is_state_dict(state):
        keys = f" with keys {', '.join(map(repr, list(obj)[:8]))}" if isinstance(obj, dict) else ""
        raise ValueError(
            f"model.checkpoint {path} holds a {type(obj).__name__}{keys}, not a state_dict (nor a dict with one under "
            f"{', '.join(map(repr, STATE_DICT_KEYS))}); {_SAVE}"
        )
    if all(k.startswith("module.") for k in state):  # saved from a DataParallel wrapper
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def _mismatch(own: dict[str, Any], state: dict[str, torch.Tensor]) -> tuple[list[str], list[str], list[str]]:
    """Missing keys, unexpected keys, and shape mismatches (``key: checkpoint (..) vs model (..)``)."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    return missing, unexpected, shapes


def _check_fits(
    model: torch.nn.Module, state: dict, path: Path, source: str, name: str, kwargs: dict[str, Any]
) -> None:
    """A ValueError naming the first missing / unexpected keys and shape mismatches when ``state`` is not a
    state_dict of ``model``, with the models or kwargs it does fit (tried on the meta device)."""
    missing, unexpected, shapes = _mismatch(model.state_dict(), state)
    if not (missing or unexpected or shapes):
        return
    parts = [
        f"{label} {_few(items)}"
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes))
        if items
    ]
    fits = _fitting(source, name, kwargs, state)
    hint = (
        f"It fits {' or '.join(fits)}"
        if fits
        else "Is it the checkpoint of another model, or of the same model with other model.kwargs?"
    )
    raise ValueError(
        f"model.checkpoint {path} is not a state_dict of {source} model {name} (kwargs {kwargs}): "
        f"{'; '.join(parts)}. {hint}"
    )


def _few(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")


def _fitting(source: str, name: str, kwargs: dict[str, Any], state: dict, limit: int = 8) -> list[str]:
    """Study-file models (``source`` NAME and kwargs) whose state_dict ``state`` fits: the same model with the
    checkpoint's number of classes, and models of ``source`` with close names. Built on the meta device (no memory,
    no initialisation cost)."""
    import difflib

    variants = [dict(kwargs)]
    weights = [v for k, v in state.items() if k.endswith("weight") and v.dim() >= 2]
    if weights and kwargs.get("num_classes") != int(weights[-1].shape[0]):  # the classifier's outputs
        variants.append({**kwargs, "num_classes": int(weights[-1].shape[0])})
    tries = [(name, kw) for kw in variants[1:]]
    if source in ("zoo", "torchvision", "timm"):
        try:
            known = _names(source)
        except Exception:  # noqa: BLE001 - no listing: only the kwargs are tried
            known = []
        for other in difflib.get_close_matches(name, known, n=limit, cutoff=0.5):
            if other != name:
                tries += [(other, kw) for kw in variants]
    fits = []
    for other, kw in tries:
        try:
            with torch.device("meta"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                candidate = _build(source, other, kw)
        except Exception:  # noqa: BLE001 - a candidate that does not build is not a fit
            continue
        if not any(_mismatch(candidate.state_dict(), state)):
            changed = {k: v for k, v in kw.items() if kwargs.get(k) != v}
            fits.append(
                " with ".join(
                    ([f"{source} model {other}"] if other != name else [])
                    + ([f"model.kwargs {', '.join(f'{k}: {v}' for k, v in changed.items())}"] if changed else [])
                )
            )
            break  # the first fit: the same model with other kwargs, else the closest name
    return fits


def _names(source: str) -> list[str]:
    if source == "zoo":
        from . import zoo

        return list(zoo.MODELS)
    if source == "torchvision":
        import torchvision.models

        return torchvision.models.list_models()
    import timm

    return timm.list_models()
