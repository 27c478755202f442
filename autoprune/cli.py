"""The command line: study files in, searches, exports and reports out.

autoprune search studies/quickstart.yaml          # runs; run it again to resume
autoprune export studies/quickstart.yaml --out out/
autoprune show   studies/quickstart.yaml --plots out/plots
autoprune search studies/quickstart.yaml --workers 4 --storage journal:q.journal   # local workers
autoprune study create studies/quickstart.yaml --storage postgresql://...         # once, then on every machine:
autoprune worker studies/quickstart.yaml --storage postgresql://... --device cuda:0
"""

from __future__ import annotations

import copy
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import optuna
import torch
import typer
from optuna.trial import TrialState
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .search import attrs
from .search.ledger import counted, default_storage, failure_reason, load_existing, redact, uncounted
from .studyfile import StudyFile, StudyFileError, build_model, importable_from, load_study_file, parse_study

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Automatic structured pruning on Optuna studies.")
console = Console()


@dataclass
class Setup:
    """Everything a study file turns into."""

    config: StudyFile
    base_dir: Path
    model: torch.nn.Module
    inputs: tuple
    space: Any
    storage: str
    _splits: Any = None
    _calibration: Any = None

    def splits(self) -> Any:
        """The study file's data (loaded once)."""
        if self._splits is None:
            self._splits = self.config.data.splits(self.base_dir)
        return self._splits

    def needs_data(self) -> bool:
        """True when the criterion scores channels on data (taylor, apoz, mean_activation, ...)."""
        from .engine import CRITERIA

        return bool(CRITERIA[self.config.criterion].needs_data)

    def calibration(self) -> list | None:
        """The batches a criterion that needs data scores channels on and reconstruction refits layers on (None when
        neither is asked for): the first ``calibration_batches`` (or ``reconstruct_batches``, if more) batches of 64
        of the training split, in order, so that every worker and the export build the same networks."""
        count = max(self.config.calibration_batches if self.needs_data() else 0, self.config.reconstruct_batches)
        if not count:
            return None
        if self._calibration is None:
            from torch.utils.data import DataLoader

            loader = DataLoader(
                self.splits().train, batch_size=64, shuffle=False, num_workers=self.config.data.num_workers
            )
            self._calibration = [batch for batch, _ in zip(loader, range(count))]
        return self._calibration


def _storage(config: StudyFile, base_dir: Path, override: str | None) -> str:
    if override:
        return override
    if config.storage:
        url = config.storage
        for prefix in ("sqlite:///", "journal:"):  # a file next to the study file, wherever the command runs
            if url.startswith(prefix) and not Path(url.removeprefix(prefix)).is_absolute():
                url = f"{prefix}{base_dir / url.removeprefix(prefix)}"
        return url
    return default_storage(config.study_name, base_dir)


def _setup(config: StudyFile, base_dir: Path, storage: str | None) -> Setup:
    import autoprune as ap

    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)  # a zoo model without weights is the same in every worker
    model = build_model(config.model, base_dir)
    inputs = (torch.zeros(config.model.input_shape),)
    space = ap.PruningSpace(model, inputs, exclude=config.exclude, round_to=config.round_to)
    setup = Setup(config, base_dir, model, inputs, space, _storage(config, base_dir, storage))
    if config.evaluator.name == "accuracy" or setup.needs_data():
        _check_input_shape(setup)
    return setup


def _check_input_shape(setup: Setup) -> None:
    """The data's inputs must be what the model takes (``model.input_shape`` without its batch dimension)."""
    config = setup.config
    got, want = tuple(setup.splits().input_shape), tuple(config.model.input_shape[1:])
    if got != want:
        source = config.data.dataset or config.data.factory
        raise ValueError(
            f"data {source} gives inputs of shape {list(got)}, but model.input_shape {config.model.input_shape} "
            f"takes {list(want)}: set model.input_shape to {[config.model.input_shape[0], *got]}, or make the data "
            "fit (data.transforms: resize, center_crop, grayscale, ...)"
        )


def _evaluator(setup: Setup, device: str | None = None, **overrides: Any):  # noqa: ANN202
    """The study file's evaluator (``overrides`` replace its keyword arguments)."""
    from .evaluators import resolve_evaluator

    config = setup.config
    kwargs = {**config.evaluator.kwargs, **overrides}
    if device is not None:
        kwargs["device"] = device
    if config.evaluator.name == "accuracy":
        splits = setup.splits()
        kwargs.setdefault("train_data", splits.train)
        kwargs.setdefault("num_workers", config.data.num_workers)
        return resolve_evaluator("accuracy", data=splits.val, **kwargs)
    if config.evaluator.name == "latency":
        kwargs.setdefault("example_inputs", torch.zeros(config.model.input_shape))
    return resolve_evaluator(config.evaluator.name, **kwargs)


def _from_args(study_file: Optional[Path], study: Optional[str], storage: Optional[str]) -> tuple[StudyFile, Path, str]:
    """The study's configuration, from a study file or from the study itself."""
    if study_file is not None:
        config, path = load_study_file(study_file)
        return config, path.parent, _storage(config, path.parent, storage)
    if not (study and storage):
        raise typer.BadParameter("give a study file, or both --study and --storage")
    s = _load(study, storage)
    raw = s.user_attrs.get(attrs.STUDY_FILE)
    if raw is None:
        raise typer.BadParameter(f"study {study!r} was not created from a study file; pass the study file instead")
    importable_from(raw["base_dir"])
    return parse_study(raw["config"]), Path(raw["base_dir"]), storage


def _load(name: str, url: str) -> optuna.Study:
    return load_existing(url, name)


def _fail(err: Exception) -> None:
    console.print(f"[bold red]error:[/] {escape(str(err))}", soft_wrap=True)
    raise typer.Exit(2)


def _create(setup: Setup, path: Path) -> optuna.Study:
    """Create the study (once) and record the study file in it, so export/show need only the study."""
    import autoprune as ap

    study = ap.create_study(setup.space, config=setup.config.search_config(setup.storage))
    study.set_user_attr(
        attrs.STUDY_FILE, {"config": setup.config.model_dump(mode="json"), "base_dir": str(path.parent.resolve())}
    )
    return study


#: What a command reports as one line (exit code 2) instead of a traceback: bad study files, values, paths and
#: storages (StudyFileError and StorageError are ValueErrors), missing files or folders, unimportable modules.
BAD_INPUT = (StudyFileError, ValueError, OSError, ImportError, KeyError)

study_app = typer.Typer(no_args_is_help=True, help="Create studies that workers then join.")
app.add_typer(study_app, name="study")


@study_app.command("create")
def study_create(
    study_file: Path = typer.Argument(..., help="The study file (YAML)."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Optuna storage URL (journal file or PostgreSQL)."),
) -> None:
    """Create a study once (schema, configuration, seed proposals) before starting its workers."""
    try:
        config, path = load_study_file(study_file)
        setup = _setup(config, path.parent, storage)
        study = _create(setup, path)
    except BAD_INPUT as err:
        _fail(err)
    url = redact(setup.storage)
    console.print(
        f"study [bold]{study.study_name}[/] ready in {url} ({len(study.trials)} trials so far). Start workers with:\n"
        f"  autoprune worker {study_file} --storage '{url}'"
    )


@app.command()
def worker(
    study_file: Path = typer.Argument(..., help="The study file (YAML) the study was created from."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Optuna storage URL of the study."),
    n_trials: Optional[int] = typer.Option(
        None, "--n-trials", min=1, help="Study-wide number of trials (default: the file)."
    ),
    device: Optional[str] = typer.Option(None, "--device", help="Device for this worker's evaluations, e.g. cuda:1."),
    heartbeat: float = typer.Option(10.0, "--heartbeat", help="Seconds between heartbeats; 3 missed = dead worker."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads (default: the study file's)."),
) -> None:
    """Join an existing study and evaluate until its study-wide trial budget is spent."""
    import autoprune as ap

    try:
        config, path = load_study_file(study_file)
        if threads is not None:
            config = config.model_copy(update={"threads": threads})
        url = _storage(config, path.parent, storage)
        _load(config.study_name, url)  # fails fast: an unreachable database, or no study there yet
        setup = _setup(config, path.parent, url)
        evaluator = _evaluator(setup, device)
        calibration = setup.calibration()
    except BAD_INPUT as err:
        _fail(err)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("autoprune").setLevel(logging.ERROR)

    ran: list[optuna.trial.FrozenTrial] = []

    def on_trial(s: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
        ran.append(t)
        value = f"{t.values[0]:.4f}" if t.values else failure_reason(t.user_attrs.get(attrs.ERROR))
        console.print(f"trial {t.number} {t.state.name.lower()}: {escape(value)}", highlight=False)

    try:
        study = ap.search(
            setup.space,
            evaluator,
            config=config.search_config(setup.storage, n_trials),
            calibration=calibration,
            callbacks=[on_trial],
            join=True,
            heartbeat_interval=heartbeat,
        )
    except BAD_INPUT as err:
        _fail(err)
    if ran:  # this worker's trials (a worker that found the study done has nothing to say about it)
        _check_not_all_failed(study, ran)


@app.command()
def search(
    study_file: Path = typer.Argument(..., help="The study file (YAML)."),
    n_trials: Optional[int] = typer.Option(
        None, "--n-trials", min=1, help="Study-wide number of trials (overrides the file)."
    ),
    storage: Optional[str] = typer.Option(
        None, "--storage", help="Optuna storage URL (default: SQLite file next to the study file)."
    ),
    export_dir: Optional[Path] = typer.Option(None, "--out", help="Where to export the best structure."),
    workers: int = typer.Option(1, "--workers", min=1, help="Local worker processes (journal or PostgreSQL storage)."),
    device: Optional[str] = typer.Option(
        None, "--device", help="Device(s) for evaluations: 'cuda:0' or 'cuda:0,cuda:1' (one per worker, cycled)."
    ),
    heartbeat: float = typer.Option(10.0, "--heartbeat", help="Seconds between heartbeats; 3 missed = dead worker."),
) -> None:
    """Run (or resume) the search a study file describes, then export its best structure."""
    import autoprune as ap

    devices = [d.strip() for d in device.split(",")] if device else [None]
    try:
        config, path = load_study_file(study_file)
        setup = _setup(config, path.parent, storage)
        if workers > 1 and setup.storage.startswith("sqlite"):
            raise ValueError(
                f"--workers {workers} cannot share the SQLite storage {setup.storage}: SQLite is for one process. "
                f"Use --storage journal:{path.parent / (config.study_name + '.journal')} on one machine, "
                "or --storage postgresql://USER:PASSWORD@HOST/DB across machines"
            )
        out = export_dir or Path(config.export.dir or (path.parent / "out" / config.study_name))
        _check_out(out)
        _check_training(setup)
        evaluator = _evaluator(setup, devices[0]) if workers == 1 else None
        calibration = setup.calibration() if workers == 1 else None  # (each worker takes its own)
        study = _create(setup, path)
    except BAD_INPUT as err:
        _fail(err)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    total = config.n_trials if n_trials is None else n_trials
    space = setup.space
    console.print(
        f"[bold]{config.study_name}[/]: {len(space.groups)} channel groups, "
        f"{space.macs({}) / 1e6:.1f} MMACs, {space.params({}) / 1e6:.3f} M params; storage {redact(setup.storage)}"
        + (f"; {workers} workers" if workers > 1 else "")
    )
    logging.getLogger("autoprune").setLevel(logging.ERROR)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("best {task.fields[best]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("search", total=total, completed=min(_done(study), total), best=_best_text(study))

        ran: list[optuna.trial.FrozenTrial] = []  # this run's trials

        def on_trial(s: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
            ran.append(t)
            if t.state == TrialState.FAIL:
                reason = failure_reason(t.user_attrs.get(attrs.ERROR))
                progress.console.print(f"[yellow]trial {t.number} failed:[/] {escape(reason)}", highlight=False)
            progress.update(task, completed=min(_done(s), total), best=_best_text(s))

        work: dict[str, Any] = {}

        def on_work(what: str, done: int, steps: int) -> None:
            """A strategy's own long work (MetaPruning's PruningNet training) gets a bar of its own."""
            if what not in work:
                work[what] = progress.add_task(what, total=steps, best="-")
            progress.update(work[what], completed=done, description=what)

        try:
            if workers == 1:
                study = ap.search(
                    space,
                    evaluator,
                    config=config.search_config(setup.storage, total),
                    calibration=calibration,
                    callbacks=[on_trial],
                    heartbeat_interval=heartbeat,
                    progress=on_work,
                )
            else:
                _run_workers(study, study_file, setup.storage, total, workers, devices, heartbeat, on_trial)
        except BAD_INPUT as err:
            _fail(err)
    _table(study, 5)
    _check_not_all_failed(study, ran)
    try:
        where = _export_best(setup, study, out, None)
        console.print(f"best structure exported to [bold]{where}[/]")
    except BAD_INPUT as err:
        console.print(f"[yellow]nothing exported:[/] {escape(str(err))}")


def _check_out(out: Path) -> None:
    """An export folder must be a folder (or not exist yet)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file: export writes structure.json and weights.pt into a folder")


def _check_not_all_failed(study: optuna.Study, ran: list[optuna.trial.FrozenTrial]) -> None:
    """Exit non-zero when every trial of this run (or, when it ran none, of the study) failed."""
    trials = [t for t in ran if not uncounted(t)] or [
        t for t in study.get_trials(deepcopy=False) if t.state.is_finished() and not uncounted(t)
    ]
    if trials and all(t.state == TrialState.FAIL for t in trials):
        last = failure_reason(trials[-1].user_attrs.get(attrs.ERROR))
        _fail(
            ValueError(
                f"every trial failed ({len(trials)}), the last: {last} "
                f"(each trial's full error is in its user attribute {attrs.ERROR!r})"
            )
        )


def _done(study: optuna.Study) -> int:
    return counted(study.get_trials(deepcopy=False))


def _run_workers(
    study: optuna.Study,
    study_file: Path,
    storage: str,
    total: int,
    workers: int,
    devices: list[str | None],
    heartbeat: float,
    on_trial: Any,
) -> None:
    """Start ``workers`` local `autoprune worker` processes on the study and follow their trials until all exit."""
    import subprocess
    import tempfile
    import time

    logs, procs = [], []
    threads = study.user_attrs[attrs.STUDY_FILE]["config"].get("threads") or 1  # one thread per worker by default
    for i in range(workers):
        cmd = [sys.executable, "-m", "autoprune.cli", "worker", str(study_file), "--storage", storage]
        cmd += ["--n-trials", str(total), "--heartbeat", str(heartbeat), "--threads", str(threads)]
        if devices[i % len(devices)] is not None:
            cmd += ["--device", devices[i % len(devices)]]
        log = tempfile.TemporaryFile("w+")
        logs.append(log)
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log))
    seen: set[int] = set()
    try:
        while True:
            running = [p for p in procs if p.poll() is None]
            for t in study.get_trials(deepcopy=False):
                if t.state.is_finished() and t.number not in seen:
                    seen.add(t.number)
                    if not uncounted(t):
                        on_trial(study, t)
            if not running:
                break
            time.sleep(1.0)
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        raise
    failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode != 0]
    for i, rc in failed:
        logs[i].seek(0)
        tail = logs[i].read()[-800:]
        console.print(f"[bold red]worker {i} exited with code {rc}:[/]\n{tail}")
    if failed and len(failed) == len(procs):
        raise ValueError("every worker failed (see above)")


def _best_text(study: optuna.Study) -> str:
    """The best score among completed trials that meet the budget (what export would take)."""
    trials = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if not trials:
        return "-"
    meeting = [t for t in trials if _meets(t)]
    return f"{max(t.values[0] for t in meeting):.4f}" if meeting else "- (none meets the budget yet)"


def _meets(t: optuna.trial.FrozenTrial) -> bool:
    """A trial meets the budget when every constraint the runner recorded is <= 0 (Optuna's feasibility)."""
    return all(c <= 0 for c in t.constraints.values())


def _accuracy_options(config: StudyFile) -> dict[str, Any]:
    """The accuracy evaluator's options that say how to run a network (not what to score it on)."""
    keys = ("device", "threads", "bf16", "channels_last", "batch_size", "num_workers")
    return {"num_workers": config.data.num_workers, **{k: v for k, v in config.evaluator.kwargs.items() if k in keys}}


def _as_scored(setup: Setup, model: torch.nn.Module) -> float | None:
    """Put ``model`` in the state its trial was scored in: the study's BN recalibration (same batches), without its
    short fine-tune (a trial's network carries its own weights). Returns the score on the search's data (None when
    the evaluator is not the accuracy evaluator: the model is then used as built)."""
    if setup.config.evaluator.name != "accuracy":
        return None
    return float(_evaluator(setup, finetune_steps=0)(model)["score"])


def _test_evaluator(setup: Setup) -> Any:
    """Top-1 on the test split of the network as it is (no recalibration), or None without such data."""
    from .evaluators import AccuracyEvaluator

    if setup.config.evaluator.name != "accuracy":
        return None
    splits = setup.splits()
    if getattr(splits, "test", None) is None or len(splits.test) == 0:
        return None
    return AccuracyEvaluator(splits.test, bn_recalibration_batches=0, **_accuracy_options(setup.config))


def _check_training(setup: Setup, method: str | None = None, steps: int | None = None) -> None:
    """Refuse the export block's training method and options now, not after the search: the method is
    constructed once on the model (a plan that prunes nothing), which checks every option's value."""
    from . import training

    spec = setup.config.export
    method = spec.method if method is None else method
    steps = spec.finetune_steps if steps is None else steps
    if not steps and method == spec.method:
        return
    training.options(method)  # an unknown name: the known ones, and the closest
    if not training.METHODS[method].structured:
        raise ValueError(
            f"training method {method!r} prunes single weights, not channels: an export writes a searched channel "
            "plan; use ap.training.get('level', space, sparsities) in Python for unstructured pruning"
        )
    options = dict(spec.method_options) if method == spec.method else {}
    if setup.needs_data():
        options.setdefault("calibration", setup.calibration())
    training.get(method, setup.space, {}, total_steps=steps or 1000, **options)


def _train(
    setup: Setup, net: Any, model: torch.nn.Module, steps: int, out: Path, method: str | None, distill: bool | None
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train the exported network on the training split with the study's training-aware method (``method`` and
    ``distill`` override the study file's ``export`` block): ``finetune`` trains ``model`` (the network the trial
    scored), every other method trains the trial's full-size weights towards its plan. A checkpoint in ``out``
    lets a killed export resume its training; it is removed once the training is done."""
    from . import training
    from .utils import num_threads

    config = setup.config
    spec = config.export
    if config.evaluator.name != "accuracy":
        raise ValueError(
            f"training before export uses the accuracy evaluator's data; this study's evaluator is "
            f"{config.evaluator.name!r}: export without --finetune and train the network yourself"
        )
    method = spec.method if method is None else method
    options = dict(spec.method_options) if method == spec.method else {}
    distill = spec.distill if distill is None else distill
    if method == "finetune":
        options["pruned"] = model
    if setup.needs_data():
        options.setdefault("calibration", setup.calibration())
    splits = setup.splits()
    console.print(
        f"training {steps} steps ({method}{' + distillation' if distill else ''}, lr {spec.finetune_lr}) "
        f"on {len(splits.train)} training samples ..."
    )
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / "training.ckpt"
    with num_threads(config.threads):
        result = training.run(
            net.space,
            net.plan,
            splits.train,
            method=method,
            steps=steps,
            lr=spec.finetune_lr,
            distill=distill,
            temperature=spec.distill_temperature,
            alpha=spec.distill_alpha,
            seed=config.seed,
            checkpoint=checkpoint,
            **options,
        )
    checkpoint.unlink(missing_ok=True)
    record = dict(result.record)  # method, steps trained (Scratch-B's stretched), lr, distillation, losses, time
    chosen = {k: v for k, v in options.items() if k not in ("calibration", "pruned")}
    if chosen:
        record["options"] = chosen
    return result.model, record


def _export_best(
    setup: Setup,
    study: optuna.Study,
    out: Path,
    trial_number: int | None,
    finetune_steps: int | None = None,
    weights: str = "trial",
    report: bool | None = None,
    method: str | None = None,
    distill: bool | None = None,
) -> Path:
    """Export a trial's network (the best by default) as it was scored, fine-tuned when asked, with its result
    card (REPORT.md and PNGs beside it, the figures in structure.json) unless ``report`` is False."""
    import autoprune as ap

    from .report import compare

    if trial_number is None:
        trial = ap.best_trial(study)
    else:
        trial = next((t for t in study.trials if t.number == trial_number), None)
        if trial is None or trial.state != TrialState.COMPLETE:
            raise ValueError(f"trial {trial_number} does not exist or did not complete")
    config = setup.config
    steps = config.export.finetune_steps if finetune_steps is None else finetune_steps
    chosen = config.export.method if method is None else method
    if weights == "scratch" and steps and chosen not in ("finetune", "scratch_e", "scratch_b"):
        raise ValueError(
            f"--weights scratch trains the structure from a random initialisation, but training method {chosen!r} "
            "prunes trained weights while it trains: use --method finetune, scratch_e or scratch_b with it"
        )
    net = ap.trial_network(study, trial, setup.space, weights=weights)  # by default the network the trial scored
    extra: dict[str, Any] = {"study": study.study_name, "trial": trial.number, "storage": setup.storage}
    extra["weights"] = weights
    model = net.build(calibration=setup.calibration())  # a criterion that needs data: the search's batches
    rescored = _as_scored(setup, model) if weights != "scratch" else None
    if rescored is not None:
        extra["rescored"] = rescored  # the trial's score again, on the exported weights
    test = _test_evaluator(setup)
    card: dict[str, Any] = {}
    if steps:
        before = float(test(copy.deepcopy(model))["accuracy"]) if test is not None else None
        model, extra["finetune"] = _train(setup, net, model, steps, out, method, distill)
        card["finetune"] = extra["finetune"]
        if before is not None:
            extra["finetune"]["test_before"] = before
            card["pruned"] = {"test_accuracy_before_finetune": before}
    result = None
    if config.export.report if report is None else report:
        console.print("measuring the result (test accuracy, latency) ...")
        done = sorted((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.number)
        card["title"] = f"{study.study_name}: trial {trial.number}"
        card["search"] = {
            "strategy": str(trial.user_attrs.get(attrs.STRATEGY, config.strategy.name)),
            "trials": _done(study),
            "best_score": trial.values[0],
            "best_trial": trial.number,
            "scored_on": "the held-out split of the training data (val)",
        }
        card["kept_channels"] = {
            g.name: [int(k), g.channels] for g, k in zip(setup.space.groups, setup.space.kept_counts(net.plan))
        }
        batch = int(config.evaluator.kwargs.get("batch_size", 256))
        result = compare(
            setup.model,
            model,
            setup.inputs,
            test=test,
            batch_sizes=sorted({1, batch}),
            threads=config.threads or 1,
            extra=card,
            history=[(t.number, t.values[0]) for t in done if _meets(t)],
        )
        extra["report"] = result.figures
    if steps and test is not None:
        after = result.figures["pruned"]["test_accuracy"] if result else float(test(copy.deepcopy(model))["accuracy"])
        extra["finetune"]["test_after"] = after
        console.print(f"test accuracy {extra['finetune']['test_before']:.2%} -> {after:.2%} after fine-tuning")
    where = ap.export(
        net.space,
        net.plan,
        out,
        criterion=net.criterion,
        calibration=setup.calibration(),
        model=model,
        score=trial.values[0],
        budget=config.budget,
        formats=tuple(config.export.formats),
        extra=extra,
    )
    if result is not None:
        result.write(where)
        console.print(result.table())
    _store_artifacts(study, trial, where, setup)
    return where


def _store_artifacts(study: optuna.Study, trial: optuna.trial.FrozenTrial, out: Path, setup: Setup) -> None:
    """Keep the exported files as Optuna artifacts of the study (next to a SQLite file).

    A finished trial cannot take attributes any more, so the files hang off the
    study and ``exported_trials`` maps each trial number to its artifact ids.
    """
    import warnings

    from optuna.artifacts import FileSystemArtifactStore, upload_artifact

    if not setup.storage.startswith("sqlite:///"):
        return
    store_dir = Path(setup.storage.removeprefix("sqlite:///")).with_suffix(".artifacts")
    store_dir.mkdir(parents=True, exist_ok=True)
    store = FileSystemArtifactStore(str(store_dir))
    ids = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("structure.json", "weights.pt"):
            ids[name] = upload_artifact(
                artifact_store=store, file_path=str(out / name), study_or_trial=study, storage=study._storage
            )
    exported = dict(study.user_attrs.get(attrs.EXPORTED, {}))
    exported[str(trial.number)] = {"artifacts": ids, "artifact_dir": str(store_dir)}
    study.set_user_attr(attrs.EXPORTED, exported)


@app.command()
def export(
    study_file: Optional[Path] = typer.Argument(None, help="The study file (or use --study and --storage)."),
    out: Path = typer.Option(..., "--out", help="Output directory."),
    study: Optional[str] = typer.Option(None, "--study", help="Study name."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Optuna storage URL."),
    trial: Optional[int] = typer.Option(None, "--trial", help="Trial number (default: the best)."),
    finetune: Optional[int] = typer.Option(
        None,
        "--finetune",
        min=0,
        help="Train the network this many SGD steps on the training split before writing it "
        "(default: the study file's export.finetune_steps); prints test accuracy before and after.",
    ),
    method: Optional[str] = typer.Option(
        None,
        "--method",
        help="How to train it (default: the study file's export.method, finetune): finetune (the one-shot network), "
        "agp, slim, sfp, fpgm, taylor, imp, admm (prune the trial's full-size weights to its plan while training), "
        "scratch_e, scratch_b (its architecture from a random initialisation). A killed run resumes its training.",
    ),
    distill: Optional[bool] = typer.Option(
        None,
        "--distill/--no-distill",
        help="Distil from the unpruned model while training (default: the study file's export.distill).",
    ),
    weights: str = typer.Option(
        "trial",
        "--weights",
        help="trial: the weights the trial scored (e.g. NetAdapt's fine-tuned, MetaPruning's generated); "
        "original: the unpruned model's, by the criterion; scratch: freshly initialised (train it with --finetune).",
    ),
    report: Optional[bool] = typer.Option(
        None,
        "--report/--no-report",
        help="Measure the network against the unpruned one (test accuracy, MACs, size, latency) and write REPORT.md "
        "(default: the study file's export.report, true).",
    ),
) -> None:
    """Export a trial's pruned structure (default: the best) as structure.json + weights.pt."""
    try:
        _check_out(out)
        config, base_dir, url = _from_args(study_file, study, storage)
        setup = _setup(config, base_dir, url)
        s = _load(config.study_name, url)
        _check_training(setup, method, finetune)  # a bad method or option: refused before anything is built
        where = _export_best(setup, s, out, trial, finetune, weights, report, method, distill)
    except BAD_INPUT as err:
        _fail(err)
    console.print(f"exported to [bold]{where}[/]")


@app.command()
def show(
    study_file: Optional[Path] = typer.Argument(None, help="The study file (or use --study and --storage)."),
    study: Optional[str] = typer.Option(None, "--study", help="Study name."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Optuna storage URL."),
    top: int = typer.Option(10, "--top", help="How many trials to list."),
    plots: Optional[Path] = typer.Option(
        None,
        "--plots",
        help="Write pareto.png, kept_channels.png, progress.png (score per trial) and, when the strategy has them, "
        "rounds.png (score per generation) and its curves (MetaPruning's training loss) here.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the top trials as JSON."),
) -> None:
    """List the best trials; optionally plot the Pareto front and the kept channels per layer."""
    try:
        config, _, url = _from_args(study_file, study, storage)
        s = _load(config.study_name, url)
    except BAD_INPUT as err:
        _fail(err)
    if as_json:
        rows = [
            {
                "number": t.number,
                "score": t.values[0],
                "meets_budget": _meets(t),
                "macs": t.user_attrs.get(attrs.MACS),
                "params": t.user_attrs.get(attrs.PARAMS),
            }
            for t in _ranked(s)[:top]
        ]
        sys.stdout.write(json.dumps(rows, indent=1) + "\n")
    else:
        _table(s, top)
    if plots is not None:
        from .plots import plot_study

        for p in plot_study(s, plots):
            console.print(f"wrote {p}")


def _ranked(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Completed trials, those meeting the budget first, each part by score (a strategy that walks down to the
    budget proposes networks over it that score high)."""
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    return sorted(done, key=lambda t: (not _meets(t), -t.values[0]))


def _table(study: optuna.Study, top: int) -> None:
    trials = study.trials
    counts = {st.name: sum(t.state == st for t in trials) for st in TrialState}
    table = Table(
        title=f"{study.study_name}: {counts['COMPLETE']} complete, {counts['FAIL']} failed, {counts['RUNNING']} running"
    )
    for col in ("trial", "score", "budget", "MMACs", "params", "strategy", "seconds"):
        table.add_column(col, justify="right")
    for t in _ranked(study)[:top]:
        table.add_row(
            str(t.number),
            f"{t.values[0]:.4f}",
            "meets" if _meets(t) else "over",
            f"{t.user_attrs.get(attrs.MACS, 0) / 1e6:.2f}",
            f"{t.user_attrs.get(attrs.PARAMS, 0):,}",
            str(t.user_attrs.get(attrs.STRATEGY, "")),
            f"{t.user_attrs.get(attrs.EVAL_SECONDS, 0):.1f}",
        )
    console.print(table)


@app.command()
def init(
    model: str = typer.Option(
        "pretrained:resnet20_fashion_mnist",
        "--model",
        help="SOURCE:NAME with SOURCE pretrained, zoo, torchvision, timm or factory (e.g. torchvision:resnet18).",
    ),
    data: Optional[str] = typer.Option(
        None,
        "--data",
        help="fashion_mnist, digits, mnist[:ROOT], cifar10:ROOT, cifar100:ROOT, image_folder:ROOT or "
        "factory:pkg.module:function (default: fashion_mnist).",
    ),
    name: str = typer.Option("my_study", "--name", help="The study's name (and its database file's)."),
    strategy: str = typer.Option("tpe", "--strategy", help="The search strategy."),
    macs: float = typer.Option(0.5, "--macs", min=0.0, max=1.0, help="The budget: this fraction of the MACs."),
    n_trials: int = typer.Option(150, "--n-trials", min=1, help="Evaluations in all."),
    finetune: int = typer.Option(500, "--finetune", min=0, help="Fine-tune steps before the best is exported."),
) -> None:
    """Print a commented study file to start from:  autoprune init [--model ...] [--data ...] > my_study.yaml"""
    from .template import study_template

    try:
        text = study_template(
            model, data, name=name, strategy=strategy, macs=macs, n_trials=n_trials, finetune_steps=finetune
        )
    except (ValueError, StudyFileError) as err:
        _fail(err)
    sys.stdout.write(text)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
