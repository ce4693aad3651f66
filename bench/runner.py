"""One RunConfig -> pretrained backbone (cached) -> adapt -> evaluate -> record."""

from __future__ import annotations

import copy
import datetime as dt
import io
import json
import math
import time
import traceback
from collections.abc import Callable

import torch

from bench.backbone import pretrained_backbone
from bench.context import Context
from bench.profiles import PROFILES
from bench.provenance import env_info, git_sha
from bench.records import record_path, write_json
from lorafit import adapters, backbones, data, freeze, metrics
from lorafit.budget import time_to
from lorafit.config import RunConfig
from lorafit.errors import LorafitError
from lorafit.model import head_module, replace_head, set_head
from lorafit.train import accuracy, fit, predict


def build_model(cfg: RunConfig, backbone: torch.nn.Module | None, num_classes: int) -> torch.nn.Module:
    """The model a run trains: the backbone with a fresh head (or a fresh network for scratch),
    adapters injected, the freeze policy applied. Seeded, so seed s gives every configuration the
    same new head."""
    torch.manual_seed(cfg.seed)
    if cfg.method == "scratch" or backbone is None:
        model = backbones.build(cfg.backbone, num_classes, cfg.widths)
    else:
        model = replace_head(copy.deepcopy(backbone), num_classes)
    adapters.inject(model, cfg.method, cfg.placement, cfg.adapter_settings)
    freeze.apply(model, cfg.policy)
    if cfg.lr == 0:  # the tuning stage's fallback: everything but the head at rest
        freeze.at_rest(model)
    return model


class _Stop(Exception):
    """Internal: end run_cell early with what the record already holds."""


def run_cell(
    cfg: RunConfig,
    ctx: Context,
    study: str,
    trial: int | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    run_id: str | None = None,
    tuning: dict | None = None,
    with_ledger: bool = True,
) -> dict:
    """Run one configuration and write its record. Failures become a record, not a crash, except
    user errors (LorafitError) and exceptions raised by `on_epoch` (e.g. pruning), which propagate.
    `tuning` (how the rates were chosen) goes into the record as is; absent means fixed rates.
    `with_ledger=False` (tuning trials) skips the inference-cost measurements."""
    run = {
        "id": run_id or cfg.cell_id,
        "study": study,
        "trial": trial,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_sha": git_sha(),
        "status": "complete",
        "error": None,
    }
    record = {
        "run": run,
        "config": cfg.to_dict(),
        "metrics": {},
        "curve": [],
        "analysis": {},
        "env": {},
        "tuning": tuning or {"mode": "fixed"},
    }
    t0 = time.perf_counter()
    splits, src = ctx.target(cfg), ctx.source(cfg)
    device = ctx.torch_device
    record["env"] = env_info(device, splits, src)
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
        backbone, info = (None, {}) if cfg.method == "scratch" else pretrained_backbone(cfg, ctx)
        model = build_model(cfg, backbone, splits.num_classes)
        trainable, total = freeze.count_parameters(model)
        result = fit(
            model, splits.train, splits.val, cfg, device=device, cache=ctx.features, on_epoch=_on_epoch
        )
        record["curve"] = result.curve
        if result.best_epoch == 0:  # diverged in its first epoch: no trained weights to evaluate
            run["status"], run["error"] = result.status, result.error
            record["metrics"] = {
                "trainable_params": trainable,
                "total_params": total,
                "train_s": result.train_s,
                "source_acc_before": info.get("source_test_acc"),
            }
            raise _Stop
        preds = predict(model, splits.test, device=device, cache=ctx.features)
        record["metrics"] = _evaluate(
            model, backbone, preds, splits, src, ctx, info, result, trainable, total
        )
        if with_ledger:
            record["metrics"].update(
                timed_elsewhere(ctx, study, cfg) or ledger(model, splits.test, device, cfg)
            )
        record["analysis"] = _analysis(splits, preds)
        record["analysis"]["adapters"] = _adapter_ranks(model, cfg)
        ranks = [
            a["effective_rank"]
            for a in record["analysis"]["adapters"].values()
            if a["effective_rank"] is not None
        ]
        record["metrics"]["effective_rank_min"] = min(ranks) if ranks else None
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


def _evaluate(
    model: torch.nn.Module,
    backbone: torch.nn.Module | None,
    preds: torch.Tensor,
    splits: data.Splits,
    src: data.Splits,
    ctx: Context,
    info: dict,
    result,
    trainable: int,
    total: int,
) -> dict:
    device = ctx.torch_device
    summary = metrics.summary(splits.test.labels, preds)
    m = {
        "test_acc": summary["acc"],
        "test_balanced_acc": summary["balanced_acc"],
        "test_macro_f1": summary["macro_f1"],
        "val_acc": result.best_val_acc,
        "best_epoch": result.best_epoch,
        "trainable_params": trainable,
        "total_params": total,
        "adapter_bytes": sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad),
        "train_s": result.train_s,
        "images_per_s": result.images_per_s,
        "peak_mem_mb": result.peak_mem_mb,
        "cached_stages": ",".join(result.cached_stages),
        "source_acc_before": info.get("source_test_acc"),
        "source_acc_after": None,
        "train_images": len(splits.train),
        "val_images": len(splits.val),
        "test_images": len(splits.test),
        "backbone": info.get("digest"),
        "epochs_trained": len(result.curve),
        "stop_reason": result.stop_reason,
        # Time to accuracy: what reaching 99% of the run's best validation accuracy cost.
        **time_to(result.curve, len(splits.train)),
    }
    if backbone is not None:
        # Forgetting: the adapted network (adapters active) under the original source head.
        probe = copy.deepcopy(model)
        set_head(probe, copy.deepcopy(head_module(backbone)))
        m["source_acc_after"] = accuracy(probe, src.test, device=device)
    return m


def reuse_tuning_run(
    cfg: RunConfig, ctx: Context, study: str, trial: int | None, tuning: dict | None
) -> dict | None:
    """The record of a cell the tuning stage already ran: its selected candidate trained exactly
    this configuration (the tuning seed at the selected rates), so the seed cell is that run,
    copied under the cell's id, plus the parameter ledger (sizes and inference speeds depend only
    on the architecture, measured on a freshly built model). None when there is no such run."""
    source = (tuning or {}).get("record")
    path = ctx.runs_dir / "records" / f"{source}.json" if source else None
    if path is None or not path.is_file():
        return None
    record = json.loads(path.read_text())
    if record["run"]["status"] != "complete" or RunConfig.from_dict(record["config"]) != cfg:
        return None
    record["run"].update(id=cfg.cell_id, study=study, trial=trial, reused_from=source)
    record["tuning"] = tuning
    timed = timed_elsewhere(ctx, study, cfg)
    if timed is None:  # the configuration's first seed here: build the model to time it
        splits = ctx.target(cfg)
        backbone = None if cfg.method == "scratch" else pretrained_backbone(cfg, ctx)[0]
        timed = ledger(build_model(cfg, backbone, splits.num_classes), splits.test, ctx.torch_device, cfg)
    record["metrics"].update(timed)
    write_json(record_path(ctx.runs_dir, study, cfg.cell_id), record)
    return record


LEDGER_IMAGES, LEDGER_ROUNDS = 1024, 3  # images: the profile's ledger_images where it sets one
# What the ledger measures that depends on the architecture only, not on the trained weights.
ARCHITECTURE_LEDGER = (
    "adapter_file_bytes",
    "infer_unmerged_rel",
    "infer_merged_rel",
    "ledger_images",
    "ledger_rounds",
)


def timed_elsewhere(ctx: Context, study: str, cfg: RunConfig) -> dict | None:
    """The ledger another seed of this configuration already measured in this study (file size
    and inference speeds depend on the architecture only), with the run it came from; None when
    no other seed has one. So inference is timed once per configuration, not once per seed."""
    for path in sorted((ctx.runs_dir / "records" / study).glob(f"{cfg.label}-s*.json")):
        record = json.loads(path.read_text())
        metrics = record.get("metrics") or {}
        if record["config"].get("seed") == cfg.seed or not all(k in metrics for k in ARCHITECTURE_LEDGER):
            continue
        if RunConfig.from_dict({**record["config"], "seed": cfg.seed}) == cfg:
            return {k: metrics[k] for k in ARCHITECTURE_LEDGER} | {"ledger_from": record["run"]["id"]}
    return None


def _saved_bytes(tensors: dict[str, torch.Tensor]) -> int:
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in tensors.items()}, buffer)
    return buffer.getbuffer().nbytes


def ledger(
    model: torch.nn.Module, split: data.Split, device: torch.device, cfg: RunConfig | None = None
) -> dict:
    """The parameter ledger beyond the counts: the adapter's file size (torch.save of its tensors
    alone; None without one) and inference speed unmerged and merged over the base model's
    (images/s ratios on the profile's ledger_images test images, best of LEDGER_ROUNDS interleaved rounds;
    None without an adapter, merged None where the method cannot merge)."""
    n = PROFILES.get(cfg.profile, {}).get("ledger_images", LEDGER_IMAGES) if cfg else LEDGER_IMAGES
    out = {
        "adapter_file_bytes": _saved_bytes(adapters.adapter_state(model)) if model.adapted else None,
        "infer_unmerged_rel": None,
        "infer_merged_rel": None,
        "ledger_images": min(n, len(split)),
        "ledger_rounds": LEDGER_ROUNDS,
    }
    if not model.adapted:
        return out
    base = adapters.without_adapters(model)
    if base is None:
        return out
    images = split.images[:n]
    variants = {"base": base, "unmerged": model}
    if adapters.mergeable(model):
        variants["merged"] = copy.deepcopy(model)
        adapters.merge(variants["merged"])
    best = dict.fromkeys(variants, math.inf)
    for _ in range(LEDGER_ROUNDS):
        for name, variant in variants.items():
            t0 = time.perf_counter()
            predict(variant, images, device=device)  # returns CPU tensors: the device has finished
            best[name] = min(best[name], time.perf_counter() - t0)
    out["infer_unmerged_rel"] = best["base"] / best["unmerged"]
    if "merged" in variants:
        out["infer_merged_rel"] = best["base"] / best["merged"]
    return out


def _adapter_ranks(model: torch.nn.Module, cfg: RunConfig) -> dict:
    """Per adapted layer: nominal rank, the bound its shape allows, and the learned update's rank."""
    bounds = adapters.rank_bounds(model, cfg.method, cfg.placement, cfg.adapter_settings)
    return {
        path: {
            "method": cfg.method,
            "nominal_rank": cfg.rank,
            "rank_bound": bounds.get(path),
            "effective_rank": effective,
        }
        for path, effective in adapters.effective_ranks(model).items()
    }


def _analysis(splits: data.Splits, preds: torch.Tensor) -> dict:
    n = splits.num_classes
    return {
        "classes": list(splits.classes),
        "per_class_acc": metrics.per_class_accuracy(splits.test.labels, preds, n),
        "confusion": metrics.confusion(splits.test.labels, preds, n).tolist(),
    }
