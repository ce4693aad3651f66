"""The one atomic file writer: every file lorafit and the harness write (records, backbones,
decompressed data, tensor and feature caches, charts, leaderboards) goes through it.

A file is written under a unique temporary name in its final directory and renamed into place, so
readers and concurrent writers never see a partial file and a failure leaves nothing behind. The
temporary file is created with mode 0o666 minus the process umask (what a plain open() gives).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def temp_path(path: Path) -> Path:
    """A fresh hidden name beside `path` (same filesystem, so the final rename is atomic)."""
    return path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"


def publish(tmp: Path, path: Path) -> None:
    """Move a finished temporary file into place in one step."""
    os.replace(tmp, path)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to fill; on success it replaces `path`, on any error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | Path, content: str | bytes | Callable[[Path], None]) -> None:
    """Write text, bytes, or whatever `content(tmp_path)` writes, to `path` atomically (fsynced)."""
    with atomic_path(path) as tmp:
        if callable(content):
            content(tmp)
            return
        data = content.encode() if isinstance(content, str) else content
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
