"""The command line's shared pieces: runs directory, storage, data folder, common flags."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from lorafit.data import DATASETS
from lorafit.errors import LorafitError


def data_names() -> list[str]:
    return list(DATASETS)


def runs_dir(path: str) -> Path:
    runs = Path(path)
    try:
        runs.mkdir(parents=True, exist_ok=True)
        probe = runs / f".write-probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise LorafitError(
            f"runs directory {runs} is not writable ({e.strerror}); pass --runs-dir DIR"
        ) from None
    return runs


def positive(flag: str):
    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be an integer >= 1, got {value!r}") from None
        if n < 1:
            raise argparse.ArgumentTypeError(f"{flag} must be >= 1, got {n}")
        return n

    return parse


def add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder with the official MNIST/EMNIST files (default: $LORAFIT_DATA_DIR, else "
        "download with torchvision into the cache)",
    )


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present)")


def common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--runs-dir", default="runs", help="where storage, backbones, records, charts go (default ./runs)"
    )
    add_data_dir(p)
    p.add_argument(
        "--storage",
        default=None,
        help="Optuna storage URL (default sqlite:///RUNS/optuna.db; "
        "postgresql://USER@HOST/DB for many machines)",
    )
    add_device(p)
    p.add_argument(
        "--cache-mb",
        type=float,
        default=2048,
        help="memory budget for frozen-prefix feature caches (0 disables them)",
    )
    p.add_argument(
        "--threads",
        type=positive("--threads"),
        default=None,
        help="CPU threads per worker (default: PyTorch's, one per core); on 2 cores two workers "
        "at --threads 1 trained 1.6x the images of one at 2",
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars (they are shown only on a terminal anyway)",
    )
    p.add_argument(
        "--target",
        default=None,
        help=f"target dataset (default: the profile's); one of {', '.join(data_names())}",
    )


def runs_and_storage(args):
    """The runs directory and the Optuna storage; a server URL is checked before anything is written."""
    from bench import storage

    storage.quiet_optuna()
    if args.storage:
        store = storage.open_storage(args.storage, Path(args.runs_dir))
        return runs_dir(args.runs_dir), store
    runs = runs_dir(args.runs_dir)
    return runs, storage.open_storage(None, runs)


def data_dir_of(path: str | None) -> Path | None:
    data_dir = Path(path) if path else None
    if data_dir is not None and not data_dir.is_dir():
        raise LorafitError(
            f"--data-dir {data_dir} does not exist; pass the folder that holds the official files, "
            "or use --profile smoke"
        )
    return data_dir


def resolved(cells, ctx, profile: str):
    """Every cell with its protocol resolved (once per target); a real-data profile whose files are
    missing fails here, before anything is written."""
    try:
        return [ctx.resolve(c) for c in cells]
    except LorafitError as e:
        hint = "" if "--data-dir" in str(e) else " (pass --data-dir DIR, or use --profile smoke)"
        raise LorafitError(f"profile {profile} needs data it cannot find: {e}{hint}") from None


def target_of(args) -> dict:
    if args.target is None:
        return {}
    if args.target not in DATASETS:
        raise LorafitError(f"unknown --target {args.target!r}; choose one of {', '.join(DATASETS)}")
    return {"target": args.target}
