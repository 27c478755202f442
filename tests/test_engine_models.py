"""The engine on hand-written models that exercise one coupling each, and on the zoo."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from helpers import check_contract
from torch import nn

import autoprune as ap
from autoprune import zoo

torch.manual_seed(0)


def _bn_init(model: nn.Module) -> nn.Module:
    """Give BN layers non-trivial statistics so masked-vs-removed mistakes show."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return model


class SharedLayer(nn.Module):
    """One conv used twice: its channels couple its input and output."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.shared = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = F.relu(self.shared(x))
        x = F.relu(self.shared(x))
        return self.head(x.mean((2, 3)))


class ChunkCat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 12, 1)
        self.d = nn.Conv2d(20, 6, 1)

    def forward(self, x):
        x = self.a(x)
        x1, x2 = x.chunk(2, dim=1)
        y = torch.cat([self.b(x1), self.c(x2)], dim=1)
        z = torch.cat([y[:, :8], y[:, 8:]], dim=1)
        return self.d(F.relu(z))


class SEBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 24, 3, padding=1)
        self.bn = nn.BatchNorm2d(24)
        self.fc1 = nn.Conv2d(24, 6, 1)
        self.fc2 = nn.Conv2d(6, 24, 1)
        self.out = nn.Conv2d(24, 4, 1)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return self.out(x * s)


class ControlFlow(nn.Module):
    """Python control flow that torch.fx.symbolic_trace cannot follow."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.block = nn.Conv2d(16, 16, 3, padding=1)
        self.wide = nn.Conv2d(16, 32, 1)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        x = F.relu(self.conv(x))
        for _ in range(int(x.shape[-1] // 8)):
            x = F.relu(self.block(x)) + x
        if x.mean() > -1e9:  # data-dependent branch
            x = x * 2
        else:
            x = self.wide(x)
        return self.fc(x.amax((2, 3)))


class FlattenLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc1 = nn.Linear(8 * 7 * 7, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.conv(x))), 4)
        x = torch.flatten(x, 1)
        return self.fc2(F.relu(self.fc1(x)))


class GroupedConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 32, 1)
        self.g = nn.Conv2d(32, 64, 3, padding=1, groups=4)
        self.bn = nn.BatchNorm2d(64)
        self.dw = nn.Conv2d(64, 64, 3, padding=1, groups=64)
        self.c = nn.Conv2d(64, 8, 1)

    def forward(self, x):
        return self.c(self.dw(F.relu(self.bn(self.g(F.relu(self.a(x)))))))


class AllLayerTypes(nn.Module):
    """Conv1d/3d, ConvTranspose, LayerNorm/GroupNorm/InstanceNorm, PReLU, Embedding, attention."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 32)
        self.conv1d = nn.Conv1d(32, 24, 3, padding=1)
        self.gn = nn.GroupNorm(4, 24)
        self.prelu = nn.PReLU(24)
        self.ln = nn.LayerNorm(24)
        self.attn = nn.MultiheadAttention(24, 4, batch_first=True)
        self.up = nn.ConvTranspose1d(24, 16, 4, stride=2, padding=1)
        self.inorm = nn.InstanceNorm1d(16, affine=True)
        self.conv3d = nn.Conv3d(1, 8, 3, padding=1)
        self.bn3d = nn.BatchNorm3d(8)
        self.head = nn.Linear(16 + 8, 7)

    def forward(self, tokens, volume):
        x = self.emb(tokens).transpose(1, 2)  # (B, 32, L)
        x = self.prelu(self.gn(self.conv1d(x)))
        y = self.ln(x.transpose(1, 2))
        y, _ = self.attn(y, y, y)
        x = x + y.transpose(1, 2)
        x = self.inorm(self.up(x)).mean(-1)
        v = F.relu(self.bn3d(self.conv3d(volume))).mean((2, 3, 4))
        return self.head(torch.cat([x, v], dim=1))


class ShuffleAndPad(nn.Module):
    """Channel shuffle (view-transpose-view), pixel shuffle, and option-A zero-padded shortcuts."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 1)
        self.b = nn.Conv2d(16, 16, 3, padding=1, groups=2)
        self.up = nn.Conv2d(16, 32, 1)
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.wide = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.head = nn.Conv2d(32, 5, 1)

    def forward(self, x):
        x = self.a(x)
        b, c, h, w = x.shape
        x = x.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
        x = F.relu(self.b(x))
        x = F.pixel_shuffle(self.up(x), 2)  # (B, 8, 2H, 2W)
        x = self.down(x)
        shortcut = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 8, 8))
        return self.head(F.relu(self.wide(x)) + shortcut)


class UNet(nn.Module):
    """Encoder-decoder: a strided conv down, a ConvTranspose2d up, the skip concatenated before the decoder."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.dec = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        e = self.enc(x)
        return self.head(self.dec(torch.cat([e, self.up(self.down(e))], dim=1)))


class GatedConv1d(nn.Module):
    """Speech-style: Conv1d, GroupNorm, a GLU halving the channels, a residual over the gated features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(4, 16, 5, padding=2)
        self.gn = nn.GroupNorm(4, 16)
        self.conv2 = nn.Conv1d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        h = F.glu(self.gn(self.conv1(x)), dim=1)
        h = h + F.relu(self.conv2(h))
        return self.fc(h.mean(-1))


class EinsumAttention(nn.Module):
    """Self-attention written by hand: fused qkv, heads by reshape, einsum products, residual and LayerNorm."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Linear(5, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4)

    def forward(self, x):
        x = self.embed(x)
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attn = torch.einsum("bhnd,bhmd->bhnm", q, k).mul(q.shape[-1] ** -0.5).softmax(-1)
        o = torch.einsum("bhnm,bhmd->bhnd", attn, v).transpose(1, 2).reshape(b, n, -1)
        return self.fc(self.norm(x + self.proj(o)).mean(1))


class Transformer(nn.Module):
    """nn.TransformerEncoder (its eval-mode fast path is one fused op) with a linear stem and head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(6, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # enable_nested_tensor is off with norm_first=False... fine here
            self.encoder = nn.TransformerEncoder(layer, 2)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.encoder(self.stem(x)).mean(1))


class Residual3d(nn.Module):
    """Video-style Conv3d blocks with BatchNorm3d and identity shortcuts."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv3d(3, 8, 3, padding=1), nn.BatchNorm3d(8), nn.ReLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv3d(8, 12, (1, 3, 3), padding=(0, 1, 1)),
                nn.BatchNorm3d(12),
                nn.ReLU(),
                nn.Conv3d(12, 8, (3, 1, 1), padding=(1, 0, 0)),
                nn.BatchNorm3d(8),
            )
            for _ in range(2)
        )
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = F.relu(x + block(x))
        return self.fc(x.mean((2, 3, 4)))


class RelativePositions(nn.Module):
    """Relative-position terms from torch.arange over the sequence (as MViT's attention computes them)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 12)
        self.fc2 = nn.Linear(12, 3)
        self.rel = nn.Parameter(torch.randn(13))

    def forward(self, x):
        n = x.shape[1]
        dist = torch.arange(n)[:, None] - torch.arange(n)[None, :] + (n - 1)
        bias = self.rel[dist.long()].mean(-1)  # (n,)
        return self.fc2(F.relu(self.fc1(x))) + bias[None, :, None]


class WeightNormed(nn.Module):
    """Both weight-norm flavours: a parametrization and the older forward pre-hook."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.utils.parametrizations.weight_norm(nn.Conv2d(3, 8, 3))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self.b = nn.utils.weight_norm(nn.Conv2d(8, 6, 1))
        self.c = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.c(F.relu(self.b(F.relu(self.a(x)))))


class LstmClassifier(nn.Module):
    """Token ids -> 2-layer bidirectional LSTM -> the last layer's final states of both directions."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(30, 10)
        self.rnn = nn.LSTM(10, 12, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(24, 3)

    def forward(self, x):
        _, (h, _) = self.rnn(self.emb(x))
        return self.head(torch.cat([h[-2], h[-1]], 1))


class PackedGru(nn.Module):
    """Variable-length sequences: pack_padded_sequence -> GRU -> pad_packed_sequence (time-major)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 10)
        self.rnn = nn.GRU(10, 14)
        self.head = nn.Linear(14, 3)

    def forward(self, x, lengths):
        packed = nn.utils.rnn.pack_padded_sequence(torch.relu(self.inp(x)), lengths, enforce_sorted=False)
        y, _ = nn.utils.rnn.pad_packed_sequence(self.rnn(packed)[0])
        return self.head(y.sum(0) / lengths[:, None])


class HandWrittenRnn(nn.Module):
    """A recurrent loop written by hand, its state created from an attribute: torch.zeros(B, self.hidden)."""

    def __init__(self, hard_coded: bool = False) -> None:
        super().__init__()
        self.hidden, self.hard_coded = 12, hard_coded
        self.inp, self.rec, self.out = nn.Linear(5, 12), nn.Linear(12, 12), nn.Linear(12, 3)

    def forward(self, x):
        h = torch.zeros(x.shape[0], 12 if self.hard_coded else self.hidden)
        for t in range(x.shape[1]):
            h = torch.tanh(self.inp(x[:, t]) + self.rec(h))
        return self.out(h)


class CachedScale(nn.Module):
    """A tensor cached from the weights in a plain dict on first use (timm's LeViT attention_bias_cache)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 10), nn.Linear(10, 3)
        self.scale = nn.Parameter(torch.rand(10) + 0.5)
        self.cache: dict[str, torch.Tensor] = {}

    def forward(self, x):
        if str(x.device) not in self.cache:
            self.cache[str(x.device)] = self.scale * 2
        return self.fc2(torch.relu(self.fc1(x)) * self.cache[str(x.device)])


CASES = {
    "shared_layer": (SharedLayer, (torch.randn(2, 3, 16, 16),)),
    "chunk_cat": (ChunkCat, (torch.randn(2, 3, 8, 8),)),
    "se_block": (SEBlock, (torch.randn(2, 3, 8, 8),)),
    "control_flow": (ControlFlow, (torch.randn(2, 3, 16, 16),)),
    "flatten_linear": (FlattenLinear, (torch.randn(2, 1, 28, 28),)),
    "grouped_conv": (GroupedConv, (torch.randn(2, 3, 8, 8),)),
    "all_layer_types": (AllLayerTypes, (torch.randint(0, 50, (2, 12)), torch.randn(2, 1, 6, 6, 6))),
    "shuffle_and_pad": (ShuffleAndPad, (torch.randn(2, 3, 8, 8),)),
    "weight_norm": (WeightNormed, (torch.randn(2, 3, 8, 8),)),
    "unet": (UNet, (torch.randn(2, 3, 16, 16),)),
    "gated_conv1d": (GatedConv1d, (torch.randn(2, 4, 20),)),
    "einsum_attention": (EinsumAttention, (torch.randn(2, 7, 5),)),
    "transformer": (Transformer, (torch.randn(2, 7, 6),)),
    "residual_3d": (Residual3d, (torch.randn(2, 3, 4, 8, 8),)),
    "relative_positions": (RelativePositions, (torch.randn(2, 7, 6),)),
    "lstm": (LstmClassifier, (torch.randint(0, 30, (2, 6)),)),
    "packed_gru": (PackedGru, (torch.randn(7, 3, 4), torch.tensor([7, 3, 5]))),
    "hand_written_rnn": (HandWrittenRnn, (torch.randn(2, 6, 5),)),
    "cached_scale": (CachedScale, (torch.randn(2, 6),)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_tricky_model_contract(case):
    cls, inputs = CASES[case]
    torch.manual_seed(1)
    model = _bn_init(cls())
    space = check_contract(model, inputs, train_batch=inputs)
    assert space.groups, "nothing prunable found"


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU, nn.RNN])
def test_an_rnn_loses_exactly_the_hidden_units_the_criterion_drops(cell):
    """Units whose weights are all zero never change the output; pruning removes exactly them, in every gate,
    layer and direction, so the pruned RNN computes what the original does."""
    torch.manual_seed(0)
    rnn = cell(6, 16, num_layers=2, bidirectional=True, batch_first=True)
    model = nn.Sequential()
    model.rnn, model.head = rnn, nn.Linear(32, 3)

    class Last(nn.Module):
        def __init__(self, m: nn.Sequential) -> None:
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m.head(self.m.rnn(x)[0][:, -1])

    net = Last(model).eval()
    dead = torch.tensor([1, 4, 5, 11])
    gates = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}[cell]
    rows = (torch.arange(gates)[:, None] * 16 + dead).flatten()
    with torch.no_grad():
        for name, p in rnn.named_parameters():
            p[rows] = 0  # the dead units' inputs and biases, in every gate
            if name.startswith("weight_hh"):
                p[:, dead] = 0  # their outputs into the recurrence...
            elif name.startswith("weight_ih") and "_l0" not in name:
                p[:, torch.cat([dead, dead + 16])] = 0  # ...into both directions of the next layer...
        model.head.weight[:, torch.cat([dead, dead + 16])] = 0  # ...and into the head
    x = torch.randn(3, 5, 6)
    space = ap.PruningSpace(net, x)
    (group,) = [g for g in space.groups if g.channels == 16]
    pruned = space.apply({group.name: 0.25}, criterion="l1")
    assert pruned.m.rnn.hidden_size == 12 and pruned.m.head.in_features == 24
    assert torch.allclose(pruned(x), net(x), atol=1e-5)
    assert space.macs({group.name: 0.25}) == ap.count_macs(pruned, x)


def test_a_state_sized_by_an_attribute_prunes_and_a_hard_coded_one_freezes():
    space = ap.PruningSpace(HandWrittenRnn(), torch.randn(2, 6, 5))
    (group,) = space.groups
    assert group.channels == 12 and set(group.layers) == {"inp", "rec", "out"}
    assert space.apply({group.name: 0.5}).hidden == 6  # the attribute follows
    with pytest.warns(UserWarning, match="frozen"):
        space = ap.PruningSpace(HandWrittenRnn(hard_coded=True), torch.randn(2, 6, 5))
    assert space.groups == []


def test_shared_layer_couples_its_input_and_output():
    space = ap.PruningSpace(SharedLayer(), torch.randn(1, 3, 8, 8))
    (group,) = [g for g in space.groups if "shared" in g.layers]
    assert set(group.layers) >= {"stem", "shared", "head"}


def test_chunk_halves_stay_equal_and_a_hard_coded_slice_freezes_its_group():
    with pytest.warns(UserWarning, match="frozen: b"):
        space = ap.PruningSpace(ChunkCat(), torch.randn(1, 3, 8, 8))
    by_layer = {g.layers[0]: g for g in space.groups}
    # chunk(2) recomputes equal halves, so both halves of a's output are one group of 8.
    assert by_layer["a"].channels == 8 and set(by_layer["a"].layers) == {"a", "b", "c"}
    # y[:, :8] hard-codes b's width: pruning b would shift the slice, so b is frozen; c is not.
    assert by_layer["c"].channels == 12
    assert not any(g.layers[0] == "b" for g in space.groups)


def test_se_block_couples_excitation_with_features():
    space = ap.PruningSpace(SEBlock(), torch.randn(1, 3, 8, 8))
    conv = [g for g in space.groups if g.name == "conv"][0]
    assert {"conv", "bn", "fc1", "fc2", "out"} <= set(conv.layers)
    assert any(g.name == "fc1" and g.channels == 6 for g in space.groups)


def test_grouped_conv_keeps_group_structure():
    space = ap.PruningSpace(GroupedConv(), torch.randn(1, 3, 8, 8))
    plan = {g.name: 0.5 for g in space.groups}
    pruned = space.apply(plan)
    assert pruned.g.groups * pruned.g.weight.shape[1] == pruned.g.in_channels
    assert pruned.dw.groups == pruned.dw.in_channels == pruned.dw.out_channels
    assert pruned.g.out_channels % pruned.g.groups == 0


def test_flatten_linear_prunes_whole_spatial_blocks():
    model = FlattenLinear()
    space = ap.PruningSpace(model, torch.randn(1, 1, 28, 28))
    conv = [g for g in space.groups if g.name == "conv"][0]
    pruned = space.apply({conv.name: 0.5})
    assert pruned.conv.out_channels == 4
    assert pruned.fc1.in_features == 4 * 7 * 7


def test_attention_heads_and_head_dims_are_groups():
    model = nn.Sequential(nn.Linear(8, 24), nn.TransformerEncoderLayer(24, 4, 48, batch_first=True), nn.Linear(24, 3))
    x = torch.randn(2, 5, 8)
    space = check_contract(model, x)
    names = [g.name for g in space.groups]
    assert "1.self_attn.num_heads" in names and "1.self_attn.head_dim" in names
    pruned = space.apply({"1.self_attn.num_heads": 0.5})
    assert pruned[1].self_attn.num_heads == 2 and pruned[1].self_attn.embed_dim == 12


@pytest.mark.parametrize("name", ["resnet20", "resnet56", "vgg16_bn", "mobilenet_v2"])
@pytest.mark.parametrize("in_channels,size", [(1, 28), (3, 32)])
def test_zoo_model_contract(name, in_channels, size):
    torch.manual_seed(0)
    model = _bn_init(zoo.create_model(name, in_channels=in_channels))
    x = torch.randn(2, in_channels, size, size)
    check_contract(model, x, train_batch=(x,))


def test_round_to_rounds_kept_channels():
    model = zoo.resnet20()
    space = ap.PruningSpace(model, torch.randn(1, 3, 32, 32), round_to=8)
    plan = {g.name: 0.3 for g in space.groups}
    kept = space.kept_channels(plan)
    assert all(k % 8 == 0 for k in kept.values())
    pruned = space.apply(plan)
    assert pruned.layer1[0].conv1.out_channels % 8 == 0
    assert space.macs(plan) == ap.count_macs(pruned, torch.randn(1, 3, 32, 32))


def test_every_group_keeps_at_least_one_channel():
    space = ap.PruningSpace(SEBlock(), torch.randn(1, 3, 8, 8))
    plan = {g.name: 0.999 for g in space.groups}
    assert all(k >= 1 for k in space.kept_channels(plan).values())
    pruned = space.apply(plan)
    assert pruned(torch.randn(1, 3, 8, 8)).shape == (1, 4, 8, 8)


def test_the_pruned_copy_shares_no_mutable_state_and_keeps_hooks():
    model = SEBlock()
    model.history = []
    model.table = torch.zeros(3)
    calls = []
    model.conv.register_forward_hook(lambda m, i, o: calls.append(o.shape[1]))
    space = ap.PruningSpace(model, torch.randn(1, 3, 8, 8))
    pruned = space.apply({"conv": 0.5})
    pruned.history.append(1)
    pruned.table += 1
    assert model.history == [] and torch.equal(model.table, torch.zeros(3))
    calls.clear()
    pruned(torch.randn(1, 3, 8, 8))
    assert calls == [12]
