"""``python -m convvis.localise`` end to end with freed memory kept (the default) and released (issue #24).

    python benchmarks/localise_faults.py                  # 272 fixture photos, 2 pairs of runs
    python benchmarks/localise_faults.py --photos 64 --pairs 1

Writes the fixture (``convvis.ilsvrc.write_sample_fixture``), then runs the command as a user
would (default workers) in alternating order, released / kept, then kept / released, so a slow
spell on a shared machine hits both sides. ``CONVVIS_KEEP_FREED_MEMORY=0`` turns the setting off
in the command and every process it starts. Per run: wall seconds and photos/s; user and system
CPU seconds and minor page faults of the command and all its processes (``wait4``); the peak of
the summed resident memory of the process tree (sampled every 0.2 s); and whether the results
file is identical to the other side's (same maps, same cuts, same boxes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from convvis.ilsvrc import write_sample_fixture


def _tree_rss(pid: int, stop: threading.Event, peak: list[int]) -> None:
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    while not stop.is_set():
        total = 0
        try:
            for p in [root, *root.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
        except psutil.NoSuchProcess:
            break
        peak[0] = max(peak[0], total)
        stop.wait(0.2)


def run_once(img: Path, ann: Path, out: Path, keep: bool, extra: list[str]) -> dict:
    drop = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["CONVVIS_KEEP_FREED_MEMORY"] = "1" if keep else "0"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "convvis.localise", str(img), str(ann), "--out", str(out), "--no-progress",
           *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stop, peak = threading.Event(), [0]
    sampler = threading.Thread(target=_tree_rss, args=(proc.pid, stop, peak), daemon=True)
    sampler.start()
    text = proc.stdout.read()
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    if status != 0:
        raise RuntimeError(f"localise failed ({status}):\n{text}")
    n = sum(1 for _ in out.open())
    return {"keep_freed_memory": keep, "photos": n, "wall_s": wall, "photos_per_s": n / wall,
            "user_s": ru.ru_utime, "system_s": ru.ru_stime, "minor_faults": ru.ru_minflt,
            "peak_tree_rss_bytes": peak[0], "results": out.read_text()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", type=int, default=272, help="fixture photos (17 samples x 4 flips x 4)")
    p.add_argument("--pairs", type=int, default=2, help="pairs of runs (released, kept), order alternating")
    p.add_argument("--out", type=Path, default=None, help="JSON report")
    p.add_argument("extra", nargs="*", help="more arguments for convvis.localise (after --)")
    a = p.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        img, ann = write_sample_fixture(Path(tmp) / "fixture", count=a.photos)
        for i in range(a.pairs):
            for keep in ((False, True) if i % 2 == 0 else (True, False)):
                r = run_once(img, ann, Path(tmp) / f"r{i}-{keep}.jsonl", keep, a.extra)
                runs.append(r)
                print(f"  {'kept    ' if keep else 'released'}: {r['photos']} photos in {r['wall_s']:.1f} s "
                      f"({r['photos_per_s']:.3f} photos/s); user {r['user_s']:.1f} s, "
                      f"system {r['system_s']:.1f} s, minor faults {r['minor_faults']:,}; "
                      "peak RSS (all processes) "
                      f"{r['peak_tree_rss_bytes'] / 2**20:.0f} MiB", flush=True)
    same = len({r.pop("results") for r in runs}) == 1
    side = {k: [r for r in runs if r["keep_freed_memory"] == k] for k in (False, True)}
    med = {k: {f: statistics.median(r[f] for r in v) for f in
               ("photos_per_s", "user_s", "system_s", "minor_faults", "peak_tree_rss_bytes")}
           for k, v in side.items()}
    summary = {"speedup": med[True]["photos_per_s"] / med[False]["photos_per_s"],
               "peak_rss_ratio": med[True]["peak_tree_rss_bytes"] / med[False]["peak_tree_rss_bytes"],
               "results_identical": same, "median_released": med[False], "median_kept": med[True]}
    share = {k: med[k]["system_s"] / med[k]["user_s"] for k in (False, True)}
    print(f"  kept / released: photos/s x{summary['speedup']:.2f}; system/user "
          f"{share[False]:.0%} -> {share[True]:.0%}"
          f"; peak RSS x{summary['peak_rss_ratio']:.2f}; results files "
          f"{'identical' if same else 'DIFFERENT'}", flush=True)
    if a.out:
        a.out.write_text(json.dumps({"runs": runs, "summary": summary, "photos": a.photos}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
