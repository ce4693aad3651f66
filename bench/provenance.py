"""What a record says about where and with what it ran: versions, device, CPU/GPU, git, data files."""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import subprocess
from collections import Counter
from pathlib import Path

import torch

from lorafit import data
from lorafit.backbones import DEFAULT as DEFAULT_BACKBONE
from lorafit.train import bf16_supported


def env_info(device: torch.device, splits: data.Splits, src: data.Splits | None) -> dict:
    import optuna
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "optuna": optuna.__version__,
        # PEFT's methods and the statistics run through these; a patch release can change numbers
        **{name: _version(name) for name in ("peft", "numpy", "scipy")},
        "device": device.type,
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "bf16": bf16_supported(device),
        "protocol": splits.protocol,
        "target_files": dict(splits.files),
        "source_files": dict(src.files) if src else {},
    }


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.cache
def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or ""


@functools.cache
def git_sha() -> str | None:
    """HEAD of the checkout the code runs from, with "-dirty" when tracked files were modified."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=here
        ).stdout.strip()
        if not sha:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "lorafit", "bench"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=here.parent,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


# env["bf16"] -> the path's short name and what ran there (lorafit.train.bf16_supported decides)
_PRECISION = {
    True: ("bf16", "{device} with native bf16: bf16 autocast + channels_last"),
    False: ("fp32", "{device} without native bf16: fp32 + channels_last"),
    None: ("unrecorded", "{device}, precision not recorded"),
}
_DESCRIPTION = dict(_PRECISION.values())


def path_of(record: dict) -> str:
    """How one run trained, as a short key: "cpu bf16", "cpu fp32", "cpu unrecorded"."""
    env = record.get("env") or {}
    return f"{env.get('device') or 'cpu'} {_PRECISION[env.get('bf16')][0]}"


def described(path: str) -> str:
    """ "cpu bf16" -> "cpu with native bf16: bf16 autocast + channels_last"."""
    device, precision = path.split(" ", 1)
    return _DESCRIPTION[precision].format(device=device)


def paths_named(counts: list[tuple[str, int]]) -> str:
    """[(path, runs), ...] -> "1 cpu bf16, 2 cpu fp32"."""
    return ", ".join(f"{n:,} {path}" for path, n in counts)


def path_note(records: list[dict], backbones: set[str], device: torch.device) -> str | None:
    """A worker's warning when it will train on another path than earlier runs of its backbones
    did: bf16 and fp32 round differently, so their runs are only poolable where reproduce's
    closing lines show no shift; the leaderboard marks what mixes them."""
    here = path_of({"env": {"device": device.type, "bf16": bf16_supported(device)}})
    earlier = Counter(
        path_of(r) for r in records if (r.get("config") or {}).get("backbone", DEFAULT_BACKBONE) in backbones
    )
    others = sum(n for path, n in earlier.items() if path != here)
    if not others:
        return None
    return (
        f"note: this machine trains as {described(here)}; {others:,} of the {sum(earlier.values()):,} "
        f"earlier runs of {', '.join(sorted(backbones))} here took another "
        f"({paths_named(sorted(earlier.items()))}); the leaderboard marks the rows and tuning stages "
        "that mix paths"
    )
