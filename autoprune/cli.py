"""The command line: study files in, searches, exports and reports out.

autoprune search studies/quickstart.yaml          # runs; run it again to resume
autoprune export studies/quickstart.yaml --out out/
autoprune show   studies/quickstart.yaml --plots out/plots
"""

from __future__ import annotations

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
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .studyfile import StudyFile, StudyFileError, build_model, load_study_file, parse_study

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


def _storage(config: StudyFile, base_dir: Path, override: str | None) -> str:
    if override:
        return override
    if config.storage:
        url = config.storage
        if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_absolute():
            url = f"sqlite:///{base_dir / url.removeprefix('sqlite:///')}"
        return url
    return f"sqlite:///{base_dir / (config.study_name + '.db')}"


def _setup(config: StudyFile, base_dir: Path, storage: str | None) -> Setup:
    import autoprune as ap

    if config.threads:
        torch.set_num_threads(config.threads)
    model = build_model(config.model, base_dir)
    inputs = (torch.zeros(config.model.input_shape),)
    space = ap.PruningSpace(model, inputs, exclude=config.exclude, round_to=config.round_to)
    return Setup(config, base_dir, model, inputs, space, _storage(config, base_dir, storage))


def _evaluator(config: StudyFile):  # noqa: ANN202
    from .evaluators import resolve_evaluator

    kwargs = dict(config.evaluator.kwargs)
    if config.evaluator.name == "accuracy":
        splits = config.data.splits()
        kwargs.setdefault("train_data", splits.train)
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
    try:
        s = optuna.load_study(study_name=study, storage=storage)
    except KeyError as err:
        raise typer.BadParameter(f"no study named {study!r} in {storage}") from err
    raw = s.user_attrs.get("study_file")
    if raw is None:
        raise typer.BadParameter(f"study {study!r} was not created from a study file; pass the study file instead")
    return parse_study(raw["config"]), Path(raw["base_dir"]), storage


def _fail(err: Exception) -> None:
    console.print(f"[bold red]error:[/] {err}")
    raise typer.Exit(2)


@app.command()
def search(
    study_file: Path = typer.Argument(..., help="The study file (YAML)."),
    n_trials: Optional[int] = typer.Option(
        None, "--n-trials", help="Study-wide number of trials (overrides the file)."
    ),
    storage: Optional[str] = typer.Option(
        None, "--storage", help="Optuna storage URL (default: SQLite file next to the study file)."
    ),
    export_dir: Optional[Path] = typer.Option(None, "--out", help="Where to export the best structure."),
) -> None:
    """Run (or resume) the search a study file describes, then export its best structure."""
    import autoprune as ap

    try:
        config, path = load_study_file(study_file)
        setup = _setup(config, path.parent, storage)
        evaluator = _evaluator(config)
        budget = ap.Budget(**config.budget.model_dump(exclude_none=True)) if config.budget else None
    except (StudyFileError, ValueError, FileNotFoundError, ImportError) as err:
        _fail(err)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    total = n_trials or config.n_trials
    space = setup.space
    console.print(
        f"[bold]{config.study_name}[/]: {len(space.groups)} channel groups, "
        f"{space.macs({}) / 1e6:.1f} MMACs, {space.params({}) / 1e6:.3f} M params; storage {setup.storage}"
    )
    logging.getLogger("autoprune").setLevel(logging.ERROR)
    study = optuna.create_study(
        study_name=config.study_name,
        storage=setup.storage,
        load_if_exists=True,
        directions=["maximize", "minimize"] if config.multi_objective else ["maximize"],
    )
    study.set_user_attr(
        "study_file", {"config": config.model_dump(mode="json"), "base_dir": str(path.parent.resolve())}
    )
    done = sum(1 for t in study.trials if t.state.is_finished() and not t.user_attrs.get("stale"))
    with Progress(
        TextColumn("[bold]search"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("best {task.fields[best]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("search", total=total, completed=min(done, total), best=_best_text(study))

        def on_trial(s: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
            if t.state == TrialState.FAIL:
                progress.console.print(
                    f"[yellow]trial {t.number} failed:[/] {str(t.user_attrs.get('error', ''))[-300:]}"
                )
            progress.update(task, advance=1, best=_best_text(s))

        try:
            study = ap.search(
                space,
                evaluator,
                budget,
                strategy=config.strategy.name,
                n_trials=total,
                storage=setup.storage,
                study_name=config.study_name,
                criterion=config.criterion,
                seed=config.seed,
                multi_objective=config.multi_objective,
                max_sparsity=config.max_sparsity,
                strategy_options=config.strategy.options,
                callbacks=[on_trial],
            )
        except ValueError as err:
            _fail(err)
    _table(study, 5)
    out = export_dir or Path(config.export.dir or (path.parent / "out" / config.study_name))
    try:
        where = _export_best(setup, study, out, None)
        console.print(f"best structure exported to [bold]{where}[/]")
    except ValueError as err:
        console.print(f"[yellow]nothing exported:[/] {err}")


def _best_text(study: optuna.Study) -> str:
    trials = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if not trials:
        return "-"
    return f"{max(t.values[0] for t in trials):.4f}"


def _export_best(setup: Setup, study: optuna.Study, out: Path, trial_number: int | None) -> Path:
    import autoprune as ap

    if trial_number is None:
        plan = ap.best_plan(study)
        trial = next(t for t in study.trials if t.user_attrs.get("plan") == plan and t.state == TrialState.COMPLETE)
    else:
        trial = next((t for t in study.trials if t.number == trial_number), None)
        if trial is None or trial.state != TrialState.COMPLETE:
            raise ValueError(f"trial {trial_number} does not exist or did not complete")
        plan = trial.user_attrs["plan"]
    budget = setup.config.budget.model_dump(exclude_none=True) if setup.config.budget else None
    space, criterion = setup.space, setup.config.criterion
    if "netadapt_weights" in trial.user_attrs:  # NetAdapt's network: its own channels and fine-tuned weights
        from .search.strategies.netadapt import trial_network

        space, criterion = trial_network(space, study, trial)
    where = ap.export(
        space,
        plan,
        out,
        criterion=criterion,
        score=trial.values[0],
        budget=budget,
        formats=tuple(setup.config.export.formats),
        extra={"study": study.study_name, "trial": trial.number, "storage": setup.storage},
    )
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
    exported = dict(study.user_attrs.get("exported_trials", {}))
    exported[str(trial.number)] = {"artifacts": ids, "artifact_dir": str(store_dir)}
    study.set_user_attr("exported_trials", exported)


@app.command()
def export(
    study_file: Optional[Path] = typer.Argument(None, help="The study file (or use --study and --storage)."),
    out: Path = typer.Option(..., "--out", help="Output directory."),
    study: Optional[str] = typer.Option(None, "--study", help="Study name."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Optuna storage URL."),
    trial: Optional[int] = typer.Option(None, "--trial", help="Trial number (default: the best)."),
) -> None:
    """Export a trial's pruned structure (default: the best) as structure.json + weights.pt."""
    try:
        config, base_dir, url = _from_args(study_file, study, storage)
        setup = _setup(config, base_dir, url)
        s = optuna.load_study(study_name=config.study_name, storage=url)
        where = _export_best(setup, s, out, trial)
    except (StudyFileError, ValueError, KeyError) as err:
        _fail(err)
    console.print(f"exported to [bold]{where}[/]")


@app.command()
def show(
    study_file: Optional[Path] = typer.Argument(None, help="The study file (or use --study and --storage)."),
    study: Optional[str] = typer.Option(None, "--study", help="Study name."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Optuna storage URL."),
    top: int = typer.Option(10, "--top", help="How many trials to list."),
    plots: Optional[Path] = typer.Option(None, "--plots", help="Write pareto.png and kept_channels.png here."),
    as_json: bool = typer.Option(False, "--json", help="Print the top trials as JSON."),
) -> None:
    """List the best trials; optionally plot the Pareto front and the kept channels per layer."""
    try:
        config, _, url = _from_args(study_file, study, storage)
        s = optuna.load_study(study_name=config.study_name, storage=url)
    except (StudyFileError, ValueError, KeyError) as err:
        _fail(err)
    if as_json:
        rows = [
            {
                "number": t.number,
                "score": t.values[0],
                "macs": t.user_attrs.get("macs"),
                "params": t.user_attrs.get("params"),
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
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    return sorted(done, key=lambda t: -t.values[0])


def _table(study: optuna.Study, top: int) -> None:
    trials = study.trials
    counts = {st.name: sum(t.state == st for t in trials) for st in TrialState}
    table = Table(
        title=f"{study.study_name}: {counts['COMPLETE']} complete, {counts['FAIL']} failed, {counts['RUNNING']} running"
    )
    for col in ("trial", "score", "MMACs", "params", "strategy", "seconds"):
        table.add_column(col, justify="right")
    for t in _ranked(study)[:top]:
        table.add_row(
            str(t.number),
            f"{t.values[0]:.4f}",
            f"{t.user_attrs.get('macs', 0) / 1e6:.2f}",
            f"{t.user_attrs.get('params', 0):,}",
            str(t.user_attrs.get("strategy", "")),
            f"{t.user_attrs.get('eval_seconds', 0):.1f}",
        )
    console.print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
