"""The op table: how each aten op maps the channels of its inputs to its outputs.

Every rule receives the tracer, the op, its arguments, its tensor outputs and
the raw output, and states couplings with ``tracer.unify`` / ``tracer.factor``.
A rule may raise :class:`~autoprune.engine.axes.Incompatible`, and an op with no
rule at all is unknown: both freeze every channel the op touches (fail closed).
Rules that correspond to a FLOP-counted op also register its MACs as a product
of dim expressions, exactly as ``torch.utils.flop_counter`` counts them.
"""

from __future__ import annotations

from typing import Any

import torch

from .axes import Expr, Incompatible
from .trace import Rule, Tracer

RULES: dict[str, Rule] = {}
FLOP_OPS: set[str] = set()


def rule(*names: str, flops: bool = False):
    def register(fn: Rule) -> Rule:
        for n in names:
            RULES[n] = fn
            if flops:
                FLOP_OPS.add(n)
        return fn

    return register


def _named(func: Any, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Arguments by their schema names."""
    out = {}
    for i, a in enumerate(func._schema.arguments):
        if i < len(args):
            out[a.name] = args[i]
        elif a.name in kwargs:
            out[a.name] = kwargs[a.name]
        elif a.has_default_value():
            out[a.name] = a.default_value
    return out


def _tensors(x: Any) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for t in x if isinstance(t, torch.Tensor)]
    return []


def _broadcast(t: Tracer, tensors: list[torch.Tensor], shape: tuple[int, ...]) -> list[Expr]:
    """Unify the dims of broadcast operands; return the output's dims."""
    nd = len(shape)
    out: list[Expr] = []
    for k in range(nd, 0, -1):
        size = shape[-k]
        if size == 1:
            out.append(())
            continue
        base: Expr | None = None
        for x in tensors:
            if x.dim() >= k and x.shape[-k] == size:
                e = t.dims(x)[x.dim() - k]
                if base is None:
                    base = e
                else:
                    t.unify(base, e)
        out.append(base if base is not None else t.fresh(size))
    return out


# -- shape-preserving, element-wise -----------------------------------------------
ELEMENTWISE = """
add sub rsub mul div true_divide floor_divide remainder fmod pow neg abs exp exp2 expm1 log log2 log10
log1p sqrt rsqrt reciprocal square sin cos tan tanh sinh cosh asin acos atan atan2 sigmoid logit relu
relu6 hardtanh gelu silu mish hardswish hardsigmoid leaky_relu elu selu celu softplus softshrink
hardshrink threshold clamp clamp_min clamp_max clip erf erfc erfinv sign sgn floor ceil round trunc frac
maximum minimum fmax fmin where masked_fill lerp addcmul addcdiv eq ne lt gt le ge logical_and
logical_or logical_not logical_xor bitwise_and bitwise_or bitwise_not bitwise_xor isnan isinf
isfinite nan_to_num clone contiguous _to_copy to detach alias lift_fresh lift_fresh_copy copy fill
zero bernoulli native_dropout dropout _softmax _log_softmax softmax log_softmax cumsum cumprod
xlogy hypot log_sigmoid_forward empty_like zeros_like ones_like full_like rand_like randn_like
_conj resolve_conj resolve_neg positive heaviside
""".split()


@rule(*ELEMENTWISE)
def elementwise(t: Tracer, func, args, kwargs, outs, out) -> None:
    tensors = [x for x in (*args, *kwargs.values()) if isinstance(x, torch.Tensor)]
    for o in outs:
        t.set(o, _broadcast(t, tensors, tuple(o.shape)))


@rule("_prelu_kernel")
def prelu(t: Tracer, func, args, kwargs, outs, out) -> None:
    x, w = args[0], args[1]
    d = list(t.dims(x))
    if w.numel() > 1:
        t.unify(d[1], t.dims(w)[0])
    t.set(out, d)


# -- constants and value reads: nothing to couple ---------------------------------
CONSTANTS = """
empty empty_strided zeros ones full arange linspace logspace randn rand randint randperm normal
scalar_tensor eye new_empty new_zeros new_ones new_full new_empty_strided
""".split()


# Factories whose values do not depend on their size: a narrower one is the same tensor, cut.
FILLS = frozenset("empty empty_strided zeros ones full randn rand normal new_empty new_zeros new_ones new_full".split())


@rule(*CONSTANTS)
def constant(t: Tracer, func, args, kwargs, outs, out) -> None:
    fill = func.overloadpacket.__name__ in FILLS
    for o in outs:
        t.set(o, t.created(tuple(o.shape)) if fill else [t.fresh(s) for s in o.shape])


@rule("_local_scalar_dense", "is_nonzero", "item", "equal", "allclose", "_assert_async", "_assert_tensor_metadata")
def value_read(t: Tracer, func, args, kwargs, outs, out) -> None:
    t.mark_value_dependent()
    for o in outs:
        t.set(o, [t.fresh(s) for s in o.shape])


# -- reductions ---------------------------------------------------------------------
REDUCTIONS = """
sum mean amax amin prod var std var_mean std_mean logsumexp norm linalg_vector_norm max min argmax argmin
any all count_nonzero nansum nanmean median nanmedian mode aminmax
""".split()


@rule(*REDUCTIONS)
def reduction(t: Tracer, func, args, kwargs, outs, out) -> None:
    a = _named(func, args, kwargs)
    x = args[0]
    d = t.dims(x)
    dim = a.get("dim")
    keep = bool(a.get("keepdim", False))
    if dim is None or dim == [] or dim == ():
        reduced = set(range(x.dim()))
    else:
        dims = [dim] if isinstance(dim, int) else list(dim)
        reduced = {k % max(x.dim(), 1) for k in dims}
    kept = [() if i in reduced else d[i] for i in range(x.dim()) if keep or i not in reduced]
    for o in outs:
        if o.dim() == len(kept):
            t.set(o, kept)
        else:
            t.set(o, [t.fresh(s) for s in o.shape])


# -- pooling, resampling, padding ---------------------------------------------------
def _spatial_rule(k: int) -> Rule:
    def spatial(t: Tracer, func, args, kwargs, outs, out) -> None:
        x = args[0]
        d = t.dims(x)
        for e in d[x.dim() - k :]:
            t.freeze(e)
        lead = d[: x.dim() - k]
        for o in outs:
            if o.dim() != x.dim():
                raise Incompatible
            t.set(o, lead + [t.fresh(s) for s in o.shape[o.dim() - k :]])

    return spatial


for _k in (1, 2, 3):
    for _n in (
        f"max_pool{_k}d",
        f"max_pool{_k}d_with_indices",
        f"avg_pool{_k}d",
        f"adaptive_avg_pool{_k}d",
        f"_adaptive_avg_pool{_k}d",
        f"adaptive_max_pool{_k}d",
        f"lp_pool{_k}d",
        f"fractional_max_pool{_k}d",
        f"reflection_pad{_k}d",
        f"replication_pad{_k}d",
        f"upsample_nearest{_k}d",
        f"_upsample_nearest_exact{_k}d",
        f"upsample_linear{_k}d" if _k == 1 else f"upsample_{'bi' if _k == 2 else 'tri'}linear{_k}d",
        f"_upsample_{'bi' if _k == 2 else 'tri'}linear{_k}d_aa",
        f"upsample_bicubic{_k}d",
        f"_upsample_bicubic{_k}d_aa",
    ):
        RULES[_n] = _spatial_rule(_k)


@rule("grid_sampler_2d", "grid_sampler_3d", "grid_sampler")
def grid_sampler(t: Tracer, func, args, kwargs, outs, out) -> None:
    """Samples every channel at the grid's points: channels pass through, space is resampled."""
    x, grid = args[0], args[1]
    d = t.dims(x)
    for e in (*d[2:], *t.dims(grid)):
        t.freeze(e)
    t.unify(d[0], t.dims(grid)[0])
    t.set(out, [d[0], d[1]] + [t.fresh(s) for s in out.shape[2:]])


@rule("constant_pad_nd")
def constant_pad(t: Tracer, func, args, kwargs, outs, out) -> None:
    x, pad = args[0], list(args[1])
    d = list(t.dims(x))
    for i in range(len(pad) // 2):
        before, after = pad[2 * i], pad[2 * i + 1]
        k = x.dim() - 1 - i
        if before == 0 and after == 0:
            continue
        e = d[k]
        if t.axes.is_frozen(e):
            d[k] = t.fresh(out.shape[k])
        elif before >= 0 and after >= 0:
            # Zero padding is a concatenation with constant blocks.
            parts = [
                p
                for p in (
                    t.axes.new(before, True) if before else None,
                    t.axes.as_axis(e),
                    t.axes.new(after, True) if after else None,
                )
                if p is not None
            ]
            d[k] = (t.axes.make_sum(parts),)
        elif before <= 0 and after <= 0:
            n = x.shape[k]
            bounds = [b for b in (-before, n + after) if 0 < b < n]
            pieces = t.axes.ranges(e, bounds)
            d[k] = pieces[1] if -before > 0 else pieces[0]
        else:
            raise Incompatible
    t.set(out, d)


@rule("pixel_shuffle")
def pixel_shuffle(t: Tracer, func, args, kwargs, outs, out) -> None:
    x, r = args[0], args[1]
    d = t.dims(x)
    c, rh, rw = t.factor(d[-3], [x.shape[-3] // (r * r), r, r])
    t.freeze(rh)
    t.freeze(rw)
    t.set(out, d[:-3] + [c, t.fresh(out.shape[-2]), t.fresh(out.shape[-1])])


@rule("pixel_unshuffle")
def pixel_unshuffle(t: Tracer, func, args, kwargs, outs, out) -> None:
    x, r = args[0], args[1]
    d = t.dims(x)
    t.freeze(d[-1])
    t.freeze(d[-2])
    c = d[-3] + t.fresh(r) + t.fresh(r)
    t.set(out, d[:-3] + [c, t.fresh(out.shape[-2]), t.fresh(out.shape[-1])])


@rule("channel_shuffle", "native_channel_shuffle")
def channel_shuffle(t: Tracer, func, args, kwargs, outs, out) -> None:
    x, g = args[0], args[1]
    d = list(t.dims(x))
    a, b = t.factor(d[1], [g, x.shape[1] // g])
    t.freeze(a)
    d[1] = b + a
    t.set(out, d)


# -- views and indexing ---------------------------------------------------------------
def reshape_dims(t: Tracer, d: list[Expr], in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> list[Expr]:
    """Dims of ``x.view(out_shape)``: blocks of merged / split dims, refined as needed."""
    ins = [(i, s) for i, s in enumerate(in_shape) if s != 1]
    outs = [(j, s) for j, s in enumerate(out_shape) if s != 1]
    result: list[Expr] = [() for _ in out_shape]
    i = j = 0
    while i < len(ins) and j < len(outs):
        bi, bj = [ins[i]], [outs[j]]
        pi, pj = ins[i][1], outs[j][1]
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj:
                if i >= len(ins):
                    raise Incompatible
                bi.append(ins[i])
                pi *= ins[i][1]
                i += 1
            else:
                if j >= len(outs):
                    raise Incompatible
                bj.append(outs[j])
                pj *= outs[j][1]
                j += 1
        merged: Expr = tuple(a for k, _ in bi for a in d[k])
        if len(bj) == 1:
            result[bj[0][0]] = merged
        else:
            for (k, _), e in zip(bj, t.factor(merged, [s for _, s in bj])):
                result[k] = e
    if i != len(ins) or j != len(outs):
        raise Incompatible
    return result


@rule("view", "_unsafe_view", "reshape", "squeeze", "unsqueeze", "flatten", "unflatten", "_reshape_alias", "view_copy")
def view(t: Tracer, func, args, kwargs, outs, out) -> None:
    x = args[0]
    d = reshape_dims(t, t.dims(x), tuple(x.shape), tuple(out.shape))
    t.bind_sizes(d, tuple(out.shape))
    t.set(out, d)


@rule("expand", "expand_copy")
def expand(t: Tracer, func, args, kwargs, outs, out) -> None:
    x = args[0]
    d = t.dims(x)
    off = out.dim() - x.dim()
    res = []
    for i, s in enumerate(out.shape):
        j = i - off
        res.append(d[j] if j >= 0 and x.shape[j] == s else t.fresh(s))
    t.set(out, res)


@rule("repeat")
def repeat(t: Tracer, func, args, kwargs, outs, out) -> None:
    x, reps = args[0], list(args[1])
    d = t.dims(x)
    off = len(reps) - x.dim()
    res = []
    for i, r in enumerate(reps):
        j = i - off
        if j < 0:
            res.append(t.fresh(r))
        else:
            res.append((t.fresh(r) if r > 1 else ()) + d[j])
    t.set(out, res)


@rule("permute", "permute_copy")
def permute(t: Tracer, func, args, kwargs, outs, out) -> None:
    d = t.dims(args[0])
    n = len(d)
    t.set(out, [d[p % n] for p in args[1]])


@rule("transpose", "transpose_copy", "swapaxes", "swapdims")
def transpose(t: Tracer, func, args, kwargs, outs, out) -> None:
    d = list(t.dims(args[0]))
    n = len(d)
    a, b = args[1] % n, args[2] % n
    d[a], d[b] = d[b], d[a]
    t.set(out, d)


@rule("t", "t_copy")
def t_op(t: Tracer, func, args, kwargs, outs, out) -> None:
    t.set(out, list(reversed(t.dims(args[0]))))


@rule("select", "select_copy")
def select(t: Tracer, func, args, kwargs, outs, out) -> None:
    x, dim = args[0], args[1] % args[0].dim()
    d = list(t.dims(x))
    t.freeze(d[dim])
    t.set(out, d[:dim] + d[dim + 1 :])


@rule("slice", "slice_copy")
def slice_op(t: Tracer, func, args, kwargs, outs, out) -> None:
    a = _named(func, args, kwargs)
    x = args[0]
    dim = a.get("dim", 0) % x.dim()
    n = x.shape[dim]
    start, end, step = a.get("start"), a.get("end"), a.get("step", 1)
    start = 0 if start is None else (start + n if start < 0 else start)
    end = n if end is None else (end + n if end < 0 else end)
    start, end = max(0, min(start, n)), max(0, min(end, n))
    d = list(t.dims(x))
    if start == 0 and end == n and step == 1:
        t.set(out, d)
        return
    if step != 1 or end <= start:
        t.freeze(d[dim])
        d[dim] = t.fresh(out.shape[dim])
    else:
        bounds = [b for b in (start, end) if 0 < b < n]
        pieces = t.axes.ranges(d[dim], bounds)
        d[dim] = pieces[1] if start > 0 else pieces[0]
    t.set(out, d)


@rule("split", "split_with_sizes", "unsafe_split", "unsafe_split_with_sizes", "split_copy")
def split(t: Tracer, func, args, kwargs, outs, out) -> None:
    a = _named(func, args, kwargs)
    x = args[0]
    dim = a.get("dim", 0) % x.dim()
    sizes = [o.shape[dim] for o in outs]
    bounds, pos = [], 0
    for s in sizes[:-1]:
        pos += s
        bounds.append(pos)
    d = t.dims(x)
    pieces = t.axes.ranges(d[dim], [b for b in bounds if 0 < b < x.shape[dim]])
    if len(pieces) != len(outs):
        raise Incompatible
    if func.overloadpacket.__name__ in ("split", "unsafe_split") and len(outs) > 1:
        # chunk / split(x, size): the pruned model recomputes equal piece sizes.
        if sizes[-1] != sizes[0]:
            raise Incompatible
        for p in pieces[1:]:
            t.unify(pieces[0], p)
    else:
        for p, s in zip(pieces, sizes):
            t.bind_sizes([p], (s,))
    for o, p in zip(outs, pieces):
        t.set(o, d[:dim] + [p] + d[dim + 1 :])


@rule("glu")
def glu(t: Tracer, func, args, kwargs, outs, out) -> None:
    """a * sigmoid(b) for the two halves along ``dim``: like chunk(2) and a product, the halves prune as one."""
    a = _named(func, args, kwargs)
    x = a["self"]
    dim = a.get("dim", -1) % x.dim()
    d = t.dims(x)
    pieces = t.axes.ranges(d[dim], [x.shape[dim] // 2])
    if len(pieces) != 2:
        raise Incompatible
    t.unify(pieces[0], pieces[1])
    t.set(out, d[:dim] + [pieces[0]] + d[dim + 1 :])


@rule("unbind", "unbind_copy")
def unbind(t: Tracer, func, args, kwargs, outs, out) -> None:
    a = _named(func, args, kwargs)
    x = args[0]
    dim = a.get("dim", 0) % x.dim()
    d = list(t.dims(x))
    t.freeze(d[dim])
    for o in outs:
        t.set(o, d[:dim] + d[dim + 1 :])


@rule("_pack_padded_sequence")
def pack_padded(t: Tracer, func, args, kwargs, outs, out) -> None:
    """Padded (T, B, *F) or (B, T, *F) to packed (sum of lengths, *F): time and batch merge, features carry on."""
    x = args[0]
    data, batch_sizes = out
    t.set(data, [t.fresh(data.shape[0]), *t.dims(x)[2:]])
    t.set(batch_sizes, [t.fresh(s) for s in batch_sizes.shape])


@rule("_pad_packed_sequence")
def pad_packed(t: Tracer, func, args, kwargs, outs, out) -> None:
    """Packed (N, *F) back to padded (T, B, *F) or (B, T, *F)."""
    data = args[0]
    padded, lengths = out
    t.set(padded, [t.fresh(padded.shape[0]), t.fresh(padded.shape[1]), *t.dims(data)[1:]])
    t.set(lengths, [t.fresh(s) for s in lengths.shape])


@rule("cat", "concat", "concatenate")
def cat(t: Tracer, func, args, kwargs, outs, out) -> None:
    a = _named(func, args, kwargs)
    xs = [x for x in a["tensors"] if not (x.dim() == 1 and x.shape[0] == 0)]
    dim = a.get("dim", 0) % out.dim()
    first = t.dims(xs[0])
    for x in xs[1:]:
        for k, e in enumerate(t.dims(x)):
            if k != dim:
                t.unify(first[k], e)
    parts = [t.axes.as_axis(t.dims(x)[dim]) for x in xs if x.shape[dim] > 0]
    res = list(first)
    res[dim] = (t.axes.make_sum(parts),) if out.shape[dim] > 1 else ()
    t.set(out, res)


@rule("stack")
def stack(t: Tracer, func, args, kwargs, outs, out) -> None:
    a = _named(func, args, kwargs)
    xs = list(a["tensors"])
    dim = a.get("dim", 0) % out.dim()
    first = t.dims(xs[0])
    for x in xs[1:]:
        for e0, e in zip(first, t.dims(x)):
            t.unify(e0, e)
    t.set(out, first[:dim] + [t.fresh(len(xs))] + first[dim:])


@rule("index")
def index(t: Tracer, func, args, kwargs, outs, out) -> None:
    x, indices = args[0], list(args[1])
    d = list(t.dims(x))
    indexed = [i for i, ix in enumerate(indices) if ix is not None]
    for i in indexed:
        t.freeze(d[i])
        for e in t.dims(indices[i]):
            t.freeze(e)
        if indices[i].dtype == torch.bool and indices[i].dim() > 1:
            raise Incompatible
    rest = [d[i] for i in range(x.dim()) if i not in indexed]
    n_new = out.dim() - len(rest)
    adjacent = indexed == list(range(indexed[0], indexed[-1] + 1)) if indexed else True
    pos = indexed[0] if adjacent and indexed else 0
    res = rest[:pos] + [t.fresh(s) for s in out.shape[pos : pos + n_new]] + rest[pos:]
    t.set(out, res)


@rule("index_select")
def index_select(t: Tracer, func, args, kwargs, outs, out) -> None:
    x, dim = args[0], args[1] % args[0].dim()
    d = list(t.dims(x))
    t.freeze(d[dim])
    d[dim] = t.fresh(out.shape[dim])
    t.set(out, d)


@rule("roll", "flip", "tril", "triu")
def along_dims(t: Tracer, func, args, kwargs, outs, out) -> None:
    a = _named(func, args, kwargs)
    x = args[0]
    d = t.dims(x)
    if func.overloadpacket.__name__.rstrip("_") in ("tril", "triu"):
        dims = [x.dim() - 2, x.dim() - 1]
    else:
        dims = a.get("dims") or list(range(x.dim()))
        dims = [dims] if isinstance(dims, int) else list(dims)
    for k in dims:
        t.freeze(d[k % x.dim()])
    t.set(out, list(d))


@rule("sort", "topk", "argsort", "kthvalue", "msort")
def sort(t: Tracer, func, args, kwargs, outs, out) -> None:
    a = _named(func, args, kwargs)
    x = args[0]
    dim = a.get("dim", -1) % x.dim()
    d = list(t.dims(x))
    t.freeze(d[dim])
    for o in outs:
        if o.dim() == x.dim():
            t.set(o, d[:dim] + [t.fresh(o.shape[dim])] + d[dim + 1 :])


@rule("as_strided")
def as_strided(t: Tracer, func, args, kwargs, outs, out) -> None:
    """Only the re-striding of a tensor with a single non-trivial dim (a memory-format fix-up) is known."""
    x = args[0]
    if tuple(out.shape) != tuple(args[1]) or sum(s > 1 for s in out.shape) > 1 or out is not x and out.shape != x.shape:
        raise Incompatible
    t.set(out, list(t.dims(x)))


@rule("_weight_norm_interface")
def weight_norm(t: Tracer, func, args, kwargs, outs, out) -> None:
    """w = g * v / ||v|| (norm over every dim but ``dim``): w has v's dims, g and the norms v's ``dim``."""
    v, g = args[0], args[1]
    dim = (args[2] if len(args) > 2 else kwargs.get("dim", 0)) % v.dim()
    vd = t.dims(v)
    _unify_into(t, g, vd, tuple(v.shape))
    t.set(outs[0], list(vd))
    for o in outs[1:]:
        if o.dim() == v.dim():
            t.set(o, [vd[k] if k == dim else () for k in range(v.dim())])


@rule("embedding")
def embedding(t: Tracer, func, args, kwargs, outs, out) -> None:
    w, idx = args[0], args[1]
    wd = t.dims(w)
    t.freeze(wd[0])
    t.set(out, list(t.dims(idx)) + [wd[1]])


# -- contractions --------------------------------------------------------------------------
@rule("mm", flops=True)
def mm(t: Tracer, func, args, kwargs, outs, out) -> None:
    a, b = t.dims(args[0]), t.dims(args[1])
    t.unify(a[1], b[0])
    t.set(out, [a[0], b[1]])
    t.add_macs([a[0], a[1], b[1]])


@rule("addmm", flops=True)
def addmm(t: Tracer, func, args, kwargs, outs, out) -> None:
    bias, x, w = args[0], args[1], args[2]
    a, b = t.dims(x), t.dims(w)
    t.unify(a[1], b[0])
    res = [a[0], b[1]]
    _unify_into(t, bias, res, tuple(out.shape))
    t.set(out, res)
    t.add_macs([a[0], a[1], b[1]])


@rule("bmm", flops=True)
def bmm(t: Tracer, func, args, kwargs, outs, out) -> None:
    a, b = t.dims(args[0]), t.dims(args[1])
    t.unify(a[0], b[0])
    t.unify(a[2], b[1])
    t.set(out, [a[0], a[1], b[2]])
    t.add_macs([a[0], a[1], a[2], b[2]])


@rule("baddbmm", flops=True)
def baddbmm(t: Tracer, func, args, kwargs, outs, out) -> None:
    c, x, y = args[0], args[1], args[2]
    a, b = t.dims(x), t.dims(y)
    t.unify(a[0], b[0])
    t.unify(a[2], b[1])
    res = [a[0], a[1], b[2]]
    _unify_into(t, c, res, tuple(out.shape))
    t.set(out, res)
    t.add_macs([a[0], a[1], a[2], b[2]])


@rule("mv", "addmv", "dot", "vdot")
def vector_products(t: Tracer, func, args, kwargs, outs, out) -> None:
    name = func.overloadpacket.__name__
    if name == "addmv":
        c, m, v = args[0], args[1], args[2]
    elif name == "mv":
        c, m, v = None, args[0], args[1]
    else:
        a, b = t.dims(args[0]), t.dims(args[1])
        t.unify(a[0], b[0])
        t.set(out, [])
        return
    md, vd = t.dims(m), t.dims(v)
    t.unify(md[1], vd[0])
    res = [md[0]]
    if c is not None:
        _unify_into(t, c, res, tuple(out.shape))
    t.set(out, res)


def _unify_into(t: Tracer, x: torch.Tensor, res: list[Expr], shape: tuple[int, ...]) -> None:
    """Broadcast ``x`` against an output whose dims are ``res``."""
    if not isinstance(x, torch.Tensor):
        return
    d = t.dims(x)
    for k in range(1, x.dim() + 1):
        if x.shape[-k] == shape[-k] and shape[-k] > 1:
            t.unify(d[-k], res[-k])


@rule("convolution", "_convolution", flops=True)
def convolution(t: Tracer, func, args, kwargs, outs, out) -> None:
    a = _named(func, args, kwargs)
    x, w, b = a["input"], a["weight"], a.get("bias")
    transposed, groups = bool(a["transposed"]), int(a["groups"])
    k = w.dim() - 2
    xd, wd = t.dims(x), t.dims(w)
    ch = x.dim() - k - 1
    for e in wd[2:]:
        t.freeze(e)
    cin = xd[ch]
    if not transposed:
        if groups > 1:
            g_in, cin_g = t.factor(cin, [groups, x.shape[ch] // groups])
            g_out, _ = t.factor(wd[0], [groups, w.shape[0] // groups])
            t.unify(g_in, g_out)
        else:
            g_in, cin_g = (), cin
        t.unify(cin_g, wd[1])
        oc = wd[0]
    else:
        t.unify(cin, wd[0])
        g_in = t.factor(wd[0], [groups, w.shape[0] // groups])[0] if groups > 1 else ()
        oc = g_in + wd[1]
    if isinstance(b, torch.Tensor):
        t.unify(t.dims(b)[0], oc)
    od = list(xd[:ch]) + [oc] + [t.fresh(s) for s in out.shape[ch + 1 :]]
    t.set(out, od)
    t.bind(t.owner(w), "groups", [g_in])
    conv_dims = xd if transposed else od
    t.add_macs([xd[0], *conv_dims[2:], *wd])


@rule(
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    flops=True,
)
def sdpa(t: Tracer, func, args, kwargs, outs, out) -> None:
    a = _named(func, args, kwargs)
    q, k, v = a["query"], a["key"], a["value"]
    if q.dim() != 4 or q.shape[1] != k.shape[1]:
        raise Incompatible
    qd, kd, vd = t.dims(q), t.dims(k), t.dims(v)
    for i in (0, 1):
        t.unify(qd[i], kd[i])
        t.unify(qd[i], vd[i])
    t.unify(qd[3], kd[3])
    t.unify(kd[2], vd[2])
    for name in ("attn_mask", "attn_bias"):
        m = a.get(name)
        if isinstance(m, torch.Tensor):
            _unify_into(t, m, [qd[0], qd[1], qd[2], kd[2]], (q.shape[0], q.shape[1], q.shape[2], k.shape[2]))
    res = [qd[0], qd[1], qd[2], vd[3]]
    t.set(outs[0], res)
    for o in outs[1:]:
        if o.dim() == 3 and tuple(o.shape) == tuple(q.shape[:3]):
            t.set(o, res[:3])
    t.add_macs([qd[0], qd[1], qd[2], qd[3], kd[2]])
    t.add_macs([qd[0], qd[1], qd[2], kd[2], vd[3]])


# -- normalisation --------------------------------------------------------------------------
@rule(
    "native_batch_norm",
    "_native_batch_norm_legit",
    "_native_batch_norm_legit_no_training",
    "_native_batch_norm_legit_functional",
    "batch_norm",
    "cudnn_batch_norm",
    "miopen_batch_norm",
)
def batch_norm(t: Tracer, func, args, kwargs, outs, out) -> None:
    x = args[0]
    d = list(t.dims(x))
    c = d[1] if x.dim() > 1 else d[0]
    size = x.shape[1] if x.dim() > 1 else x.shape[0]
    weight = args[1] if len(args) > 1 and isinstance(args[1], torch.Tensor) else None
    for p in (*args[1:], *kwargs.values()):
        if isinstance(p, torch.Tensor) and p.dim() == 1 and p.shape[0] == size:
            t.unify(t.dims(p)[0], c)
    t.set(outs[0], d)
    for o in outs[1:]:
        if o.dim() == 1 and o.shape[0] == size:
            t.set(o, [c])
    if weight is None:
        t.bind(t.owner(None), "num_features", [c])


@rule("native_layer_norm", "_fused_rms_norm")
def layer_norm(t: Tracer, func, args, kwargs, outs, out) -> None:
    a = _named(func, args, kwargs)
    x = args[0]
    shape = list(a["normalized_shape"])
    n = len(shape)
    d = list(t.dims(x))
    norm = d[x.dim() - n :]
    w = a.get("weight")
    for p in (w, a.get("bias")):
        if isinstance(p, torch.Tensor):
            for e, pe in zip(norm, t.dims(p)):
                t.unify(e, pe)
    t.set(outs[0], d)
    for o in outs[1:]:
        if o.dim() == x.dim():
            t.set(o, d[: x.dim() - n] + [() for _ in range(n)])
    owner = t.owner(w if isinstance(w, torch.Tensor) else None)
    if owner is not None and hasattr(t.modules.get(owner), "normalized_shape"):
        t.bind(owner, "normalized_shape", norm, as_tuple=True)
    else:
        t.bind_sizes(norm, tuple(x.shape[x.dim() - n :]))


@rule("native_group_norm")
def group_norm(t: Tracer, func, args, kwargs, outs, out) -> None:
    a = _named(func, args, kwargs)
    x, groups = a["input"], int(a["group"])
    d = list(t.dims(x))
    g, _ = t.factor(d[1], [groups, x.shape[1] // groups]) if groups > 1 else ((), d[1])
    for p in (a.get("weight"), a.get("bias")):
        if isinstance(p, torch.Tensor):
            t.unify(t.dims(p)[0], d[1])
    t.set(outs[0], d)
    for o in outs[1:]:
        if o.dim() == 2:
            t.set(o, [d[0], g])
    w = a.get("weight")
    t.bind(t.owner(w if isinstance(w, torch.Tensor) else None), "num_groups", [g])
