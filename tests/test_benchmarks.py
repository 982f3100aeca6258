"""The benchmark suite's arithmetic, and the saved report the performance appendix is built from."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REPORTS = sorted((ROOT / "benchmarks" / "reference").glob("*.json"))


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "benchmarks" / "run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_exponent_of_a_power_law(bench):
    xs = [1, 2, 4, 8, 16]
    assert bench.exponent(xs, [3 * x**0.8 for x in xs]) == pytest.approx(0.8)
    assert bench.exponent(xs, [5.0] * 5) == pytest.approx(0.0, abs=1e-12)


def test_largest_batch_within_a_budget(bench):
    fit = bench.largest_batch({1: 150, 4: 300, 16: 900}, budget=1000)
    assert fit["bytes_per_image"] == pytest.approx(50) and fit["fixed_bytes"] == pytest.approx(100)
    assert fit["largest_batch"] == 18  # 100 + 18 * 50 = 1000


def test_measure_interleaves_and_reports_median_min_max(bench):
    import torch

    calls = []
    r = bench.measure({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                      torch.device("cpu"), repeats=3, warmup=1)
    assert calls == ["a", "b"] * 4  # one warm-up round, then three interleaved rounds
    assert r["a"]["runs"] == 3 and r["a"]["min"] <= r["a"]["median"] <= r["a"]["max"]


def test_there_is_a_saved_report_for_the_appendix():
    assert REPORTS, "benchmarks/reference/ holds no report: run python benchmarks/run.py --out ..."


@pytest.mark.parametrize("path", REPORTS, ids=lambda p: p.name)
def test_saved_report_has_what_the_appendix_shows(path, bench):
    rep = json.loads(path.read_text())
    assert rep["date"] and rep["machine"]["platform"] and not rep["quick"]
    res = rep["results"]
    for name in ("saliency", "deletion", "class_model", "segmentation", "scaling", "memory", "book"):
        assert name in res, f"{path.name} lacks the {name} benchmark"
    assert "mixed_precision" in res["saliency"]
    fitted = set(res["scaling"]["exponents"])
    assert fitted >= {"saliency_vs_batch", "saliency_vs_pixels", "segmentation_vs_pixels"}
    assert "largest_batch" in res["memory"]["saliency"]
    assert len(res["book"]["seconds"]) == len(list((ROOT / "chapters").glob("*.ipynb")))
    assert bench.summary(rep).count("\n") > 10
