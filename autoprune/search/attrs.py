"""The names under which autoprune records things in an Optuna study, in one place.

Every evaluated plan is one trial; these are its user attributes (what
optuna-dashboard shows, what ``autoprune show`` and export read), and the study's
own. A strategy's private bookkeeping keys live in its own module.
"""

# -- a trial's user attributes --------------------------------------------------------------
#: The proposal the sampler made, written in one storage call before Optuna writes its parameters one by one,
#: so a trial killed in between is retried with exactly that proposal.
PROPOSAL = "proposal"
#: The plan that was built and evaluated: the proposal projected onto the budget.
PLAN = "plan"
MACS = "macs"
PARAMS = "params"
#: The latency table's prediction (ms), when the budget has a latency limit.
LATENCY_MS = "latency_ms"
#: Under a verified latency budget: the candidate timed beside the unpruned model.
MEASURED_MS = "measured_latency_ms"
MEASURED_FULL_MS = "measured_full_ms"
MEASURED_RATIO = "measured_latency_ratio"
MEASURED_CLEAN = "measured_clean"  # the fraction of timing blocks no other process disturbed
LATENCY_SCALE = "latency_scale"  # the calibration of the table's predictions when the plan was projected
STRATEGY = "strategy"
CRITERION = "criterion"
EVAL_SECONDS = "eval_seconds"
#: Why the trial failed: the evaluator's traceback, or why no plan could be built.
ERROR = "error"
#: The worker running the trial: {"host", "pid", "every", "beat"} (its heartbeat counter).
WORKER = "worker"
#: The trial's worker died; it is failed, not counted, and its plan retried by the trial with ``RETRY_OF``.
STALE = "stale"
RETRY_OF = "retry_of"
#: Why a trial was closed without being evaluated (a duplicate proposal, an empty ask); not counted.
DISCARDED = "discarded"
#: A trial that carried a strategy's own work, not a candidate (MetaPruning's PruningNet training): its name. One
#: worker runs it under the trial's heartbeat (a dead worker's task is retried); it is closed PRUNED, never counted.
TASK = "task"
#: The round of its strategy a candidate belongs to (MetaPruning's generation): ``autoprune show --plots`` draws the
#: best and mean score per round.
ROUND = "round"
#: A proposal enqueued as part of a batch: {"key", "token"} (see :mod:`autoprune.search.queue`).
BATCH = "batch"
#: The tag of a seed plan a strategy enqueued once per study (e.g. "uniform").
SEED_PLAN = "seed_plan"
#: The phase of its strategy a trial belongs to, when the strategy has phases (AMC: "warm-up", then "learning");
#: ``autoprune show --plots`` marks them on the score-per-trial plot.
PHASE = "phase"

# -- the study's user attributes ------------------------------------------------------------
#: The search's configuration, recorded once and checked by every run and worker.
CONFIG = "autoprune"
LATENCY_TABLE = "latency_table"
#: The study file a study was created from (so export and show need only the study).
STUDY_FILE = "study_file"
#: Curves a strategy records for ``autoprune show --plots`` (MetaPruning's training loss):
#: ``{title: {"x": [...], "y": [...], "xlabel": ..., "ylabel": ...}}``.
CURVES = "curves"
#: Trials exported from the study, with the artifact ids of their files.
EXPORTED = "exported_trials"
