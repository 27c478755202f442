"""The result card: what a pruned model is worth, measured against the model it came from.

`compare(base, pruned, inputs, test=...)` measures both networks the same way on this machine — test
accuracy (when there is test data), MACs, parameters, the size of the saved
weights, and forward latency at batch 1 and at a larger batch, timed side by
side with the same timer (blocks another process disturbed are dropped) — and
returns a :class:`Report`: a JSON-able dict of figures (``structure.json``
carries it), a rich table, a ``REPORT.md`` and PNGs.
"""

from __future__ import annotations

import copy
import io
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .engine import count_macs, count_params

REPORT = "REPORT.md"


def saved_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``: the weights file a user ships."""
    buffer = io.BytesIO()
    torch.save({k: v.detach() for k, v in model.state_dict().items()}, buffer)
    return buffer.tell()


@dataclass
class Report:
    """Figures of an unpruned and a pruned network (see :func:`compare`); ``figures`` is plain JSON."""

    figures: dict[str, Any]
    history: list[tuple[int, float]] = field(default_factory=list)

    @property
    def speedups(self) -> dict[str, float]:
        """Unpruned latency / pruned latency, per batch size (as a string key)."""
        base, pruned = self.figures["unpruned"]["latency_ms"], self.figures["pruned"]["latency_ms"]
        return {b: base[b] / pruned[b] for b in base if b in pruned and pruned[b] > 0}

    def rows(self) -> list[tuple[str, str, str, str]]:
        """(what, unpruned, pruned, change) rows of the card."""
        f = self.figures
        base, pruned = f["unpruned"], f["pruned"]
        rows = []
        if "test_accuracy" in base and "test_accuracy" in pruned:
            tuned = f.get("finetune")
            if tuned:
                rows.append(
                    (
                        "test accuracy, before training",
                        f"{base['test_accuracy']:.2%}",
                        f"{pruned['test_accuracy_before_finetune']:.2%}",
                        _pp(pruned["test_accuracy_before_finetune"] - base["test_accuracy"]),
                    )
                )
            label = f"test accuracy (after {_training(tuned)})" if tuned else "test accuracy"
            rows.append(
                (
                    label,
                    f"{base['test_accuracy']:.2%}",
                    f"{pruned['test_accuracy']:.2%}",
                    _pp(pruned["test_accuracy"] - base["test_accuracy"]),
                )
            )
        rows.append(("MMACs", f"{base['macs'] / 1e6:.2f}", f"{pruned['macs'] / 1e6:.2f}", _ratio(pruned, base, "macs")))
        rows.append(("parameters", f"{base['params']:,}", f"{pruned['params']:,}", _ratio(pruned, base, "params")))
        rows.append(
            (
                "weights file",
                _size(base["file_bytes"]),
                _size(pruned["file_bytes"]),
                _ratio(pruned, base, "file_bytes"),
            )
        )
        for b, ms in base["latency_ms"].items():
            p = pruned["latency_ms"][b]
            rows.append((f"latency, batch {b}", f"{ms:.2f} ms", f"{p:.2f} ms", speedup(ms, p)))
        return rows

    def table(self) -> Any:
        """The card as a rich Table."""
        from rich.table import Table

        f = self.figures
        table = Table(title=f.get("title", "result"), caption=_caption(f))
        for col in ("", "unpruned", "pruned", "change"):
            table.add_column(col, justify="left" if not col else "right")
        for row in self.rows():
            table.add_row(*row)
        return table

    def markdown(self, images: Sequence[str] = ()) -> str:
        f = self.figures
        lines = [f"# {f.get('title', 'result')}", "", "| | unpruned | pruned | change |", "|---|---:|---:|---:|"]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in self.rows()]
        lines += ["", _caption(f), ""]
        search = f.get("search")
        if search:
            lines.append(
                f"The search ({search['strategy']}, {search['trials']} trials) scored its best structure "
                f"{search['best_score']:.4f} (trial {search['best_trial']}) on {search['scored_on']}."
            )
            lines.append("")
        kept = f.get("kept_channels")
        if kept:
            lines += ["| channel group | kept | of |", "|---|---:|---:|"]
            lines += [f"| {g} | {k} | {n} |" for g, (k, n) in kept.items()]
            lines.append("")
        lines += [f"![{Path(p).stem}]({Path(p).name})" for p in images]
        return "\n".join(lines).rstrip() + "\n"

    def write(self, out_dir: str | Path) -> list[Path]:
        """Write ``REPORT.md`` and its PNGs (accuracy, kept channels, the search's best score over trials) into
        ``out_dir``; returns the paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        images = self._plots(out)
        path = out / REPORT
        path.write_text(self.markdown([str(p) for p in images]))
        return [path, *images]

    def _plots(self, out: Path) -> list[Path]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        f, paths = self.figures, []
        base, pruned = f["unpruned"], f["pruned"]
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
        ax = axes[0]
        if "test_accuracy" in pruned:
            labels, values = ["unpruned"], [base["test_accuracy"]]
            if f.get("finetune"):
                labels.append("pruned")
                values.append(pruned["test_accuracy_before_finetune"])
                labels.append("pruned +\nfine-tune")
            else:
                labels.append("pruned")
            values.append(pruned["test_accuracy"])
            bars = ax.bar(labels, [100 * v for v in values], color=["#777", "#c66", "#4a4"][: len(values)])
            ax.bar_label(bars, fmt="%.2f")
            ax.set_ylim(max(0, 100 * min(values) - 10), 100)
            ax.set_ylabel("test accuracy (%)")
        else:
            ax.text(0.5, 0.5, "no test data", ha="center", va="center")
            ax.set_axis_off()
        ax = axes[1]
        sizes = list(base["latency_ms"])
        x = range(len(sizes))
        ax.bar([i - 0.2 for i in x], [base["latency_ms"][b] for b in sizes], 0.4, label="unpruned", color="#777")
        ax.bar([i + 0.2 for i in x], [pruned["latency_ms"][b] for b in sizes], 0.4, label="pruned", color="#4a4")
        ax.set_xticks(list(x), [f"batch {b}\n{self.speedups[b]:.2f}x" for b in sizes])
        ax.set_yscale("log")
        ax.set_ylabel("latency (ms, log)")
        ax.legend()
        fig.suptitle(f.get("title", ""))
        fig.tight_layout()
        paths.append(out / "accuracy_latency.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
        kept = f.get("kept_channels")
        if kept:
            names = list(kept)
            fig, ax = plt.subplots(figsize=(max(6, 0.22 * len(names)), 3.6))
            ax.bar(range(len(names)), [n for _, n in kept.values()], color="#ddd", label="unpruned")
            ax.bar(range(len(names)), [k for k, _ in kept.values()], color="#4a4", label="kept")
            ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
            ax.set_ylabel("channels")
            ax.legend()
            ax.set_title("channels kept per group")
            fig.tight_layout()
            paths.append(out / "kept_channels.png")
            fig.savefig(paths[-1], dpi=110)
            plt.close(fig)
        if self.history:
            fig, ax = plt.subplots(figsize=(6, 3.6))
            xs = [n for n, _ in self.history]
            best, running = [], float("-inf")
            for _, v in self.history:
                running = max(running, v)
                best.append(running)
            ax.scatter(xs, [v for _, v in self.history], s=8, alpha=0.4, label="trial")
            ax.plot(xs, best, "k-", label="best so far")
            ax.set_xlabel("trial")
            ax.set_ylabel("score")
            ax.set_title("search: score of the trials that meet the budget")
            ax.legend()
            fig.tight_layout()
            paths.append(out / "search.png")
            fig.savefig(paths[-1], dpi=110)
            plt.close(fig)
        return paths


def compare(
    base: nn.Module,
    pruned: nn.Module,
    example_inputs: Any,
    *,
    test: Any = None,
    batch_sizes: Sequence[int] = (1, 256),
    threads: int = 1,
    device: str | torch.device = "cpu",
    min_run_time: float = 0.5,
    extra: Mapping[str, Any] | None = None,
    history: Sequence[tuple[int, float]] = (),
) -> Report:
    """Measure ``base`` (the unpruned network) and ``pruned`` side by side.

    Args:
        base, pruned: the networks (left unchanged; measured in eval mode).
        example_inputs: one input tensor or a tuple of them, batch 1, for MACs and latency.
        test: a callable ``model -> accuracy`` (e.g. an :class:`~autoprune.evaluators.AccuracyEvaluator` on the
            test set, whose result's ``accuracy`` is taken), or None for a card without accuracy.
        batch_sizes: the batch sizes latency is measured at (each repeats the example inputs).
        threads, device, min_run_time: how latency is measured (:func:`autoprune.evaluators.measure_latency`).
        extra: more figures for the card (``title``, ``finetune``, ``search``, ``kept_channels``,
            ``test_accuracy_before_finetune`` under ``pruned``...), merged in.
        history: (trial number, score) of the search's trials, for the score-over-trials plot.
    """
    from .evaluators import latency_stats

    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    figures: dict[str, Any] = {"unpruned": {}, "pruned": {}}
    for key, model in (("unpruned", base), ("pruned", pruned)):
        mine = figures[key]
        mine["macs"] = count_macs(model, inputs)
        mine["params"] = count_params(model)
        mine["file_bytes"] = saved_bytes(model)
        mine["latency_ms"], mine["latency_clean"] = {}, {}
        if test is not None:
            got = test(copy.deepcopy(model))
            mine["test_accuracy"] = float(got["accuracy"] if isinstance(got, Mapping) else got)
    for b in batch_sizes:  # the two networks one after the other at each batch size: the same machine state
        for key, model in (("unpruned", base), ("pruned", pruned)):
            got = latency_stats(
                model,
                inputs,
                batch_size=b,
                threads=threads,
                device=device,
                min_run_time=min_run_time,
                warmup=3,
                channels_last=False,
                bf16=False,
            )
            figures[key]["latency_ms"][str(b)] = got["latency_ms"]
            figures[key]["latency_clean"][str(b)] = got["clean"]
    figures["machine"] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads": threads,
        "device": str(device),
        "torch": torch.__version__,
    }
    for k, v in dict(extra or {}).items():
        if isinstance(v, Mapping) and isinstance(figures.get(k), dict):
            figures[k].update(v)
        else:
            figures[k] = v
    return Report(figures, list(history))


def _pp(delta: float) -> str:
    return f"{delta * 100:+.2f} pp"


def _ratio(pruned: Mapping, base: Mapping, key: str) -> str:
    return f"{pruned[key] / base[key]:.1%} of it" if base[key] else "—"


def _size(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def _caption(f: Mapping[str, Any]) -> str:
    m = f.get("machine", {})
    text = (
        f"Latency: median forward time in eval mode, {m.get('threads', 1)} thread(s) on {m.get('device', 'cpu')} "
        f"({m.get('cpu', '')}, {m.get('cores', '?')} cores), both networks timed one after the other."
    )
    clean = [c for key in ("unpruned", "pruned") for c in f.get(key, {}).get("latency_clean", {}).values()]
    if clean and min(clean) < 0.5:
        text += (
            f" Another process was using the CPU while timing (as few as {min(clean):.0%} of the timed blocks ran "
            "undisturbed), so these latencies are unreliable: export again on an idle machine."
        )
    return text


def _training(record: dict) -> str:
    """How the network was trained, in words: "500 fine-tune steps", "2000 steps of agp + distillation"."""
    method = record.get("method", "finetune")
    what = f"{record['steps']} fine-tune steps" if method == "finetune" else f"{record['steps']} steps of {method}"
    return what + (" + distillation" if record.get("distill") else "")


def speedup(before_ms: float, after_ms: float) -> str:
    """``"1.98x faster"``, or ``"1.04x slower"`` when the pruned network measured slower."""
    return f"{before_ms / after_ms:.2f}x faster" if after_ms <= before_ms else f"{after_ms / before_ms:.2f}x slower"
