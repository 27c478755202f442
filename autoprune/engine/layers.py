"""Per-layer knowledge the op table cannot see: width attributes and output dims.

Each entry is small and keyed by module type, so supporting a new layer type is
one function. Widths are re-derived from the pruned weights, never guessed.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Callable, Mapping, NamedTuple

from torch import nn

from .axes import Expr

Updater = Callable[[nn.Module], None]


def _conv(m: nn.Module) -> None:
    w = m.weight
    if m.transposed:
        m.in_channels, m.out_channels = w.shape[0], w.shape[1] * m.groups
    else:
        m.in_channels, m.out_channels = w.shape[1] * m.groups, w.shape[0]


def _linear(m: nn.Module) -> None:
    m.out_features, m.in_features = m.weight.shape


def _bilinear(m: nn.Module) -> None:
    m.out_features, m.in1_features, m.in2_features = m.weight.shape


def _norm(m: nn.Module) -> None:
    ref = m.weight if m.weight is not None else getattr(m, "running_mean", None)
    if ref is not None:
        m.num_features = ref.shape[0]


def _layer_norm(m: nn.Module) -> None:  # LayerNorm and RMSNorm
    if m.weight is not None:
        m.normalized_shape = tuple(m.weight.shape)


def _group_norm(m: nn.Module) -> None:
    if m.weight is not None:
        m.num_channels = m.weight.shape[0]


def _embedding(m: nn.Module) -> None:
    m.num_embeddings, m.embedding_dim = m.weight.shape


def _prelu(m: nn.Module) -> None:
    m.num_parameters = m.weight.numel()


def _mha(m: nn.Module) -> None:
    if m._qkv_same_embed_dim:
        m.embed_dim = m.in_proj_weight.shape[1]
        m.kdim = m.vdim = m.embed_dim
    else:
        m.embed_dim = m.q_proj_weight.shape[1]
        m.kdim, m.vdim = m.k_proj_weight.shape[1], m.v_proj_weight.shape[1]
    m.head_dim = m.embed_dim // m.num_heads


def _rnn(m: nn.Module) -> None:
    """nn.RNN / GRU / LSTM: one input and hidden width for all layers; the cached flat weights are re-collected."""
    gates = {"LSTM": 4, "GRU": 3}.get(m.mode, 1)
    m.input_size = m.weight_ih_l0.shape[1]
    m.hidden_size = m.weight_ih_l0.shape[0] // gates
    if m.proj_size > 0:
        m.proj_size = m.weight_hr_l0.shape[0]
    m._init_flat_weights()


def _hf_conv1d(m: nn.Module) -> None:
    """Hugging Face's Conv1D (GPT-2): a Linear with its weight stored (in, out)."""
    m.nx, m.nf = m.weight.shape


class Layer(NamedTuple):
    """What autoprune knows of a layer type beyond its ops."""

    update: Updater  # re-derives its width attributes from its (pruned) weights
    # The int attributes ``update`` re-derives. They are never bound to a traced dim: their values match dims by
    # coincidence too (a square Linear's in_features is its out_features, and the views that flatten a Linear's
    # 3-d input would bind both), which would couple unrelated channels.
    widths: frozenset[str] = frozenset()
    outputs: Mapping[str, int] = MappingProxyType({})  # parameter -> its output-channel dim, if not below


# Keyed by type, or for layers of other libraries by qualified class name (so they need not be imported).
KNOWN: dict[type | str, Layer] = {
    nn.modules.conv._ConvNd: Layer(_conv, frozenset({"in_channels", "out_channels"})),
    nn.Linear: Layer(_linear, frozenset({"in_features", "out_features"})),
    nn.Bilinear: Layer(_bilinear, frozenset({"in1_features", "in2_features", "out_features"})),
    nn.modules.batchnorm._NormBase: Layer(_norm, frozenset({"num_features"})),
    nn.LayerNorm: Layer(_layer_norm),
    nn.GroupNorm: Layer(_group_norm, frozenset({"num_channels"})),
    nn.RMSNorm: Layer(_layer_norm),
    nn.Embedding: Layer(_embedding, frozenset({"num_embeddings", "embedding_dim"})),
    nn.PReLU: Layer(_prelu, frozenset({"num_parameters"})),
    nn.MultiheadAttention: Layer(_mha, frozenset({"embed_dim", "kdim", "vdim"})),
    nn.RNNBase: Layer(_rnn, frozenset({"input_size", "hidden_size", "proj_size"})),
    "transformers.pytorch_utils.Conv1D": Layer(_hf_conv1d, frozenset({"nx", "nf"}), MappingProxyType({"weight": 1})),
}


def known(m: nn.Module) -> Layer | None:
    for cls in type(m).__mro__:
        got = KNOWN.get(cls) or KNOWN.get(f"{cls.__module__}.{cls.__qualname__}")
        if got is not None:
            return got
    return None


def output_dim(m: nn.Module, param: str) -> int | None:
    """The dim of ``m.param`` that indexes the layer's output channels (its "filters")."""
    if isinstance(m, nn.modules.conv._ConvNd) and param == "weight":
        return 1 if m.transposed else 0
    if isinstance(m, (nn.Linear, nn.Bilinear)) and param == "weight":
        return 0
    if isinstance(m, nn.Embedding) and param == "weight":
        return 1
    layer = known(m)
    if layer is not None and param in layer.outputs:
        return layer.outputs[param]
    if isinstance(m, nn.MultiheadAttention) and param in (
        "in_proj_weight",
        "q_proj_weight",
        "k_proj_weight",
        "v_proj_weight",
    ):
        return 0
    return None


def is_norm_scale(m: nn.Module, param: str) -> bool:
    return param == "weight" and isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.RMSNorm))


def constraints(m: nn.Module, name: str, param_dims: dict[str, list[Expr]], tracer) -> None:  # noqa: ANN001
    """Couplings a layer imposes through Python attributes rather than through its ops."""
    if not isinstance(m, nn.MultiheadAttention):
        _fused_qkv_attention(m, name, param_dims, tracer)
        return
    # F.multi_head_attention_forward checks the query width against embed_dim and
    # derives head_dim from it, so the projections' inner width equals the input width.
    pre = f"{name}." if name else ""
    dims = {k[len(pre) :]: v for k, v in param_dims.items() if k.startswith(pre) and "." not in k[len(pre) :]}
    out_w = param_dims.get(f"{pre}out_proj.weight")
    if m._qkv_same_embed_dim and "in_proj_weight" in dims:
        d0, d1 = dims["in_proj_weight"]
        _, inner = tracer.factor(d0, [3, m.in_proj_weight.shape[0] // 3])
        tracer.unify(inner, d1)
        e = d1
    elif "q_proj_weight" in dims:
        e = dims["q_proj_weight"][1]
        for k in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
            if k in dims:
                tracer.unify(dims[k][0], e)
    else:
        return
    if out_w is not None:
        tracer.unify(out_w[0], e)
        tracer.unify(out_w[1], e)


def _fused_qkv_attention(m: nn.Module, name: str, param_dims: dict[str, list[Expr]], tracer) -> None:  # noqa: ANN001
    """Attention blocks with ``qkv = Linear(C, 3C)`` and ``num_heads`` (Swin, timm, many more).

    They reshape the qkv output with ``C // num_heads`` computed from the input
    width, so the heads' inner width must stay equal to the input width.
    """
    qkv, proj = getattr(m, "qkv", None), getattr(m, "proj", None)
    if not isinstance(getattr(m, "num_heads", None), int) or not isinstance(qkv, nn.Linear):
        return
    if qkv.out_features != 3 * qkv.in_features:
        return
    pre = f"{name}." if name else ""
    w = param_dims.get(f"{pre}qkv.weight")
    if w is None:
        return
    _, inner = tracer.factor(w[0], [3, qkv.in_features])
    tracer.unify(inner, w[1])
    pw = param_dims.get(f"{pre}proj.weight")
    if isinstance(proj, nn.Linear) and pw is not None and proj.in_features == qkv.in_features:
        tracer.unify(pw[1], w[1])
