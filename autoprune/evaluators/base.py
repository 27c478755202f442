"""The evaluator protocol: any callable that scores a pruned model, higher is better.

An evaluator is any callable `model -> float` or `model -> dict` whose dict has a
`"score"` key and, optionally, extra metrics (accuracy, latency, ...) that a search
records next to the score. `normalize_result` turns either form into
`(score, extras)`; `resolve_evaluator` turns a study file's evaluator entry (a
built-in name or an import path) into a callable.
"""

from __future__ import annotations

import abc
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any, Union

import torch
from torch import nn

from ..utils import import_object, unknown_name

EvaluatorResult = Union[float, Mapping[str, Any]]
EvaluatorLike = Callable[[nn.Module], EvaluatorResult]


def check_count(name: str, value: Any, minimum: int) -> None:
    """Raise ValueError naming `name` unless `value` is an int >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def resolve_device(device: str | torch.device) -> torch.device:
    """Parse `device` ("cpu", "cuda", "cuda:1", ...) and check that it exists here."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"invalid device {device!r}: {exc}") from exc
    if resolved.type == "cpu":
        return resolved
    if resolved.type != "cuda":
        raise ValueError(f"unsupported device {device!r}: use 'cpu' or 'cuda[:index]'")
    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was requested but CUDA is not available on this machine")
    index = resolved.index if resolved.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} CUDA devices")
    return torch.device("cuda", index)


class Evaluator(abc.ABC):
    """Base class of the built-in evaluators: score a (pruned) model, higher is better.

    Subclasses implement `__call__`. The model passed in is a fresh candidate the
    evaluator owns: it may move, fine-tune or recalibrate it in place.
    """

    @abc.abstractmethod
    def __call__(self, model: nn.Module) -> EvaluatorResult:
        """Return a score (float) or a dict with a `"score"` key and extra metrics."""


def _to_python_scalar(value: Any) -> Any:
    """Turn one-element tensors and numpy-style scalars into plain Python numbers (JSON-friendly)."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        return value.item()
    return value


def _check_score(score: Any, what: str = "") -> float:
    score = _to_python_scalar(score)
    if isinstance(score, bool) or not isinstance(score, numbers.Real):
        shown = repr(score) if len(repr(score)) <= 60 else repr(score)[:57] + "..."
        kind = "" if score is None else f"{type(score).__name__} "
        raise TypeError(
            f"evaluator returned {what}{kind}{shown}; a score must be a real number (or {{'score': number, ...}})"
        )
    value = float(score)
    if not math.isfinite(value):
        raise ValueError(f"evaluator returned {what}{value}; a score must be a finite number")
    return value


def normalize_result(result: Any) -> tuple[float, dict[str, Any]]:
    """Split an evaluator's return value into `(score, extra metrics)`.

    Accepts a real number (also a one-element tensor) or a mapping with a `"score"`
    key. Raises ValueError for a non-finite score or a mapping without `"score"`,
    TypeError for anything else. One-element tensors among the extras become
    Python numbers so the extras can be stored as JSON.
    """
    if isinstance(result, Mapping):
        if "score" not in result:
            keys = ", ".join(map(repr, result)) or "none"
            raise ValueError(
                f"evaluator returned a dict without a 'score' key (keys: {keys}); return a number or "
                "{'score': number, ...}"
            )
        extras = {str(key): _to_python_scalar(value) for key, value in result.items() if key != "score"}
        return _check_score(result["score"], "a score of "), extras
    return _check_score(result), {}


def _builtin_evaluators() -> dict[str, type[Evaluator]]:
    from . import EVALUATORS  # imported here: the built-ins themselves import this module

    return EVALUATORS


def resolve_evaluator(spec: str | EvaluatorLike, **kwargs: Any) -> EvaluatorLike:
    """Return the evaluator that `spec` names.

    - an evaluator object (any callable): returned as is (no kwargs allowed);
    - a built-in name (`"accuracy"`, `"latency"`): that class built with `kwargs`;
    - an import path `"package.module:function"`: the imported callable, or, when
      `kwargs` are given, the imported object called with them (a factory or class).
    """
    builtins = _builtin_evaluators()
    builtin_names = ", ".join(builtins)
    if not isinstance(spec, str):
        if not callable(spec):
            raise TypeError(
                f"an evaluator must be callable (model -> score), a built-in name ({builtin_names}) "
                f"or 'package.module:function', got {type(spec).__name__}"
            )
        if kwargs:
            raise TypeError(
                f"keyword arguments {sorted(kwargs)} only apply to a name or import path, "
                f"not to the evaluator object {spec!r}"
            )
        return spec
    if spec in builtins:
        return builtins[spec](**kwargs)
    if ":" not in spec:
        raise ValueError(unknown_name(spec, builtins, "evaluator", "; or an import path 'package.module:function'"))
    try:
        target = import_object(spec, "evaluator")
    except ValueError as err:
        raise ValueError(f"{err}. Built-in evaluators: {builtin_names}") from None
    if kwargs:
        if not callable(target):
            raise TypeError(f"{spec!r} is a {type(target).__name__}, not a factory that accepts {sorted(kwargs)}")
        target = target(**kwargs)
    if not callable(target):
        raise TypeError(f"evaluator {spec!r} is a {type(target).__name__}, not a callable model -> score")
    return target
