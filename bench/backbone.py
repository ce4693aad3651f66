"""The shared pretrained backbone: the configuration's network (lorafit.backbones) trained on the
source task, once; a user's network that comes with its weights is loaded instead.

Pretrained once per (source data identity, network, widths, seed, pretraining settings), cached on disk
under runs/backbones/<digest>.pt|.json with a file lock, so two workers never pretrain the same
backbone twice, and memoised in the Context. Cells differ only in what happens after it. A copy
goes to the user's cache folder (<cache>/backbones), so another runs directory with the same
settings and source files copies it instead of pretraining again.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import sys
from pathlib import Path

import torch
from filelock import FileLock
from tqdm import tqdm

from bench.context import Context
from bench.records import write_json
from lorafit import backbones
from lorafit.config import RunConfig
from lorafit.data import default_cache_dir
from lorafit.errors import LorafitError, first_line
from lorafit.io import write_atomic
from lorafit.train import accuracy, fit


def backbone_digest(cfg: RunConfig, ctx: Context) -> str:
    """Keyed by the pretraining settings and the identity of the source data (protocol, file hashes)."""
    src = ctx.source(cfg)
    key = {**cfg.pretrain_dict(), "protocol": src.protocol, "files": sorted(src.files.items())}
    weights = backbones.entry(cfg.backbone).weights
    if weights:  # given, not trained here: keyed by the file's bytes
        key["weights"] = _file_digest(weights, Path(weights).stat().st_mtime_ns)
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


@functools.cache
def _file_digest(path: str, mtime_ns: int) -> str:
    """sha256 of a file, read once per process (and again only when the file changes)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _shared_dir() -> Path:
    """Backbones shared by every runs directory of this user: <cache folder>/backbones
    ($LORAFIT_CACHE_DIR, default ~/.cache/lorafit/data, as for the data caches)."""
    return default_cache_dir() / "backbones"


def _shared_copy(digest: str) -> tuple[Path, Path] | None:
    folder = _shared_dir()
    pair = (folder / f"{digest}.pt", folder / f"{digest}.json")
    return pair if all(p.is_file() for p in pair) else None


def _share(digest: str, weights: bytes, info: dict) -> None:
    """Best effort: a read-only or full cache folder only costs a later pretraining."""
    folder = _shared_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / f"{digest}.pt", weights)
        write_json(folder / f"{digest}.json", info)
    except OSError:
        pass


def pretrained_backbone(
    cfg: RunConfig, ctx: Context, show_progress: bool | None = None
) -> tuple[torch.nn.Module, dict]:
    """The source-task model for cfg and its info (trained here, or loaded from runs/backbones/).

    Pretraining has its own progress bar (shown only on a terminal unless `show_progress` says
    otherwise), so its time never shows up in a cell's epochs."""
    digest = backbone_digest(cfg, ctx)
    if digest in ctx.backbones:
        return ctx.backbones[digest]
    src = ctx.source(cfg)
    folder = ctx.runs_dir / "backbones"
    folder.mkdir(parents=True, exist_ok=True)
    weights, info_path = folder / f"{digest}.pt", folder / f"{digest}.json"
    with FileLock(str(folder / f"{digest}.lock")):
        shared = _shared_copy(digest)
        if not (weights.exists() and info_path.exists()) and shared:
            # Content-keyed (settings + source files), so another runs directory's is the same model.
            write_atomic(weights, shared[0].read_bytes())
            write_atomic(info_path, shared[1].read_bytes())
            ctx.log(f"backbone {digest}: copied from the shared backbone cache {shared[0].parent}")
        if weights.exists() and info_path.exists():
            model = backbones.build(cfg.backbone, src.num_classes, cfg.widths)
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            ctx.backbones[digest] = model, json.loads(info_path.read_text())
            return ctx.backbones[digest]
        if backbones.entry(cfg.backbone).weights:
            ctx.backbones[digest] = _given(cfg, ctx, digest)
            return ctx.backbones[digest]
        pre = cfg.pretraining()
        ctx.log(
            f"pretraining backbone {digest} on {cfg.source} ({len(src.train)} images, "
            f"{pre.epochs} epochs, seed {cfg.seed})"
        )
        bar = tqdm(
            total=pre.epochs,
            desc=f"  pretraining {digest}",
            unit="ep",
            leave=False,
            dynamic_ncols=True,
            disable=not sys.stderr.isatty() if show_progress is None else not show_progress,
        )

        def on_epoch(epoch: int, val_acc: float) -> None:
            bar.update(1)
            bar.set_postfix(val_acc=f"{val_acc:.4f}")

        torch.manual_seed(cfg.seed)
        model = backbones.build(cfg.backbone, src.num_classes, cfg.widths)
        try:
            result = fit(model, src.train, src.val, pre, device=ctx.torch_device, on_epoch=on_epoch)
        finally:
            bar.close()
        if result.status != "complete":
            raise LorafitError(f"backbone pretraining diverged: {result.error}")
        model.cpu()
        info = {
            "digest": digest,
            "settings": cfg.pretrain_dict(),
            "protocol": src.protocol,
            "source_test_acc": accuracy(model, src.test, device=ctx.torch_device),
            "source_val_acc": result.best_val_acc,
            "train_s": result.train_s,
            "images_per_s": result.images_per_s,
            "curve": result.curve,
            "files": src.files,
        }
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        write_atomic(weights, buffer.getvalue())
        write_json(info_path, info)
        _share(digest, buffer.getvalue(), info)
        ctx.log(
            f"backbone {digest}: {cfg.source} test accuracy {info['source_test_acc']:.4f} "
            f"({result.train_s:.1f} s)"
        )
        ctx.backbones[digest] = model, info
        return model, info


def _given(cfg: RunConfig, ctx: Context, digest: str) -> tuple[torch.nn.Module, dict]:
    """A user's network with its own source-task weights (a state-dict file): loaded, measured on
    the source test split, not trained here."""
    src, path = ctx.source(cfg), backbones.entry(cfg.backbone).weights
    model = backbones.build(cfg.backbone, src.num_classes, cfg.widths)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (RuntimeError, OSError, TypeError, AttributeError) as e:
        raise LorafitError(f"backbone {cfg.backbone}: cannot load weights {path}: {first_line(e)}") from None
    info = {
        "digest": digest,
        "settings": cfg.pretrain_dict(),
        "weights": str(path),
        "protocol": src.protocol,
        "source_test_acc": accuracy(model, src.test, device=ctx.torch_device),
        "files": src.files,
    }
    ctx.log(
        f"backbone {digest}: {cfg.backbone}'s given weights {path}, {cfg.source} test accuracy "
        f"{info['source_test_acc']:.4f}"
    )
    return model.cpu(), info
