"""Side by side, same model, batch size and images: the seed post's pipeline (torchvision
ToTensor/Normalize + DataLoader) against the suite's trainer. Each benchmark stores images/s in
extra_info. Run: python -m pytest tests/benchmarks --benchmark-only
(`python -m bench perf` prints the ratios of the same workloads from one run.)
"""

import pytest

from bench import perf
from lorafit.features import FeatureCache

ROUNDS = 3


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    return perf.make_workload(perf.N_IMAGES, tmp_path_factory.mktemp("perf"))  # 62 classes


@pytest.fixture(scope="module")
def base():
    return perf.backbone()


def _measure(benchmark, fn, make_model, n):
    benchmark.pedantic(fn, setup=lambda: ((make_model(),), {}), rounds=ROUNDS, iterations=1, warmup_rounds=1)
    benchmark.extra_info["images"] = n
    benchmark.extra_info["images_per_s"] = n / benchmark.stats.stats.mean


def test_seed_pipeline_full(benchmark, workload, base):
    _measure(
        benchmark, lambda m: perf.seed_train_epoch(m, workload), lambda: perf.full_model(base), perf.N_IMAGES
    )


def test_lorafit_full(benchmark, workload, base):
    _measure(
        benchmark, lambda m: perf.suite_train_epoch(m, workload), lambda: perf.full_model(base), perf.N_IMAGES
    )


def test_seed_pipeline_lora_proj(benchmark, workload, base):
    _measure(
        benchmark,
        lambda m: perf.seed_train_epoch(m, workload),
        lambda: perf.lora_proj_model(base),
        perf.N_IMAGES,
    )


def test_lorafit_lora_proj(benchmark, workload, base):
    """Cold: a new cache every round, so building it is included."""
    _measure(
        benchmark,
        lambda m: perf.suite_train_epoch(m, workload, cache=FeatureCache(2048)),
        lambda: perf.lora_proj_model(base),
        perf.N_IMAGES,
    )


def test_lorafit_lora_proj_warm_cache(benchmark, workload, base):
    """Warm: what every later epoch, and every other cell on the same backbone, costs."""
    cache = FeatureCache(2048)
    perf.suite_train_epoch(perf.lora_proj_model(base), workload, cache=cache)
    _measure(
        benchmark,
        lambda m: perf.suite_train_epoch(m, workload, cache=cache),
        lambda: perf.lora_proj_model(base),
        perf.N_IMAGES,
    )


def test_seed_pipeline_eval(benchmark, workload, base):
    _measure(benchmark, lambda m: perf.seed_eval(m, workload), lambda: base, perf.N_IMAGES)


def test_lorafit_eval(benchmark, workload, base):
    _measure(benchmark, lambda m: perf.suite_eval(m, workload), lambda: base, perf.N_IMAGES)


@pytest.mark.parametrize("variant", ["base", "lora_unmerged", "lora_merged"])
def test_inference_merged_vs_unmerged(benchmark, workload, base, variant):
    model = perf.merged_variants(base)[variant]
    benchmark.pedantic(perf.suite_eval, args=(model, workload), rounds=7, iterations=1, warmup_rounds=1)
    benchmark.extra_info["images_per_s"] = perf.N_IMAGES / benchmark.stats.stats.mean


def test_inference_interleaved(benchmark, workload, base):
    """The three inference variants round by round (noise hits all alike); ratios in extra_info."""
    result = benchmark.pedantic(perf.compare_inference, args=(base, workload), rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    benchmark.extra_info["merged_over_base"] = result["infer_lora_merged"] / result["infer_base"]
    benchmark.extra_info["unmerged_over_base"] = result["infer_lora_unmerged"] / result["infer_base"]
