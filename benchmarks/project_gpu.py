"""The ILSVRC command's rate on a GPU machine, projected from measured figures (issue #25).

    python benchmarks/project_gpu.py                 # the saved reports below; prints, writes JSON
    python benchmarks/project_gpu.py --cpu <a benchmarks/localise.py report with dense_host_work>

Until ``../shared/gpu-check`` measures the batched path on a GPU, this is how its 50,000-photo time
is estimated. Every rate comes from a saved measurement, and every assumption that joins them is
printed:

* from the GPU machine (``--gpu-localise``, ``--gpu-where``: ``benchmarks/localise.py`` and
  ``where_time_goes.py`` as ``../shared/gpu-check`` ran them there, on the one-photo path): the
  network's part of a batch (forward, top-k, the saliency maps), decoding per process, the
  one-photo path's pool work per photo, the best end-to-end rate (how much pool work the machine's
  cores got through), and the time of a forward and of a forward+backward pass at batch 1, where
  the GPU waits for its host;
* from a CPU run of ``benchmarks/localise.py`` (``--cpu``), counted or timed there: the dense
  stage's torch operations and host reads per batch (counts do not depend on the machine), the
  NumPy part it keeps on the host, handing a task to a pool process and unpickling it, and the
  batched path's pool work as a share of the one-photo path's, on the same photos in one run.

The main process runs the network, then the dense stage, then hands the batch's tasks to the pool;
on a GPU the dense stage's arithmetic is small and its cost is its host work, which is projected as
operations x the host's time per operation, read off the batch-1 passes (the larger of the two).
The pool's capacity is the GPU machine's measured pool throughput, less one core for the main
process (now busy all the time), divided by the batched pool work per photo. The projected rate is
the slowest of the main process, the pool and decoding.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
REF = ROOT / "reference"
VAL_IMAGES = 50_000
TARGET = 56.0  # photos/s: 50,000 in 15 minutes (issue #25)


def parse_where(text: str) -> dict:
    """The figures of ``where_time_goes.py``'s log: images/s per batch (floor = forward+backward,
    saliency_map, forward only) and the localise saliency stage's parts, ms per batch."""
    rates, parts, batch = {}, {}, None
    table = re.search(r"images/s \(median of \d+\), float32\n(.*?)\n\n", text, re.S)
    if table is None:
        raise ValueError("no images/s table in the log")
    for line in table.group(1).splitlines()[1:]:
        b, floor, sal, _ratio, fwd = line.split()
        rates[int(b)] = {"floor": float(floor), "saliency_map": float(sal), "forward": float(fwd)}
    stage = re.search(r"localise saliency stage, batch (\d+) x top-(\d+).*?\n(.*?)\n\n", text, re.S)
    if stage is None:
        raise ValueError("no localise saliency stage in the log")
    batch, top_k = int(stage.group(1)), int(stage.group(2))
    for line in stage.group(3).splitlines():
        m = re.match(r"\s+(.+?)\s+([\d.]+) ms", line)
        if m:
            parts[m.group(1)] = float(m.group(2))
    return {"rates": rates, "stage_batch": batch, "stage_top_k": top_k, "stage_parts_ms": parts}


def project(gpu_loc: dict, where: dict, cpu: dict) -> dict:
    if "pool_work" in gpu_loc:
        # a report of the current benchmarks/localise.py: its end-to-end runs took the batched path,
        # and its graph_cut_per_process is the batched pool work, not the one-photo path's
        raise ValueError("this GPU report measured the batched path itself: read its end-to-end rate "
                         "(runs) instead of projecting one")
    host = cpu["dense_host_work"]
    batch = where["stage_batch"]
    if host["photos"] != batch or host["top_k"] != where["stage_top_k"]:
        raise ValueError(f"the CPU report counts batches of {host['photos']} x top-{host['top_k']}, the GPU "
                         f"log's stage is {batch} x top-{where['stage_top_k']}: measure the same batch")
    parts = where["stage_parts_ms"]
    # the batched path keeps the network's part; the maps stay on the GPU and deprocess's arithmetic
    # is part of the dense stage
    network_ms = sum(v for k, v in parts.items() if k.split("(")[0] in ("forward+topk", "repeat_interleave",
                                                                         "saliency_map"))
    b1 = where["rates"][1]
    per_op_fwd = 1 / b1["forward"] / host["ops_forward_batch_1"]
    per_op_fb = 1 / b1["floor"] / host["ops_forward_backward_batch_1"]
    per_op = max(per_op_fwd, per_op_fb)
    # in a GPU report of the one-photo path (9b6026c's benchmark), graph_cut_per_process is that
    # path's whole pool task: segment() for each class
    ref_task_s = 1 / gpu_loc["stages"]["graph_cut_per_process"]
    # one host core of each machine against the other, by two measures that each machine ran:
    # decoding per process, and the one-photo pool task per process (the GPU machine's predates
    # the freed-memory change, which made it faster); the slower reading is taken, and a faster
    # GPU host is not counted on
    decode_ratio = gpu_loc["stages"]["decode_per_process"] / cpu["stages"]["decode_per_process"]
    task_ratio = cpu["pool_work"]["reference"]["s_per_photo"] / ref_task_s
    host_speed = min(1.0, decode_ratio, task_ratio)
    dense_ms = 1000 * (host["ops_per_batch"] * per_op + host["numpy_init_s_per_batch"] / host_speed)
    # the prepared arrays come back to the host at the rate the GPU log measured for the maps
    # where_time_goes.py times float32 maps of Lite0's 224 x 224 input
    maps_bytes = batch * where["stage_top_k"] * 224 * 224 * 4
    copy_ms = parts["maps to numpy"] * host["prepared_bytes_per_batch"] / maps_bytes
    handoff_ms = 1000 * batch * host["handoff_cpu_s_per_photo"] / host_speed
    main_ms = network_ms + dense_ms + copy_ms + handoff_ms
    main_rate = batch / (main_ms / 1000)
    best_w, best = max(gpu_loc["runs"].items(), key=lambda kv: kv[1]["steady_images_per_s"])
    busy = best["steady_images_per_s"] * ref_task_s  # pool processes' worth of work got through
    ratio = cpu["pool_work"]["ratio_batched_to_reference"]
    pool_task_s = ref_task_s * ratio + host["unpickle_s_per_photo"] / host_speed
    decode_rate = gpu_loc["stages"]["decode_per_process"]  # one loader process
    # the cores the pool got through, less the main process and the loader's share at the pool's
    # rate r: r = (busy - 1 - r / decode_rate) / pool_task_s
    pool_rate = (busy - 1) / (pool_task_s + 1 / decode_rate)
    rate, bound = min((main_rate, "main process"), (pool_rate, "pool"), (decode_rate, "decoding"))
    slack_ms = batch / TARGET * 1000 - main_ms  # what the main process may take more, per batch
    return {
        "rate": rate, "minutes": VAL_IMAGES / rate / 60, "target_rate": TARGET,
        "bound": bound,
        "batch": batch,
        "main_process": {"rate": main_rate, "ms_per_batch": main_ms, "network_ms": network_ms,
                         "dense_ms": dense_ms, "copy_ms": copy_ms, "handoff_ms": handoff_ms,
                         "us_per_operation": 1e6 * per_op,
                         "slack_ms_per_batch_at_target": slack_ms,
                         "slack_us_per_operation_at_target": 1e6 * per_op + 1000 * slack_ms
                         / host["ops_per_batch"]},
        "pool": {"rate": pool_rate, "busy_processes_measured": busy, "measured_workers": int(best_w),
                 "measured_rate": best["steady_images_per_s"], "reference_task_s": ref_task_s,
                 "ratio_batched_to_reference": ratio, "batched_task_s": pool_task_s},
        "decode_rate": decode_rate, "host_speed_gpu_over_cpu": host_speed, "decode_ratio": decode_ratio,
        "pool_task_ratio": task_ratio,
        "assumptions": [
            f"{VAL_IMAGES} photos, top-{where['stage_top_k']}, batches of {batch}; ILSVRC photos are resized "
            "to the input square, so a photo's cost does not depend on its size",
            f"network part: the GPU machine's measured forward+top-k, repeat and saliency_map per batch "
            f"({network_ms:.1f} ms; measured at the GPU report's commit: saliency_map's host work has only "
            "shrunk since)",
            f"dense stage on the GPU: its host work, {host['ops_per_batch']} torch operations x "
            f"{1e6 * per_op:.1f} us (the larger of a batch-1 forward's {1e6 * per_op_fwd:.1f} and a batch-1 "
            f"forward+backward's {1e6 * per_op_fb:.1f} us per operation on the GPU machine, where the GPU "
            "waits for its host; most of the dense stage's operations are cheaper views and element-wise "
            f"ones) plus its NumPy k-means++ start ({1000 * host['numpy_init_s_per_batch']:.1f} ms here); "
            "the device's own arithmetic is small beside that, so its waits are short: "
            f"{host['host_reads_per_batch']} host reads counted here, and on CUDA about as many more "
            "(torch.linalg.cholesky checking each EM iteration's result, torch.nonzero, copies from the "
            "host), not counted; the slack below says how much they may cost",
            f"the prepared arrays ({host['prepared_bytes_per_batch'] / 2**20:.0f} MiB per batch) come back "
            f"to the host at the rate the GPU log measured for the maps ({copy_ms:.1f} ms)",
            f"the GPU machine's host core does the NumPy start, the hand-off and unpickling at "
            f"{host_speed:.2f}x this CPU's speed: the slower of two readings, each measured on both "
            f"machines, and at most 1 (decoding per process {decode_ratio:.2f}x, "
            f"{gpu_loc['stages']['decode_per_process']:.0f} against "
            f"{cpu['stages']['decode_per_process']:.0f} photos/s; the one-photo pool task "
            f"{task_ratio:.2f}x, {1000 * ref_task_s:.0f} against "
            f"{1000 * cpu['pool_work']['reference']['s_per_photo']:.0f} ms, the GPU machine's measured "
            "before the freed-memory change)",
            f"hand-off: {1000 * host['handoff_cpu_s_per_photo']:.2f} ms of the main process per photo here "
            f"({host['task_bytes_per_photo'] / 2**20:.1f} MiB pickled), counted in full, as if no part of it "
            "overlapped the main thread",
            f"pool: the GPU machine got through {busy:.2f} processes' worth of one-photo pool work "
            f"({best['steady_images_per_s']:.1f} photos/s x {ref_task_s:.3f} s with {best_w} workers); one "
            "less for the main process, now busy all the time, and the loader's share; the batched path's "
            f"pool work is {ratio:.2f}x the one-photo path's there as here (measured here at the CPU "
            "report's commit, applied to the GPU machine's one-photo task at its own), plus unpickling",
            f"decoding: one loader process at the GPU machine's measured {decode_rate:.0f} photos/s",
        ],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu-localise", type=Path, default=REF / "h200-2026-12-04-localise.json")
    p.add_argument("--gpu-where", type=Path, default=REF / "h200-2026-12-04-where.log")
    p.add_argument("--cpu", type=Path, default=None,
                   help="a benchmarks/localise.py report with dense_host_work (default: the newest saved)")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    if a.cpu is None:
        saved = [q for q in sorted((REF / "localise").glob("*.json"))
                 if "dense_host_work" in json.loads(q.read_text())]
        if not saved:
            p.error("no saved CPU report with dense_host_work: run benchmarks/localise.py --batch-size 16")
        a.cpu = max(saved, key=lambda q: json.loads(q.read_text())["date"])
    gpu_loc, cpu = json.loads(a.gpu_localise.read_text()), json.loads(a.cpu.read_text())
    where = parse_where(a.gpu_where.read_text())
    proj = project(gpu_loc, where, cpu)
    report = {"date": dt.datetime.now().isoformat(timespec="seconds"),
              "kind": "projection, not a measurement",
              "inputs": {"gpu_localise": a.gpu_localise.name, "gpu_where": a.gpu_where.name,
                         "cpu": f"localise/{a.cpu.name}", "cpu_commit": cpu.get("commit")},
              **proj}
    m, pl = proj["main_process"], proj["pool"]
    print(f"Projection for {VAL_IMAGES} photos on the GPU machine (not a measurement):")
    print(f"  main process: {m['rate']:.1f} photos/s ({m['ms_per_batch']:.0f} ms per batch: network "
          f"{m['network_ms']:.1f}, dense stage {m['dense_ms']:.1f}, copy back {m['copy_ms']:.1f}, "
          f"hand-off {m['handoff_ms']:.1f})")
    print(f"  pool: {pl['rate']:.1f} photos/s ({pl['busy_processes_measured']:.2f} - 1 processes over "
          f"{1000 * pl['batched_task_s']:.1f} ms per photo and the loader's "
          f"{1000 / proj['decode_rate']:.1f})")
    print(f"  decoding: {proj['decode_rate']:.0f} photos/s")
    print(f"  => {proj['rate']:.1f} photos/s ({proj['bound']}), {proj['minutes']:.1f} minutes; target "
          f"{TARGET:.0f} photos/s (15 minutes)")
    print(f"  slack at the target: the main process could take {m['slack_ms_per_batch_at_target']:.0f} ms "
          f"more per batch (a budget of {m['slack_us_per_operation_at_target']:.0f} us per dense-stage "
          f"operation, against the {m['us_per_operation']:.0f} assumed)")
    for line in proj["assumptions"]:
        print(f"  assumption: {line}")
    if a.out:
        a.out.write_text(json.dumps(report, indent=1))
        print(f"report: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
