"""Adapters: identity at init, exact merge/unmerge, closed-form parameter counts, PEFT parity."""

import copy

import pytest
import torch
from torch import nn

from lorafit import adapters, lora
from lorafit.adapters import AdapterSettings
from lorafit.errors import LorafitError
from lorafit.freeze import apply, count_parameters
from lorafit.model import SeedCNN, replace_head

WIDTHS = (32, 64, 128)
CONV_IO = {"conv1": (1, 32), "conv2": (32, 64), "conv3": (64, 128)}


def _model(seed: int = 0) -> SeedCNN:
    torch.manual_seed(seed)
    return SeedCNN(num_classes=10, widths=WIDTHS)


def _x(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def inject(
    model: SeedCNN, placement: str, rank: int = 8, alpha: float = 1.0, shape: str = "1x1"
) -> list[str]:
    """The native methods: the seed post's adapter on its slot, LoRA everywhere else."""
    method = "residual" if placement == "post-proj" else "lora"
    return adapters.inject(model, method, placement, AdapterSettings(rank=rank, alpha=alpha, shape=shape))


def _randomise_adapters(model: nn.Module) -> None:
    """Make every adapter's update non-zero so merge actually changes weights."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)


def expected_adapter_params(placement: str, shape: str, r: int) -> int:
    convs = {
        "conv1": ("conv1",),
        "conv2": ("conv2",),
        "conv3": ("conv3",),
        "convs": ("conv1", "conv2", "conv3"),
        "all": ("conv1", "conv2", "conv3"),
    }.get(placement, ())
    k2 = 9 if shape == "kxk" else 1
    total = sum(r * (CONV_IO[c][0] * k2 + CONV_IO[c][1]) for c in convs)
    if placement in ("proj", "all"):
        total += r * (128 * 9 + 256)
    if placement == "post-proj":
        total += 2 * r * 256
    return total


PLACEMENTS = ["proj", "conv1", "conv2", "conv3", "convs", "all", "post-proj"]


def test_model_shapes_and_count():
    model = _model()
    assert model(_x()).shape == (4, 10)
    assert count_parameters(model) == (390_410, 390_410)
    replace_head(model, 62)
    assert model(_x()).shape == (4, 62)
    assert count_parameters(model)[1] == 403_774


@pytest.mark.parametrize("placement", [p for p in PLACEMENTS if p != "post-proj"])
@pytest.mark.parametrize("shape", ["1x1", "kxk"])
def test_weight_space_lora_equals_base_at_init(placement, shape):
    base = _model()
    adapted = copy.deepcopy(base)
    inject(adapted, placement, rank=4, alpha=8, shape=shape)
    x = _x()
    assert torch.equal(base(x), adapted(x))


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("shape", ["1x1", "kxk"])
def test_merge_keeps_outputs_and_unmerge_restores_weights(placement, shape):
    model = _model()
    inject(model, placement, rank=4, alpha=8, shape=shape)
    _randomise_adapters(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = _x()
    out = model(x)
    adapters.merge(model)
    changed = [k for k, v in model.state_dict().items() if "lora_" not in k and not torch.equal(v, before[k])]
    assert changed, "merge changed no base weight"
    assert (model(x) - out).abs().max().item() <= 1e-5
    adapters.unmerge(model)
    for k, v in model.state_dict().items():
        assert torch.allclose(v, before[k], atol=1e-6), k
    assert (model(x) - out).abs().max().item() <= 1e-6


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("shape", ["1x1", "kxk"])
@pytest.mark.parametrize("rank", [1, 8])
def test_trainable_counts_match_closed_form(placement, shape, rank):
    model = _model()
    replace_head(model, 62)
    inject(model, placement, rank=rank, alpha=1.0, shape=shape)
    apply(model, "lora")
    trainable, total = count_parameters(model)
    head = 256 * 62 + 62
    assert trainable == expected_adapter_params(placement, shape, rank) + head
    assert total == 403_774 + expected_adapter_params(placement, shape, rank)


def test_seed_residual_adapter_is_the_posts_formula():
    torch.manual_seed(0)
    adapter = lora.SeedResidualLoRA(256, rank=8, alpha=1.0)
    assert adapter.lora_A.shape == (256, 8) and adapter.lora_B.shape == (8, 256)
    assert 0.005 < adapter.lora_A.std().item() < 0.015  # randn * 0.01
    h = torch.randn(5, 256)
    expected = h + (h @ adapter.lora_B.T @ adapter.lora_A.T) * (1.0 / 8)
    assert torch.allclose(adapter(h), expected)


@pytest.mark.parametrize(
    "kernel,padding,stride,dilation",
    [(3, 1, 1, 1), (3, 1, 2, 1), (5, 2, 1, 1), (3, 0, 1, 1), (3, 2, 1, 1), (3, 2, 2, 2), (5, 0, 2, 1)],
)
def test_conv_1x1_merge_exact_for_centre_tap(kernel, padding, stride, dilation):
    torch.manual_seed(0)
    base = nn.Conv2d(3, 6, kernel, stride=stride, padding=padding, dilation=dilation)
    layer = lora.LoRAConv2d(base, rank=2, alpha=4, shape="1x1")
    nn.init.normal_(layer.lora_B.weight, 0, 0.1)
    x = torch.randn(2, 3, 15, 15)
    out = layer(x)
    assert out.shape == base(x).shape
    layer.merge()
    assert (layer(x) - out).abs().max().item() <= 1e-5


def test_conv_1x1_refuses_kernel_without_centre():
    with pytest.raises(LorafitError, match="centre"):
        lora.LoRAConv2d(nn.Conv2d(3, 4, 2), rank=2, alpha=1, shape="1x1")


def test_conv_1x1_refuses_merge_with_reflect_padding_offset():
    layer = lora.LoRAConv2d(nn.Conv2d(3, 4, 3, padding=2, padding_mode="reflect"), rank=2, alpha=1)
    with pytest.raises(LorafitError, match="cannot merge"):
        layer.merge()


def test_rslora_scaling():
    layer = lora.LoRALinear(nn.Linear(8, 8), rank=4, alpha=8, rslora=True)
    assert layer.scaling == pytest.approx(4.0)
    assert lora.LoRALinear(nn.Linear(8, 8), rank=4, alpha=8).scaling == pytest.approx(2.0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"placement": "fc2"}, "unknown placement"),
        ({"placement": "proj", "rank": 0}, "rank"),
        ({"placement": "conv1", "rank": -3}, "rank"),
        ({"placement": "proj", "alpha": 0}, "alpha"),
        ({"placement": "convs", "shape": "3x3"}, "shape"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(LorafitError, match=match):
        inject(_model(), **{"rank": 4, "alpha": 1.0, **kwargs})


@pytest.mark.parametrize(
    "method,placement,match",
    [
        ("lora", "post-proj", "cannot be placed on 'post-proj'"),
        ("residual", "proj", "cannot be placed on 'proj'"),
        ("head", "proj", "placement must be none"),
        ("hypernet", "proj", "unknown adapter method"),
    ],
)
def test_methods_take_only_their_placements(method, placement, match):
    with pytest.raises(LorafitError, match=match):
        adapters.inject(_model(), method, placement)


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("shape", ["1x1", "kxk"])
def test_registry_count_equals_injected_parameters(placement, shape):
    model = _model()
    method = "residual" if placement == "post-proj" else "lora"
    settings = AdapterSettings(rank=4, alpha=4, shape=shape)
    expected = adapters.count(model, method, placement, settings)
    adapters.inject(model, method, placement, settings)
    assert sum(p.numel() for p in adapters.trainable_parameters(model)) == expected
    assert sum(v.numel() for v in adapters.adapter_state(model).values()) == expected


def test_trainability_comes_from_the_registry_not_names():
    """A parameter named like an adapter's is not trained unless the registry says it is one."""
    model = _model()
    model.proj.register_parameter("lora_A_impostor", nn.Parameter(torch.zeros(3)))
    inject(model, "conv3", rank=2)
    trainable = set(apply(model, "lora"))
    assert "proj.lora_A_impostor" not in trainable
    assert {"conv3.conv.lora_A.weight", "conv3.conv.lora_B.weight", "fc.weight", "fc.bias"} == trainable


def test_rank_bounds_per_layer():
    model = _model()
    bounds = adapters.rank_bounds(model, "lora", "all", AdapterSettings(rank=16, shape="1x1"))
    assert bounds == {"conv1.conv": 1, "conv2.conv": 16, "conv3.conv": 16, "proj": 16}
    kxk = adapters.rank_bounds(model, "lora", "conv1", AdapterSettings(rank=16, shape="kxk"))
    assert kxk == {"conv1.conv": 9}


def test_inject_returns_adapted_names():
    assert inject(_model(), "all", rank=2) == ["conv1.conv", "conv2.conv", "conv3.conv", "proj"]
    assert inject(_model(), "post-proj", rank=2) == ["adapter"]


def test_peft_parity_linear_and_kxk_conv():
    peft = pytest.importorskip("peft")

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.lin = nn.Linear(8, 5)

        def forward(self, x):
            return self.lin(self.conv(x).mean((2, 3)))

    torch.manual_seed(0)
    tiny = Tiny()
    ours_conv = lora.LoRAConv2d(copy.deepcopy(tiny.conv), rank=4, alpha=8, shape="kxk")
    ours_lin = lora.LoRALinear(copy.deepcopy(tiny.lin), rank=4, alpha=8)
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["conv", "lin"], lora_dropout=0.0)
    theirs = peft.get_peft_model(tiny, cfg)
    inner = theirs.base_model.model
    with torch.no_grad():
        for ours, layer in ((ours_conv, inner.conv), (ours_lin, inner.lin)):
            layer.lora_B["default"].weight.normal_(0, 0.1)
            ours.lora_A.weight.copy_(layer.lora_A["default"].weight)
            ours.lora_B.weight.copy_(layer.lora_B["default"].weight)
    x = torch.randn(2, 3, 9, 9)
    assert torch.allclose(ours_conv(x), inner.conv(x), atol=1e-6)
    h = torch.randn(2, 8)
    assert torch.allclose(ours_lin(h), inner.lin(h), atol=1e-6)
    # and the merged update is the same matrix PEFT merges
    assert torch.allclose(ours_conv.delta_weight(), inner.conv.get_delta_weight("default"), atol=1e-6)
