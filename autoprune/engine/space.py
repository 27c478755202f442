"""PruningSpace: analyse a model once, then apply and cost any number of plans."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import warnings
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..utils import did_you_mean, fingerprint
from . import layers
from .axes import Expr, Incompatible, poly_add, poly_mul
from .criteria import get_criterion
from .groups import ChannelGroup, ChannelSite, Member
from .ops import FLOP_OPS, RULES
from .trace import OpRecord, ShapeRecorder, Tracer

Plan = Mapping[str, float]


class PruningSpace:
    """Every way a model's channels can be removed, found by tracing it once.

    Args:
        model: the trained network. It is never modified.
        example_inputs: a tensor or a tuple of positional inputs it runs on.
        exclude: module names (their parameters keep every channel) or group names.
        round_to: kept channel counts are rounded to multiples of this.
        verify: build one slightly pruned model and check every op's shape
            against the prediction; groups that break it are frozen (slower analysis).
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        *,
        exclude: Iterable[str] = (),
        round_to: int = 1,
        verify: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(round_to, int) or round_to < 1:
            raise ValueError(f"round_to must be a positive integer, got {round_to!r}")
        self.model = model
        self.example_inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
        self.round_to = round_to
        self._score_cache: dict[str, dict[int, torch.Tensor]] = {}
        exclude = [exclude] if isinstance(exclude, str) else list(exclude)

        with _preserved(model):
            model.eval()
            tracer = Tracer(model, RULES, FLOP_OPS)
            tracer.guess_created = verify
            try:
                tracer.run(self.example_inputs, record=True)
            except Exception as err:  # noqa: BLE001 - re-raised below with the model's own error
                try:
                    with torch.no_grad():
                        model(*self.example_inputs)
                except Exception as own:  # noqa: BLE001
                    raise ValueError(
                        f"the model fails on example_inputs ({_describe(self.example_inputs)}): "
                        f"{type(own).__name__}: {own}. Pass inputs the model accepts, as a tensor or a tuple."
                    ) from own
                raise RuntimeError(f"autoprune failed while tracing the model (please report): {err}") from err
            self.train_mode_traced = False
            if self._unvisited(tracer):
                model.train()
                try:
                    tracer.run(_doubled(self.example_inputs), record=False)
                    self.train_mode_traced = True
                except Exception as err:  # noqa: BLE001
                    warnings.warn(f"autoprune: train-mode trace failed ({err}); only eval-mode branches were analysed")
        self._tracer = tracer
        self.axes = tracer.axes
        self._param_dims = tracer.param_dims
        self._ops = tracer.ops
        self._bindings = tracer.bindings
        for name, m in model.named_modules():
            if name in tracer.visited or not name:
                try:
                    layers.constraints(m, name, tracer.param_dims, tracer)
                except Incompatible:
                    self._freeze_module(name)
        unvisited = self._unvisited(tracer)
        if unvisited:
            warnings.warn(
                "autoprune: these modules with parameters never ran on example_inputs, so channels "
                f"feeding them cannot be analysed and they are left unpruned: {', '.join(unvisited[:8])}"
                + (" ..." if len(unvisited) > 8 else "")
            )
        module_excludes, group_excludes = self._split_exclude(exclude)
        for name in module_excludes:
            self._freeze_module(name)
        self._build_groups()
        for name in group_excludes:
            self.axes.freeze((self._by_name[name].atom,))
        self._build_groups()
        self._warn_unknown()
        if verify:
            self._verify()
            self._build_groups()
        self._attach_rows()
        self._build_costs()

    # -- analysis ------------------------------------------------------------------------
    def _unvisited(self, tracer: Tracer) -> list[str]:
        used = set(tracer.param_dims)
        out = []
        for name, m in self.model.named_modules():
            own = [f"{name}.{k}" if name else k for k, p in m.named_parameters(recurse=False)]
            if own and name not in tracer.visited and not used.intersection(own):
                out.append(name)
        return out

    def _freeze_module(self, name: str) -> None:
        prefix = f"{name}."
        for p, dims in self._param_dims.items():
            if p.startswith(prefix) or not name:
                for e in dims:
                    self.axes.freeze(e)

    def _split_exclude(self, exclude: list[str]) -> tuple[list[str], list[str]]:
        modules = dict(self.model.named_modules())
        self._build_groups()
        mods, groups = [], []
        for name in exclude:
            if name in modules:
                mods.append(name)
            elif name in self._by_name:
                groups.append(name)
            else:
                hint = did_you_mean(name, [*modules, *self._by_name])
                raise ValueError(f"exclude names {name!r}, which is neither a module nor a channel group.{hint}")
        return mods, groups

    def _build_groups(self) -> None:
        modules = dict(self.model.named_modules())
        members: dict[int, list[Member]] = {}
        whole: dict[int, bool] = {}
        for pname, dims in self._param_dims.items():
            mod, _, attr = pname.rpartition(".")
            m = modules.get(mod)
            out_dim = layers.output_dim(m, attr) if m is not None else None
            for k, e in enumerate(dims):
                atoms = self.axes.atoms(e)
                for a in atoms:
                    n = self.axes._nodes[a]
                    if n.frozen or n.size < 2:
                        continue
                    role = (
                        "output"
                        if k == out_dim
                        else "norm"
                        if m is not None and layers.is_norm_scale(m, attr)
                        else "other"
                    )
                    lst = members.setdefault(a, [])
                    if all(x.param != pname or x.dim != k for x in lst):
                        lst.append(Member(pname, k, mod, role))
                    whole.setdefault(a, len(atoms) == 1 and len(e) == 1)
        names_by_expr = {}
        for b in self._bindings.values():
            if len(b.exprs) == 1 and len(b.exprs[0]) == 1:
                names_by_expr.setdefault(self.axes.find(b.exprs[0][0]), f"{b.module}.{b.attr}" if b.module else b.attr)
        groups: list[ChannelGroup] = []
        used: set[str] = set()
        for a, mem in members.items():
            producers = [x for x in mem if x.role == "output"] or mem
            first = producers[0]
            # A parametrized weight (weight norm) lives in "conv.parametrizations.weight": name the conv.
            name = first.module.partition(".parametrizations.")[0] or first.param
            e = self._param_dims[first.param][first.dim]
            if not (len(e) == 1 and self.axes.find(e[0]) == a):
                # Part of a wider dim (heads, groups, a concatenated range).
                name = names_by_expr.get(a) or name + _suffix(self.axes, e, a)
            base, k = name, 2
            while name in used:
                name, k = f"{base}~{k}", k + 1
            used.add(name)
            layer_names = list(dict.fromkeys(x.module for x in mem))
            groups.append(
                ChannelGroup(name, self.axes._nodes[a].size, layer_names, mem, atom=a, _locate=self._locate_sites)
            )
        self.groups: list[ChannelGroup] = groups
        self._by_name = {g.name: g for g in groups}
        self._index = {g.name: i for i, g in enumerate(groups)}

    def _attach_rows(self) -> None:
        """Give every member that is part of a wider dim the indices its group's channels own (see
        :attr:`Member.rows`); once, on the final groups."""
        coords: dict[Expr, dict[int, torch.Tensor]] = {}
        for g in self.groups:
            members = []
            for m in g.members:
                e = self._param_dims[m.param][m.dim]
                if not (len(e) == 1 and self.axes.find(e[0]) == g.atom):
                    key = tuple(self.axes.find(a) for a in e)
                    if key not in coords:
                        coords[key] = self.axes.coords(e)
                    c = coords[key][g.atom]
                    inside = torch.nonzero(c >= 0).flatten()
                    m = dataclasses.replace(m, rows=inside[torch.argsort(c[inside], stable=True)])
                members.append(m)
            g.members = members

    def _locate_sites(self, group: ChannelGroup) -> list[ChannelSite]:
        """Every traced output dim that carries ``group``'s channels (see :attr:`ChannelGroup.sites`)."""
        sites = []
        for i, op in enumerate(self._ops):
            for j, dims in enumerate(op.outputs):
                for k, e in enumerate(dims):
                    if group.atom in self.axes.atoms(e):
                        sites.append(ChannelSite(i, op.name, j, k, self.axes.coords(e)[group.atom]))
        return sites

    def _warn_unknown(self) -> None:
        modules = dict(self.model.named_modules())
        atom_layers: dict[int, set[str]] = {}
        for pname, dims in self._param_dims.items():
            for e in dims:
                for a in self.axes.atoms(e):
                    atom_layers.setdefault(a, set()).add(pname.rpartition(".")[0])
        for op, exprs in self._tracer.unknown.items():
            hit: set[str] = set()
            for e in exprs:
                for a in self.axes.atoms(e):
                    hit |= atom_layers.get(a, set())
            if hit:
                shown = sorted(h for h in hit if h in modules)
                warnings.warn(
                    f"autoprune does not know how aten.{op} maps channels; channels flowing through it are "
                    f"frozen (not pruned) in layers: {', '.join(shown[:10])}" + (" ..." if len(shown) > 10 else "")
                )

    def _build_costs(self) -> None:
        var = {g.atom: i for i, g in enumerate(self.groups)}
        macs: dict[tuple[int, ...], int] = {}
        for coef, exprs in self._tracer.macs:
            poly = {(): coef}
            for e in exprs:
                poly = poly_mul(poly, self.axes.polynomial(e, var))
            poly_add(macs, poly)
        params: dict[tuple[int, ...], int] = {}
        seen = set()
        for pname, p in self.model.named_parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            dims = self._param_dims.get(pname)
            if dims is None:
                poly_add(params, {(): p.numel()})
                continue
            poly = {(): 1}
            for e in dims:
                poly = poly_mul(poly, self.axes.polynomial(e, var))
            poly_add(params, poly)
        self._macs_poly = _Compiled(macs, len(self.groups))
        self._params_poly = _Compiled(params, len(self.groups))
        full = np.array([g.channels for g in self.groups], dtype=np.int64)
        self._full = full
        dm, dp = self._macs_poly.gradient(full), self._params_poly.gradient(full)
        for i, g in enumerate(self.groups):
            g.macs_per_channel, g.params_per_channel = int(dm[i]), int(dp[i])

    # -- verification ----------------------------------------------------------------------
    def _verify(self) -> None:
        """Prune one channel of every group at once, re-run, and compare every op's shape.

        A group whose pruning breaks the model (a width hard-coded in its Python
        code, say) is found by bisection and frozen; the rest are verified again.
        """
        active = [g.atom for g in self.groups]
        culprits: list[int] = []
        while active:
            fail = self._probe(active)
            if fail is None:
                break
            blamed = set(fail)
            cand = [a for a in active if a in blamed] or list(active)
            while len(cand) > 1:
                half = cand[: len(cand) // 2]
                cand = half if self._probe(half) is not None else cand[len(cand) // 2 :]
            culprit = cand[0]
            self.axes.freeze((culprit,))
            active.remove(culprit)
            culprits.append(culprit)
        if culprits:
            names = [g.name for g in self.groups if g.atom in culprits]
            warnings.warn(
                "autoprune: pruning these groups breaks the model's own code (a width hard-coded "
                f"in forward?), so they are frozen: {', '.join(names[:10])}" + (" ..." if len(names) > 10 else "")
            )

    def _probe(self, atoms: list[int]) -> list[int] | None:
        """None if the model pruned by one channel in each of ``atoms`` behaves as predicted."""
        counts = {a: self.axes._nodes[a].size - 1 for a in atoms}
        keep = {a: torch.arange(n) for a, n in counts.items()}
        rec = ShapeRecorder()
        try:
            pruned = self._build(keep)
            pruned.eval()
            rec.run(pruned, self.example_inputs)
            if self.train_mode_traced:
                pruned.train()
                with torch.no_grad():
                    pruned(*_doubled(self.example_inputs))
        except Exception:  # noqa: BLE001 - any failure means "not as predicted"
            # Blame the groups in the op that failed, if any; else bisect.
            if len(rec.ops) < len(self._ops):
                failed = self._ops[len(rec.ops)]
                return [a for dims in failed.outputs for e in dims for a in self.axes.atoms(e) if a in counts]
            return []
        if len(rec.ops) < len(self._ops) and not any(o.value_dependent for o in self._ops):
            return []
        for op, (name, shapes) in zip(self._ops, rec.ops):
            if op.name != name or len(shapes) != len(op.shapes):
                return []
            for dims, shape in zip(op.outputs, shapes):
                want = tuple(self._kept_size(e, counts) for e in dims)
                if want != shape:
                    bad = [a for e, w, s in zip(dims, want, shape) if w != s for a in self.axes.atoms(e)]
                    return bad
            if op.value_dependent:
                break
        return None

    def _kept_size(self, e: Expr, counts: dict[int, int]) -> int:
        size = 1
        for a in e:
            size *= self._axis_count(self.axes.find(a), counts)
        return size

    def _axis_count(self, r: int, counts: dict[int, int]) -> int:
        n = self.axes._nodes[r]
        if n.kind == 0:
            return counts.get(r, n.size)
        vals = [self._axis_count(self.axes.find(c), counts) for c in n.children]
        return math.prod(vals) if n.kind == 1 else sum(vals)

    # -- the analysis, read-only: what the latency table and the criteria build on -------------
    @property
    def ops(self) -> Sequence[OpRecord]:
        """The traced forward pass, op by op (identity ops left out): each op's aten name, the module that ran
        it, and the dim expressions and shapes of its tensor outputs."""
        return self._ops

    @property
    def param_dims(self) -> Mapping[str, list[Expr]]:
        """The dim expressions of every parameter and buffer the forward pass used, by name."""
        return self._param_dims

    @property
    def input_dims(self) -> list[list[Expr] | None]:
        """The dim expressions of each example input (None for an input that is not a tensor)."""
        dims = self._tracer._dims
        return [dims.get(id(x)) if isinstance(x, torch.Tensor) else None for x in self.example_inputs]

    def kept_size(self, e: Expr, counts: Mapping[int, int]) -> int:
        """The size of a dim expression when each group ``g`` in ``counts`` (keyed by ``g.atom``) keeps that many
        channels (the others all of theirs)."""
        return self._kept_size(e, counts)

    def over(self, state: Mapping[str, torch.Tensor]) -> "PruningSpace":
        """A space on this architecture over other (full-size) weights of it, e.g. a trained copy's
        ``state_dict()``: what a method that trains or carries weights builds its networks from."""
        model = copy.deepcopy(self.model)
        model.load_state_dict(state)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return PruningSpace(model, self.example_inputs, round_to=self.round_to, verify=False)

    def fingerprint(self) -> str:
        """Identifies the model's architecture and its channel groups: a resumed search or a cached latency table
        must belong to the same space."""
        h = hashlib.sha256("".join(f"{g.name}:{g.channels};" for g in self.groups).encode())
        h.update(fingerprint(self.model).encode())
        return h.hexdigest()[:16]

    # -- plans -------------------------------------------------------------------------------
    def kept_counts(self, plan: Plan) -> np.ndarray:
        """Channels each group keeps under ``plan``, in the order of :attr:`groups` (the array form of
        :meth:`kept_channels`, for code that costs many plans)."""
        if not isinstance(plan, Mapping):
            raise TypeError(f"a plan maps group names to sparsities, got {type(plan).__name__}")
        index = self._index
        if not index.keys() >= plan.keys():
            name = next(n for n in plan if n not in index)
            hint = did_you_mean(name, index)
            raise KeyError(f"plan names unknown group {name!r}.{hint} See space.groups for the names.")
        s = np.fromiter((plan.get(n, 0.0) for n in index), dtype=np.float64, count=len(index))
        if not np.all((s >= 0) & (s < 1)):
            bad = [(n, v) for n, v in plan.items() if not 0 <= v < 1]
            raise ValueError(
                f"sparsity must be in [0, 1) (the fraction of channels removed); got {bad[0][1]!r} for {bad[0][0]!r}"
            )
        full = self._full
        r = self.round_to
        keep = np.floor(full * (1.0 - s) / r + 0.5).astype(np.int64) * r
        keep = np.clip(keep, np.minimum(r, full), full)
        keep[s == 0] = full[s == 0]
        return keep

    def plan_keeping(self, counts: Sequence[int]) -> dict[str, float]:
        """The plan under which each group keeps exactly ``counts`` channels (in the order of :attr:`groups`): the
        inverse of :meth:`kept_counts` for counts the rounding allows."""
        if len(counts) != len(self.groups):
            raise ValueError(f"counts has {len(counts)} entries; the space has {len(self.groups)} groups")
        return {g.name: 1.0 - int(k) / g.channels for g, k in zip(self.groups, counts)}

    def kept_channels(self, plan: Plan) -> dict[str, int]:
        """Channels each group keeps under ``plan`` (after rounding to ``round_to``)."""
        return {g.name: int(k) for g, k in zip(self.groups, self.kept_counts(plan))}

    def macs(self, plan: Plan) -> int:
        """MACs of the pruned model on ``example_inputs`` — analytic, no model built."""
        return self._macs_poly(self.kept_counts(plan))

    def params(self, plan: Plan) -> int:
        """Parameter count of the pruned model — analytic, no model built."""
        return self._params_poly(self.kept_counts(plan))

    def apply(
        self, plan: Plan, criterion: Any = "l1", *, calibration: Any = None, reconstruct: Any = None
    ) -> nn.Module:
        """A new model with the channels ``plan`` asks for physically removed.

        Each group keeps its highest-scoring channels under ``criterion`` (a name
        from :data:`autoprune.engine.criteria.CRITERIA`, a criterion object, or a
        precomputed ``{group name: scores}`` mapping). Data-driven criteria take
        ``calibration``: an iterable of batches (``inputs`` or ``(inputs, targets)``).
        ``reconstruct``: batches to refit, by least squares, every layer that lost
        input channels (see :meth:`reconstruct`).
        """
        keep = self.keep_indices(plan, criterion, calibration=calibration)
        model = self._build({self._by_name[name].atom: idx for name, idx in keep.items()})  # valid by construction
        if reconstruct is not None:
            self.reconstruct(model, keep, reconstruct)
        return model

    def reconstruct(self, pruned: nn.Module, keep: Mapping[str, Any], calibration: Any, **options: Any) -> dict:
        """Refit, in place, the layers of ``pruned`` (built with :meth:`build` from ``keep``) that lost input
        channels: least squares of the original layer outputs on the pruned network's inputs, layer after layer
        (He, Zhang & Sun, ICCV 2017). ``options``: ``positions`` sampled per image (10), ``ridge`` (1e-5),
        ``seed``. Returns ``{layer: LayerFit}`` (relative output error before and after, on the samples)."""
        from .reconstruct import reconstruct

        return reconstruct(self.model, pruned, self.parameter_indices(keep), calibration, **options)

    def keep_indices(self, plan: Plan, criterion: Any = "l1", *, calibration: Any = None) -> dict[str, torch.Tensor]:
        """For each group ``plan`` prunes: the sorted indices of the channels it keeps, by group name.

        :meth:`build` turns them into the model; :meth:`apply` is the two in one.
        """
        counts = self.kept_counts(plan)
        pruned = [(g, int(k)) for g, k in zip(self.groups, counts) if k < g.channels]
        keep: dict[str, torch.Tensor] = {}
        if pruned:
            scores = self.scores(criterion, calibration, [g for g, _ in pruned])
            for g, k in pruned:
                top = torch.topk(scores[g.name], k, sorted=False).indices
                keep[g.name] = torch.sort(top).values
        return keep

    def _atoms(self, keep: Mapping[str, Any]) -> dict[int, torch.Tensor]:
        """``keep`` (by group name) keyed by the groups' axes, checked."""
        out = {}
        for name, idx in keep.items():
            g = self._by_name.get(name)
            if g is None:
                raise KeyError(f"keep names unknown group {name!r}.{did_you_mean(name, self._by_name)}")
            idx = torch.sort(torch.as_tensor(idx, dtype=torch.long).flatten()).values
            if (
                not 0 < idx.numel() <= g.channels
                or idx[0] < 0
                or idx[-1] >= g.channels
                or idx.unique().numel() < len(idx)
            ):
                raise ValueError(
                    f"group {name!r} keeps {idx.tolist()[:8]}...: give 1 to {g.channels} distinct channel indices "
                    f"in [0, {g.channels})"
                )
            out[g.atom] = idx
        return out

    def parameter_indices(self, keep: Mapping[str, Any]) -> dict[str, dict[int, torch.Tensor]]:
        """For every parameter and buffer that shrinks when each group keeps ``keep[name]``: {dim: kept indices}."""
        return self._parameter_indices(self._atoms(keep))

    def _parameter_indices(self, keep: dict[int, torch.Tensor]) -> dict[str, dict[int, torch.Tensor]]:
        cache: dict[int, torch.Tensor] = {}
        out: dict[str, dict[int, torch.Tensor]] = {}
        for pname, dims in self._param_dims.items():
            for k, e in enumerate(dims):
                if any(a in keep for a in self.axes.atoms(e)):
                    idx = self.axes.kept_index(e, keep, cache)
                    if idx.numel() != self.axes.expr_size(e):
                        out.setdefault(pname, {})[k] = idx
        return out

    def scores(
        self, criterion: Any = "l1", calibration: Any = None, groups: Sequence[ChannelGroup] | None = None
    ) -> dict[str, torch.Tensor]:
        """Per-channel importance of each group (higher is kept first)."""
        groups = list(self.groups if groups is None else groups)
        if isinstance(criterion, Mapping):
            missing = [g.name for g in groups if g.name not in criterion]
            if missing:
                raise KeyError(f"precomputed scores lack groups: {missing[:5]}")
            return {g.name: torch.as_tensor(criterion[g.name], dtype=torch.float64) for g in groups}
        crit = get_criterion(criterion)
        cache = None if crit.needs_data else self._score_cache.setdefault(crit.cache_key, {})
        if cache is not None and all(g.atom in cache for g in groups):
            return {g.name: cache[g.atom] for g in groups}
        if crit.needs_data and calibration is None:
            raise ValueError(f"criterion {crit.name!r} needs calibration batches: apply(..., calibration=loader)")
        got = crit.scores(groups, self.model, calibration)
        if cache is not None:
            cache.update({g.atom: got[g.name] for g in groups})
        return got

    def scatter(self, keep: Mapping[str, Any], pruned: nn.Module) -> dict[str, torch.Tensor]:
        """A full-size state dict of this space's model holding ``pruned``'s tensors (a network built from
        ``keep``, e.g. after training) at the channels it kept; the removed channels keep this model's values.
        ``space.over(state).build(keep)`` gives ``pruned``'s weights back."""
        indices = self.parameter_indices(keep)
        state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        for name, value in pruned.state_dict().items():
            dims = indices.get(name)
            if not dims:
                state[name] = value.detach().clone()
                continue
            grids = torch.meshgrid(
                *[dims.get(d, torch.arange(state[name].shape[d])) for d in range(value.dim())], indexing="ij"
            )
            state[name][grids] = value.detach().to(state[name].dtype)
        return state

    # -- building ----------------------------------------------------------------------------
    def build(self, keep: Mapping[str, Any]) -> nn.Module:
        """A new model in which each group named in ``keep`` keeps exactly those channel indices (the others keep
        all of theirs): what :meth:`keep_indices` returns, or channels chosen any other way. The original model is
        untouched."""
        return self._build(self._atoms(keep))

    def _build(self, keep: dict[int, torch.Tensor]) -> nn.Module:
        model = shrink(self.model, self._parameter_indices(keep))
        modules = dict(model.named_modules())
        counts = {a: int(v.numel()) for a, v in keep.items()}
        for b in self._bindings.values():
            m = modules.get(b.module)
            if m is not None:
                sizes = [self._kept_size(e, counts) for e in b.exprs]
                setattr(m, b.attr, tuple(sizes) if b.as_tuple else sizes[0])
        update_widths(model)
        return model


def shrink(model: nn.Module, indices: Mapping[str, Mapping[int, torch.Tensor]]) -> nn.Module:
    """A copy of ``model`` whose named parameters / buffers keep only ``indices`` along each dim."""
    memo: dict[int, Any] = {}
    with torch.no_grad():
        tensors = dict(model.named_parameters(remove_duplicate=False))
        tensors.update(dict(model.named_buffers(remove_duplicate=False)))
        for name, t in tensors.items():
            if id(t) in memo:
                continue
            new = t
            for dim, idx in indices.get(name, {}).items():
                new = new.index_select(int(dim), torch.as_tensor(idx, dtype=torch.long))
            new = t.clone() if new is t else new
            if isinstance(t, nn.Parameter):
                new = nn.Parameter(new, requires_grad=t.requires_grad)
            memo[id(t)] = new
    return _copy_modules(model, memo)


_SHARED = (int, float, bool, str, bytes, type(None), torch.dtype, torch.device)


def _copy_modules(module: nn.Module, memo: dict[int, Any]) -> nn.Module:
    """Deep-copy a module tree, with parameters and buffers taken from ``memo``.

    Like ``copy.deepcopy(module, memo)``, but immutable attributes are shared
    instead of being walked (several times faster on deep networks).
    """
    hit = memo.get(id(module))
    if hit is not None:
        return hit
    new = module.__class__.__new__(module.__class__)
    memo[id(module)] = new
    state = {}
    for k, v in module.__dict__.items():
        if k == "_modules":
            state[k] = {n: None if m is None else _copy_modules(m, memo) for n, m in v.items()}
        elif k in ("_parameters", "_buffers"):
            state[k] = {
                n: None if t is None else memo[id(t)] if id(t) in memo else copy.deepcopy(t, memo) for n, t in v.items()
            }
        elif isinstance(v, _SHARED) or (isinstance(v, tuple) and all(isinstance(x, _SHARED) for x in v)):
            state[k] = v
        elif isinstance(v, (dict, set, list)) and not v:
            state[k] = type(v)()  # the many empty hook dicts of every module
        elif _is_tensor_cache(v):
            state[k] = type(v)()  # stale once pruned: the copy rebuilds it
        else:
            state[k] = copy.deepcopy(v, memo)
    new.__dict__.update(state)
    return new


def update_widths(model: nn.Module) -> None:
    """Re-derive each known layer's width attributes from its (pruned) weights."""
    for m in model.modules():
        layer = layers.known(m)
        if layer is not None:
            layer.update(m)


class _Compiled:
    """A polynomial in the groups' kept counts, evaluated with numpy in a few microseconds."""

    def __init__(self, poly: dict[tuple[int, ...], int], n_vars: int) -> None:
        terms = [(k, v) for k, v in poly.items() if v]
        width = max((len(k) for k, _ in terms), default=0)
        self.idx = np.full((len(terms), max(width, 1)), n_vars, dtype=np.int64)
        for i, (k, _) in enumerate(terms):
            self.idx[i, : len(k)] = k
        self.coef = np.array([v for _, v in terms], dtype=np.int64)
        self.n = n_vars

    def __call__(self, counts: np.ndarray) -> int:
        full = np.append(counts, 1)
        return int((full[self.idx].prod(axis=1) * self.coef).sum())

    def gradient(self, counts: np.ndarray) -> np.ndarray:
        out = np.zeros(self.n, dtype=np.int64)
        full = np.append(counts, 1)
        for i in range(self.n):
            mask = (self.idx == i).any(axis=1)
            if not mask.any():
                continue
            minus = full.copy()
            minus[i] -= 1
            rows = self.idx[mask]
            out[i] = int(((full[rows].prod(axis=1) - minus[rows].prod(axis=1)) * self.coef[mask]).sum())
        return out


def _suffix(axes: Any, e: Expr, atom: int) -> str:
    """Where ``atom`` sits inside a dim: a factor position (heads), or its channel range(s)."""
    pos = [axes.find(x) for x in axes.leaves(e)]
    if atom in pos:
        return f"#{pos.index(atom)}"
    c = axes.coords(e)[atom]
    inside = c >= 0
    starts = inside & ~torch.cat([torch.tensor([False]), inside[:-1] & (c[1:] == c[:-1] + 1)])
    first = int(torch.nonzero(starts)[0])
    last = first + 1
    while last < c.numel() and inside[last] and not starts[last]:
        last += 1
    runs = int(starts.sum())
    return f"[{first}:{last}]" + (f"+{runs - 1}" if runs > 1 else "")


def _doubled(inputs: tuple) -> tuple:
    """The inputs as a batch of two (train-mode BatchNorm refuses a single value per channel)."""
    return tuple(torch.cat([x, x]) if isinstance(x, torch.Tensor) and x.dim() > 0 else x for x in inputs)


def _describe(inputs: tuple) -> str:
    return ", ".join(f"tensor{tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__ for x in inputs)


def _is_tensor_cache(v: Any) -> bool:
    """A dict of tensors in a module's plain attributes: what it cached from its weights (timm's LeViT)."""
    return isinstance(v, dict) and bool(v) and all(isinstance(x, torch.Tensor) for x in v.values())


class _preserved:
    """Restore training flags, buffers and parameters' grads after analysis runs the model.

    Tensor caches are emptied meanwhile, so that the trace sees how the model
    computes them from its weights rather than a stored constant.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> None:
        self.flags = [(m, m.training) for m in self.model.modules()]
        self.buffers = [(b, b.detach().clone()) for b in self.model.buffers()]
        self.caches = []
        for m in self.model.modules():
            for k, v in vars(m).items():
                if k not in ("_parameters", "_buffers", "_modules") and _is_tensor_cache(v):
                    self.caches.append((v, dict(v)))
                    v.clear()

    def __exit__(self, *exc: Any) -> None:
        for cache, saved in self.caches:
            cache.clear()
            cache.update(saved)
        for m, flag in self.flags:
            m.training = flag
        with torch.no_grad():
            for b, saved in self.buffers:
                if b.shape == saved.shape:
                    b.copy_(saved)
