"""PEFT-backed adapter methods (lorafit/peft_methods.py): identity at init, merge, parameter counts
against PEFT's own, freeze policies, bf16 autocast with channels_last, deepcopy, the trainer, and
PEFT's conv-layer limits checked against the installed version."""

import copy
import warnings

import pytest
import torch
from torch import nn

from bench.__main__ import main
from lorafit import adapters, freeze, peft_methods
from lorafit.adapters import SLOTS, AdapterSettings
from lorafit.config import RunConfig
from lorafit.data import Split
from lorafit.errors import LorafitError
from lorafit.model import SeedCNN, replace_head
from lorafit.train import fit

peft = pytest.importorskip("peft")

METHODS = ("dora", "loha", "lokr", "ia3", "oft")
CASES = [(m, p) for m in METHODS for p in adapters.placements_of(m)]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: on a busy 2-core machine OpenMP hand-offs between two threads cost
    far more than the arithmetic, so this module runs on one and restores the setting after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def settings(method: str, rank: int = 4) -> AdapterSettings:
    """The method's settings at `rank` (IA3 takes rank 1 only; OFT's rank is its block size)."""
    if method == "ia3":
        return AdapterSettings(rank=1, alpha=1.0)
    if method == "oft":
        return AdapterSettings(rank=rank, alpha=1.0)
    return AdapterSettings(rank=rank, alpha=float(2 * rank))


def _model(seed: int = 0) -> SeedCNN:
    torch.manual_seed(seed)
    return SeedCNN(num_classes=10)  # the real widths (32, 64, 128)


def _x(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def _randomise(model: SeedCNN) -> None:
    """Move every adapter parameter off its init, so the update is non-zero."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in adapters.trainable_parameters(model):
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def test_placements_an_entry_does_not_list_are_refused():
    """What an entry lists is injected and checked by the tests below; everything else is refused
    with one line, before any layer is touched."""
    for method in METHODS:
        entry = adapters.ADAPTERS[method]
        assert method in adapters.methods() and entry.merge is not None and entry.unmerge is not None
        for placement in sorted(
            set(adapters.PLACEMENTS) - set(adapters.placements_of(entry.name)) - {"none"}
        ):
            model = _model()
            with pytest.raises(LorafitError, match=placement):
                adapters.inject(model, method, placement, settings(method))
            assert not model.adapted


@pytest.mark.parametrize("method,placement", CASES)
def test_identity_at_init(method, placement):
    base = _model()
    adapted = copy.deepcopy(base)
    paths = adapters.inject(adapted, method, placement, settings(method))
    assert paths == list(SLOTS[placement])
    assert all(isinstance(adapted.get_submodule(p), peft.tuners.tuners_utils.BaseTunerLayer) for p in paths)
    x = _x()
    torch.testing.assert_close(adapted(x), base(x), atol=1e-6, rtol=0)
    _randomise(adapted)  # and the adapter is live: off its init, the output moves
    assert not torch.allclose(adapted(x), base(x), atol=1e-4)


@pytest.mark.parametrize("method,placement", CASES)
def test_merged_equals_unmerged_and_unmerge_restores(method, placement):
    model = _model()
    adapters.inject(model, method, placement, settings(method))
    _randomise(model)
    base_weights = {p: adapters.base_layer(model.get_submodule(p)).weight.clone() for p in SLOTS[placement]}
    x = _x()
    out = model(x)
    assert adapters.mergeable(model)
    adapters.merge(model)
    for path, w in base_weights.items():
        assert not torch.equal(adapters.base_layer(model.get_submodule(path)).weight, w), path
    torch.testing.assert_close(model(x), out, atol=1e-5, rtol=0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Unmerge result can be inaccurate")  # IA3's division
        adapters.unmerge(model)
    for path, w in base_weights.items():
        torch.testing.assert_close(
            adapters.base_layer(model.get_submodule(path)).weight, w, atol=1e-5, rtol=0
        )
    torch.testing.assert_close(model(x), out, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method,placement", CASES)
def test_effective_rank_of_the_learned_update(method, placement):
    """Zero at initialisation (identity), then within the method's rank bound once trained."""
    model = _model()
    adapters.inject(model, method, placement, settings(method))
    assert set(adapters.effective_ranks(model).values()) == {0}
    _randomise(model)
    out, state = model(_x()), {k: v.clone() for k, v in model.state_dict().items()}
    bounds = adapters.rank_bounds(model, method, placement, settings(method))
    ranks = adapters.effective_ranks(model)
    assert all(1 <= ranks[p] <= bounds[p] for p in ranks), (ranks, bounds)
    # measuring it (a merge and unmerge of a copy) left the live layers as they were
    torch.testing.assert_close(model(_x()), out, atol=0, rtol=0)
    torch.testing.assert_close(model.state_dict(), state, atol=0, rtol=0)
    assert not any(m.merged for _, _, m in adapters.adapted_modules(model))


def _peft_trainable(method: str, placement: str, s: AdapterSettings) -> dict[str, int]:
    """PEFT's own injection into a whole SeedCNN (target_modules = the placement's layers): the
    parameters it marks trainable, by name."""
    model = peft.inject_adapter_in_model(
        peft_methods.peft_config(method, s, list(SLOTS[placement])), _model(), adapter_name="default"
    )
    return {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("rank", [1, 8])
@pytest.mark.parametrize("method,placement", CASES)
def test_counts_equal_peft_own_count(method, placement, rank):
    if method == "oft" and rank == 1:
        rank = 2  # OFT's smallest block size
    s = settings(method, rank)
    model = _model()
    expected = adapters.count(model, method, placement, s)
    adapters.inject(model, method, placement, s)
    ours = {n: p.numel() for n, p in adapters.adapter_state(model).items()}
    theirs = _peft_trainable(method, placement, s)
    assert ours == theirs  # the same tensors, by name
    assert sum(ours.values()) == expected
    assert sum(p.numel() for p in adapters.trainable_parameters(model)) == expected


# Trainable adapter parameters at rank 8 (IA3: 1), as the report quotes them; PEFT agrees above.
COUNTS_R8 = {
    ("dora", "proj"): 11_520,
    ("dora", "convs"): 9_000,
    ("loha", "proj"): 22_528,
    ("loha", "convs"): 17_552,
    ("lokr", "proj"): 928,
    ("lokr", "convs"): 1_900,
    ("ia3", "proj"): 256,
    ("ia3", "convs"): 224,
    ("oft", "proj"): 4_032,
}


@pytest.mark.parametrize("method,placement", sorted(COUNTS_R8))
def test_closed_form_counts_at_rank_8(method, placement):
    assert adapters.count(_model(), method, placement, settings(method, 8)) == COUNTS_R8[method, placement]


@pytest.mark.parametrize("method,placement", CASES)
def test_lora_policy_trains_exactly_the_adapter_and_head(method, placement):
    model = replace_head(_model(), 62)
    adapters.inject(model, method, placement, settings(method))
    trainable = set(freeze.apply(model, "lora"))
    assert trainable == set(adapters.adapter_state(model)) | {"fc.weight", "fc.bias"}
    assert all("base_layer" not in n for n in trainable - {"fc.weight", "fc.bias"})


@pytest.mark.parametrize("method", METHODS)
def test_bf16_autocast_channels_last_forward_backward(method):
    placement = adapters.placements_of(method)[-1]  # all (proj for OFT)
    model = replace_head(_model(), 62)
    adapters.inject(model, method, placement, settings(method))
    _randomise(model)
    freeze.apply(model, "lora")
    model.to(memory_format=torch.channels_last).train()
    x = _x(8).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", torch.bfloat16):
        out = model(x)
        loss = nn.functional.cross_entropy(out, torch.arange(8))
    assert out.dtype == torch.bfloat16 and torch.isfinite(loss)
    loss.backward()
    params = adapters.trainable_parameters(model)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    assert any(p.grad.abs().sum() > 0 for p in params)
    adapters.merge(model)  # merging weights left in channels_last works too
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize("method", METHODS)
def test_deepcopy_is_independent_and_equal(method):
    placement = adapters.placements_of(method)[-1]
    model = _model()
    adapters.inject(model, method, placement, settings(method))
    _randomise(model)
    clone = copy.deepcopy(model)
    x = _x()
    torch.testing.assert_close(clone(x), model(x), atol=0, rtol=0)
    assert clone.adapted == model.adapted
    before = model(x)
    with torch.no_grad():
        for p in adapters.trainable_parameters(clone):
            p.add_(0.1)
    assert torch.equal(model(x), before)
    assert not torch.equal(clone(x), before)
    adapters.merge(clone)
    assert torch.equal(model(x), before)


@pytest.mark.parametrize("method", ["dora", "lokr"])
def test_the_trainer_fits_a_peft_adapter_in_bf16(method):
    """lorafit.train.fit (channels_last, bf16 autocast) on a few random images."""
    placement = adapters.placements_of(method)[-1]
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (96, 1, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 62, (96,), generator=g)
    s = settings(method)
    cfg = RunConfig(
        name="t", method=method, placement=placement, rank=s.rank, alpha=s.alpha, policy="lora", epochs=1
    )
    model = replace_head(_model(), 62)
    adapters.inject(model, method, placement, cfg.adapter_settings)
    freeze.apply(model, "lora")
    before = {k: v.clone() for k, v in adapters.adapter_state(model).items()}
    result = fit(model, Split(images[:64], labels[:64]), Split(images[64:], labels[64:]), cfg, bf16=True)
    assert result.status == "complete"
    after = adapters.adapter_state(model)
    assert any(not torch.equal(after[k], before[k]) for k in before)


def test_rank_bounds():
    model = _model()
    assert adapters.rank_bounds(model, "loha", "all", settings("loha", 2)) == {
        "conv1.conv": 4,
        "conv2.conv": 4,
        "conv3.conv": 4,
        "proj": 4,
    }
    assert adapters.rank_bounds(model, "lokr", "proj", settings("lokr", 8)) == {"proj": 16 * 8}
    assert adapters.rank_bounds(model, "dora", "convs", settings("dora", 8)) == {
        "conv1.conv": 9,
        "conv2.conv": 64,
        "conv3.conv": 128,
    }
    assert adapters.rank_bounds(model, "ia3", "proj", settings("ia3")) == {"proj": 256}


# ------------------------------------------------------------------------------- refusals
def _one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("method", METHODS)
def test_seed_slot_is_refused_and_peft_cannot_wrap_it(method):
    with pytest.raises(LorafitError) as e:
        adapters.inject(_model(), method, "post-proj", settings(method))
    assert "cannot be placed on 'post-proj'" in _one_line(e) and "PEFT" in str(e.value)
    holder = peft_methods._Holder(nn.Identity())  # what the installed PEFT does with the slot's layer
    with pytest.raises((ValueError, TypeError, StopIteration)):
        peft.inject_adapter_in_model(peft_methods.peft_config(method, settings(method), ["layer"]), holder)


@pytest.mark.parametrize(
    "method,placement,rank,alpha,match",
    [
        ("ia3", "proj", 8, 1.0, "set rank = 1"),
        ("ia3", "convs", 1, 4.0, "no alpha"),
        ("oft", "proj", 5, 1.0, "must be >= 2 and divide the layer's fan_in 1152"),
        ("oft", "proj", 1, 1.0, "must be >= 2"),
        ("oft", "proj", 8, 8.0, "no alpha"),
    ],
)
def test_bad_sizes_are_one_line_errors_at_count_and_inject(method, placement, rank, alpha, match):
    s = AdapterSettings(rank=rank, alpha=alpha)
    with pytest.raises(LorafitError, match=match) as e:
        adapters.count(_model(), method, placement, s)
    assert _one_line(e).startswith(f"method {method} on ")
    model = _model()
    with pytest.raises(LorafitError, match=match):
        adapters.inject(model, method, placement, s)
    assert model.adapted == {}  # nothing half-injected


def test_oft_on_a_conv_placement_is_refused_with_the_reason():
    with pytest.raises(LorafitError) as e:
        adapters.inject(_model(), "oft", "conv2", settings("oft"))
    assert "kernel (3, 3)" in _one_line(e) and "not the base conv" in str(e.value)


def test_unsupported_combination_in_a_grid_exits_2_at_load(tmp_path, tiny_grid, capsys):
    text = '[lr]\noft = 1e-3\n[[cell]]\nname = "x"\nmethod = "oft"\nplacement = "convs"\nrank = 8\npolicy = "lora"'
    runs = tmp_path / "runs"
    code = main(["run", "grid", "--grid", str(tiny_grid(text)), "--runs-dir", str(runs)])
    err = capsys.readouterr().err
    assert code == 2
    assert (
        err.startswith("error: ") and err.count("\n") == 1 and "method oft cannot be placed on 'convs'" in err
    )
    assert not runs.exists()


# Conv2d features PEFT gets wrong for some methods; the SeedCNN's convs (3x3, padding 1) have none.
CONV_VARIANTS = {
    "plain_1x1": dict(kernel_size=1),
    "kernel_3x3": dict(kernel_size=3, padding=1),
    "groups": dict(kernel_size=1, groups=2),
    "dilation": dict(kernel_size=3, padding=2, dilation=2),
    "padding_mode": dict(kernel_size=3, padding=1, padding_mode="reflect"),
}


def _peft_gets_it_right(method: str, conv: nn.Conv2d) -> bool:
    """The installed PEFT, called directly: wraps the conv, is the base conv at init, and merged
    equals unmerged after the adapter moves off its init."""
    torch.manual_seed(0)
    holder = peft_methods._Holder(copy.deepcopy(conv))
    x = torch.randn(2, conv.in_channels, 9, 9)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peft.inject_adapter_in_model(
                peft_methods.peft_config(method, settings(method, 2), ["layer"]), holder
            )
            layer = holder.layer
            if not torch.allclose(layer(x), conv(x), atol=1e-5):
                return False
            with torch.no_grad():
                for p in peft_methods.adapter_parameters(layer):
                    p.add_(torch.randn_like(p) * 0.1)
            out = layer(x)
            layer.merge()
            return torch.allclose(layer(x), out, atol=1e-4)
    except (ValueError, TypeError, RuntimeError, NotImplementedError):
        return False


@pytest.mark.parametrize("variant", sorted(CONV_VARIANTS))
@pytest.mark.parametrize("method", METHODS)
def test_conv_limits_match_the_installed_peft(method, variant):
    """The registry refuses exactly the conv features the installed PEFT gets wrong for a method
    (peft_methods.CONV_LIMITS); when PEFT fixes one, this fails and the refusal can go."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, **CONV_VARIANTS[variant])
    check = adapters.ADAPTERS[method].check
    refused = set(peft_methods.conv_features(conv)) & set(peft_methods.CONV_LIMITS[method])
    assert _peft_gets_it_right(method, conv) == (not refused), (method, variant, refused)
    if refused:
        with pytest.raises(LorafitError) as e:
            check(conv, settings(method, 2))
        assert _one_line(e).startswith("cannot take a Conv2d with")
    else:
        check(conv, settings(method, 2))


def test_a_refused_conv_in_the_model_names_the_layer():
    model = _model()
    model.conv2.conv = nn.Conv2d(32, 64, 3, padding=1, padding_mode="reflect")
    with pytest.raises(LorafitError) as e:
        adapters.inject(model, "loha", "convs", settings("loha"))
    assert _one_line(e).startswith(
        "method loha on conv2.conv: cannot take a Conv2d with padding_mode='reflect'"
    )
    assert model.adapted == {}


def test_perf_times_merged_unmerged_and_base_per_method(tmp_path):
    """The per-method inference workload of `bench perf` (tiny here; the ratios come from a real run)."""
    from bench import perf

    w = perf.make_workload(512, tmp_path)
    results = perf.compare_methods(perf.backbone(), w, "convs", rounds=1, images=64)
    for method in perf.MERGE_METHODS:
        where = "proj" if method == "oft" else "convs"
        assert all(results[f"infer_{where}_{method}_{s}"] > 0 for s in ("base", "unmerged", "merged"))
        assert f"{method} on {where}, merged / base:" in perf.merge_line(results, method, where)
