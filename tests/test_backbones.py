"""The backbone registry: every entry's placement groups are identity at init and merge exactly,
counts match the closed forms, the frozen-prefix split gives the plain forward's logits,
BatchNorm follows the stated rule, a test-only entry works with no other file changed, and a
user's own model (bring your own model) runs through the grid, its bad inputs refused in one line."""

import copy

import pytest
import torch
from torch import nn

from bench.__main__ import main
from bench.backbone import pretrained_backbone
from bench.context import Context
from bench.grid import load_grid
from bench.runner import build_model, run_cell
from lorafit import adapters, backbones, freeze
from lorafit.adapters import AdapterSettings
from lorafit.config import RunConfig
from lorafit.data import Split
from lorafit.errors import LorafitError
from lorafit.features import frozen_prefix_length
from lorafit.model import ResidualCNN, residual_cnn_params, run_stages
from lorafit.train import fit

ENTRIES = ["seed-cnn", "residual-cnn", "resnet18"]
GROUPS = [(b, p) for b in ENTRIES for p in backbones.placements(b)[1:] if p != "post-proj"]


def _net(name: str, classes: int = 10, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = backbones.build(name, classes).eval()
    with torch.no_grad():  # BatchNorm with non-trivial statistics, so a merge through it is tested
        for bn in backbones.batch_norms(model):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return model


def _x(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("backbone,placement", GROUPS)
def test_lora_on_every_group_is_identity_at_init_and_merges_exactly(backbone, placement):
    model = _net(backbone)
    x = _x()
    with torch.no_grad():
        before = model(x)
        paths = adapters.inject(model, "lora", placement, AdapterSettings(rank=4, alpha=4.0, shape="kxk"))
        assert paths == backbones.resolve(backbones.shape_model(backbone), placement) and paths
        assert torch.allclose(model(x), before, atol=1e-6)  # B = 0: the base network
        for _, _, module in adapters.adapted_modules(model):
            module.lora_B.weight.normal_(0, 0.05)
        unmerged = model(x)
        assert not torch.allclose(unmerged, before, atol=1e-4)
        adapters.merge(model)
        assert torch.allclose(model(x), unmerged, atol=1e-4, rtol=1e-4)
        adapters.unmerge(model)
        assert torch.allclose(model(x), unmerged, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backbone,placement", GROUPS)
def test_counts_equal_what_injection_adds(backbone, placement):
    model = backbones.build(backbone, 62)
    settings = AdapterSettings(rank=2, alpha=2.0, shape="kxk")
    closed = adapters.count(model, "lora", placement, settings)
    total = sum(p.numel() for p in model.parameters())
    adapters.inject(model, "lora", placement, settings)
    assert sum(p.numel() for p in model.parameters()) - total == closed
    assert sum(p.numel() for p in adapters.trainable_parameters(model)) == closed


def test_closed_form_parameter_counts():
    assert (
        sum(p.numel() for p in ResidualCNN(62).parameters())
        == residual_cnn_params(62, (16, 32, 64))
        == 81_134
    )
    assert sum(p.numel() for p in backbones.build("seed-cnn", 62).parameters()) == 403_774
    # torchvision's resnet18 (11,689,512 with its 3-channel 7x7 stem and 1000 classes): the 3x3
    # single-channel stem has 64*9 weights instead of 64*3*49, and fc 512*62 + 62 instead of 513,000.
    assert sum(p.numel() for p in backbones.build("resnet18", 62).parameters()) == (
        11_689_512 - 64 * 3 * 49 + 64 * 9 - 513_000 + 512 * 62 + 62
    )


@pytest.mark.parametrize("backbone", ENTRIES)
def test_stages_split_anywhere_give_the_plain_forward(backbone):
    """The frozen-prefix cache runs stages[:k] once and stages[k:] per step: same logits."""
    model = _net(backbone)
    x = _x()
    with torch.no_grad():
        plain = model(x)
        for k in range(len(model.stage_names)):
            assert torch.allclose(run_stages(model, run_stages(model, x, 0, k), k), plain, atol=1e-5)


@pytest.mark.parametrize(
    "backbone,placement,policy,first_moving",
    [
        ("residual-cnn", "none", "head", "fc"),
        ("residual-cnn", "stage3", "lora", "stage3"),
        ("residual-cnn", "stage3", "lora-stats", "stem"),  # its statistics move: nothing cached
        ("residual-cnn", "stage3", "norm", "stem"),
        ("resnet18", "stage4", "lora", "layer4"),
        ("seed-cnn", "conv3", "lora", "conv3"),
    ],
)
def test_frozen_prefix_ends_where_training_changes_the_network(backbone, placement, policy, first_moving):
    model = backbones.build(backbone, 10)
    method = "head" if placement == "none" else "lora"
    adapters.inject(model, method, placement, AdapterSettings(rank=2, alpha=2.0, shape="kxk"))
    freeze.apply(model, policy)
    assert model.stage_names[frozen_prefix_length(model)] == first_moving


def _tiny_split(n: int = 64, classes: int = 10) -> Split:
    g = torch.Generator().manual_seed(0)
    return Split(
        torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g), torch.arange(n) % classes
    )


@pytest.mark.parametrize(
    "policy,moves", [("lora", False), ("norm", False), ("head", False), ("lora-stats", True), ("full", True)]
)
def test_batchnorm_statistics_follow_the_stated_rule(policy, moves):
    """Fixed (the source task's) under policies that freeze the backbone; re-estimated under
    full, scratch and lora-stats. The norm policy trains the affine parameters, not the statistics."""
    model = backbones.build("residual-cnn", 10)
    method = "full" if policy == "full" else "head" if policy == "head" else "lora"
    placement = "stage3" if method == "lora" else "none"
    adapters.inject(model, method, placement, AdapterSettings(rank=2, alpha=2.0, shape="kxk"))
    freeze.apply(model, policy)
    before = {n: b.clone() for n, b in model.named_buffers() if n.endswith("running_mean")}
    cfg = RunConfig(
        name="t",
        method=method,
        placement=placement,
        rank=2 if placement != "none" else 0,
        shape="kxk",
        policy=policy,
        epochs=1,
        batch_size=32,
        lr=1e-3,
        backbone="residual-cnn",
    )
    fit(model, _tiny_split(), _tiny_split(), cfg, bf16=False)
    after = {n: b for n, b in model.named_buffers() if n.endswith("running_mean")}
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert bool(changed) == moves
    affine = {
        n for n, p in model.named_parameters() if p.requires_grad and (".bn" in n or "downsample.1" in n)
    }
    assert bool(affine) == (policy in ("norm", "full"))


def test_at_rest_keeps_batchnorm_statistics_too():
    model = backbones.build("residual-cnn", 10)
    freeze.apply(model, "full")
    freeze.at_rest(model)
    assert not freeze.stats_move(model)


# ------------------------------------------------------------------ a test-only registry entry
class _Tiny(nn.Module):
    stage_names = ("body", "pool", "flatten", "fc")
    head_name = "fc"

    def __init__(self, classes: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, widths[0], 3, padding=1), nn.BatchNorm2d(widths[0]), nn.ReLU())
        self.pool, self.flatten = nn.AdaptiveAvgPool2d(1), nn.Flatten()
        self.fc = nn.Linear(widths[0], classes)

    def forward(self, x):
        return run_stages(self, x)


@pytest.fixture
def tiny_entry():
    entry = backbones.register(
        backbones.Backbone(
            name="tiny-test",
            description="a test-only entry",
            build=lambda classes, widths: _Tiny(classes, widths),
            widths=(8,),
            groups={"body": (r"body\.0",)},
        )
    )
    yield entry
    backbones.BACKBONES.pop("tiny-test")
    backbones.shape_model.cache_clear()


def test_a_registry_entry_is_all_a_new_backbone_needs(tiny_entry, tmp_path):
    cfg = RunConfig(
        name="t",
        method="lora",
        placement="body",
        rank=2,
        alpha=2.0,
        shape="kxk",
        policy="lora",
        backbone="tiny-test",
        epochs=1,
        train_size=200,
        val_size=100,
        test_size=100,
        pretrain_size=300,
        pretrain_epochs=1,
    )
    with pytest.raises(LorafitError, match="unknown placement 'proj' on tiny-test"):
        cfg.replace(placement="proj")
    record = run_cell(cfg, Context(tmp_path / "runs"), "tiny")
    assert record["run"]["status"] == "complete", record.get("traceback")
    assert record["config"]["backbone"] == "tiny-test" and record["config"]["widths"] == [8]
    assert (
        record["metrics"]["trainable_params"]
        == adapters.count(backbones.build("tiny-test", 62), "lora", "body", cfg.adapter_settings)
        + 8 * 62
        + 62
    )
    assert record["metrics"]["infer_merged_rel"] is not None


# ---------------------------------------------------------------------- bring your own model
def tiny_net(num_classes: int) -> nn.Module:
    """A user's model, as `test_backbones:tiny_net` names it."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(4),
        nn.Flatten(),
        nn.Linear(6 * 49, num_classes),
    )


def not_a_model(num_classes: int):
    return "a string"


BYO = """
[backbones.mine]
factory = "test_backbones:tiny_net"
head = "4"
{extra}
[backbones.mine.groups]
conv = ["0"]
{groups}

[lr]
head = 5e-3
full = 1e-3
scratch = 2e-3
lora = 3e-3

[[cell]]
name = "mine-{{method}}"
backbone = "mine"
method = ["head", "full"]
policy = "{{method}}"

[[cell]]
name = "mine-lora"
backbone = "mine"
method = "lora"
placement = "conv"
shape = "kxk"
rank = 4
policy = "lora"
"""


def test_bring_your_own_model_runs_the_grid(tiny_grid, tmp_path):
    cells = load_grid(tiny_grid(BYO.format(extra="", groups=""), "byo"), "smoke")
    assert {c.name for c in cells} == {"mine-head", "mine-full", "mine-lora"}
    ctx = Context(tmp_path / "runs")
    records = [
        run_cell(c.replace(train_size=300, val_size=100, test_size=100, pretrain_size=300), ctx, "byo")
        for c in cells
    ]
    assert all(r["run"]["status"] == "complete" for r in records), [r["run"]["error"] for r in records]
    lora = next(r for r in records if r["config"]["method"] == "lora")
    assert lora["metrics"]["trainable_params"] == 4 * (9 + 6) + 6 * 49 * 62 + 62


def test_bring_your_own_model_with_its_own_weights(tiny_grid, tmp_path):
    state = tmp_path / "mine.pt"
    torch.save(tiny_net(10).state_dict(), state)
    cells = load_grid(tiny_grid(BYO.format(extra=f'weights = "{state}"', groups=""), "byo"), "smoke")
    cfg = next(c for c in cells if c.method == "head")
    model, info = pretrained_backbone(cfg, Context(tmp_path / "runs"))
    assert info["weights"] == str(state) and "train_s" not in info  # loaded, not trained
    expected = tiny_net(10)
    expected.load_state_dict(torch.load(state))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), expected.state_dict().values()))
    built = build_model(cfg, model, 62)
    assert built[4].out_features == 62 and torch.equal(built[0].weight, expected[0].weight)


@pytest.mark.parametrize(
    "text,message",
    [
        (
            BYO.format(extra="", groups="").replace("tiny_net", "no_such"),
            "no such callable 'test_backbones:no_such'",
        ),
        (BYO.format(extra="", groups="").replace("test_backbones:", "nomodule_xyz:"), "no such callable"),
        (
            BYO.format(extra="", groups="").replace("tiny_net", "not_a_model"),
            "returned a str, not an nn.Module",
        ),
        (BYO.format(extra="", groups='late = ["9"]'), "group 'late': pattern '9' matches no module"),
        (
            BYO.format(extra="", groups="").replace('head = "4"', 'head = "0"'),
            "must be an nn.Linear, got Conv2d",
        ),
        (BYO.format(extra='weights = "nope.pt"', groups=""), "weights file"),
        (BYO.format(extra="", groups="").replace('conv = ["0"]', 'conv = ["4"]'), "includes the head"),
    ],
)
def test_bring_your_own_model_bad_input_is_one_line(text, message, tiny_grid, tmp_path, capsys):
    runs = tmp_path / "runs"
    code = main(["run", "grid", "--grid", str(tiny_grid(text, "byo")), "--runs-dir", str(runs)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not runs.exists()
    assert "mine" not in backbones.BACKBONES  # never half-registered, nor left from an earlier reading


def test_a_user_model_cannot_replace_a_built_in_entry(tiny_grid):
    text = BYO.format(extra="", groups="").replace("[backbones.mine", "[backbones.resnet18")
    with pytest.raises(LorafitError, match="would replace the built-in backbone resnet18"):
        load_grid(tiny_grid(text, "byo"), "smoke")


def test_widths_of_a_fixed_architecture_are_refused():
    with pytest.raises(LorafitError, match="resnet18 has fixed widths"):
        RunConfig(name="r", method="full", backbone="resnet18", widths=(8, 16, 32))
    assert RunConfig(name="r", method="full", backbone="residual-cnn").widths == (16, 32, 64)
    assert copy.copy(RunConfig(name="s", method="full")).widths == (32, 64, 128)


@pytest.mark.parametrize(
    "backbone,outer,inner,contains",
    [
        ("residual-cnn", "convs", "stage3", True),
        ("residual-cnn", "early", "stem", True),
        ("residual-cnn", "stage2", "shortcuts", False),  # shortcuts spans stage2 and stage3
        ("residual-cnn", "stage3", "convs", False),
        ("resnet18", "convs", "shortcuts", True),
        ("seed-cnn", "all", "proj", True),
        ("seed-cnn", "convs", "conv2", True),
        ("seed-cnn", "proj", "conv2", False),
    ],
)
def test_placement_nesting_is_read_off_the_groups(backbone, outer, inner, contains):
    from bench.reporting.evidence import placement_contains

    assert placement_contains(backbone, outer, inner) is contains


def test_the_feature_cache_gives_the_plain_predictions(tmp_path):
    """A frozen residual CNN (BatchNorm at its source statistics): cached prefix == plain pass."""
    from lorafit.features import FeatureCache
    from lorafit.train import predict

    model = _net("residual-cnn")
    adapters.inject(model, "lora", "stage3", AdapterSettings(rank=2, alpha=2.0, shape="kxk"))
    freeze.apply(model, "lora")
    split = _tiny_split(40)
    cache = FeatureCache(64)
    cached = predict(model, split, bf16=False, cache=cache)
    assert cache.misses == 1  # the prefix ran once and was kept
    assert torch.equal(cached, predict(model, split, bf16=False))
