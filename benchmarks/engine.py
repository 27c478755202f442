#!/usr/bin/env python3
"""Engine benchmark: autoprune against Torch-Pruning, side by side, in one run.

    python benchmarks/engine.py                      # full run (20-40 min on 2 CPU cores)
    python benchmarks/engine.py --quick              # 3 models, fewer repeats, no coverage sweep
    python benchmarks/engine.py --models resnet50,vit_b_16

It measures

1. per model (224x224, batch 1, random weights, eval, 1 thread): analysis time
   (``ap.PruningSpace`` vs ``tp.DependencyGraph().build_dependency``), the time to
   apply a uniform 50% plan (our steady-state ``space.apply`` vs Torch-Pruning's
   ``BasePruner.step``, with and without the ``copy.deepcopy`` it needs to leave
   the original untouched), the time of ``space.macs(plan)``, and correctness;
2. coverage over every torchvision classification model, for both libraries;
3. latency of pruned zoo ResNet-20/56 against the same widths hand-built.

Every Torch-Pruning step and every autoprune call runs in a worker process
with a timeout, so a hang or crash is reported, never fatal. The parent asks
the two workers (one per library) in turn, so their measurements interleave.
The result replaces the text between ``<!-- engine:start -->`` and
``<!-- engine:end -->`` in BENCHMARKS.md at the repository root.

To measure another copy of autoprune (say a ``git archive`` of HEAD while the
working tree is mid-edit), put it first on PYTHONPATH and describe it in the
environment variable AUTOPRUNE_BENCH_REV; the report names what was imported.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import math
import multiprocessing as mp
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
import traceback
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

from report import write_section  # noqa: E402 - benchmarks/ is on sys.path when a script runs

ROOT = Path(__file__).resolve().parent.parent

MODELS = [
    "resnet18",
    "resnet50",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "densenet121",
    "googlenet",
    "inception_v3",
    "shufflenet_v2_x1_0",
    "regnet_y_400mf",
    "convnext_tiny",
    "vit_b_16",
    "swin_t",
]
QUICK_MODELS = ["resnet18", "mobilenet_v2", "vit_b_16"]
NUM_CLASSES = 1000
RATIO = 0.5

# Timeouts (seconds) for one worker command.
TP_TIMEOUT = 120.0
OURS_TIMEOUT = 300.0
COVERAGE_TIMEOUT = 300.0
# A worker is killed (and the model reported) past this resident size, or when the machine
# runs short of memory, so that a runaway library cannot bring in the kernel's OOM killer.
MEM_LIMIT_GB = 10.0
MEM_RESERVE_GB = 1.5

# Repeats in the per-model part (full run, quick run).
ANALYSIS_ROUNDS = (3, 1)
APPLY_ROUNDS = (7, 2)
APPLIES_PER_ROUND = 3

TARGET_APPLY_SPEEDUP = 5.0
TARGET_MACS_US = 100.0
TARGET_LATENCY = (0.97, 1.03)
LAT_ROUNDS, LAT_ROUNDS_QUICK = 15, 5


# ---------------------------------------------------------------------------------------------
# Models and inputs (shared by both workers, so both libraries see identical networks)
# ---------------------------------------------------------------------------------------------
def bench_size(name: str) -> int:
    return 299 if name == "inception_v3" else 224


def coverage_spec(name: str) -> tuple[dict[str, Any], int]:
    """Constructor kwargs and input side for the coverage sweep."""
    if name == "vit_h_14":
        return {"image_size": 28}, 28
    if name.startswith("vit_"):
        return {"image_size": 32}, 32
    if name == "inception_v3":
        return {}, 299
    if name == "maxvit_t":
        return {}, 224
    return {}, 64


def build(name: str, kwargs: dict[str, Any] | None = None):
    import torch
    import torchvision

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torchvision.models.get_model(name, weights=None, num_classes=NUM_CLASSES, **(kwargs or {}))
    return model.eval()


def make_input(size: int):
    import torch

    g = torch.Generator().manual_seed(1)
    return torch.randn(1, 3, size, size, generator=g)


def leaves(out) -> list:
    import torch

    return [o for o in torch.utils._pytree.tree_leaves(out) if isinstance(o, torch.Tensor)]


def run_model(model, x) -> list:
    import torch

    model.eval()
    with torch.no_grad():
        return leaves(model(x))


def describe_outputs(outs: list, ref_shapes: list) -> tuple[bool, bool]:
    import torch

    shapes_ok = [tuple(o.shape) for o in outs] == ref_shapes
    finite = all(bool(torch.isfinite(o).all()) for o in outs)
    return shapes_ok, finite


def median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def short(msg: str, n: int = 110) -> str:
    msg = " ".join(str(msg).split())
    return msg if len(msg) <= n else msg[: n - 1] + "…"


# ---------------------------------------------------------------------------------------------
# Workers (run in spawned processes)
# ---------------------------------------------------------------------------------------------
class OursWorker:
    """autoprune side."""

    def ping(self) -> bool:
        import torchvision  # noqa: F401

        import autoprune  # noqa: F401

        return True

    def setup(self, name: str, size: int, kwargs: dict | None = None) -> dict:
        import autoprune as ap

        self.ap = ap
        self.model = build(name, kwargs)
        self.x = make_input(size)
        self.ref_shapes = [tuple(o.shape) for o in run_model(self.model, self.x)]
        self.space = None
        return {"params": ap.count_params(self.model)}

    def analysis(self, no_verify: bool = False) -> dict:
        """Time a fresh PruningSpace; with verify (default) also its first apply, and keep both."""
        ap = self.ap
        if no_verify:
            gc.collect()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.perf_counter()
                ap.PruningSpace(self.model, self.x, verify=False)
                t1 = time.perf_counter()
            return {"analysis_noverify": t1 - t0}
        self.space = self.pruned = None
        gc.collect()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            space = ap.PruningSpace(self.model, self.x)
            t1 = time.perf_counter()
        self.plan = {g.name: RATIO for g in space.groups}
        t2 = time.perf_counter()
        self.pruned = space.apply(self.plan, criterion="l2")  # first apply: scores + build
        t3 = time.perf_counter()
        self.space = space
        return {"analysis": t1 - t0, "first_apply": t3 - t2, "groups": len(space.groups)}

    def apply(self, n: int) -> list[float]:
        times = []
        for _ in range(n):
            self.pruned = None
            gc.collect()
            t0 = time.perf_counter()
            self.pruned = self.space.apply(self.plan, criterion="l2")
            times.append(time.perf_counter() - t0)
        return times

    def macs_timing(self, budget: float = 0.5, max_calls: int = 2000) -> dict:
        space, plan = self.space, self.plan
        for _ in range(5):
            space.macs(plan)
        times = []
        end = time.perf_counter() + budget
        while len(times) < max_calls and (len(times) < 50 or time.perf_counter() < end):
            t0 = time.perf_counter_ns()
            space.macs(plan)
            times.append(time.perf_counter_ns() - t0)
        return {"macs_us": statistics.median(times) / 1e3, "calls": len(times)}

    def check(self) -> dict:
        ap, space, plan = self.ap, self.space, self.plan
        pruned = space.apply(plan, criterion="l2")
        res = {
            "macs_pred": int(space.macs(plan)),
            "macs_meas": int(ap.count_macs(pruned, self.x)),
            "params_pred": int(space.params(plan)),
            "params_meas": int(ap.count_params(pruned)),
            "macs_base": int(ap.count_macs(self.model, self.x)),
            "params_base": int(ap.count_params(self.model)),
        }
        try:
            shapes_ok, finite = describe_outputs(run_model(pruned, self.x), self.ref_shapes)
            res.update(runs=True, shape_ok=shapes_ok, finite=finite)
        except Exception as err:  # noqa: BLE001
            res.update(
                runs=False,
                shape_ok=False,
                finite=False,
                run_error=f"{type(err).__name__}: {err}",
                run_tb=traceback.format_exc(),
            )
        return res

    def coverage(self, name: str) -> dict:
        import autoprune as ap

        gc.collect()
        kwargs, size = coverage_spec(name)
        t0 = time.perf_counter()
        model = build(name, kwargs)
        x = make_input(size)
        ref_shapes = [tuple(o.shape) for o in run_model(model, x)]
        t1 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            space = ap.PruningSpace(model, x)
        t2 = time.perf_counter()
        plan = {g.name: RATIO for g in space.groups}
        pruned = space.apply(plan, criterion="l2")
        t3 = time.perf_counter()
        shapes_ok, finite = describe_outputs(run_model(pruned, x), ref_shapes)
        res = {
            "input": size,
            "groups": len(space.groups),
            "shape_ok": shapes_ok,
            "finite": finite,
            "macs_pred": int(space.macs(plan)),
            "macs_meas": int(ap.count_macs(pruned, x)),
            "params_pred": int(space.params(plan)),
            "params_meas": int(ap.count_params(pruned)),
            "macs_base": int(ap.count_macs(model, x)),
            "params_base": int(ap.count_params(model)),
            "build_s": t1 - t0,
            "analysis_s": t2 - t1,
            "apply_s": t3 - t2,
            "warnings": sorted({short(str(w.message), 160) for w in caught if "autoprune" in str(w.message)}),
        }
        problems = []
        if not shapes_ok:
            problems.append("output shape changed")
        if not finite:
            problems.append("non-finite output")
        if res["macs_pred"] != res["macs_meas"]:
            problems.append(f"MACs predicted {res['macs_pred']} != measured {res['macs_meas']}")
        if res["params_pred"] != res["params_meas"]:
            problems.append(f"params predicted {res['params_pred']} != measured {res['params_meas']}")
        res["ok"] = not problems
        res["reason"] = "; ".join(problems)
        return res


def tp_config(model) -> tuple[list, dict]:
    """Ignore the classifier(s); tell Torch-Pruning the head count of attention layers."""
    from torch import nn

    ignored = [
        m
        for m in model.modules()
        if (isinstance(m, nn.Linear) and m.out_features == NUM_CLASSES)
        or (isinstance(m, nn.Conv2d) and m.out_channels == NUM_CLASSES)
    ]
    num_heads: dict = {}
    for m in model.modules():
        if isinstance(m, nn.MultiheadAttention):
            num_heads[m] = m.num_heads
        elif isinstance(getattr(m, "qkv", None), nn.Linear) and isinstance(getattr(m, "num_heads", None), int):
            num_heads[m.qkv] = m.num_heads  # torchvision Swin's ShiftedWindowAttention
    return ignored, num_heads


def tp_fixup(model) -> None:
    """What Torch-Pruning's torchvision example does after pruning a ViT."""
    from torchvision.models.vision_transformer import VisionTransformer

    if isinstance(model, VisionTransformer):
        model.hidden_dim = model.conv_proj.out_channels


_CONN = None  # the worker's pipe, for progress reports


def phase(name: str) -> None:
    """Tell the parent which phase a worker is in, so a timeout can say where it hung."""
    if _CONN is not None:
        _CONN.send(("phase", name))


def tp_prune(model, x):
    """Torch-Pruning's 50% uniform magnitude (L2) prune step, in place. Returns (pruner init s, step s)."""
    import torch_pruning as tp

    ignored, num_heads = tp_config(model)
    phase("BasePruner init")
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.BasePruner(
            model,
            x,
            importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=RATIO,
            ignored_layers=ignored,
            num_heads=num_heads,
        )
        t1 = time.perf_counter()
        phase("step")
        pruner.step()
        tp_fixup(model)
        t2 = time.perf_counter()
    return t1 - t0, t2 - t1


class TPWorker:
    """Torch-Pruning side."""

    def ping(self) -> bool:
        import torch_pruning  # noqa: F401
        import torchvision  # noqa: F401

        import autoprune  # noqa: F401

        return True

    def setup(self, name: str, size: int, kwargs: dict | None = None) -> dict:
        self.model = build(name, kwargs)
        self.x = make_input(size)
        self.ref_shapes = [tuple(o.shape) for o in run_model(self.model, self.x)]
        self.pruned = None
        return {}

    def build(self) -> dict:
        import torch_pruning as tp

        model = copy.deepcopy(self.model)
        gc.collect()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            tp.DependencyGraph().build_dependency(model, example_inputs=self.x)
            t1 = time.perf_counter()
        return {"build": t1 - t0}

    def step(self) -> dict:
        self.pruned = None
        gc.collect()
        t0 = time.perf_counter()
        model = copy.deepcopy(self.model)
        t1 = time.perf_counter()
        init, step = tp_prune(model, self.x)
        self.pruned = model
        return {"deepcopy": t1 - t0, "init": init, "step": step}

    def check(self) -> dict:
        import autoprune as ap

        res: dict[str, Any] = {}
        try:
            shapes_ok, finite = describe_outputs(run_model(self.pruned, self.x), self.ref_shapes)
            res.update(runs=True, shape_ok=shapes_ok, finite=finite)
        except Exception as err:  # noqa: BLE001
            res.update(runs=False, shape_ok=False, finite=False, run_error=f"{type(err).__name__}: {err}")
            return res
        try:
            res["macs"] = int(ap.count_macs(self.pruned, self.x))
            res["params"] = int(ap.count_params(self.pruned))
            res["macs_base"] = int(ap.count_macs(self.model, self.x))
            res["params_base"] = int(ap.count_params(self.model))
        except Exception as err:  # noqa: BLE001
            res["count_error"] = f"{type(err).__name__}: {err}"
        return res

    def coverage(self, name: str) -> dict:
        import autoprune as ap

        gc.collect()
        kwargs, size = coverage_spec(name)
        model = build(name, kwargs)
        x = make_input(size)
        ref_shapes = [tuple(o.shape) for o in run_model(model, x)]
        params_base = ap.count_params(model)
        init, step = tp_prune(model, x)
        shapes_ok, finite = describe_outputs(run_model(model, x), ref_shapes)
        res = {
            "input": size,
            "shape_ok": shapes_ok,
            "finite": finite,
            "params_base": params_base,
            "params": ap.count_params(model),
            "init_s": init,
            "step_s": step,
        }
        problems = []
        if not shapes_ok:
            problems.append("output shape changed")
        if not finite:
            problems.append("non-finite output")
        res["ok"] = not problems
        res["reason"] = "; ".join(problems)
        return res


def _worker_main(conn, side: str, threads: int) -> None:
    import torch

    global _CONN
    _CONN = conn
    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore")
    handler = OursWorker() if side == "ours" else TPWorker()
    while True:
        try:
            msg = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if msg is None:
            return
        cmd, kwargs = msg
        try:
            conn.send(("ok", getattr(handler, cmd)(**kwargs)))
        except BaseException as err:  # noqa: BLE001 - everything goes back to the parent
            conn.send(("err", short(f"{type(err).__name__}: {err}", 300), traceback.format_exc()))


class WorkerFailed(Exception):
    def __init__(self, kind: str, msg: str, tb: str = "", where: str = "") -> None:
        super().__init__(msg)
        self.kind, self.msg, self.tb, self.where = kind, msg, tb, where

    def label(self) -> str:
        if self.kind == "timeout":
            return f"timeout in {self.where}" if self.where else "timeout"
        if self.kind == "memory":
            return f"stopped in {self.where}: {self.msg}"
        if self.kind == "crash":
            return f"crash in {self.where}: {self.msg}" if self.where else f"crash: {self.msg}"
        return f"{self.kind}: {short(self.msg, 90)}"


def _rss_gb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    except (OSError, ValueError):
        pass
    return 0.0


def _available_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except (OSError, ValueError):
        pass
    return float("inf")


class Worker:
    """A spawned process that answers commands for one library; killed on timeout."""

    def __init__(self, side: str, threads: int = 1) -> None:
        ctx = mp.get_context("spawn")
        self.side = side
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, side, threads), daemon=True)
        self.proc.start()
        child.close()
        self.dead: WorkerFailed | None = None

    def call(self, cmd: str, timeout: float, **kwargs: Any) -> Any:
        if self.dead is not None:
            raise self.dead
        self.conn.send((cmd, kwargs))
        deadline = time.monotonic() + timeout
        where = cmd
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                self.dead = WorkerFailed("timeout", f"no answer to {cmd} within {timeout:.0f} s", where=where)
                raise self.dead
            if not self.conn.poll(min(0.5, left)):
                over = self.memory_trouble()
                if over:
                    self.kill()
                    self.dead = WorkerFailed("memory", over, where=where)
                    raise self.dead
                continue
            try:
                msg = self.conn.recv()
            except EOFError:
                self.proc.join(5)
                code = self.proc.exitcode
                why = "killed by SIGKILL (the kernel's OOM killer?)" if code == -9 else f"exit code {code}"
                self.dead = WorkerFailed("crash", f"worker died, {why}", where=where)
                raise self.dead from None
            if msg[0] != "phase":
                break
            where = msg[1]
        if msg[0] == "err":
            raise WorkerFailed("error", msg[1], msg[2])
        return msg[1]

    def memory_trouble(self) -> str:
        """Why the worker should be stopped before it takes the machine's memory, or ''."""
        rss = _rss_gb(self.proc.pid)
        if rss > MEM_LIMIT_GB:
            return f"used more than {MEM_LIMIT_GB:.0f} GB of memory"
        if rss > 3 and _available_gb() < MEM_RESERVE_GB:
            return f"used {rss:.1f} GB while the machine ran out of memory"
        return ""

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)

    def close(self) -> None:
        if self.proc.is_alive() and self.dead is None:
            try:
                self.conn.send(None)
            except OSError:
                pass
            self.proc.join(10)
        self.kill()
        self.conn.close()


# ---------------------------------------------------------------------------------------------
# Part 1: per-model timings
# ---------------------------------------------------------------------------------------------
def bench_model(name: str, quick: bool, log) -> dict:
    n_analysis = ANALYSIS_ROUNDS[quick]
    n_apply_rounds = APPLY_ROUNDS[quick]
    applies_per_round = APPLIES_PER_ROUND
    size = bench_size(name)
    res: dict[str, Any] = {
        "model": name,
        "input": size,
        "ours": {},
        "tp": {},
        "ours_error": None,
        "tp_error": None,
        "tracebacks": [],
    }
    ours, theirs = Worker("ours"), Worker("tp")
    o, t = res["ours"], res["tp"]

    def ours_call(cmd: str, **kw: Any) -> Any:
        if res["ours_error"]:
            return None
        try:
            return ours.call(cmd, OURS_TIMEOUT, **kw)
        except WorkerFailed as err:
            res["ours_error"] = err.label() if err.kind != "error" else f"{cmd}: {err.label()}"
            if err.tb:
                res["tracebacks"].append(f"[autoprune, {name}, {cmd}]\n{err.tb}")
            log(f"  ours {cmd} failed: {err.label()}")
            return None

    def tp_call(cmd: str, **kw: Any) -> Any:
        if res["tp_error"]:
            return None
        try:
            return theirs.call(cmd, TP_TIMEOUT, **kw)
        except WorkerFailed as err:
            res["tp_error"] = err.label() if err.kind != "error" else f"{cmd}: {err.label()}"
            log(f"  TP {cmd} failed: {err.label()}")
            return None

    try:
        setup = ours_call("setup", name=name, size=size)
        if setup:
            res["params"] = setup["params"]
        tp_call("setup", name=name, size=size)
        # Warm-up round (discarded): first-call costs of both libraries.
        ours_call("analysis")
        tp_call("build")
        analysis, first_apply, build, noverify = [], [], [], []
        for _ in range(n_analysis):
            a = ours_call("analysis")
            if a:
                analysis.append(a["analysis"])
                first_apply.append(a["first_apply"])
                o["groups"] = a["groups"]
            b = tp_call("build")
            if b:
                build.append(b["build"])
            a = ours_call("analysis", no_verify=True)
            if a:
                noverify.append(a["analysis_noverify"])
        o["analysis"], o["first_apply"] = median(analysis), median(first_apply)
        o["analysis_noverify"] = median(noverify)
        t["build"] = median(build)
        applies, deep, step, init, both = [], [], [], [], []
        ours_call("apply", n=1)  # warm-up (the first apply already ran after analysis)
        for _ in range(n_apply_rounds):
            a = ours_call("apply", n=applies_per_round)
            if a:
                applies.extend(a)
            s = tp_call("step")
            if s:
                deep.append(s["deepcopy"])
                step.append(s["step"])
                init.append(s["init"])
                both.append(s["deepcopy"] + s["step"])
        o["apply"] = median(applies)
        t.update(deepcopy=median(deep), step=median(step), init=median(init), copy_step=median(both))
        m = ours_call("macs_timing", budget=0.2 if quick else 0.5)
        if m:
            o.update(m)
        c = ours_call("check")
        if c:
            o["check"] = c
            if c.get("run_tb"):
                res["tracebacks"].append(f"[autoprune, {name}, pruned model forward]\n{c.pop('run_tb')}")
        c = tp_call("check")
        if c:
            t["check"] = c
    finally:
        ours.close()
        theirs.close()
    return res


# ---------------------------------------------------------------------------------------------
# Part 2: coverage over all torchvision classification models
# ---------------------------------------------------------------------------------------------
def run_coverage(names: list[str], jobs: int, log) -> dict:
    """Each of `jobs` threads owns one worker per library and feeds it models one by one.

    A worker is reused while it behaves (imports cost seconds on a loaded machine); one that
    times out or crashes is killed and replaced before the next model. Every model gets
    COVERAGE_TIMEOUT seconds per library, model construction included.
    """
    queue = list(names)
    out: dict[str, dict] = {"ours": {}, "tp": {}}
    lock = threading.Lock()
    done = [0]

    def fresh(side: str) -> Worker:
        w = Worker(side)
        w.call("ping", 300.0)  # the import time is not charged to a model
        return w

    def slot() -> None:
        workers: dict[str, Worker | None] = {"ours": None, "tp": None}
        try:
            while True:
                with lock:
                    if not queue:
                        return
                    name = queue.pop(0)
                for side in ("ours", "tp"):
                    t0 = time.perf_counter()
                    try:
                        if workers[side] is None or workers[side].dead is not None:
                            if workers[side] is not None:
                                workers[side].close()
                            workers[side] = fresh(side)
                        res = workers[side].call("coverage", COVERAGE_TIMEOUT, name=name)
                    except WorkerFailed as err:
                        res = {"ok": False, "reason": err.label(), "tb": err.tb}
                    except Exception as err:  # noqa: BLE001 - harness trouble must not stop the sweep
                        res = {"ok": False, "reason": f"harness: {short(str(err))}", "tb": traceback.format_exc()}
                    res["wall_s"] = time.perf_counter() - t0
                    with lock:
                        out[side][name] = res
                        done[0] += 1
                        status = "ok" if res.get("ok") else f"FAIL ({res.get('reason')})"
                        log(f"  [{done[0]}/{2 * len(names)}] {side:4s} {name}: {status} ({res['wall_s']:.0f} s)")
                        if not res.get("ok") and side == "ours" and res.get("tb"):
                            log(res["tb"])
        finally:
            for w in workers.values():
                if w is not None:
                    w.close()

    threads = [threading.Thread(target=slot, daemon=True) for _ in range(max(1, jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


# ---------------------------------------------------------------------------------------------
# Part 3: latency of pruned zoo ResNets against hand-built ones
# ---------------------------------------------------------------------------------------------
def latency(depths: list[int], batches: list[int], quick: bool, log) -> list[dict]:
    import torch
    from torch.utils import benchmark

    import autoprune as ap
    from autoprune import zoo

    min_run = 0.1
    rounds = LAT_ROUNDS_QUICK if quick else LAT_ROUNDS
    rows = []
    for depth in depths:
        torch.manual_seed(0)
        full = zoo.ResNetCIFAR(depth, in_channels=3).eval()
        x1 = torch.randn(1, 3, 32, 32)
        space = ap.PruningSpace(full, x1)
        rng = random.Random(1000 + depth)
        plan = {g.name: rng.uniform(0.2, 0.7) for g in space.groups}
        pruned = space.apply(plan, criterion="l2").eval()
        widths = pruned.widths()
        hand = zoo.ResNetCIFAR(depth, in_channels=3, **widths).eval()
        load_error = None
        try:
            hand.load_state_dict(pruned.state_dict())
        except Exception as err:  # noqa: BLE001
            load_error = short(f"{type(err).__name__}: {err}")
        with torch.no_grad():
            same = load_error is None and torch.allclose(pruned(x1), hand(x1), atol=1e-5)
        macs = {
            "full": ap.count_macs(full, x1),
            "pruned": ap.count_macs(pruned, x1),
            "hand": ap.count_macs(hand, x1),
            "pred": space.macs(plan),
        }
        for batch in batches:
            x = torch.randn(batch, 3, 32, 32)
            models = {"full": full, "pruned": pruned, "hand": hand}
            times: dict[str, list[float]] = {k: [] for k in models}
            ratios: list[float] = []

            def measure(k: str) -> float:
                timer = benchmark.Timer("m(x)", globals={"m": models[k], "x": x}, num_threads=1)
                t = timer.blocked_autorange(min_run_time=min_run).median
                times[k].append(t)
                return t

            with torch.inference_mode():
                for m in models.values():  # warm-up
                    for _ in range(3):
                        m(x)
                for r in range(rounds):
                    # pruned and hand-built back to back (alternating which goes first), then the full model
                    if r % 2 == 0:
                        tp_, th = measure("pruned"), measure("hand")
                    else:
                        th, tp_ = measure("hand"), measure("pruned")
                    ratios.append(tp_ / th)
                    measure("full")
            med = {k: statistics.median(v) for k, v in times.items()}
            q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
            row = {
                "model": f"resnet{depth}",
                "batch": batch,
                "widths": widths,
                "same_output": bool(same),
                "load_error": load_error,
                "macs": macs,
                "ms": {k: v * 1e3 for k, v in med.items()},
                "ratio": statistics.median(ratios),
                "ratio_q1": q[0],
                "ratio_q3": q[2],
                "ratio_rounds": ratios,
                "speedup": med["full"] / med["pruned"],
            }
            rows.append(row)
            log(
                f"  resnet{depth} batch {batch}: full {row['ms']['full']:.3f} ms, pruned {row['ms']['pruned']:.3f} ms, "
                f"hand {row['ms']['hand']:.3f} ms, pruned/hand {row['ratio']:.3f}, speed-up {row['speedup']:.2f}x"
            )
    return rows


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def describe_autoprune(head: str, dirty: bool) -> str:
    """Which autoprune was measured: this checkout (commit, dirty or not) or another copy on PYTHONPATH."""
    import autoprune

    where = Path(autoprune.__file__).resolve().parent
    label = os.environ.get("AUTOPRUNE_BENCH_REV", "")
    if where == ROOT / "autoprune":
        return f"`{head}`" + (" + uncommitted changes in autoprune/" if dirty else "")
    return f"{label or 'a copy'} imported from `{where}`"


def machine_info() -> dict:
    import torch
    import torch_pruning as tp
    import torchvision

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:  # noqa: BLE001
            return ""

    try:
        tp_dist = metadata.version("torch-pruning")
    except metadata.PackageNotFoundError:
        tp_dist = "?"
    dirty = git("status", "--porcelain", "--", "autoprune")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "tp": tp_dist,
        "tp_module": getattr(tp, "__version__", "?"),
        "commit": describe_autoprune(git("rev-parse", "--short", "HEAD"), bool(dirty)),
    }


def fmt_s(v: float | None) -> str:
    if v is None:
        return "—"
    if v < 1.0:
        return f"{v * 1e3:.0f} ms" if v >= 0.01 else f"{v * 1e3:.1f} ms"
    return f"{v:.2f} s"


def fmt_x(v: float | None, digits: int = 1) -> str:
    return "—" if v is None else f"{v:.{digits}f}×"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def yes(b: bool | None) -> str:
    return "—" if b is None else ("yes" if b else "**no**")


def geomean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def render(info: dict, args, models: list[dict], cov: dict | None, lat: list[dict], wall: float) -> str:
    L: list[str] = []
    today = datetime.date.today().isoformat()
    cmd, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if a in ("--json", "--no-write") or a.startswith("--json="):
            skip = a == "--json"
            continue
        cmd.append(a)
    partial = args.skip_models or args.skip_coverage or args.skip_latency or args.coverage_models or args.models
    mode = "quick run: fewer repeats, no coverage sweep" if args.quick else "partial run" if partial else "full run"
    L.append("## Engine: autoprune vs Torch-Pruning")
    L.append("")
    L.append(
        f"Generated {today} by `python benchmarks/engine.py{''.join(' ' + c for c in cmd)}` ({mode}; "
        f"the whole run took {wall / 60:.1f} min)."
    )
    L.append("")
    L.append(
        f"- Machine: {info['cpu']}, {info['cores']} cores; every measurement uses "
        "`torch.set_num_threads(1)`; other processes may have shared the machine."
    )
    L.append(
        f"- Software: Python {info['python']}, torch {info['torch']}, torchvision {info['torchvision']}, "
        f"torch-pruning {info['tp']} (its `__version__` says {info['tp_module']}), autoprune {info['commit']}."
    )
    L.append(
        "- Re-run: `python benchmarks/engine.py` (full, writes this section), "
        "`--quick` (3 models, no coverage), `--models a,b,c` (pick the per-model list)."
    )
    L.append("")

    # ---- targets
    speedups = [ratio(m["tp"].get("copy_step"), m["ours"].get("apply")) for m in models]
    speedups_nocopy = [ratio(m["tp"].get("step"), m["ours"].get("apply")) for m in models]
    an = [ratio(m["ours"].get("analysis"), m["tp"].get("build")) for m in models]
    valid_sp = [s for s in speedups if s is not None]
    valid_sp0 = [s for s in speedups_nocopy if s is not None]
    valid_an = [a for a in an if a is not None]
    r50 = next((m for m in models if m["model"] == "resnet50"), None)
    r50_us = r50["ours"].get("macs_us") if r50 else None
    L.append("### Targets")
    L.append("")
    L.append("| target | result | met? |")
    L.append("|---|---|---|")
    if valid_sp:
        met = sum(s >= TARGET_APPLY_SPEEDUP for s in valid_sp)
        met0 = sum(s >= TARGET_APPLY_SPEEDUP for s in valid_sp0)
        L.append(
            f"| apply ≥ {TARGET_APPLY_SPEEDUP:.0f}× faster than Torch-Pruning's prune step | "
            f"vs TP deepcopy+step: {met}/{len(valid_sp)} models, geomean {fmt_x(geomean(valid_sp))}, "
            f"min {fmt_x(min(valid_sp))}; vs TP step alone: {met0}/{len(valid_sp0)}, geomean "
            f"{fmt_x(geomean(valid_sp0))}, min {fmt_x(min(valid_sp0))} | "
            f"{'yes' if met == len(valid_sp) else 'partly' if met else 'no'} |"
        )
    else:
        L.append("| apply ≥ 5× faster than Torch-Pruning's prune step | no model where both ran | — |")
    if valid_an:
        met = sum(a <= 1.0 for a in valid_an)
        L.append(
            f"| analysis no slower than TP's graph build | ours/TP {met}/{len(valid_an)} models ≤ 1, geomean "
            f"{geomean(valid_an):.2f}, range {min(valid_an):.2f}–{max(valid_an):.2f} | "
            f"{'yes' if met == len(valid_an) else 'partly' if met else 'no'} |"
        )
    L.append(
        f"| cost of a plan ≤ {TARGET_MACS_US:.0f} µs on ResNet-50 | "
        + (
            f"{r50_us:.1f} µs | {'yes' if r50_us <= TARGET_MACS_US else 'no'} |"
            if r50_us is not None
            else "not measured in this run | — |"
        )
    )
    if lat:
        lo, hi = TARGET_LATENCY
        inside = [r for r in lat if lo <= r["ratio"] <= hi]
        L.append(
            f"| pruned/hand-built latency in {lo}–{hi} | {len(inside)}/{len(lat)} configurations, "
            f"range {min(r['ratio'] for r in lat):.3f}–{max(r['ratio'] for r in lat):.3f} | "
            f"{'yes' if len(inside) == len(lat) else 'partly' if inside else 'no'} |"
        )
    if cov:
        n = len(cov["ours"])
        L.append(
            f"| coverage (informational) | ours {sum(r.get('ok', False) for r in cov['ours'].values())}/{n}, "
            f"Torch-Pruning {sum(r.get('ok', False) for r in cov['tp'].values())}/{n} | — |"
        )
    L.append("")

    # ---- per-model timings
    L.append("### Per model: analysis and apply (batch 1, 224×224; inception_v3 299×299)")
    L.append("")
    L.append(
        "Uniform 50% plan, L2-magnitude criterion on both sides. *Speed-up* = Torch-Pruning time / ours "
        "(higher is better for us); *analysis ratio* = ours / TP (≤ 1 meets the target)."
    )
    L.append("")
    L.append(
        "| model | groups | analysis (ours) | ours with `verify=False` | TP graph build | analysis ratio ours/TP "
        "| first apply (ours, incl. scoring) "
        "| apply (ours, steady) | TP step | TP deepcopy + step | speed-up vs TP deepcopy+step | speed-up vs TP step "
        "| `space.macs(plan)` |"
    )
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for m, sp, sp0, a in zip(models, speedups, speedups_nocopy, an):
        o, t = m["ours"], m["tp"]
        tp_err = m["tp_error"]
        tp_build = fmt_s(t.get("build")) if t.get("build") is not None else (short(tp_err, 40) if tp_err else "—")
        tp_step = fmt_s(t.get("step")) if t.get("step") is not None else (short(tp_err, 40) if tp_err else "—")
        name = m["model"] + (f" (ours failed: {short(m['ours_error'], 60)})" if m["ours_error"] else "")
        macs_us = f"{o['macs_us']:.1f} µs" if o.get("macs_us") is not None else "—"
        L.append(
            f"| {name} | {o.get('groups', '—')} | {fmt_s(o.get('analysis'))} | "
            f"{fmt_s(o.get('analysis_noverify'))} | {tp_build} | "
            f"{'—' if a is None else f'{a:.2f}'} | {fmt_s(o.get('first_apply'))} | {fmt_s(o.get('apply'))} | "
            f"{tp_step} | {fmt_s(t.get('copy_step'))} | {fmt_x(sp)} | {fmt_x(sp0)} | {macs_us} |"
        )
    L.append("")
    L.append(
        "Torch-Pruning has no analytic cost model; the closest it offers is `tp.utils.count_ops_and_params`, "
        "which runs the model, so the last column has no TP counterpart."
    )
    L.append("")

    # ---- correctness
    L.append("### Per model: correctness of the pruned models")
    L.append("")
    L.append(
        "*MACs/params exact*: `space.macs(plan) == ap.count_macs(pruned, x)` and `space.params(plan) == "
        "ap.count_params(pruned)`. *Kept* columns: MACs and parameters of the pruned model as a fraction of "
        "the original, both measured with `ap.count_macs` / `ap.count_params` (the two libraries prune "
        'different sets of layers at "50%", so these differ).'
    )
    L.append("")
    L.append(
        "| model | MACs exact | params exact | ours runs, same output shape | ours MACs / params kept "
        "| TP runs, same output shape | TP MACs / params kept |"
    )
    L.append("|---|---|---|---|---:|---|---:|")
    for m in models:
        c, tc = m["ours"].get("check"), m["tp"].get("check")
        if c:
            macs_ok = c["macs_pred"] == c["macs_meas"]
            macs_cell = yes(macs_ok) + ("" if macs_ok else f" ({c['macs_pred']} vs {c['macs_meas']})")
            params_ok = c["params_pred"] == c["params_meas"]
            params_cell = yes(params_ok) + ("" if params_ok else f" ({c['params_pred']} vs {c['params_meas']})")
            runs = yes(c["runs"] and c["shape_ok"] and c["finite"]) + (
                f" ({short(c.get('run_error', ''), 60)})" if not c["runs"] else ""
            )
            kept = f"{c['macs_meas'] / c['macs_base']:.2f} / {c['params_meas'] / c['params_base']:.2f}"
        else:
            macs_cell = params_cell = runs = "—"
            kept = "—"
        if tc:
            truns = yes(tc["runs"] and tc["shape_ok"] and tc["finite"]) + (
                f" ({short(tc.get('run_error', ''), 60)})" if not tc["runs"] else ""
            )
            tkept = (
                f"{tc['macs'] / tc['macs_base']:.2f} / {tc['params'] / tc['params_base']:.2f}" if "macs" in tc else "—"
            )
        else:
            truns = short(m["tp_error"], 60) if m["tp_error"] else "—"
            tkept = "—"
        L.append(f"| {m['model']} | {macs_cell} | {params_cell} | {runs} | {kept} | {truns} | {tkept} |")
    L.append("")

    # ---- coverage
    L.append("### Coverage: every torchvision classification model")
    L.append("")
    if cov is None:
        L.append("Skipped in this run (`--quick`).")
    else:
        n = len(cov["ours"])
        ok_o = sorted(k for k, r in cov["ours"].items() if r.get("ok"))
        ok_t = sorted(k for k, r in cov["tp"].items() if r.get("ok"))
        L.append(
            f"Random weights, batch 1, 64×64 inputs (inception_v3 299, maxvit_t 224, vit_* built with "
            f"`image_size=32`, vit_h_14 with 28), each library in its own process with a "
            f"{COVERAGE_TIMEOUT:.0f} s limit, uniform 50%. Ours passes when the pruned model runs, keeps the "
            "output shape, gives finite outputs and its predicted MACs and parameters equal the measured ones; "
            "Torch-Pruning passes when its pruned model runs and keeps the output shape (finite outputs)."
        )
        L.append("")
        L.append(f"**ours {len(ok_o)}/{n}, Torch-Pruning {len(ok_t)}/{n}.**")
        L.append("")
        for side, label in (("ours", "autoprune"), ("tp", "Torch-Pruning")):
            fails = {k: r for k, r in sorted(cov[side].items()) if not r.get("ok")}
            if fails:
                L.append(f"{label} failures ({len(fails)}):")
                L.append("")
                for k, r in fails.items():
                    L.append(f"- `{k}`: {short(r.get('reason') or '?', 200)}")
            else:
                L.append(f"{label} failures: none.")
            L.append("")
        low_o = sorted(
            (k, r["params_meas"] / r["params_base"])
            for k, r in cov["ours"].items()
            if r.get("ok") and r["params_meas"] > 0.9 * r["params_base"]
        )
        low_t = sorted(
            (k, r["params"] / r["params_base"])
            for k, r in cov["tp"].items()
            if r.get("ok") and r["params"] > 0.9 * r["params_base"]
        )
        L.append(
            "Passed but kept more than 90% of the parameters (little was actually pruned): "
            f"ours: {', '.join(f'`{k}` ({v:.2f})' for k, v in low_o) or 'none'}; "
            f"Torch-Pruning: {', '.join(f'`{k}` ({v:.2f})' for k, v in low_t) or 'none'}."
        )
        kept_o = [r["params_meas"] / r["params_base"] for r in cov["ours"].values() if r.get("ok")]
        kept_t = [r["params"] / r["params_base"] for r in cov["tp"].values() if r.get("ok")]
        if kept_o and kept_t:
            L.append(
                f"Median parameters kept among passing models: ours {statistics.median(kept_o):.2f}, "
                f"Torch-Pruning {statistics.median(kept_t):.2f}."
            )
        warned = sorted(k for k, r in cov["ours"].items() if r.get("warnings"))
        if warned:
            L.append(f"autoprune warned (frozen or unanalysed channels) on: {', '.join(f'`{k}`' for k in warned)}.")
    L.append("")

    # ---- latency
    L.append("### Latency: pruned zoo ResNets vs the same widths hand-built")
    L.append("")
    if lat:
        L.append(
            "3×32×32 inputs, eval, `torch.inference_mode()`, 1 thread. Random fixed plan (seeded, every group's "
            "sparsity uniform in [0.2, 0.7]) applied with `space.apply`; the hand-built model is "
            "`zoo.ResNetCIFAR(depth, in_channels=3, **pruned.widths())` loaded with the pruned weights. "
            f"Each of {LAT_ROUNDS_QUICK if args.quick else LAT_ROUNDS} rounds times the pruned and the "
            "hand-built model back to back (alternating which goes first; "
            "`torch.utils.benchmark.Timer.blocked_autorange(min_run_time=0.1)` medians), then the full model. "
            "*pruned / hand-built* is the median of the per-round ratios (interquartile range in brackets); "
            "the ms columns are medians over rounds."
        )
        L.append("")
        L.append(
            "| model | batch | MACs full → pruned (per image) | full | pruned (`space.apply`) | hand-built "
            "| pruned / hand-built | target 0.97–1.03 | speed-up vs full | same outputs |"
        )
        L.append("|---|---:|---|---:|---:|---:|---:|---|---:|---|")
        lo, hi = TARGET_LATENCY
        for r in lat:
            L.append(
                f"| {r['model']} | {r['batch']} | {r['macs']['full'] / 1e6:.1f}M → {r['macs']['pruned'] / 1e6:.1f}M "
                f"| {r['ms']['full']:.3f} ms | {r['ms']['pruned']:.3f} ms | {r['ms']['hand']:.3f} ms "
                f"| {r['ratio']:.3f} [{r['ratio_q1']:.3f}–{r['ratio_q3']:.3f}] "
                f"| {'met' if lo <= r['ratio'] <= hi else '**missed**'} | "
                f"{r['speedup']:.2f}× | {yes(r['same_output'])} |"
            )
        L.append("")
        for r in lat:
            if r["batch"] == lat[0]["batch"]:
                L.append(
                    f"- {r['model']} widths: stages {r['widths']['stage_widths']}, blocks "
                    f"{r['widths']['block_widths']}; predicted MACs {r['macs']['pred']} vs hand-built "
                    f"{r['macs']['hand']}."
                )
    else:
        L.append("Skipped.")
    L.append("")

    # ---- notes
    L.append("### Notes")
    L.append("")
    L.append(
        "- *Analysis* is `ap.PruningSpace(model, x)` with its defaults (it runs the model, traces it, and by "
        "default `verify=True` also builds one slightly pruned model and re-runs it to check every op's shape). "
        "Torch-Pruning's counterpart is `tp.DependencyGraph().build_dependency(model, example_inputs=x)` on a "
        "deepcopy (the copy is not timed). One discarded warm-up round, then the median of "
        f"{ANALYSIS_ROUNDS[args.quick]} interleaved rounds."
    )
    L.append(
        '- *Apply (ours, steady)* is `space.apply(plan, criterion="l2")` after the scores are cached: it '
        "slices the weights and deep-copies the module structure, returning a new model. *First apply* is "
        "the first call on a fresh space (it also computes the L2 scores). Median of "
        f"{APPLY_ROUNDS[args.quick] * APPLIES_PER_ROUND} calls, interleaved with the Torch-Pruning rounds."
    )
    L.append(
        "- *TP step* is `tp.pruner.BasePruner(model, x, importance=tp.importance.MagnitudeImportance(p=2), "
        "pruning_ratio=0.5, ignored_layers=[classifier], num_heads={...}).step()` (`MagnitudePruner` is an "
        "alias of `BasePruner` in 1.6); the pruner's constructor, which rebuilds the dependency graph, is *not* "
        "counted. Torch-Pruning prunes in place, so to leave the original untouched, as `space.apply` does, "
        "it needs a `copy.deepcopy(model)` first: *TP deepcopy + step* counts that copy, *TP step* does not. "
        "TP scores channels inside every step (it has no score cache), so *first apply* is the like-for-like "
        f"number for a single prune and *steady* the one a search loop pays. Median of {APPLY_ROUNDS[args.quick]} "
        "rounds, each on a fresh deepcopy."
    )
    L.append(
        "- Torch-Pruning configuration: every `nn.Linear`/`nn.Conv2d` with 1000 outputs is ignored (the "
        "classifier, and googlenet/inception_v3's auxiliary classifiers); `nn.MultiheadAttention` modules (ViT) "
        "and Swin's `qkv` layers get their head counts through `num_heads`; after pruning a ViT its `hidden_dim` "
        "is reset as TP's torchvision example does. No custom pruners were written for either library. "
        f"Each TP command has a {TP_TIMEOUT:.0f} s limit; a timeout or error stops the remaining TP "
        "measurements of that model."
    )
    L.append(
        f"- Every worker process is stopped if it holds more than {MEM_LIMIT_GB:.0f} GB, or more than 3 GB "
        f"while the machine has under {MEM_RESERVE_GB} GB available, and the model is then reported as failed "
        "for that library (this keeps a runaway library from calling in the kernel's OOM killer)."
    )
    L.append("- *`space.macs(plan)`*: median over many single calls (each timed with `perf_counter_ns`).")
    L.append(
        "- Both sides see identical models (seeded random weights) and inputs. Timings on a shared 2-core VM "
        "are noisy at the ±10–20% level; ratios far from the targets are meaningful, ratios within ~20% of a "
        "target are not."
    )
    tp_fail = [m for m in models if m["tp_error"]]
    if tp_fail:
        L.append(
            "- Torch-Pruning did not complete on: "
            + "; ".join(f"{m['model']} ({short(m['tp_error'], 90)})" for m in tp_fail)
            + "."
        )
    o_fail = [m for m in models if m["ours_error"]]
    if o_fail:
        L.append(
            "- autoprune failed on: " + "; ".join(f"{m['model']} ({short(m['ours_error'], 90)})" for m in o_fail) + "."
        )
    return "\n".join(L).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="3 models, fewer repeats, no coverage sweep")
    p.add_argument("--models", default="", help="comma-separated torchvision models for the per-model tables")
    p.add_argument("--coverage-models", default="", help="restrict the coverage sweep to these models")
    p.add_argument("--jobs", type=int, default=2, help="parallel processes in the coverage sweep")
    p.add_argument("--coverage-timeout", type=float, default=COVERAGE_TIMEOUT, help="seconds per model and library")
    p.add_argument("--skip-models", action="store_true", help="skip the per-model tables")
    p.add_argument("--skip-coverage", action="store_true")
    p.add_argument("--skip-latency", action="store_true")
    p.add_argument("--json", default="", help="also dump raw results to this file")
    p.add_argument("--no-write", action="store_true", help="print the section instead of writing BENCHMARKS.md")
    args = p.parse_args()
    globals()["COVERAGE_TIMEOUT"] = args.coverage_timeout

    import torch
    import torchvision

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:7.1f}s] {msg}", flush=True)

    info = machine_info()
    log(f"machine: {info}")
    names = [m for m in args.models.split(",") if m] or (QUICK_MODELS if args.quick else MODELS)
    if args.skip_models:
        names = []

    models = []
    log("part 1: per-model timings")
    for name in names:
        log(f"{name} ...")
        t0 = time.perf_counter()
        try:
            r = bench_model(name, args.quick, log)
        except Exception as err:  # noqa: BLE001 - never abort the run
            r = {
                "model": name,
                "ours": {},
                "tp": {},
                "ours_error": f"harness: {err}",
                "tp_error": None,
                "tracebacks": [traceback.format_exc()],
            }
        models.append(r)
        o, t = r["ours"], r["tp"]
        log(
            f"  {name}: analysis {fmt_s(o.get('analysis'))} vs TP build {fmt_s(t.get('build'))}; apply "
            f"{fmt_s(o.get('apply'))} (first {fmt_s(o.get('first_apply'))}) vs TP step {fmt_s(t.get('step'))} "
            f"/ deepcopy+step {fmt_s(t.get('copy_step'))}; macs {o.get('macs_us', float('nan')):.1f} us; "
            f"check ours={o.get('check')} tp={t.get('check')} errors={r['ours_error']}/{r['tp_error']} "
            f"({time.perf_counter() - t0:.0f} s)"
        )
        for tb in r["tracebacks"]:
            log(tb)

    cov = None
    if not args.quick and not args.skip_coverage:
        cov_names = [m for m in args.coverage_models.split(",") if m] or torchvision.models.list_models(
            module=torchvision.models
        )
        log(f"part 2: coverage over {len(cov_names)} models, {args.jobs} in parallel")
        cov = run_coverage(cov_names, args.jobs, log)
        log(
            f"  ours {sum(r.get('ok', False) for r in cov['ours'].values())}/{len(cov_names)}, "
            f"TP {sum(r.get('ok', False) for r in cov['tp'].values())}/{len(cov_names)}"
        )

    lat: list[dict] = []
    if not args.skip_latency:
        log("part 3: latency of pruned vs hand-built zoo ResNets")
        try:
            lat = latency([20, 56], [64, 1], args.quick, log)
        except Exception:  # noqa: BLE001
            log("latency failed:\n" + traceback.format_exc())

    wall = time.perf_counter() - t_start
    text = render(info, args, models, cov, lat, wall)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"info": info, "models": models, "coverage": cov, "latency": lat, "wall_s": wall}, indent=1, default=str
            )
        )
    if args.no_write:
        print(text)
    else:
        log(f"wrote {write_section('engine', text)}")
    log(f"done in {wall / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
