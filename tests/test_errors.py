"""Bad input gets a clear error that names what is wrong, before any expensive work."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import autoprune as ap
from autoprune import zoo


@pytest.fixture(scope="module")
def space():
    return ap.PruningSpace(zoo.resnet20(), torch.randn(1, 3, 32, 32))


def test_model_failing_on_example_inputs_shows_the_original_exception():
    with pytest.raises(ValueError, match=r"fails on example_inputs \(tensor\(1, 5, 32, 32\)\).*RuntimeError") as info:
        ap.PruningSpace(zoo.resnet20(), torch.randn(1, 5, 32, 32))
    assert isinstance(info.value.__cause__, RuntimeError)


def test_unknown_group_lists_close_matches(space):
    with pytest.raises(KeyError, match=r"unknown group 'layer1.0.conv'.*'layer1.0.conv1'"):
        space.apply({"layer1.0.conv": 0.5})
    with pytest.raises(KeyError, match="unknown group"):
        space.macs({"nope": 0.1})


@pytest.mark.parametrize("value", [1.0, -0.1, 1.5, float("nan")])
def test_sparsity_outside_unit_interval(space, value):
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
        space.apply({space.groups[0].name: value})


def test_exclude_naming_nothing():
    with pytest.raises(ValueError, match=r"exclude names 'layer9'.*neither a module nor a channel group"):
        ap.PruningSpace(zoo.resnet20(), torch.randn(1, 3, 32, 32), exclude=["layer9"])


def test_exclude_by_module_and_by_group():
    x = torch.randn(1, 3, 32, 32)
    full = ap.PruningSpace(zoo.resnet20(), x)
    by_module = ap.PruningSpace(zoo.resnet20(), x, exclude=["layer1.0.conv1"])
    assert "layer1.0.conv1" in {g.name for g in full.groups}
    assert "layer1.0.conv1" not in {g.name for g in by_module.groups}
    # Excluding a layer of the residual stream freezes the whole stream.
    stream = [g for g in full.groups if "layer1.1.conv2" in g.layers][0]
    by_stream_layer = ap.PruningSpace(zoo.resnet20(), x, exclude="layer1.1.conv2")
    assert stream.name not in {g.name for g in by_stream_layer.groups}
    by_group = ap.PruningSpace(zoo.resnet20(), x, exclude=[stream.name])
    assert {g.name for g in by_group.groups} == {g.name for g in full.groups} - {stream.name}


def test_bad_constructor_arguments():
    with pytest.raises(TypeError, match="nn.Module"):
        ap.PruningSpace(lambda x: x, torch.randn(1))
    with pytest.raises(ValueError, match="round_to"):
        ap.PruningSpace(nn.Linear(2, 2), torch.randn(1, 2), round_to=0)


def test_unknown_op_freezes_its_channels_with_one_warning():
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)
            self.b = nn.Conv2d(8, 8, 1)
            self.c = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            x = self.a(x)
            x = torch.fft.fft(x, dim=1).real  # mixes channels in a way the engine does not model
            return self.c(torch.relu(self.b(x)))

    with pytest.warns(UserWarning, match=r"does not know how aten\.\w+ maps channels.*layers: a"):
        space = ap.PruningSpace(Odd(), torch.randn(1, 3, 4, 4))
    assert [g.name for g in space.groups] == ["b"]
