"""Any registered dataset as the target: `--target` end to end on tiny EMNIST files, and the
registries' promise that adding a dataset or an adapter method is one entry."""

import numpy as np
import pytest
import torch
from grids import REPORT_GRID
from idxfiles import balanced, write_split

from bench.__main__ import main
from bench.records import load_records
from bench.reporting import aggregate
from lorafit import adapters, data
from lorafit.adapters import AdapterMethod, AdapterSettings
from lorafit.model import SeedCNN

GRID = REPORT_GRID  # the probe and LoRA r8 on proj
# split -> (number of classes, first label): letters has no class 0 (its labels are 1..26)
SPLITS = {"bymerge": (47, 0), "balanced": (47, 0), "letters": (27, 1), "digits": (10, 0)}


@pytest.fixture(scope="module")
def emnist_dir(tmp_path_factory):
    """Only the test split of each EMNIST variant, stored transposed like the release."""
    root = tmp_path_factory.mktemp("emnist")
    for split, (classes, first) in SPLITS.items():
        labels = balanced(classes - first, 12) + first
        names = (f"emnist-{split}-test-images-idx3-ubyte", f"emnist-{split}-test-labels-idx1-ubyte")
        write_split(root / "emnist", *names, labels, transpose=True)  # no .gz: no official checksum to fail
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")  # shared: the glyph backbone is pretrained once


@pytest.mark.parametrize("split", list(SPLITS))
def test_target_runs_end_to_end(split, emnist_dir, runs, tmp_path, capsys):
    grid = tmp_path / f"t-{split}.toml"
    grid.write_text(GRID)
    target = f"emnist-{split}"
    argv = ["run", "grid", "--grid", str(grid), "--target", target, "--data-dir", str(emnist_dir)]
    assert main([*argv, "--runs-dir", str(runs), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"glyphs-digits -> {target} (resplit)" in out and "2 done" in out
    records = load_records(runs, f"t-{split}-smoke")
    assert len(records) == 2
    classes = SPLITS[split][0]
    for rec in records:
        assert rec["run"]["status"] == "complete"
        assert rec["config"]["target"] == target and rec["config"]["protocol"] == "resplit"
        assert len(rec["analysis"]["classes"]) == classes and len(rec["analysis"]["confusion"]) == classes
        # the head is sized to the target, and the record names the files it read
        assert rec["metrics"]["trainable_params"] >= 256 * classes + classes
        assert rec["env"]["target_files"] and np.isfinite(rec["metrics"]["test_acc"])
    assert all(target in aggregate.setup_of(r) for r in records)  # one leaderboard table per target


def test_target_in_the_grid_file_and_missing_files(emnist_dir, tmp_path, capsys, monkeypatch):
    grid = tmp_path / "letters.toml"
    grid.write_text('[data]\ntarget = "emnist-letters"\n' + GRID)
    runs = tmp_path / "runs"
    argv = ["run", "grid", "--grid", str(grid), "--runs-dir", str(runs), "--no-progress", "--only", "head"]
    assert main([*argv, "--data-dir", str(emnist_dir)]) == 0
    assert "-> emnist-letters (resplit)" in capsys.readouterr().out

    def no_download(*args):
        raise AssertionError("--status downloaded data")

    monkeypatch.setattr(data, "_download", no_download)
    # --status on a machine without the files (and without the device the workers named): the
    # protocol is the one the storage's cells ran with, and the first line says where it came from.
    assert main([*argv, "--status", "--device", "cuda:7", "--data-dir", str(tmp_path / "none")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("emnist-letters: the data files are not here; protocol resplit, from the")
    assert out[-1].endswith("cells 1 of 1 done")
    nothing = ["run", "grid", "--grid", str(grid), "--runs-dir", str(tmp_path / "runs3"), "--status"]
    assert main(nothing) == 2 and not (tmp_path / "runs3").exists()  # looking creates nothing
    err = capsys.readouterr().err
    assert err.startswith("error: --status: the emnist-letters files are not here") and err.count("\n") == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    other = tmp_path / "runs2"
    assert main(["run", "grid", "--grid", str(grid), "--runs-dir", str(other), "--data-dir", str(empty)]) == 2
    err = capsys.readouterr().err
    assert "emnist-letters-test-images-idx3-ubyte[.gz]" in err and len(err.strip().splitlines()) == 1
    assert not other.exists() or not any(other.iterdir())
    assert main(["run", "grid", "--grid", str(grid), "--runs-dir", str(other), "--target", "cifar10"]) == 2
    assert "unknown --target 'cifar10'" in capsys.readouterr().err


def test_a_new_dataset_is_one_registry_entry(tmp_path):
    entry = data.register(
        data.Dataset(
            name="test-stripes",
            classes=("h", "v"),
            default_sizes=(40, 10, 10),
            generate=lambda n, seed: (
                torch.randint(
                    0, 255, (n, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
                ),
                torch.arange(n) % 2,
                ("h", "v"),
            ),
        )
    )
    try:
        splits = data.load("test-stripes", seed=1)
        assert (len(splits.train), len(splits.val), len(splits.test)) == (40, 10, 10)
        assert splits.protocol == "synthetic" and data.resolve_protocol("test-stripes") == "synthetic"
    finally:
        del data.DATASETS[entry.name]


def test_a_new_adapter_method_is_one_registry_entry():
    """A toy method (a trainable scale on each output) placed on proj: injected, trained by the lora
    policy through the registry, counted, merged."""
    from torch import nn

    class Scale(nn.Module):
        def __init__(self, base: nn.Linear):
            super().__init__()
            self.base_layer, self.gain = base, nn.Parameter(torch.zeros(base.out_features))

        def forward(self, x):
            return self.base_layer(x) * (1 + self.gain)

    def merge(m, model):
        with torch.no_grad():
            m.base_layer.weight.mul_((1 + m.gain)[:, None])
            m.base_layer.bias.mul_(1 + m.gain)
            m.gain.zero_()

    entry = adapters.register(
        AdapterMethod(
            name="scale",
            description="test method",
            placements=("proj",),
            layer_types=(nn.Linear,),
            wrap=lambda base, s, model: Scale(base),
            trainable=lambda m: [m.gain],
            param_count=lambda base, s, model: base.out_features,
            max_rank=lambda base, s: 1,
            merge=merge,
        )
    )
    try:
        from lorafit import freeze
        from lorafit.config import RunConfig

        cfg = RunConfig(name="s", method="scale", placement="proj", rank=1, policy="lora")
        model = SeedCNN(10)
        assert adapters.count(model, "scale", "proj", cfg.adapter_settings) == 256
        adapters.inject(model, "scale", "proj", AdapterSettings(rank=1))
        assert set(freeze.apply(model, "lora")) == {"proj.gain", "fc.weight", "fc.bias"}
        with torch.no_grad():
            model.proj.gain.normal_()
        x = torch.randn(3, 1, 28, 28)
        out = model(x)
        adapters.merge(model)
        assert torch.allclose(model(x), out, atol=1e-5)
    finally:
        del adapters.ADAPTERS[entry.name]


@pytest.mark.parametrize("ran", ["official", "resplit"])
@pytest.mark.parametrize("tuned", [True, False])
def test_status_without_the_files_takes_the_protocol_the_storage_ran(ran, tuned, tmp_path):
    import optuna

    from bench import tuning
    from bench.progress import status_cells
    from lorafit.config import RunConfig

    cells = [
        RunConfig(name="head", method="head", policy="head", target="emnist-letters", seed=s) for s in (0, 1)
    ]
    storage = optuna.storages.InMemoryStorage()
    ran_as = cells[0].replace(protocol=ran)
    if tuned:  # the tuning study's name carries the protocol
        optuna.create_study(study_name=tuning.study_name("g-local", ran_as), storage=storage)
    else:  # the grid's trials carry the cell ids
        grid = optuna.create_study(study_name="g-local", storage=storage)
        grid.enqueue_trial({}, user_attrs={"cell_id": ran_as.cell_id})
    resolved, notes = status_cells(cells, tmp_path, "g-local", storage, tuned)
    assert [c.protocol for c in resolved] == [ran, ran] and f"protocol {ran}," in notes[0]
    explicit = [c.replace(protocol="official") for c in cells]  # nothing to resolve
    assert status_cells(explicit, tmp_path, "g-local", optuna.storages.InMemoryStorage(), tuned) == (
        explicit,
        [],
    )
