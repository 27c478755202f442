"""PNG plots of a study: score against MACs (Pareto front marked), the best plan's kept channels, the score of
every trial in the order they ran (a strategy's phases marked: AMC's warm-up, for instance: its learning curve),
the best and mean score per round when a strategy has rounds (MetaPruning's generations), and the curves a strategy
records (MetaPruning's training loss)."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import TrialState

from .search.attrs import CURVES, MACS, PHASE, PLAN, ROUND


def plot_study(study: optuna.Study, out_dir: str | Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    done = [t for t in study.trials if t.state == TrialState.COMPLETE and MACS in t.user_attrs]
    if not done:
        raise ValueError(f"study {study.study_name!r} has no completed trial to plot")
    macs = [t.user_attrs[MACS] / 1e6 for t in done]
    score = [t.values[0] for t in done]
    front = sorted(_pareto(done), key=lambda t: t.user_attrs[MACS])

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(macs, score, s=12, alpha=0.5, label="trials")
    ax.plot([t.user_attrs[MACS] / 1e6 for t in front], [t.values[0] for t in front], "r.-", label="Pareto front")
    ax.set_xlabel("MMACs")
    ax.set_ylabel("score")
    ax.set_title(study.study_name)
    ax.legend()
    fig.tight_layout()
    pareto = out / "pareto.png"
    fig.savefig(pareto, dpi=120)
    plt.close(fig)

    best = max(done, key=lambda t: t.values[0])
    plan = best.user_attrs[PLAN]
    names = list(plan)
    fig, ax = plt.subplots(figsize=(max(6, 0.18 * len(names)), 4))
    ax.bar(range(len(names)), [1 - plan[n] for n in names])
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    ax.set_ylabel("fraction of channels kept")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"trial {best.number}: score {best.values[0]:.4f}, {best.user_attrs['macs'] / 1e6:.2f} MMACs")
    fig.tight_layout()
    kept = out / "kept_channels.png"
    fig.savefig(kept, dpi=120)
    plt.close(fig)
    paths = [pareto, kept, _progress(study, done, out, plt)]
    if any(ROUND in t.user_attrs for t in done):
        paths.append(_rounds(study, done, out, plt))
    for title, curve in study.user_attrs.get(CURVES, {}).items():
        paths.append(_curve(title, curve, out, plt))
    return paths


def _rounds(study: optuna.Study, done: list, out: Path, plt) -> Path:  # noqa: ANN001
    """Best and mean score of each round, and the best so far."""
    rounds = sorted({t.user_attrs[ROUND] for t in done if ROUND in t.user_attrs})
    scores = [[t.values[0] for t in done if t.user_attrs.get(ROUND) == r] for r in rounds]
    best_so_far, running = [], float("-inf")
    for s in scores:
        running = max(running, max(s))
        best_so_far.append(running)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(rounds, [max(s) for s in scores], "o-", label="best of the round")
    ax.plot(rounds, [sum(s) / len(s) for s in scores], "s--", label="mean of the round")
    ax.plot(rounds, best_so_far, "k-", linewidth=1, label="best so far")
    ax.set_xlabel("round (generation)")
    ax.set_ylabel("score")
    ax.set_title(f"{study.study_name}: score per round")
    ax.legend()
    fig.tight_layout()
    path = out / "rounds.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _curve(title: str, curve: dict, out: Path, plt) -> Path:  # noqa: ANN001
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(curve["x"], curve["y"])
    ax.set_xlabel(curve.get("xlabel", ""))
    ax.set_ylabel(curve.get("ylabel", ""))
    ax.set_title(title)
    fig.tight_layout()
    slug = "".join(c if c.isalnum() else "_" for c in title.lower()).strip("_")
    path = out / f"{slug}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _progress(study: optuna.Study, done: list, out: Path, plt) -> Path:  # noqa: ANN001
    """Score per trial in trial order, coloured by the strategy's phase when it records one, with the best so far."""
    order = sorted(done, key=lambda t: t.number)
    fig, ax = plt.subplots(figsize=(7, 4))
    phases = list(dict.fromkeys(t.user_attrs.get(PHASE) for t in order))
    for phase in phases:
        mine = [t for t in order if t.user_attrs.get(PHASE) == phase]
        ax.scatter([t.number for t in mine], [t.values[0] for t in mine], s=10, alpha=0.6, label=phase or "trials")
    for phase in phases[1:]:
        start = next(t.number for t in order if t.user_attrs.get(PHASE) == phase)
        ax.axvline(start - 0.5, color="gray", linestyle="--", linewidth=1)
    best, running = [], float("-inf")
    for t in order:
        running = max(running, t.values[0])
        best.append(running)
    ax.plot([t.number for t in order], best, "k-", linewidth=1, label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("score")
    ax.set_title(f"{study.study_name}: score per trial")
    ax.legend()
    fig.tight_layout()
    path = out / "progress.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _pareto(trials: list) -> list:
    """Trials not dominated in (higher score, fewer MACs)."""
    return [
        t
        for t in trials
        if not any(
            o.values[0] >= t.values[0]
            and o.user_attrs[MACS] <= t.user_attrs[MACS]
            and (o.values[0] > t.values[0] or o.user_attrs[MACS] < t.user_attrs[MACS])
            for o in trials
        )
    ]
