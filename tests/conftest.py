import os
from pathlib import Path

import pytest
import torch
from grids import TINY_GRID  # tests/ is on sys.path under pytest

# Keep test runs reproducible and light on a 2-core machine.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _isolated_data_cache(tmp_path_factory, monkeypatch):
    """Never touch the user's ~/.cache: every test session gets its own data cache."""
    monkeypatch.setenv("LORAFIT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "data-cache"))
    monkeypatch.delenv("LORAFIT_DATA_DIR", raising=False)


@pytest.fixture
def tiny_grid(tmp_path):
    """A 4-configuration grid file (fast on the smoke profile); the stem names the study."""

    def make(text: str = TINY_GRID, name: str = "tiny") -> Path:
        path = tmp_path / f"{name}.toml"
        path.write_text(text)
        return path

    return make
