"""One RunConfig -> pretrained backbone (cached) -> adapt -> evaluate -> record.

The backbone is pretrained once per (source data, widths, seed, pretraining settings), cached
on disk by the hash of those settings under runs/backbones/, with a file lock so two workers
never pretrain the same backbone twice. Cells differ only in what happens after it.
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import hashlib
import io
import json
import os
import platform
import subprocess
import time
import traceback
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch
from filelock import FileLock

from lorafit import data, freeze, lora, metrics
from lorafit.config import RunConfig
from lorafit.errors import LorafitError
from lorafit.features import FeatureCache
from lorafit.model import SeedCNN, replace_head
from lorafit.train import accuracy, bf16_supported, fit, pick_device, predict

from bench.records import record_path, write_atomic, write_json


@dataclass
class Context:
    """Where a run reads and writes, and on what it runs: not part of the result's identity."""
    runs_dir: Path
    data_dir: Path | None = None
    device: str | None = None
    cache_budget_mb: float = 2048
    cache: FeatureCache | None = field(default=None, repr=False)
    log: Callable[[str], None] = field(default=print, repr=False)
    backbones: dict = field(default_factory=dict, repr=False)  # digest -> (model, info), this process

    def __post_init__(self) -> None:
        self.runs_dir = Path(self.runs_dir)
        if self.cache is None and self.cache_budget_mb > 0:
            self.cache = FeatureCache(self.cache_budget_mb, self.runs_dir / "features")

    @property
    def torch_device(self) -> torch.device:
        return pick_device(self.device)


# ---------------------------------------------------------------------------------------- data
@lru_cache(maxsize=8)
def _load(name: str, data_dir: str | None, protocol: str, seed: int, sizes: tuple[int, int, int]) -> data.Splits:
    train_n, val_n, test_n = sizes
    if name.startswith("glyphs"):
        total = train_n + val_n + test_n
        return data.load(name, protocol="synthetic", seed=seed, glyphs_size=total,
                         val_fraction=val_n / total, test_fraction=test_n / total)
    splits = data.load(name, data_dir=data_dir, protocol=protocol, seed=seed)
    parts = [data.subsample(part, n, seed) if n else part
             for part, n in ((splits.train, train_n), (splits.val, val_n), (splits.test, test_n))]
    return data.Splits(name=splits.name, protocol=splits.protocol, train=parts[0], val=parts[1],
                       test=parts[2], classes=splits.classes, files=splits.files)


def resolve_protocol(name: str, protocol: str, data_dir: Path | None) -> str:
    """The protocol a run of `name` will use; LorafitError when its files are not there (after
    trying a download when no data directory was named)."""
    if name.startswith("glyphs"):
        return "synthetic"
    try:
        available = data.available_protocol(name, data_dir)
    except LorafitError:
        if data_dir is not None or os.environ.get("LORAFIT_DATA_DIR"):
            raise
        data.load(name, download=True)  # fetched and checksummed by torchvision into the cache
        available = data.available_protocol(name, data_dir)
    if protocol == "official" and available != "official":
        raise LorafitError(f"{name}: the official protocol needs the train and test files, only one "
                           f"split was found; use --profile local (stratified re-split) or add the files")
    return available if protocol == "auto" else protocol


def target_data(cfg: RunConfig, ctx: Context) -> data.Splits:
    protocol = resolve_protocol(cfg.target, cfg.protocol, ctx.data_dir)
    sizes = (cfg.train_size, cfg.val_size, cfg.test_size)
    if cfg.target.startswith("glyphs"):
        sizes = tuple(n or d for n, d in zip(sizes, (2000, 500, 1000)))
    return _load(cfg.target, _str(ctx.data_dir), protocol, cfg.data_seed, sizes)


def source_data(cfg: RunConfig, ctx: Context) -> data.Splits:
    protocol = resolve_protocol(cfg.source, "auto", ctx.data_dir)
    n = cfg.pretrain_size
    if cfg.source.startswith("glyphs"):
        n = n or 3000
        sizes = (n, max(n // 6, 100), max(n // 3, 200))
    else:
        sizes = (n, 0, 0)
    return _load(cfg.source, _str(ctx.data_dir), protocol, cfg.data_seed, sizes)


def _str(p: Path | None) -> str | None:
    return str(p) if p is not None else None


# ------------------------------------------------------------------------------------ backbone
def pretrained_backbone(cfg: RunConfig, ctx: Context, progress: Callable | None = None) -> tuple[SeedCNN, dict]:
    """The source-task model for cfg (trained once, then loaded from runs/backbones/). Keyed by
    the pretraining settings and the identity of the source data (protocol, file hashes)."""
    src = source_data(cfg, ctx)
    key = {**cfg.pretrain_dict(), "protocol": src.protocol, "files": sorted(src.files.items())}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    if digest in ctx.backbones:
        return ctx.backbones[digest]
    folder = ctx.runs_dir / "backbones"
    folder.mkdir(parents=True, exist_ok=True)
    weights, info_path = folder / f"{digest}.pt", folder / f"{digest}.json"
    with FileLock(str(folder / f"{digest}.lock")):
        if weights.exists() and info_path.exists():
            model = SeedCNN(src.num_classes, cfg.widths)
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            ctx.backbones[digest] = model, json.loads(info_path.read_text())
            return ctx.backbones[digest]
        ctx.log(f"pretraining backbone {digest} on {cfg.source} ({len(src.train)} images, "
                f"{cfg.pretrain_epochs} epochs, seed {cfg.seed})")
        torch.manual_seed(cfg.seed)
        model = SeedCNN(src.num_classes, cfg.widths)
        result = fit(model, src.train, src.val, epochs=cfg.pretrain_epochs, lr=cfg.pretrain_lr,
                     batch_size=cfg.pretrain_batch_size, seed=cfg.seed, device=ctx.torch_device,
                     on_epoch=progress)
        if result.status != "complete":
            raise LorafitError(f"backbone pretraining diverged: {result.error}")
        model.cpu()
        info = {"digest": digest, "settings": cfg.pretrain_dict(), "protocol": src.protocol,
                "source_test_acc": accuracy(model, src.test, device=ctx.torch_device),
                "source_val_acc": result.best_val_acc, "train_s": result.train_s,
                "images_per_s": result.images_per_s, "curve": result.curve, "files": src.files}
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        write_atomic(weights, buffer.getvalue())
        write_json(info_path, info)
        ctx.log(f"backbone {digest}: {cfg.source} test accuracy {info['source_test_acc']:.4f} "
                f"({result.train_s:.1f} s)")
        ctx.backbones[digest] = model, info
        return model, info


# ---------------------------------------------------------------------------------- one cell
def build_model(cfg: RunConfig, ctx: Context, backbone: SeedCNN | None, num_classes: int) -> SeedCNN:
    torch.manual_seed(cfg.seed)
    if cfg.method == "scratch" or backbone is None:
        model = SeedCNN(num_classes, cfg.widths)
    else:
        model = replace_head(copy.deepcopy(backbone), num_classes)
    lora.inject(model, cfg.placement, rank=cfg.rank, alpha=cfg.alpha, shape=cfg.shape)
    freeze.apply(model, cfg.policy)
    return model


def env_info(ctx: Context, splits: data.Splits, src: data.Splits | None) -> dict:
    device = ctx.torch_device
    import optuna
    import torchvision
    return {
        "python": platform.python_version(), "torch": torch.__version__,
        "torchvision": torchvision.__version__, "optuna": optuna.__version__,
        "device": device.type, "cpu": cpu_name(), "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "bf16": bf16_supported(device), "protocol": splits.protocol,
        "target_files": dict(splits.files), "source_files": dict(src.files) if src else {},
    }


@functools.cache
def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or ""


@functools.cache
def git_sha() -> str | None:
    """HEAD of the checkout the code runs from, with "-dirty" when tracked files were modified."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=here).stdout.strip()
        if not sha:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "lorafit", "bench"],
                               capture_output=True, text=True, timeout=5, cwd=here.parent).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


class RunFailed(Exception):
    """A run ended failed or diverged; its record says why. Drivers raise it so Optuna keeps the
    trial as FAIL with the reason (and the grid does not retry it)."""


class _Stop(Exception):
    """Internal: end run_cell early with what the record already holds."""


def run_cell(cfg: RunConfig, ctx: Context, study: str, trial: int | None = None,
             on_epoch: Callable[[int, float], None] | None = None,
             progress: Callable | None = None, run_id: str | None = None) -> dict:
    """Run one configuration and write its record. Failures become a record, not a crash, except
    user errors (LorafitError) and exceptions raised by `on_epoch` (e.g. pruning), which propagate."""
    run = {"id": run_id or cfg.cell_id, "study": study, "trial": trial,
           "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "git_sha": git_sha(), "status": "complete", "error": None}
    record = {"run": run, "config": cfg.to_dict(), "metrics": {}, "curve": [], "analysis": {}, "env": {}}
    t0 = time.perf_counter()
    splits = target_data(cfg, ctx)
    src = source_data(cfg, ctx)
    record["env"] = env_info(ctx, splits, src)
    device = ctx.torch_device
    raised_by_callback: list[BaseException] = []

    def _on_epoch(epoch: int, val_acc: float) -> None:
        if on_epoch is None:
            return
        try:
            on_epoch(epoch, val_acc)
        except BaseException as e:  # a pruning signal: let it through untouched
            raised_by_callback.append(e)
            raise

    try:
        backbone, info = (None, {}) if cfg.method == "scratch" else pretrained_backbone(cfg, ctx, progress)
        model = build_model(cfg, ctx, backbone, splits.num_classes)
        trainable, total = freeze.count_parameters(model)
        result = fit(model, splits.train, splits.val, epochs=cfg.epochs, lr=cfg.lr,
                     batch_size=cfg.batch_size, weight_decay=cfg.weight_decay,
                     patience=cfg.patience or None, seed=cfg.seed, device=device, cache=ctx.cache,
                     on_epoch=_on_epoch)
        record["curve"] = result.curve
        if result.best_epoch == 0:  # diverged in its first epoch: no trained weights to evaluate
            run["status"], run["error"] = result.status, result.error
            record["metrics"] = {"trainable_params": trainable, "total_params": total,
                                 "train_s": result.train_s, "source_acc_before": info.get("source_test_acc")}
            raise _Stop
        preds = predict(model, splits.test.images, device=device, cache=ctx.cache)
        summary = metrics.summary(splits.test.labels, preds)
        m = {"test_acc": summary["acc"], "test_balanced_acc": summary["balanced_acc"],
             "test_macro_f1": summary["macro_f1"], "val_acc": result.best_val_acc,
             "best_epoch": result.best_epoch, "trainable_params": trainable, "total_params": total,
             "adapter_bytes": sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad),
             "train_s": result.train_s, "images_per_s": result.images_per_s,
             "peak_mem_mb": result.peak_mem_mb, "cached_stages": ",".join(result.cached_stages),
             "source_acc_before": info.get("source_test_acc"), "source_acc_after": None,
             "train_images": len(splits.train), "val_images": len(splits.val),
             "test_images": len(splits.test), "backbone": info.get("digest")}
        if backbone is not None:
            # Forgetting: the adapted network (adapters active) under the original source head.
            probe = copy.deepcopy(model)
            probe.fc = copy.deepcopy(backbone.fc)
            m["source_acc_after"] = accuracy(probe, src.test, device=device)
        record["metrics"] = m
        record["analysis"] = {"classes": list(splits.classes),
                              "per_class_acc": metrics.per_class_accuracy(splits.test.labels, preds, splits.num_classes),
                              "confusion": metrics.confusion(splits.test.labels, preds, splits.num_classes).tolist()}
        if result.status != "complete":
            run["status"], run["error"] = result.status, result.error
    except _Stop:
        pass
    except LorafitError:
        raise
    except Exception as e:
        if raised_by_callback and e is raised_by_callback[0]:
            raise
        run["status"] = "failed"
        run["error"] = f"{type(e).__name__}: {e}"
        record["traceback"] = traceback.format_exc(limit=5)
    record["metrics"]["wall_s"] = time.perf_counter() - t0
    write_json(record_path(ctx.runs_dir, study, run["id"]), record)
    return record
