"""The engine on Hugging Face transformers built from small configs (random weights, nothing downloaded)."""

from __future__ import annotations

import warnings

import pytest
import torch
import transformers as hf
from helpers import check_contract, random_plan
from torch import nn

import autoprune as ap

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=100)
CASES = {
    "gpt2": (hf.GPT2Config, hf.GPT2LMHeadModel, dict(n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=32)),
    "bert": (hf.BertConfig, hf.BertForSequenceClassification, SMALL),
    "llama_gqa": (hf.LlamaConfig, hf.LlamaForCausalLM, {**SMALL, "num_key_value_heads": 2}),
    "t5": (hf.T5Config, hf.T5ForConditionalGeneration, dict(d_model=32, d_ff=64, num_layers=2, num_heads=4, d_kv=8)),
}


class Logits(nn.Module):
    """The model as a user hands it over: token ids in, logits out (no KV cache)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.m = model

    def forward(self, ids):
        extra = {"decoder_input_ids": ids} if isinstance(self.m, hf.T5ForConditionalGeneration) else {}
        if "use_cache" in self.m.forward.__code__.co_varnames:
            extra["use_cache"] = False
        return self.m(input_ids=ids, **extra).logits


def _build(name: str) -> tuple[nn.Module, torch.Tensor]:
    config_cls, model_cls, kwargs = CASES[name]
    config = config_cls(**{"vocab_size": 100, **kwargs})
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    return Logits(model_cls(config)).eval(), torch.randint(0, 100, (2, 7))


@pytest.mark.parametrize("name", sorted(CASES))
def test_transformers_model(name):
    torch.set_num_threads(1)
    net, x = _build(name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        space = ap.PruningSpace(net, x)
    bad = [str(w.message) for w in caught if "autoprune" in str(w.message) and "frozen:" not in str(w.message)]
    assert not bad, bad  # no unknown op, no unvisited layer (a group frozen by verification is allowed)
    names = [g.name for g in space.groups]
    layers = 2
    assert sum(".mlp." in n or "DenseReluDense" in n or "intermediate" in n for n in names) >= layers
    assert any(len(g.layers) > 4 * layers for g in space.groups), "the residual stream is not prunable"
    if name != "llama_gqa":
        assert sum(n.endswith(("num_heads", "num_attention_heads", "n_heads")) for n in names) >= layers, names
    plans = [{g.name: 0.5 for g in space.groups}, random_plan(space, seed=len(name))]
    check_contract(net, x, plans=plans, train_batch=(x,), space=space)


def test_gpt2_loses_exactly_the_head_the_scores_rank_last():
    """A head whose output projection is zero contributes nothing: removing exactly it changes nothing."""
    net, x = _build("gpt2")
    attn = net.m.transformer.h[1].attn
    with torch.no_grad():
        attn.c_proj.weight[8:16] = 0  # head 1 of 4 (head_dim 8); Conv1D's weight is (in, out)
    space = ap.PruningSpace(net, x)
    heads = "m.transformer.h.1.attn.num_heads"
    scores = {g.name: torch.ones(g.channels, dtype=torch.float64) for g in space.groups}
    scores[heads][1] = 0
    pruned = space.apply({heads: 0.25}, criterion=scores)
    kept = pruned.m.transformer.h[1].attn
    assert kept.num_heads == 3 and kept.c_attn.weight.shape == (32, 72) and kept.c_proj.weight.shape == (24, 32)
    torch.testing.assert_close(pruned(x), net(x), rtol=1e-5, atol=1e-5)
    assert space.macs({heads: 0.25}) == ap.count_macs(pruned, x)
