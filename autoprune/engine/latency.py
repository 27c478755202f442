"""A per-op latency lookup table: a pruned model's latency on this device, predicted without building it.

As in NetAdapt, every layer that dominates latency (each traced conv / matmul /
attention op) is timed alone, on a grid of kept channel counts of the channel
groups that size it (``(in, out)`` for a conv or linear layer; the group axis
for a depthwise conv), and interpolated bilinearly between grid points. Every
other traced op that a channel group sizes (norms, activations, residual adds,
pooling, concatenations: any op with a prunable axis in its tensor arguments,
whatever module runs it) is timed the same way, on a grid of its group's kept
count; views cost nothing and are left out. A network's latency is the sum over
these ops plus one constant for the rest (ops no group sizes, Python and module
overhead): the measured full-model latency minus the ops' sum at full size, so
``predict({})`` is the measured latency.

An op sized by more than two groups, or one that cannot run alone at pruned
sizes (an argument fixes a channel count), is timed at full size and scaled by
its work: the product of its prunable sizes for a conv / matmul, the kept
fraction of its tensor arguments' elements for any other op.

An op does not always run as fast in a forward pass as alone. On CPU with
glibc's default malloc, freed activations of a few MB go back to the OS and are
page-faulted in again, by thresholds that adapt to the process's history (the
same batch-64 ResNet-20 measured 104 ms in one process and 60 ms in another);
a standalone op reuses its buffer and never pays that, so the constant absorbs
it. Build and measure with fixed thresholds (``MALLOC_MMAP_THRESHOLD_`` /
``MALLOC_TRIM_THRESHOLD_``) or another allocator for predictions that hold.

Latency depends on the device, the thread count and the batch size, so a table
records them and the space's fingerprint, and is only reused for the same ones.
"""

from __future__ import annotations

import contextlib
import copy
import os
import platform
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from ..utils import num_threads
from .axes import Expr
from .ops import FLOP_OPS
from .trace import UNSEQUENCED, plain_kernels

if TYPE_CHECKING:
    from .space import PruningSpace

FORMAT = 2
_KEY_STRIDE = 1 << 32  # separates the grids of different layer axes in one sorted array


def hardware(device: str | torch.device) -> str:
    """The processor a latency was measured on: the CPU model, or the accelerator's name."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


@dataclass
class _Arg:
    """A tensor argument of a recorded op: the expressions of its dims (None: a constant), shape, dtype."""

    dims: list[Expr] | None
    shape: tuple[int, ...]
    dtype: torch.dtype


@dataclass
class _Call:
    """One op of the traced forward pass, re-runnable alone at any kept channel counts."""

    name: str
    func: Any
    args: tuple
    kwargs: dict
    groups: list[int]  # indices into space.groups of the groups that size it, in order of appearance
    flops: bool  # a FLOP-counted op (conv, matmul, attention); else memory-bound (norm, activation, add, pool ...)


class _CallRecorder(TorchDispatchMode):
    """Re-runs the traced forward pass and records each op's arguments with their dim expressions.

    Ops are matched one-to-one with the space's trace (same order, names and
    shapes), so an op's tensor arguments get the expressions the trace gave the
    ops that produced them; parameters get their own.
    """

    def __init__(self, space: "PruningSpace", inputs: tuple) -> None:
        super().__init__()
        self.space = space
        self.same_batch = all(x is y for x, y in zip(inputs, space.example_inputs))
        model = space.model
        self.params = {id(t): n for n, t in (*model.named_parameters(), *model.named_buffers())}
        self.dims: dict[int, list[Expr]] = {
            id(x): dims for x, dims in zip(inputs, space.input_dims) if isinstance(x, torch.Tensor) and dims is not None
        }
        self.alive: list[torch.Tensor] = []
        self.calls: list[tuple[int, Any, tuple, dict]] = []
        self.index = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        ops = self.space.ops
        outs = [o for o in pytree.tree_leaves(out) if isinstance(o, torch.Tensor)]
        name = func.overloadpacket.__name__
        if name in UNSEQUENCED:  # an identity op the trace left out: its output has its input's dims
            if isinstance(args[0], torch.Tensor) and id(args[0]) in self.dims:
                for o in outs:
                    self.dims[id(o)] = self.dims[id(args[0])]
                    self.alive.append(o)
            return out
        rec = ops[self.index] if self.index < len(ops) else None
        shapes = [tuple(o.shape) for o in outs]
        if rec is None or rec.name != name or (self.same_batch and rec.shapes != shapes):
            raise RuntimeError(
                f"the model ran differently than when it was traced (op {self.index}: aten.{name}); "
                "a latency table needs a forward pass that is the same on every run and at every batch size "
                "(else trace the space at the batch size the table is for)"
            )
        if not _is_view(func):
            a, kw = pytree.tree_map_only(torch.Tensor, self._arg, (args, kwargs))
            self.calls.append((self.index, func, a, kw))
        for o, d in zip(outs, rec.outputs):
            self.dims[id(o)] = d
            self.alive.append(o)
        self.index += 1
        return out

    def _arg(self, t: torch.Tensor) -> _Arg:
        name = self.params.get(id(t))
        dims = self.space.param_dims.get(name) if name is not None else self.dims.get(id(t))
        return _Arg(dims if dims is not None and len(dims) == t.dim() else None, tuple(t.shape), t.dtype)


def _is_view(func: Any) -> bool:
    """An op whose outputs only alias its inputs (view, transpose, split): no work to time."""
    returns = func._schema.returns
    return bool(returns) and all(r.alias_info is not None and not r.alias_info.is_write for r in returns)


def _inputs(space: "PruningSpace", batch_size: int | None) -> tuple:
    """The space's example inputs, their samples repeated to ``batch_size`` when given."""
    if batch_size is None:
        return space.example_inputs
    return tuple(
        x[torch.arange(batch_size) % x.shape[0]] if isinstance(x, torch.Tensor) and x.dim() > 0 else x
        for x in space.example_inputs
    )


def _record_calls(space: "PruningSpace", batch_size: int | None) -> list[_Call]:
    """Every op (views excepted) the traced forward pass runs that some channel group sizes, at ``batch_size``."""
    model = space.model
    flags = [(m, m.training) for m in model.modules()]
    inputs = _inputs(space, batch_size)
    rec = _CallRecorder(space, inputs)
    try:
        model.eval()
        with plain_kernels(model), torch.no_grad(), rec:
            model(*inputs)
    finally:
        for m, flag in flags:
            m.training = flag
    group_of = {g.atom: i for i, g in enumerate(space.groups)}
    calls = []
    for index, func, args, kwargs in rec.calls:
        found: list[int] = []
        for leaf in pytree.tree_leaves((args, kwargs)):
            if isinstance(leaf, _Arg) and leaf.dims is not None:
                for e in leaf.dims:
                    for a in space.axes.atoms(e):
                        g = group_of.get(a)
                        if g is not None and g not in found:
                            found.append(g)
        module = space.ops[index].module
        name = f"{module}:{func.overloadpacket.__name__}" if module else func.overloadpacket.__name__
        calls.append(_Call(name, func, args, kwargs, found, func.overloadpacket.__name__ in FLOP_OPS))
    seen: dict[str, int] = {}
    for c in calls:  # an op run twice in one module (a shared layer) gets a numbered name
        k = seen[c.name] = seen.get(c.name, 0) + 1
        if k > 1:
            c.name = f"{c.name}#{k}"
    return [c for c in calls if c.groups]  # ops no group sizes are constant: part of the remainder


def _grid(channels: int, round_to: int, step: int | None) -> list[int]:
    """Kept counts to measure: multiples of ``step`` from the smallest allowed count up to the full width."""
    low = min(round_to, channels)
    if step is None:
        step = max(round_to, round_to * round(channels / 8 / round_to))
    return sorted({low, channels, *range(step, channels, step)})


def _monotone(v: np.ndarray) -> np.ndarray:
    """The midpoint of the upper and lower monotone envelopes along both axes.

    A measured table is not always monotone (noise; a kernel chosen by shape can
    make an odd width slower than a larger one); a search needs "keep fewer
    channels, never slower".
    """
    up = np.maximum.accumulate(np.maximum.accumulate(v, axis=0), axis=1)
    down = np.minimum.accumulate(np.minimum.accumulate(v[::-1, ::-1], axis=0), axis=1)[::-1, ::-1]
    return (up + down) / 2


@dataclass
class Timing:
    """Milliseconds per call (the median over clean blocks), the fraction of blocks that were clean, and the
    milliseconds per call of every block the median was taken over."""

    ms: float
    clean: float
    blocks_ms: list[float]


def _expected_cpu() -> float:
    """CPU seconds per second a process running torch's threads gets when nothing else competes for the CPU."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return float(min(torch.get_num_threads(), cpus))


def timing(
    fn: Any,
    *,
    min_run_time: float,
    device: torch.device,
    blocks: int = 5,
    block_time: float = 1e-3,
    patience: float = 10.0,
) -> Timing:
    """Time ``fn``: blocks of calls (each at least ``block_time``) for at least ``min_run_time`` seconds and
    ``blocks`` blocks, after one warm-up call; the median milliseconds per call.

    On a CPU a block is *clean* when the process got the CPU time its threads
    should (90% of threads x wall time; torch's threads spin, so an uncontended
    block gets all of it). A block that got less was descheduled for another
    process competing for the cores: it is dropped and another one timed, for up
    to ``patience`` x ``min_run_time`` more. Measured on this machine, with such
    blocks kept one measurement of a network at 66% of the full latency read
    anywhere from 52% to 99%. If contention outlasts the patience, the clean
    blocks there are (or all, if none) give the median, and ``clean`` says how
    few there were.
    """
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    need = 0.9 * _expected_cpu() if device.type == "cpu" else 0.0

    def block(number: int) -> tuple[float, bool]:
        w, c = time.perf_counter(), time.process_time()
        for _ in range(number):
            fn()
        sync()
        wall = time.perf_counter() - w
        return wall, time.process_time() - c >= need * wall

    fn()
    sync()
    number = 1
    while True:  # calls per block, so that tiny ops are not all timer overhead
        took, ok = block(number)
        if took >= block_time or number >= 1 << 16:
            break
        number *= max(2, min(10, int(block_time / max(took, 1e-7))))
    clean, dirty = ([took / number], []) if ok else ([], [took / number])
    start = time.perf_counter()
    deadline = start + min_run_time * (1 + patience)
    while len(clean) < blocks or time.perf_counter() - start < min_run_time:
        if dirty and time.perf_counter() > deadline:
            break
        took, ok = block(number)
        (clean if ok else dirty).append(took / number)
    used = [t * 1e3 for t in clean or dirty]
    return Timing(float(np.median(used)), len(clean) / (len(clean) + len(dirty)), used)


def median_ms(
    fn: Any, *, min_run_time: float, device: torch.device, blocks: int = 5, block_time: float = 1e-3
) -> float:
    """Median milliseconds per call of ``fn`` over blocks no other process disturbed (see :func:`timing`)."""
    return timing(fn, min_run_time=min_run_time, device=device, blocks=blocks, block_time=block_time).ms


class _Timer:
    """Median time of each op signature, measured once (layers of the same shape share one timing)."""

    def __init__(self, min_run_time: float, device: torch.device) -> None:
        self.min_run_time, self.device = min_run_time, device
        self.cache: dict[Any, float] = {}

    def __call__(self, key: Any, make: Any) -> float:
        got = self.cache.get(key)
        if got is None:
            with torch.inference_mode():
                got = self.cache[key] = median_ms(make(), min_run_time=self.min_run_time, device=self.device)
        return got


class LatencyTable:
    """Per-op latency lookup table of one :class:`PruningSpace` on one device; ``predict(plan)`` in ms.

    Build it with :meth:`LatencyTable.build`; store it with :meth:`to_dict` and
    restore it with :meth:`from_dict` (which refuses another model).
    """

    def __init__(
        self, space: "PruningSpace", layers: list[dict[str, Any]], full_ms: float, info: dict[str, Any]
    ) -> None:
        self.space = space
        self.layers = layers
        self.full_ms = float(full_ms)
        self.info = dict(info)
        self._reference: torch.nn.Module | None = None  # the unpruned model on the device, for measure()
        self._compile()
        self.constant_ms = 0.0
        self.constant_ms = self.full_ms - self.predict({})

    # -- building -------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        space: "PruningSpace",
        *,
        threads: int = 1,
        batch_size: int | None = None,
        grid_step: int | None = None,
        repeats: int = 1,
        min_run_time: float = 0.02,
        device: str | torch.device = "cpu",
    ) -> "LatencyTable":
        """Time every op of ``space``'s model that a channel group sizes, on a grid of kept channel counts.

        ``batch_size`` scales the traced batch (default: the example inputs' own);
        ``grid_step`` is the grid's spacing in channels (default: an eighth of a
        group's width, a multiple of ``round_to``); each grid point is the median
        over ``repeats`` passes of :func:`median_ms` (``min_run_time`` seconds). The
        whole model is timed between the ops, and the median of those is ``full_ms``.
        """
        for label, v in (
            ("threads", threads),
            ("repeats", repeats),
            ("grid_step", grid_step),
            ("batch_size", batch_size),
        ):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ValueError(f"{label} must be a positive integer, got {v!r}")
        device = torch.device(device)
        started = time.perf_counter()
        calls = _record_calls(space, batch_size)
        full = np.array([g.channels for g in space.groups])
        grids = {i: _grid(int(full[i]), space.round_to, grid_step) for c in calls for i in c.groups}
        timer = _Timer(min_run_time, device)
        # Timed at full size only and scaled by work: more than two groups, or not runnable alone when pruned.
        whole = {k for k, c in enumerate(calls) if len(c.groups) > 2}
        lost: set[int] = set()  # not runnable alone at all: part of the constant
        passes: list[dict[int, np.ndarray]] = []
        model_ms: list[float] = []
        every = max(1, len(calls) // 4)
        with num_threads(threads):
            for _ in range(repeats):
                timer.cache.clear()
                tables: dict[int, np.ndarray] = {}
                for k, c in enumerate(calls):
                    if k % every == 0:  # the whole model, timed between the ops: drift hits both alike
                        model_ms.append(_time_model(space, batch_size, device, max(0.2, 10 * min_run_time)))
                    if k in lost:
                        continue
                    if k not in whole:
                        try:
                            tables[k] = _time_grid(space, c, [grids[i] for i in c.groups], timer, device)
                            continue
                        except Exception:  # noqa: BLE001 - an argument fixes a pruned size: time it whole
                            whole.add(k)
                    try:
                        tables[k] = _time_grid(space, c, [[int(full[i])] for i in c.groups[:2]], timer, device)
                    except Exception:  # noqa: BLE001 - it cannot run alone: its time stays in the constant
                        lost.add(k)
                passes.append(tables)
            model_ms.append(_time_model(space, batch_size, device, max(0.2, 10 * min_run_time)))
        layers = []
        for k, c in enumerate(calls):
            if k in lost:
                continue
            if k in whole:  # the full-size point (last on every grid), from every pass that timed it
                values = [[float(np.median([p[k][-1, -1] for p in passes if k in p]))]]
            else:
                values = _monotone(np.median(np.stack([p[k] for p in passes]), axis=0)).tolist()
            layers.append(
                {
                    "name": c.name,
                    "kind": "compute" if c.flops else "memory",
                    "groups": [space.groups[i].name for i in c.groups],
                    "grids": [] if k in whole else [grids[i] for i in c.groups],
                    "values": values,
                }
            )
        info = {
            "device": str(device),
            "hardware": hardware(device),
            "threads": threads,
            "batch_size": batch_size,
            "grid_step": grid_step,
            "torch": torch.__version__,
            "measurements": len(timer.cache) * repeats,
            "build_seconds": round(time.perf_counter() - started, 2),
        }
        return cls(space, layers, float(np.median(model_ms)), info)

    # -- prediction -----------------------------------------------------------------------------
    def _compile(self) -> None:
        """Flatten every layer's grids and values so ``predict`` is a handful of numpy operations."""
        index = {g.name: i for i, g in enumerate(self.space.groups)}
        dummy = len(self.space.groups)  # reads a constant 0 from the padded counts
        keys, grids, starts, lengths, var, base, inner, values = [], [], [], [], [], [], [], []
        self._fallback: list[tuple[float, _Call, list[int]]] = []
        calls = (
            {c.name: c for c in _record_calls(self.space, None)} if any(not lay["grids"] for lay in self.layers) else {}
        )
        offset = n_values = 0
        for lay in self.layers:
            if not lay["grids"]:
                ids = [index[g] for g in lay["groups"]]
                self._fallback.append((float(lay["values"][0][0]), calls[lay["name"]], ids))
                continue
            axes = [np.asarray(g, dtype=np.int64) for g in lay["grids"]]
            v = np.asarray(lay["values"], dtype=np.float64)
            ids = [index[g] for g in lay["groups"]]
            if len(axes) == 1:
                axes.append(np.array([0, 1], dtype=np.int64))
                v = np.repeat(v[:, :1], 2, axis=1)
                ids.append(dummy)
            for k, g in enumerate(axes):
                axis_id = len(starts)
                keys.append(axis_id * _KEY_STRIDE + g)
                grids.append(g)
                starts.append(offset)
                lengths.append(len(g))
                offset += len(g)
            var.append(ids)
            base.append(n_values)
            inner.append(v.shape[1])
            values.append(v.ravel())
            n_values += v.size
        n = len(var)
        cat = (lambda xs, dt: np.concatenate(xs).astype(dt)) if n else (lambda xs, dt: np.zeros(0, dt))
        self._keys, self._grid = cat(keys, np.int64), cat(grids, np.float64)
        self._axis = np.arange(2 * n, dtype=np.int64).reshape(n, 2) * _KEY_STRIDE
        self._start = np.asarray(starts, dtype=np.int64).reshape(n, 2)
        self._last = self._start + np.asarray(lengths, dtype=np.int64).reshape(n, 2) - 2
        self._var = np.asarray(var, dtype=np.int64).reshape(n, 2)
        self._base = np.asarray(base, dtype=np.int64)
        self._inner = np.asarray(inner, dtype=np.int64)
        self._values = cat(values, np.float64)

    def layer_latencies(self, plan: Mapping[str, float] | np.ndarray) -> np.ndarray:
        """Interpolated latency (ms) of each op with grids (``layers`` order, those timed whole excluded)."""
        counts = self.space.kept_counts(plan) if isinstance(plan, Mapping) else np.asarray(plan)
        q = np.append(counts, 0)[self._var]
        pos = np.searchsorted(self._keys, self._axis + q, side="right") - 1
        pos = np.minimum(np.maximum(pos, self._start), self._last)
        g0 = self._grid[pos]
        t = (q - g0) / (self._grid[pos + 1] - g0)
        i = pos - self._start
        at = self._base + i[:, 0] * self._inner + i[:, 1]
        v = self._values
        t0, t1 = t[:, 0], t[:, 1]
        low = v[at] * (1 - t1) + v[at + 1] * t1
        high = v[at + self._inner] * (1 - t1) + v[at + self._inner + 1] * t1
        return low * (1 - t0) + high * t0

    def predict(self, plan: Mapping[str, float]) -> float:
        """Predicted latency (ms) of ``space.apply(plan)`` on the device the table was built on."""
        counts = self.space.kept_counts(plan)
        total = self.constant_ms + float(self.layer_latencies(counts).sum())
        for full_ms, call, ids in self._fallback:
            total += full_ms * self._work_ratio(call, ids, counts)
        return total

    def breakdown(self, plan: Mapping[str, float]) -> dict[str, float]:
        """Predicted milliseconds of each op in the table (by name) and of the ``constant`` rest; they sum to
        ``predict(plan)``."""
        counts = self.space.kept_counts(plan)
        out: dict[str, float] = {}
        interpolated = iter(self.layer_latencies(counts).tolist())
        whole = iter(self._fallback)
        for lay in self.layers:
            if lay["grids"]:
                out[lay["name"]] = next(interpolated)
            else:
                full_ms, call, ids = next(whole)
                out[lay["name"]] = full_ms * self._work_ratio(call, ids, counts)
        out["constant"] = self.constant_ms
        return out

    def _work_ratio(self, call: _Call, ids: list[int], counts: np.ndarray) -> float:
        """For an op timed whole: the kept fraction of its work.

        A conv / matmul's work is the product of its prunable sizes; any other
        op's is the number of elements its tensor arguments hold.
        """
        space = self.space
        kept = {space.groups[i].atom: int(counts[i]) for i in ids}
        if call.flops:
            ratio = 1.0
            for e in _distinct_exprs(space, call):
                ratio *= space.kept_size(e, kept) / space.kept_size(e, {})
            return ratio
        tensors = [a for a in pytree.tree_leaves((call.args, call.kwargs)) if isinstance(a, _Arg)]
        before = sum(int(np.prod(a.shape)) for a in tensors)
        after = sum(int(np.prod(_kept_shape(space, a, kept))) for a in tensors)
        return after / before if before else 1.0

    # -- storage --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy (e.g. for ``study.set_user_attr("latency_table", ...)``)."""
        return {
            "format": FORMAT,
            "fingerprint": self.space.fingerprint(),
            **self.info,
            "full_ms": self.full_ms,
            "constant_ms": self.constant_ms,
            "layers": self.layers,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], space: "PruningSpace") -> "LatencyTable":
        """Restore a table for ``space``; raises ValueError if it was built for another model or format."""
        if data.get("format") != FORMAT:
            raise ValueError(f"latency table format {data.get('format')!r} is not {FORMAT}; rebuild the table")
        mine = space.fingerprint()
        if data.get("fingerprint") != mine:
            raise ValueError(
                f"this latency table was built for another model (fingerprint {data.get('fingerprint')}, "
                f"this space {mine}); build one for this model with LatencyTable.build(space)"
            )
        traced = {
            c.name: [space.groups[i].name for i in c.groups] for c in _record_calls(space, data.get("batch_size"))
        }
        order = list(traced)
        at = [order.index(lay["name"]) if lay["name"] in traced else -1 for lay in data["layers"]]
        if -1 in at or at != sorted(set(at)) or any(traced[lay["name"]] != lay["groups"] for lay in data["layers"]):
            raise ValueError("this latency table's ops do not match the space's traced ops; rebuild it")
        info = {k: v for k, v in data.items() if k not in ("format", "fingerprint", "full_ms", "constant_ms", "layers")}
        return cls(space, [dict(lay) for lay in data["layers"]], data["full_ms"], info)

    def measure(self, model: torch.nn.Module, *, rounds: int = 5, min_run_time: float = 0.1) -> dict[str, float]:
        """Measure ``model`` (a network built from this table's space) beside the unpruned model.

        Both run under the table's own conditions (device, threads, batch size), in
        ``rounds`` interleaved rounds with alternating order, so slow drift of a shared
        machine hits both alike. Returns the medians ``ms`` and ``full_ms`` and
        ``ratio``, the median of the per-round ratios (their range in ``ratio_min`` /
        ``ratio_max``): the measured fraction of the full latency, comparable with a
        fractional latency budget. Every timing keeps only blocks no other process
        disturbed (:func:`timing`); ``clean`` is the fraction of blocks that were (1.0 on
        a quiet machine; low values mean the machine was too busy to trust the
        numbers). ``model`` is not changed (a copy is timed).
        """
        if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
            raise ValueError(f"rounds must be a positive integer, got {rounds!r}")
        device = torch.device(self.info.get("device", "cpu"))
        if self._reference is None:
            self._reference = copy.deepcopy(self.space.model).eval().to(device)
        pruned = copy.deepcopy(model).eval().to(device)
        inputs = tuple(
            x.to(device) if isinstance(x, torch.Tensor) else x for x in _inputs(self.space, self.info.get("batch_size"))
        )
        times, clean = np.zeros((rounds, 2)), np.zeros((rounds, 2))
        with num_threads(int(self.info.get("threads", 1))), torch.inference_mode():
            for r in range(rounds):
                for i in (0, 1) if r % 2 == 0 else (1, 0):
                    net = (self._reference, pruned)[i]
                    got = timing(lambda: net(*inputs), min_run_time=min_run_time, device=device)
                    times[r, i], clean[r, i] = got.ms, got.clean
        ratios = times[:, 1] / times[:, 0]
        return {
            "ms": float(np.median(times[:, 1])),
            "full_ms": float(np.median(times[:, 0])),
            "ratio": float(np.median(ratios)),
            "ratio_min": float(ratios.min()),
            "ratio_max": float(ratios.max()),
            "clean": float(clean.mean()),
        }

    def matches(self, *, device: str | torch.device = "cpu", threads: int = 1, batch_size: int | None = None) -> bool:
        """True if the table was measured on this machine's ``device`` with these threads and batch size."""
        device = torch.device(device)
        return (
            self.info.get("device") == str(device)
            and self.info.get("hardware") == hardware(device)
            and self.info.get("threads") == threads
            and self.info.get("batch_size") == batch_size
        )

    def __repr__(self) -> str:
        return (
            f"LatencyTable({len(self.layers)} ops, full {self.full_ms:.3f} ms, "
            f"device={self.info.get('device')!r}, threads={self.info.get('threads')}, "
            f"batch_size={self.info.get('batch_size')})"
        )


def _signature(space: "PruningSpace", call: _Call, counts: dict[int, int]) -> tuple:
    """The call's tensor shapes at ``counts`` and its other arguments: layers with equal ones share a timing."""
    shapes = tuple(
        (_kept_shape(space, a, counts), a.dtype)
        for a in pytree.tree_leaves((call.args, call.kwargs))
        if isinstance(a, _Arg)
    )
    plain = tuple(repr(x) for x in pytree.tree_leaves((call.args, call.kwargs)) if not isinstance(x, _Arg))
    return call.func, shapes, plain


def _kept_shape(space: "PruningSpace", a: _Arg, counts: dict[int, int]) -> tuple[int, ...]:
    """A tensor's shape at the kept ``counts``: each dim shrinks by its expression's kept fraction.

    Scaling the recorded size (not evaluating the expression) keeps a batch the
    trace did not see: (batch x heads) at batch 64 becomes 64 x kept heads.
    """
    if a.dims is None:
        return a.shape
    return tuple(
        n if not e else n * space.kept_size(e, counts) // space.kept_size(e, {}) for n, e in zip(a.shape, a.dims)
    )


def _runner(call: _Call, shapes: tuple, device: torch.device) -> Any:
    """A no-argument function running the call alone on random tensors of ``shapes``.

    Values are uniform in [0, 1): positive, so a variance, a square root's or a
    logarithm's argument stays finite (NaNs can run at another speed).
    """
    todo = iter(shapes)

    def tensor(_: _Arg) -> torch.Tensor:
        shape, dtype = next(todo)
        if dtype.is_floating_point or dtype.is_complex:
            return torch.rand(shape, dtype=dtype, device=device)
        return torch.zeros(shape, dtype=dtype, device=device)

    args, kwargs = pytree.tree_map_only(_Arg, tensor, (call.args, call.kwargs))
    if call.func.overloadpacket.__name__ in ("convolution", "_convolution"):
        args, kwargs = _conv_groups(call, args, kwargs)
    return lambda: call.func(*args, **kwargs)


def _conv_groups(call: _Call, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """A grouped conv's ``groups`` follows its pruned channels (depthwise: groups == channels)."""
    named = dict(zip((a.name for a in call.func._schema.arguments), args)) | kwargs
    if named["groups"] == 1:
        return args, kwargs
    if named["transposed"]:
        raise ValueError(f"{call.name}: a grouped transposed conv cannot be timed at pruned sizes")
    groups = named["input"].shape[1] // named["weight"].shape[1]
    pos = [a.name for a in call.func._schema.arguments].index("groups")
    if pos < len(args):
        return (*args[:pos], groups, *args[pos + 1 :]), kwargs
    return args, {**kwargs, "groups": groups}


def _time_call(
    space: "PruningSpace", call: _Call, counts: dict[int, int], timer: _Timer, device: torch.device
) -> float:
    key = _signature(space, call, counts)
    return timer(key, lambda: _runner(call, key[1], device))


def _time_grid(
    space: "PruningSpace", call: _Call, points: list[list[int]], timer: _Timer, device: torch.device
) -> np.ndarray:
    """The call's time at every combination of its (one or two) groups' kept counts in ``points``."""
    if len(points) == 1:
        points = [points[0], [0]]
    v = np.empty((len(points[0]), len(points[1])))
    for a, x in enumerate(points[0]):
        for b, y in enumerate(points[1]):
            counts = {space.groups[i].atom: n for i, n in zip(call.groups, (x, y))}
            v[a, b] = _time_call(space, call, counts, timer, device)
    return v


def _time_model(space: "PruningSpace", batch_size: int | None, device: torch.device, min_run_time: float) -> float:
    model = copy.deepcopy(space.model).eval().to(device)
    inputs = tuple(x.to(device) if isinstance(x, torch.Tensor) else x for x in _inputs(space, batch_size))
    with torch.inference_mode():
        return median_ms(lambda: model(*inputs), min_run_time=min_run_time, device=device, blocks=9)


def _distinct_exprs(space: "PruningSpace", call: _Call) -> list[Expr]:
    """The distinct prunable dim expressions of a call's tensor arguments (their product is its work)."""
    group_atoms = {g.atom for g in space.groups}
    seen, out = set(), []
    for leaf in pytree.tree_leaves((call.args, call.kwargs)):
        if isinstance(leaf, _Arg) and leaf.dims is not None:
            for e in leaf.dims:
                key = tuple(space.axes.find(a) for a in e)
                if key not in seen and group_atoms.intersection(space.axes.atoms(e)):
                    seen.add(key)
                    out.append(e)
    return out
