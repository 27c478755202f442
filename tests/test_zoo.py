"""Tests for the reference model zoo: shapes, parameter counts, width round trips, errors."""

import pytest
import torch

from autoprune.zoo import MODELS, VGG, MobileNetV2, ResNetCIFAR, create_model, resnet20, resnet56


def parameter_count(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("in_channels,size", [(1, 28), (3, 32)])
def test_registry_models_map_inputs_to_logits(name: str, in_channels: int, size: int) -> None:
    model = create_model(name, num_classes=10, in_channels=in_channels).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, in_channels, size, size))
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ["resnet20", "vgg16_bn", "mobilenet_v2"])
def test_train_mode_forward_and_backward(name: str) -> None:
    model = create_model(name).train()
    logits = model(torch.randn(2, 3, 32, 32))
    logits.sum().backward()
    assert logits.shape == (2, 10)


def test_resnet_parameter_counts() -> None:
    # Regression guards. The familiar 0.27M / 0.85M figures are for option-A
    # (parameter-free) shortcuts; option-B projections add two 1x1 conv + BN
    # pairs (2,752 parameters), e.g. 269,722 -> 272,474 for ResNet-20.
    small = parameter_count(resnet20())
    assert small == 272_474
    assert 260_000 <= small <= 300_000
    large = parameter_count(resnet56())
    assert large == 855_770
    assert 850_000 <= large <= 880_000


def test_resnet_uses_projection_shortcuts_only_where_shapes_change() -> None:
    model = resnet20()
    assert isinstance(model.layer1[0].shortcut, torch.nn.Identity)
    assert isinstance(model.layer2[0].shortcut, torch.nn.Sequential)
    assert isinstance(model.layer3[0].shortcut, torch.nn.Sequential)
    assert all(isinstance(block.shortcut, torch.nn.Identity) for block in model.layer2[1:])


def test_default_widths() -> None:
    assert resnet20().widths() == {
        "stage_widths": [16, 32, 64],
        "block_widths": [16] * 3 + [32] * 3 + [64] * 3,
    }
    assert VGG().widths() == {
        "widths": [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512],
        "hidden": 512,
    }
    widths = MobileNetV2().widths()
    assert widths["stem"] == 32 and widths["last"] == 1280
    assert widths["stage_widths"] == [16, 24, 32, 64, 96, 160, 320]
    assert widths["hidden_widths"][:4] == [32, 96, 144, 144]


def test_resnet_custom_widths_round_trip() -> None:
    widths = {"stage_widths": [8, 12, 20], "block_widths": [3, 5, 7, 9, 11, 13, 15, 17, 19]}
    model = ResNetCIFAR(20, in_channels=1, **widths)
    assert model.widths() == widths
    assert ResNetCIFAR(model.depth, in_channels=1, **model.widths()).widths() == widths
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_vgg_custom_widths_round_trip() -> None:
    widths = {"widths": [4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16], "hidden": 24}
    model = VGG(in_channels=1, **widths)
    assert model.widths() == widths
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_mobilenet_custom_widths_round_trip() -> None:
    widths = {
        "stem": 8,
        "hidden_widths": [8] + list(range(10, 42, 2)),
        "stage_widths": [4, 6, 8, 10, 12, 14, 16],
        "last": 40,
    }
    model = MobileNetV2(**widths)
    assert model.widths() == widths
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_mobilenet_width_mult_and_residual_topology() -> None:
    model = MobileNetV2(width_mult=0.5)
    assert model.widths()["stage_widths"] == [8, 16, 16, 32, 48, 80, 160]
    assert model.widths()["last"] == 1280
    # Equal neighbouring stage widths must not create a residual the reference lacks.
    equal = MobileNetV2(stage_widths=[16, 16, 16, 16, 16, 16, 16])
    assert [block.use_residual for block in equal.layers][:4] == [False, False, True, False]


def test_shrunk_weights_report_real_widths() -> None:
    model = resnet20()
    conv = model.layer1[0].conv1
    conv.weight = torch.nn.Parameter(conv.weight[:10].detach())
    assert model.widths()["block_widths"][0] == 10


@pytest.mark.parametrize(
    "build,argument,expected",
    [
        (lambda: ResNetCIFAR(20, stage_widths=(16, 32)), "stage_widths", "3"),
        (lambda: ResNetCIFAR(20, block_widths=[16] * 8), "block_widths", "9"),
        (lambda: ResNetCIFAR(20, stage_widths=(16, 0, 64)), "stage_widths", "3"),
        (lambda: VGG(widths=[64] * 12), "widths", "13"),
        (lambda: MobileNetV2(hidden_widths=[32] * 16), "hidden_widths", "17"),
        (lambda: MobileNetV2(stage_widths=[16] * 6), "stage_widths", "7"),
    ],
)
def test_bad_widths_name_the_argument(build, argument: str, expected: str) -> None:
    message = rf"^{argument} must be a sequence of {expected} positive integers, got"
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize(
    "build,argument",
    [
        (lambda: VGG(hidden=-1), "hidden"),
        (lambda: MobileNetV2(stem=0), "stem"),
        (lambda: MobileNetV2(last=2.5), "last"),
    ],
)
def test_bad_scalar_widths_name_the_argument(build, argument: str) -> None:
    with pytest.raises(ValueError, match=rf"^{argument} must be a positive integer, got"):
        build()


def test_mobilenet_first_hidden_width_must_match_stem() -> None:
    hidden_widths = MobileNetV2().widths()["hidden_widths"]
    hidden_widths[0] = 16
    with pytest.raises(ValueError, match=r"hidden_widths\[0\] must equal stem \(32\)"):
        MobileNetV2(hidden_widths=hidden_widths)


def test_resnet_rejects_bad_depth() -> None:
    with pytest.raises(ValueError, match="depth must be 6n\\+2"):
        ResNetCIFAR(21)


def test_create_model_suggests_close_names() -> None:
    with pytest.raises(ValueError, match="Did you mean 'resnet20'") as error:
        create_model("resnt20")
    assert "mobilenet_v2" in str(error.value)
    with pytest.raises(ValueError, match="Available: resnet20"):
        create_model("alexnet")
