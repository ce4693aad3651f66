"""Throughput workloads: the seed post's pipeline against the suite's, same model, batch size and
images. Shared by the pytest-benchmark suite (tests/benchmarks/) and `python -m bench perf`,
which runs each once (after a warm-up) and prints the ratios from that one run.

The seed pipeline is the post's way: a torchvision MNIST dataset with ToTensor() + Normalize
transforms and a DataLoader. Its images are the same uint8 arrays the suite trains on, written
as the official IDX files so torchvision reads them exactly as it reads MNIST.
"""

from __future__ import annotations

import argparse
import copy
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from lorafit import adapters, freeze, glyphs
from lorafit.config import RunConfig
from lorafit.data import Split
from lorafit.features import FeatureCache
from lorafit.io import write_atomic
from lorafit.model import SeedCNN, replace_head
from lorafit.train import MEAN, STD, bf16_supported, fit, pick_device, predict

N_IMAGES = 8192
BATCH = 128


@dataclass
class Workload:
    images: torch.Tensor  # uint8 [N,1,28,28]
    labels: torch.Tensor
    root: Path  # holds MNIST/raw/* with the same images, for torchvision

    @property
    def split(self) -> Split:
        return Split(self.images, self.labels)


def _write_idx(path: Path, array: torch.Tensor) -> None:
    a = array.numpy()
    header = struct.pack(">HBB", 0, 8, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape)
    write_atomic(path, header + a.tobytes())


def make_workload(n: int, root: Path) -> Workload:
    """n synthetic 28x28 characters (62 classes), in memory and as torchvision-readable IDX files
    under root."""
    images, labels, _ = glyphs.generate("chars", n, seed=0)
    root = Path(root)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    _write_idx(raw / "train-images-idx3-ubyte", images[:, 0])
    _write_idx(raw / "train-labels-idx1-ubyte", labels.to(torch.uint8))
    _write_idx(raw / "t10k-images-idx3-ubyte", images[:16, 0])
    _write_idx(raw / "t10k-labels-idx1-ubyte", labels[:16].to(torch.uint8))
    return Workload(images, labels, root)


def backbone(num_classes: int = 62, seed: int = 0) -> SeedCNN:
    torch.manual_seed(seed)
    return replace_head(SeedCNN(10), num_classes)


def lora_proj_model(base: SeedCNN) -> SeedCNN:
    model = copy.deepcopy(base)
    adapters.inject(model, "lora", "proj", adapters.AdapterSettings(rank=8, alpha=8))
    freeze.apply(model, "lora")
    return model


def full_model(base: SeedCNN) -> SeedCNN:
    model = copy.deepcopy(base)
    freeze.apply(model, "full")
    return model


# ------------------------------------------------------------------ the seed post's pipeline
def seed_loader(w: Workload, batch_size: int = BATCH, train: bool = True) -> DataLoader:
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])
    ds = datasets.MNIST(str(w.root), train=True, download=False, transform=tf)
    return DataLoader(ds, batch_size=batch_size, shuffle=train)


def seed_train_epoch(model: SeedCNN, w: Workload, batch_size: int = BATCH, lr: float = 1e-3) -> float:
    """One epoch, the post's way (fp32, a plain training loop); returns images/s."""
    device = pick_device(None)
    model.to(device).train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    t0 = time.perf_counter()
    n = 0
    for x, y in seed_loader(w, batch_size):
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        n += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


@torch.no_grad()
def seed_eval(model: SeedCNN, w: Workload, batch_size: int = 1000) -> float:
    device = pick_device(None)
    model.to(device).eval()
    t0 = time.perf_counter()
    n = 0
    for x, _ in seed_loader(w, batch_size, train=False):
        model(x.to(device)).argmax(1)
        n += len(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


# ---------------------------------------------------------------------------- the suite's way
def suite_train_epoch(
    model: SeedCNN, w: Workload, batch_size: int = BATCH, lr: float = 1e-3, cache: FeatureCache | None = None
) -> float:
    """One epoch with lorafit.train.fit (validation on 256 images); returns images/s over the
    whole call, so cache building is included."""
    val = Split(w.images[:256], w.labels[:256])
    t0 = time.perf_counter()
    cfg = RunConfig(name="perf", method="full", epochs=1, lr=lr, batch_size=batch_size, seed=0)
    fit(model, w.split, val, cfg, cache=cache)
    return len(w.images) / (time.perf_counter() - t0)


def suite_eval(model: SeedCNN, w: Workload, batch_size: int = 256) -> float:
    t0 = time.perf_counter()
    predict(model, w.split, batch_size=batch_size)
    return len(w.images) / (time.perf_counter() - t0)


# The methods whose merged and unmerged inference `bench perf` times: native LoRA and the
# PEFT-backed ones (lorafit.peft_methods); every one of them can merge.
MERGE_METHODS = ("lora", "dora", "loha", "lokr", "ia3", "oft")
MERGE_IMAGES = 2048  # images per pass in the per-method comparison
MERGE_ROUNDS = 3


def placement_for(method: str, placement: str) -> str:
    """`placement`, or proj where the method cannot take it (OFT takes proj only)."""
    return placement if placement in adapters.placements_of(method) else "proj"


def adapted_model(base: SeedCNN, method: str = "lora", placement: str = "proj", rank: int = 8) -> SeedCNN:
    """`method` at `placement` (rank 8; IA3 has no rank: 1), the lora freeze policy, and every
    adapter tensor moved off its (identity) init so that merging changes the weights."""
    model = copy.deepcopy(base)
    rank = 1 if method == "ia3" else rank
    alpha = adapters.ADAPTERS[method].default_alpha(rank)
    adapters.inject(model, method, placement, adapters.AdapterSettings(rank=rank, alpha=alpha))
    freeze.apply(model, "lora")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in adapters.trainable_parameters(model):
            p.add_(torch.randn(p.shape, generator=g) * 0.01)
    return model


def merged_variants(base: SeedCNN, method: str = "lora", placement: str = "proj") -> dict[str, SeedCNN]:
    """base, `method` r8 at `placement` unmerged, and the same merged: for inference cost."""
    unmerged = adapted_model(base, method, placement)
    merged = copy.deepcopy(unmerged)
    adapters.merge(merged)
    return {"base": copy.deepcopy(base), f"{method}_unmerged": unmerged, f"{method}_merged": merged}


# ------------------------------------------------------------------------------------- FLOPs
def train_flops_per_image(model: SeedCNN) -> float:
    """Forward multiply-adds x 2, x 3 for forward + backward (the usual estimate)."""
    macs = 0
    hooks = []

    def count(module, inp, out):
        nonlocal macs
        if isinstance(module, torch.nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            macs += out.numel() * k
        elif isinstance(module, torch.nn.Linear):
            macs += out.numel() * module.in_features

    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            hooks.append(m.register_forward_hook(count))
    with torch.no_grad():
        model.cpu()(torch.zeros(1, 1, 28, 28))
    for h in hooks:
        h.remove()
    return 3 * 2 * macs


def measured_peak_flops(bf16: bool, seconds: float = 1.0) -> float:
    """What a large matmul achieves on this device: the practical peak to compare against."""
    device = pick_device(None)
    dtype = torch.bfloat16 if bf16 else torch.float32
    size = 4096
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n * 2 * size**3 / (time.perf_counter() - t0)


# --------------------------------------------------------------------------------- `bench perf`
def run_all(
    n: int = N_IMAGES, batch_size: int = BATCH, log=print, merge_placement: str = "all"
) -> dict[str, float]:
    """Every workload once after a short warm-up, in one process; returns images/s by name."""
    with tempfile.TemporaryDirectory(prefix="lorafit-perf-") as tmp:
        return _run_all(
            make_workload(n, Path(tmp) / "main"),
            make_workload(1024, Path(tmp) / "warm-up"),
            batch_size,
            log,
            merge_placement,
        )


def _run_all(
    w: Workload, small: Workload, batch_size: int, log, merge_placement: str = "all"
) -> dict[str, float]:
    base = backbone()
    for fn in (
        lambda: seed_train_epoch(full_model(base), small, batch_size),
        lambda: suite_train_epoch(full_model(base), small, batch_size),
    ):
        fn()  # warm-up: allocator, oneDNN primitives, file cache
    results = {}
    warm = FeatureCache(2048)  # filled once here: what every later epoch and cell of this backbone reuses
    suite_train_epoch(lora_proj_model(base), w, batch_size, cache=warm)
    for name, fn in [
        ("seed_pipeline_full", lambda: seed_train_epoch(full_model(base), w, batch_size)),
        ("lorafit_full", lambda: suite_train_epoch(full_model(base), w, batch_size)),
        ("seed_pipeline_lora_proj", lambda: seed_train_epoch(lora_proj_model(base), w, batch_size)),
        (
            "lorafit_lora_proj",
            lambda: suite_train_epoch(lora_proj_model(base), w, batch_size, cache=FeatureCache(2048)),
        ),
        (
            "lorafit_lora_proj_warm",
            lambda: suite_train_epoch(lora_proj_model(base), w, batch_size, cache=warm),
        ),
        ("seed_pipeline_eval", lambda: seed_eval(base, w)),
        ("lorafit_eval", lambda: suite_eval(base, w)),
    ]:
        results[name] = fn()
        log(f"{name:<26} {results[name]:>10,.0f} images/s")
    for name, value in compare_inference(base, w).items():
        results[name] = value
        log(f"{name:<26} {value:>10,.0f} images/s (best of 9, interleaved)")
    log(
        f"merged vs unmerged vs base, per method ({min(MERGE_IMAGES, len(w.images))} images, "
        f"best of {MERGE_ROUNDS}, interleaved):"
    )
    results.update(compare_methods(base, w, merge_placement, log=log))
    return results


def compare_inference(
    base: SeedCNN, w: Workload, rounds: int = 9, variants: dict[str, SeedCNN] | None = None
) -> dict[str, float]:
    """Base vs unmerged vs merged (default: LoRA r8 on proj), interleaved round by round so that
    machine noise hits all three alike; the best round of each (differences of a few % are below
    this machine's noise for any single pass)."""
    variants = variants or merged_variants(base)
    best = {k: 0.0 for k in variants}
    for _ in range(rounds):
        for k, m in variants.items():
            best[k] = max(best[k], suite_eval(m, w))
    return {f"infer_{k}": v for k, v in best.items()}


def compare_methods(
    base: SeedCNN,
    w: Workload,
    placement: str = "all",
    methods: tuple[str, ...] = MERGE_METHODS,
    rounds: int = MERGE_ROUNDS,
    images: int = MERGE_IMAGES,
    log=None,
) -> dict[str, float]:
    """Per method at `placement` (proj where it cannot take it): base, unmerged and merged, each
    method's three interleaved as in compare_inference, on the first `images` images. Keys:
    infer_<placement>_<method>_{base,unmerged,merged}, images/s."""
    sub = Workload(w.images[:images], w.labels[:images], w.root)
    results = {}
    for method in methods:
        where = placement_for(method, placement)
        found = compare_inference(base, sub, rounds, merged_variants(base, method, where))
        for state in ("base", "unmerged", "merged"):
            key = "infer_base" if state == "base" else f"infer_{method}_{state}"
            results[f"infer_{where}_{method}_{state}"] = found[key]
        if log is not None:
            log(merge_line(results, method, where))
    return results


def merge_line(results: dict[str, float], method: str, where: str) -> str:
    """One report line: merged and unmerged images/s over the base model's, for a method."""
    base = results[f"infer_{where}_{method}_base"]
    merged, unmerged = (results[f"infer_{where}_{method}_{s}"] / base for s in ("merged", "unmerged"))
    what = f"inference, {method} on {where}, merged / base:"
    return f"{what:<49}{merged:.3f} (unmerged {unmerged:.3f})"


def report(results: dict[str, float]) -> str:
    bf16 = bf16_supported(pick_device(None))
    flops = train_flops_per_image(backbone())
    peak = measured_peak_flops(bf16)
    achieved = results["lorafit_full"] * flops

    def ratio(what: str, num: str, den: str, digits: int = 2, unit: str = "x") -> str:
        return f"{what + ':':<49}{results[num] / results[den]:.{digits}f}{unit}"

    lines = [
        ratio("full fine-tuning, lorafit / seed pipeline", "lorafit_full", "seed_pipeline_full"),
        ratio("LoRA r8 on proj, lorafit / seed pipeline", "lorafit_lora_proj", "seed_pipeline_lora_proj"),
        ratio(
            "LoRA r8 on proj, warm cache / seed pipeline", "lorafit_lora_proj_warm", "seed_pipeline_lora_proj"
        ),
        ratio("LoRA r8 on proj, warm cache / seed full", "lorafit_lora_proj_warm", "seed_pipeline_full"),
        ratio("evaluation, lorafit / seed pipeline", "lorafit_eval", "seed_pipeline_eval"),
        ratio("inference, merged LoRA / base model", "infer_lora_merged", "infer_base", 3, ""),
        ratio("inference, unmerged LoRA / base model", "infer_lora_unmerged", "infer_base", 3, ""),
        f"training FLOPs per image (3 x forward):          {flops / 1e6:.1f} MFLOP",
        f"achieved in lorafit_full:                        {achieved / 1e9:.1f} GFLOP/s",
        f"measured {'bf16' if bf16 else 'fp32'} matmul (4096^2):               {peak / 1e9:.1f} GFLOP/s "
        f"-> {100 * achieved / peak:.0f}% of it",
    ]
    for key in results:
        if key.endswith("_base") and key.count("_") >= 3:  # infer_<placement>_<method>_base
            _, where, method, _ = key.split("_")
            lines.append(merge_line(results, method, where))
    return "\n".join(lines)


def _at_least(minimum: int):
    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
        if n < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {n}")
        return n

    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", type=_at_least(512), default=N_IMAGES, help="images per workload (>= 512)")
    p.add_argument("--batch-size", type=_at_least(1), default=BATCH)
    p.add_argument(
        "--merge-placement",
        choices=adapters.PLACEMENTS[1:-1],
        default="all",
        help="where the per-method merged/unmerged inference comparison puts its adapters (OFT: proj)",
    )


def main(args: argparse.Namespace) -> int:
    print(
        f"device {pick_device(None)}, torch threads {torch.get_num_threads()}, "
        f"bf16 {bf16_supported(pick_device(None))}, {args.images} images, batch {args.batch_size}"
    )
    results = run_all(args.images, args.batch_size, merge_placement=args.merge_placement)
    print(report(results))
    return 0
