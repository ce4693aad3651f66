"""Result records: one JSON file per finished cell or trial (complete, failed or diverged).

run      id, study, trial, created_at, git_sha (+"-dirty" if lorafit/bench were modified),
         status (complete|failed|diverged), error
config   the RunConfig as a dict
metrics  test_acc, test_balanced_acc, test_macro_f1, val_acc, source_acc_before/after,
         trainable_params, total_params, adapter_bytes (bytes of the trained tensors, i.e. what
         a task must store beside the shared backbone: adapters + head for LoRA, the whole
         model for full/scratch), train_s, images_per_s, peak_mem_mb (lorafit.train.PeakMemory),
         and for the grid's and studies' runs the ledger (bench.runner.ledger): adapter_file_bytes,
         infer_unmerged_rel, infer_merged_rel
curve    [{epoch, train_loss, val_acc, seconds, images_per_s}]
analysis classes, per_class_acc, confusion (rows = true class)
env      python, torch, torchvision, optuna, device, cpu, gpu, bf16, threads, protocol, data files
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from lorafit.errors import LorafitError
from lorafit.io import write_atomic  # noqa: F401  (the harness writes every file through it)


def _finite(obj):
    """NaN/inf -> null: strict JSON that jq and browsers read."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(path: Path, obj: dict) -> None:
    write_atomic(path, json.dumps(_finite(obj), indent=1, sort_keys=True, allow_nan=False) + "\n")


def record_path(runs_dir: Path, study: str, cell_id: str) -> Path:
    return runs_dir / "records" / study / f"{cell_id}.json"


def load_records(runs_dir: Path, study: str | None = None) -> list[dict]:
    """Every record under runs_dir/records (of one study, if given), sorted by path."""
    root = runs_dir / "records"
    if study:
        root = root / study
    if not root.is_dir():
        return []
    records = []
    for path in sorted(root.rglob("*.json")):
        if path.name.startswith("."):
            continue
        try:
            records.append(json.loads(path.read_text()))
        except json.JSONDecodeError as e:
            raise LorafitError(f"{path}: not a valid record ({e}); delete it and re-run its cell") from None
    return records


def find_record(runs_dir: Path, run_id: str) -> dict:
    matches = [
        r for r in load_records(runs_dir) if r["run"]["id"] == run_id or r["run"]["id"].startswith(run_id)
    ]
    if not matches:
        raise LorafitError(f"no record with id {run_id!r} under {runs_dir / 'records'}")
    if len({m["run"]["id"] for m in matches}) > 1:
        raise LorafitError(
            f"run id {run_id!r} is ambiguous: {', '.join(sorted(m['run']['id'] for m in matches)[:5])}"
        )
    return matches[0]


def frame(records: list[dict]) -> pd.DataFrame:
    """One row per record, columns prefixed by section: run.id, config.rank, metrics.test_acc, ..."""
    rows = []
    for r in records:
        row = {}
        for section in ("run", "config", "metrics", "env"):
            for k, v in r.get(section, {}).items():
                if not isinstance(v, (dict, list)) or k == "widths":
                    row[f"{section}.{k}"] = tuple(v) if isinstance(v, list) else v
        rows.append(row)
    return pd.DataFrame(rows)
