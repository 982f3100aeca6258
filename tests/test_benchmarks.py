"""The benchmark suite's arithmetic, and the saved report the performance appendix is built from."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SAVED = sorted((ROOT / "benchmarks" / "reference").glob("*.json"))
REPORTS = [p for p in SAVED if "results" in json.loads(p.read_text())]  # benchmarks/run.py's
FULL = [p for p in REPORTS if not json.loads(p.read_text())["quick"]]


def _load(script: str):
    """A benchmark script as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{script}", ROOT / "benchmarks" / f"{script}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def bench():
    return _load("run")


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


@pytest.fixture(scope="module")
def class_models_bench():
    return _load("class_models")


def test_paired_steps_times_each_step_and_the_plain_pass_after_it(class_models_bench):
    """A fake clock: steps take 3 s, plain passes 2 s, ticking takes no time; the first step (setup
    included) and the warm-up pairs are left out, and every ratio is 1.5."""
    now = [0.0]
    clock = lambda: now[0]  # noqa: E731

    def plain():
        now[0] += 2.0

    timer = class_models_bench.PairedSteps(plain, clock=clock)
    now[0] += 10.0  # the run's setup and first step
    for _ in range(5):
        timer.tick()
        now[0] += 3.0  # the next step
    assert timer.steps == [3.0] * 4 and timer.plains == [2.0] * 4
    s = timer.summary(skip=1)
    assert (s["step_s"], s["plain_s"], s["ratio"], s["pairs"]) == (3.0, 2.0, 1.5, 3)
    assert s["ratio_q1"] == s["ratio_q3"] == 1.5
    with pytest.raises(ValueError, match="no timed steps"):
        timer.summary(skip=4)


def test_paired_steps_sees_every_step_of_visualise(class_models_bench):
    """The hook the benchmark hands visualise ticks once per step: k steps give k - 1 pairs."""
    import torch

    import convvis

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5)).eval()
    ticks = []
    timer = class_models_bench.PairedSteps(lambda: ticks.append(1))
    convvis.visualise(model, [0, 1], preset="legible", steps=6, size=8, progress=False,
                      transforms=(convvis.RandomAffine(pad=1, jitter=1),),
                      post_step=(lambda param, step: timer.tick(),))
    assert len(ticks) == 6 and len(timer.steps) == len(timer.plains) == 5


def test_bare_passes_push_the_curves_images_in_the_curves_chunks(bench):
    """The floor of a deletion curve: as many images as the curve, in the same passes (a last,
    partial one), not whole chunks only."""
    assert bench.chunk_sizes(29, 8) == [8, 8, 8, 5]
    assert bench.chunk_sizes(16, 8) == [8, 8] and bench.chunk_sizes(3, 8) == [3]


def test_host_benchmark_counts_each_paths_operations(bench):
    """The host-work benchmark on the CPU, at its smallest: every hot path dispatches more torch
    operations than its bare passes (its checks), and the per-call figures are the run's."""
    import argparse

    import convvis

    net = convvis.load_model(device="cpu")
    args = argparse.Namespace(host_size=32, chunk=8, repeats=1)
    threads = torch.get_num_threads()
    out = bench.bench_host(net, torch.device("cpu"), args)
    assert torch.get_num_threads() == threads  # restored
    for name in ("saliency_map", "deletion_chunk", "class_model_step"):
        r = out[name]
        ops = r["ops_per_call"]
        assert ops["ours"] > ops["bare"] > 0, name
        assert r["extra_ops_per_call"] == pytest.approx(ops["ours"] - ops["bare"])
        assert r["ratio"] == pytest.approx(r["ours"]["median"] / r["bare"]["median"])
        assert r["ours"]["runs"] == r["bare"]["runs"] >= 15


def test_there_is_a_saved_report_for_the_appendix():
    assert FULL, "benchmarks/reference/ holds no full report: run python benchmarks/run.py --out ..."
    # the appendix shows a CPU and a GPU side by side
    assert {json.loads(p.read_text())["device"] for p in REPORTS} >= {"cpu", "cuda"}


def test_every_saved_report_names_its_commit_and_machine():
    """The reports record the machine and the date, not the code: provenance.yml gives the commit."""
    import yaml

    provenance = yaml.safe_load((ROOT / "benchmarks" / "reference" / "provenance.yml").read_text())
    logs = sorted((ROOT / "benchmarks" / "reference").glob("*.log"))  # other tools' records, kept as written
    assert set(provenance) == {p.name for p in SAVED + logs}
    for name, entry in provenance.items():
        assert len(str(entry["commit"])) >= 7 and entry["machine"] and entry["how"], name
        if name.endswith(".json"):
            assert json.loads((ROOT / "benchmarks" / "reference" / name).read_text())["date"], name


@pytest.mark.parametrize("path", [p for p in REPORTS if p not in FULL], ids=lambda p: p.name)
def test_quick_report_has_what_the_appendix_shows(path):
    rep = json.loads(path.read_text())
    assert rep["date"] and rep["machine"]["platform"] and rep["quick"]
    res = rep["results"]
    assert any(k.startswith("batch_") for k in res["saliency"]) and "mixed_precision" in res["saliency"]
    assert {"batch", "size", "segmentation_size", "exponents"} <= set(res["scaling"])
    assert "largest_batch" in res["memory"]["saliency"]


def test_gpu_localise_and_class_model_reports_have_what_the_appendix_shows():
    localise = [json.loads(p.read_text()) for p in SAVED if p.name.endswith("-localise.json")]
    class_models = [json.loads(p.read_text()) for p in SAVED if p.name.endswith("-class_models.json")]
    assert localise and class_models
    for rep in localise:
        assert {"decode_per_process", "saliency", "graph_cut_per_process"} <= set(rep["stages"])
        keys = {"steady_images_per_s", "wall_s", "peak_rss_bytes"}
        assert rep["runs"] and all(keys <= set(r) for r in rep["runs"].values())
    for rep in class_models:
        assert set(rep["legibility"]) == set(rep["timing"])
        assert all({"step_s", "ratio"} <= set(t) for t in rep["timing"].values())


@pytest.mark.parametrize("path", FULL, ids=lambda p: p.name)
def test_saved_report_has_what_the_appendix_shows(path, bench):
    rep = json.loads(path.read_text())
    assert rep["date"] and rep["machine"]["platform"] and not rep["quick"]
    res = rep["results"]
    if rep.get("only"):  # a report of some benchmarks (run.py --only): those it names, complete
        assert set(rep["only"]) == set(res), path.name
    else:
        for name in ("saliency", "deletion", "class_model", "segmentation", "scaling", "memory", "book"):
            assert name in res, f"{path.name} lacks the {name} benchmark"
        assert bench.summary(rep).count("\n") > 10
    if "saliency" in res:
        assert "mixed_precision" in res["saliency"]
    if "scaling" in res:
        fitted = set(res["scaling"]["exponents"])
        assert fitted >= {"saliency_vs_batch", "saliency_vs_pixels", "segmentation_vs_pixels"}
    if "memory" in res:
        assert "largest_batch" in res["memory"]["saliency"]
    if "book" in res:
        assert len(res["book"]["seconds"]) == len(list((ROOT / "chapters").glob("*.ipynb")))
    for key, r in res.get("faults", {}).items():  # what the appendix's page-fault table reads
        if key.startswith("batch_"):
            assert r["maps_identical"] and {"released", "kept"} <= set(r), (path.name, key)


def test_fault_benchmark_pools_runs_and_compares_map_hashes(bench, monkeypatch):
    """Fake child processes: the kept side is twice as fast, one released run stalls; the medians are
    over all runs of a side, and a different map hash is reported."""
    import argparse

    def child(keep, bs, rounds):
        s = [0.05, 0.05, 0.05] if keep else [0.1, 0.1, 5.0]
        one = {"seconds_per_image_runs": s, "user_s_per_image_runs": [0.05] * 3,
               "system_s_per_image_runs": [0.0 if keep else 0.04] * 3,
               "minor_faults_per_image_runs": [0 if keep else 9000] * 3}
        return {"saliency": one, "forward_backward": one, "peak_rss_bytes": 110 if keep else 100,
                "maps_sha256": "a" if bs == 1 or keep else "b"}

    monkeypatch.setattr(bench, "_faults_in_child", child)
    args = argparse.Namespace(fault_batches=[1, 2], fault_pairs=2, fault_rounds=3)
    out = bench.bench_faults(None, None, args)
    one = out["batch_1"]
    assert one["released"]["saliency"]["images_per_s"] == pytest.approx(10)  # the 5 s stalls ignored
    assert one["speedup_saliency"] == pytest.approx(2) and one["peak_rss_ratio"] == pytest.approx(1.1)
    assert one["kept"]["saliency"]["minor_faults_per_image"] == 0
    assert one["maps_identical"] and not out["batch_2"]["maps_identical"]


def test_saved_long_eq1_run_covers_its_grid_and_has_its_figure():
    """benchmarks/eq1_long.py's report (chapter 2 reads it and shows the PNG beside it)."""
    for path in [p for p in SAVED if p.name.endswith("-eq1_long.json")]:
        rep = json.loads(path.read_text())
        assert path.with_suffix(".png").is_file(), path.name
        grid = [(lam, n) for lam in rep["lambdas"] for n in rep["checkpoints"]]
        assert [(r["lambda"], r["step"]) for r in rep["rows"]] == grid
        for r in rep["rows"]:
            assert set(r["judges"]) == set(rep["judges"]) and len(rep["judges"]) == 2
            for v in (r["own"], *r["judges"].values()):
                assert len(v["rank"]) == len(v["probability"]) == len(rep["classes"])


def test_gpu_projection_joins_the_saved_measurements():
    """benchmarks/project_gpu.py: the GPU log parses, the projection is the slowest of its three
    rates, each built from the inputs as its docstring says; mismatched batches, and a GPU report
    that measured the batched path itself (its graph_cut_per_process means another thing), are
    refused."""
    proj_mod = _load("project_gpu")
    log = ROOT / "benchmarks" / "reference" / "h200-2026-12-04-where.log"
    where = proj_mod.parse_where(log.read_text())
    assert where["stage_batch"] == 16 and where["rates"][1]["forward"] > where["rates"][1]["floor"] > 0
    gpu = json.loads((ROOT / "benchmarks" / "reference" / "h200-2026-12-04-localise.json").read_text())
    cpu = {"stages": {"decode_per_process": 200.0},
           "pool_work": {"ratio_batched_to_reference": 0.5, "reference": {"s_per_photo": 0.25}},
           "dense_host_work": {"photos": 16, "top_k": 5, "ops_per_batch": 1000,
                               "numpy_init_s_per_batch": 0.01, "ops_forward_batch_1": 200,
                               "ops_forward_backward_batch_1": 400, "prepared_bytes_per_batch": 2**25,
                               "handoff_cpu_s_per_photo": 0.001, "unpickle_s_per_photo": 0.0001,
                               "host_reads_per_batch": 3, "task_bytes_per_photo": 1e6}}
    p = proj_mod.project(gpu, where, cpu)
    rates = {"main process": p["main_process"]["rate"], "pool": p["pool"]["rate"],
             "decoding": p["decode_rate"]}
    assert p["rate"] == min(rates.values()) and rates[p["bound"]] == p["rate"]
    assert p["minutes"] == pytest.approx(50_000 / p["rate"] / 60)
    m = p["main_process"]
    parts = m["network_ms"] + m["dense_ms"] + m["copy_ms"] + m["handoff_ms"]
    assert m["ms_per_batch"] == pytest.approx(parts)
    assert m["rate"] == pytest.approx(16 / m["ms_per_batch"] * 1000)
    # the prepared arrays (32 MiB) against the maps' 16 x 5 x 224 x 224 float32 bytes
    maps_bytes = 16 * 5 * 224**2 * 4
    assert m["copy_ms"] == pytest.approx(where["stage_parts_ms"]["maps to numpy"] * 2**25 / maps_bytes)
    ref = 1 / gpu["stages"]["graph_cut_per_process"]
    speed = min(1.0, gpu["stages"]["decode_per_process"] / 200.0, 0.25 / ref)
    assert p["host_speed_gpu_over_cpu"] == speed
    assert m["handoff_ms"] == pytest.approx(16 * 1.0 / speed)
    assert m["us_per_operation"] == pytest.approx(1e6 * max(1 / where["rates"][1]["forward"] / 200,
                                                            1 / where["rates"][1]["floor"] / 400))
    assert p["pool"]["batched_task_s"] == pytest.approx(ref * 0.5 + 0.0001 / speed)
    # the pool's rate r leaves a core for the main process and the loader's share r / decoding rate
    r = p["pool"]["rate"]
    busy = p["pool"]["busy_processes_measured"]
    assert r * p["pool"]["batched_task_s"] + r / p["decode_rate"] == pytest.approx(busy - 1)
    with pytest.raises(ValueError, match="batched path itself"):
        proj_mod.project({**gpu, "pool_work": {}}, where, cpu)
    cpu["dense_host_work"]["photos"] = 8
    with pytest.raises(ValueError, match="same batch"):
        proj_mod.project(gpu, where, cpu)
