"""Each freeze policy leaves exactly its documented parameters trainable."""

import pytest

from lorafit import adapters, freeze
from lorafit.adapters import AdapterSettings
from lorafit.errors import LorafitError
from lorafit.model import SeedCNN

ALL_BASE = {
    "conv1.conv.weight",
    "conv1.conv.bias",
    "conv2.conv.weight",
    "conv2.conv.bias",
    "conv3.conv.weight",
    "conv3.conv.bias",
    "proj.weight",
    "proj.bias",
    "fc.weight",
    "fc.bias",
}


def _names(model):
    return {n for n, _ in model.named_parameters()}


@pytest.mark.parametrize("placement", ["none", "proj", "convs", "post-proj"])
@pytest.mark.parametrize("policy", sorted(set(freeze.policies("seed-cnn")) - set(freeze.NEEDS)))
def test_policy_trainable_set(policy, placement):
    model = SeedCNN(num_classes=62)
    method = {"none": "full", "post-proj": "residual"}.get(placement, "lora")
    adapters.inject(model, method, placement, AdapterSettings(rank=2))
    names = _names(model)
    adapter_names = {n for n in names if "lora_" in n}
    head = {"fc.weight", "fc.bias"}
    expected = {
        "scratch": names,
        "full": names,
        "head": head,
        "lora": adapter_names | head,
        "conv2": adapter_names | head | {n for n in names if n.startswith("conv2.")},
        "bitfit": adapter_names | head | {n for n in names if n.endswith(".bias")},
    }[policy]
    assert set(freeze.apply(model, policy)) == expected
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected
    trainable, total = freeze.count_parameters(model)
    assert trainable == sum(p.numel() for n, p in model.named_parameters() if n in expected)
    assert total == sum(p.numel() for p in model.parameters())


def test_seed_policy_freezes_conv1_conv3_proj():
    model = SeedCNN(num_classes=62)
    adapters.inject(model, "residual", "post-proj", AdapterSettings(rank=8))
    freeze.apply(model, "conv2")
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {
        "conv1.conv.weight",
        "conv1.conv.bias",
        "conv3.conv.weight",
        "conv3.conv.bias",
        "proj.weight",
        "proj.bias",
    }
    assert freeze.count_parameters(model)[0] == 18_496 + 2 * 8 * 256 + 15_934


def test_unknown_policy():
    with pytest.raises(LorafitError, match="unknown freeze policy"):
        freeze.apply(SeedCNN(), "frozen")


@pytest.mark.parametrize("policy", sorted(freeze.NEEDS))
def test_policies_that_would_be_lora_on_the_seed_cnn_are_refused(policy):
    """The seed CNN has no normalisation layers: norm and lora-stats would secretly be lora."""
    with pytest.raises(LorafitError, match="would be policy lora"):
        freeze.check(policy, "seed-cnn")
