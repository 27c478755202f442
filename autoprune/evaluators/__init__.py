"""Evaluators score a pruned candidate model; higher is better.

An evaluator is any callable `model -> float` or `model -> dict` with a
`"score"` key. The built-ins: `AccuracyEvaluator` (top-1 accuracy after
adaptive-BN recalibration and an optional short fine-tune) and
`LatencyEvaluator` (negative median forward latency).
"""

from .accuracy import AccuracyEvaluator
from .base import Evaluator, normalize_result, resolve_evaluator
from .latency import LatencyEvaluator, latency_stats, measure_latency

EVALUATORS: dict[str, type[Evaluator]] = {
    "accuracy": AccuracyEvaluator,
    "latency": LatencyEvaluator,
}

__all__ = [
    "EVALUATORS",
    "AccuracyEvaluator",
    "Evaluator",
    "LatencyEvaluator",
    "latency_stats",
    "measure_latency",
    "normalize_result",
    "resolve_evaluator",
]
