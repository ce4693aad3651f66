import pytest


def pytest_collection_modifyitems(config, items):
    """The benchmark suite runs only when asked for: `python -m pytest tests/benchmarks --benchmark-only`."""
    if config.getoption("benchmark_only", False):
        return
    skip = pytest.mark.skip(reason="benchmarks run with --benchmark-only")
    for item in items:
        if "benchmarks" in item.nodeid:
            item.add_marker(skip)
