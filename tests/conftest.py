import os
from pathlib import Path

import pytest
import torch

# Keep test runs reproducible and light on a 2-core machine.
torch.set_num_threads(min(2, os.cpu_count() or 1))

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_data_cache(tmp_path_factory, monkeypatch):
    """Never touch the user's ~/.cache: every test session gets its own data cache."""
    if "LORAFIT_DATA_DIR" not in os.environ:
        monkeypatch.setenv("LORAFIT_DATA_DIR", str(tmp_path_factory.getbasetemp() / "data-cache"))
