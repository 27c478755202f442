"""A real accuracy evaluator on scikit-learn's digits that also sleeps, so tests can kill a worker mid-trial.

Study files name it as ``slow_eval:make`` (with tests/scripts on PYTHONPATH).
"""

import time

from autoprune.data import dataset_by_name
from autoprune.evaluators import AccuracyEvaluator


def make(pause: float = 0.0, finetune_steps: int = 0, device: str = "cpu"):
    splits = dataset_by_name("digits", seed=0)
    evaluator = AccuracyEvaluator(
        splits.val,
        train_data=splits.train,
        bn_recalibration_batches=2,
        recalibration_batch_size=64,
        finetune_steps=finetune_steps,
        finetune_batch_size=64,
        device=device,
    )

    def evaluate(model):
        result = evaluator(model)
        time.sleep(pause)
        return result

    return evaluate
