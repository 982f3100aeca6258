"""One entry point for the book's speed measurements.

    python benchmarks/run.py            # every benchmark, full sizes
    python benchmarks/run.py --quick    # smaller sizes, a few minutes on a laptop CPU
    python benchmarks/run.py --only saliency deletion

Every figure printed is a *ratio of times measured in the same run* (the machines are shared and
noisy, so absolute seconds from different runs are not comparable): each timing is the median of
``--repeats`` runs after a warm-up, reported with its min and max. A JSON report with every timing
goes to ``benchmarks/results/`` (or ``--out``), named after the machine and the date.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

import convvis
from convvis import frozen_parameters, grabcut_mask, segment
from convvis import segmentation as seg
from convvis.class_model import paper_preset, visualise
from convvis.diagnostics import count_operations
from convvis.metrics import PROTOCOLS, auc, perturbation_curve, pixel_ranks, rank_correlation, with_steps
from convvis.saliency import saliency_map
from convvis.segmentation import seeds_from_saliency

ROOT = Path(__file__).resolve().parent


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int,
            warmup: int = 1) -> dict[str, dict]:
    """Time several functions *interleaved*: one run of each in turn, ``repeats`` rounds.

    Interleaving matters on a shared machine: a slow spell then hits every contender alike, so
    the ratios of the medians stay meaningful even when the absolute times drift. Returns, per
    name, the median, min and max seconds after ``warmup`` untimed rounds.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {k: {"median": statistics.median(v), "min": min(v), "max": max(v), "runs": len(v)}
            for k, v in times.items()}


def ratio(a: dict, b: dict) -> float:
    return a["median"] / b["median"]


def peak_memory(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak bytes ``fn`` needs above what was allocated before it, on a CUDA device; None elsewhere.

    On a CPU torch's allocations are invisible to tracemalloc; :func:`peak_rss_in_child` measures
    those in a fresh process instead.
    """
    if device.type != "cuda":
        return None
    sync(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return int(torch.cuda.max_memory_allocated(device) - before)


def _proc_status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _memory_probe(kind: str, bs: int, args) -> dict:
    """In a fresh process: peak resident memory of one saliency or deletion call above the baseline.

    Linux only: the peak (VmHWM) is reset through /proc/self/clear_refs right before the call, so
    it measures the call alone; the parent starts this process with a fixed malloc mmap threshold
    so that large tensors go back to the system when freed and cannot hide in a reused heap.
    """
    import gc

    # freed memory must go back to the system here (see above): setup must not keep it
    device = convvis.setup(seed=0, device="cpu", keep_freed_memory=False)
    net = convvis.load_model(device=device)
    x, t = _batch(net, convvis.sample_names(), bs)
    if kind == "saliency":
        def fn():
            return saliency_map(net, x, t)
    else:
        # the coarse protocol: curves are evaluated `chunk` images at a time, so the peak does
        # not depend on the number of points, only the time does
        protocol = with_steps("rise", pixels_per_step=224 * 8)
        sal = saliency_map(net, x, t)

        def fn():
            return perturbation_curve(net, x, sal, t, "deletion", protocol, chunk=args.chunk)
    fn()  # warm-up: one-off allocations (thread pools, kernels) are not the method's cost
    gc.collect()
    base = _proc_status_bytes("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    fn()
    return {"peak_bytes": _proc_status_bytes("VmHWM") - base}


def peak_rss_in_child(kind: str, bs: int, args) -> int | None:
    """Run :func:`_memory_probe` in a subprocess; None where /proc is not available (not Linux)."""
    import os
    import subprocess

    if not Path("/proc/self/clear_refs").exists():
        return None
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    cmd = [sys.executable, __file__, "--memory-probe", kind, str(bs), "--chunk", str(args.chunk)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return int(json.loads(out.strip().splitlines()[-1])["peak_bytes"])


def largest_batch(points: dict[int, int], budget: float) -> dict:
    """Fit peak = a + c * batch to the measured points; the largest batch with peak <= budget."""
    bs = np.array(sorted(points), dtype=float)
    peak = np.array([points[b] for b in sorted(points)], dtype=float)
    c, a = np.polyfit(bs, peak, 1)
    return {"budget_bytes": budget, "bytes_per_image": float(c), "fixed_bytes": float(a),
            "largest_batch": int(np.floor((budget - a) / c + 1e-9)) if c > 0 else None}


def exponent(xs: Sequence[float], ts: Sequence[float]) -> float:
    """Slope of log(time) against log(size): 1 = linear, 0 = constant."""
    return float(np.polyfit(np.log(xs), np.log(ts), 1)[0])


# ---- the floor: one forward + backward pass to the input ---------------------------------------


def forward_backward(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> None:
    """The least any input-gradient method can do: forward, select S_c, backward to the input."""
    with frozen_parameters(model), torch.enable_grad():
        xi = x.detach().requires_grad_(True)
        torch.autograd.grad(model(xi).gather(1, t[:, None]).sum(), xi)


def chunk_sizes(total: int, chunk: int) -> list[int]:
    """The batch sizes of the forward passes that push ``total`` images through ``chunk`` at a time,
    as ``perturbation_curve`` does: full chunks, then what is left."""
    return [min(chunk, total - start) for start in range(0, total, chunk)]


def bare_forwards(model: torch.nn.Module, image: torch.Tensor, total: int, chunk: int) -> Callable[[], None]:
    """The floor of a perturbation curve: ``total`` copies of ``image`` (1,C,H,W) through ``model`` in
    the passes the curve makes (:func:`chunk_sizes`), without gradients, on inputs made in advance."""
    passes = chunk_sizes(total, chunk)
    inputs = {n: image.expand(n, -1, -1, -1).contiguous(memory_format=torch.channels_last)
              for n in set(passes)}

    def run():
        with torch.no_grad():
            for n in passes:
                model(inputs[n])

    return run


def default_layout(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model).to(memory_format=torch.contiguous_format)


# ---- benchmarks --------------------------------------------------------------------------------


def _batch(net, photos: list[str], bs: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = convvis.load_images([photos[i % len(photos)] for i in range(bs)], net)
    with torch.no_grad():
        t = net.model(x).argmax(1)
    return x, t


def _saliency_at(net, model_default, x, t, device, args) -> dict:
    fns = {
        "ours": lambda: saliency_map(net, x, t),
        "floor_default_layout": lambda: forward_backward(model_default, x, t),
        "floor_channels_last": lambda: forward_backward(net.model, x, t),
    }
    try:
        from captum.attr import Saliency  # a benchmark/test dependency, not a runtime one
    except ImportError:
        Saliency = None
    if Saliency is not None:
        peer = Saliency(model_default)  # as a user would call it, on the model as loaded
        fns["captum_default_layout"] = lambda: peer.attribute(x.clone(), target=t.tolist(), abs=True).amax(1)
    if device.type == "cuda":
        # load_model stores channels-last weights, which a CPU runs faster; on the H200 the floor
        # in that layout took 1.06x (batch 1) and 1.10x (batch 8) the default layout's time
        # (benchmarks/reference/h200-2026-12-04-run.json), and captum runs the default layout
        xd = x.contiguous()
        fns["ours_default_layout"] = lambda: saliency_map(model_default, xd, t)
    r = measure(fns, device, args.repeats)
    if Saliency is not None:
        r["ratio_to_captum"] = ratio(r["ours"], r["captum_default_layout"])
        if "ours_default_layout" in r:
            r["ratio_default_layout_to_captum"] = ratio(r["ours_default_layout"], r["captum_default_layout"])
    if "ours_default_layout" in r:
        r["ratio_default_layout_to_floor_default_layout"] = ratio(r["ours_default_layout"],
                                                                  r["floor_default_layout"])
    r["ratio_to_floor_default_layout"] = ratio(r["ours"], r["floor_default_layout"])
    r["ratio_to_floor_channels_last"] = ratio(r["ours"], r["floor_channels_last"])
    r["images_per_s"] = x.shape[0] / r["ours"]["median"]
    # the share of the forward+backward throughput the saliency map reaches (1 = the floor)
    r["fraction_of_floor_throughput"] = 1 / r["ratio_to_floor_channels_last"]
    r["peak_bytes"] = peak_memory(lambda: saliency_map(net, x, t), device)
    return r


def mixed_precision_check(net, x, t, device, args) -> dict:
    """Saliency under autocast (float16 on CUDA, bfloat16 on CPU) against float32: same maps?

    Mixed precision is worth using only if the maps do not change: we require a Spearman rank
    correlation of at least 0.99 with the float32 map and a top-5 % pixel set overlapping it with
    IoU of at least 0.9, on every image, and report the speed either way.
    """

    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16

    def amp():
        with torch.autocast(device.type, dtype=dtype):
            return saliency_map(net, x, t)

    ref, low = saliency_map(net, x, t).float(), amp().float()
    corr = rank_correlation(ref, low)
    overlaps = []
    for a, b in zip(ref.cpu().numpy(), low.cpu().numpy()):
        fa, fb = seeds_from_saliency(a)[0], seeds_from_saliency(b)[0]
        overlaps.append(float((fa & fb).sum() / (fa | fb).sum()))
    r = measure({"float32": lambda: saliency_map(net, x, t), "autocast": amp}, device, args.repeats)
    ok = bool(corr.min() >= 0.99 and min(overlaps) >= 0.9)
    return {"dtype": str(dtype), "min_rank_correlation": float(corr.min()), "min_top5_iou": min(overlaps),
            "ratio_autocast_to_float32": ratio(r["autocast"], r["float32"]), "maps_unchanged": ok,
            "tolerance": "rank correlation >= 0.99 and top-5 % IoU >= 0.9 on every image", "timings": r}


def bench_saliency(net, device, args) -> dict:
    """The paper's saliency map against the forward+backward floor and captum's Saliency."""
    model_default = default_layout(net.model)  # load_model stores the weights channels-last
    photos = convvis.sample_names()
    out = {}
    for bs in args.batch_sizes:
        x, t = _batch(net, photos, bs)
        r = out[f"batch_{bs}"] = _saliency_at(net, model_default, x, t, device, args)
        print(f"  saliency, batch {bs:3d}: ours / floor (default layout) "
              f"{r['ratio_to_floor_default_layout']:.2f}, / floor (channels-last) "
              f"{r['ratio_to_floor_channels_last']:.2f}"
              + (f", / captum {r['ratio_to_captum']:.2f}" if "ratio_to_captum" in r else "")
              + (f"; in the default layout: / its floor "
                 f"{r['ratio_default_layout_to_floor_default_layout']:.2f}"
                 if "ours_default_layout" in r else "")
              + (f", / captum {r['ratio_default_layout_to_captum']:.2f}"
                 if "ratio_default_layout_to_captum" in r else ""), flush=True)
    x, t = _batch(net, photos, 8)
    m = out["mixed_precision"] = mixed_precision_check(net, x, t, device, args)
    print(f"  saliency under autocast ({m['dtype']}), batch 8: time / float32 "
          f"{m['ratio_autocast_to_float32']:.2f}; rank correlation >= {m['min_rank_correlation']:.3f}, "
          f"top-5 % IoU >= {m['min_top5_iou']:.2f}: maps {'unchanged' if m['maps_unchanged'] else 'CHANGED'}"
          f" ({m['tolerance']})", flush=True)
    return out


def naive_curve(model, x, sal, t, protocol) -> torch.Tensor:
    """Deletion the straightforward way: one forward pass per step and image."""
    n, _, h, w = x.shape
    step = protocol.step_size(h * w)
    ranks = pixel_ranks(sal)
    vals = []
    with torch.no_grad():
        for i in range(n):
            row, k = [], 0
            while True:
                count = min(k * step, h * w)
                xi = x[i : i + 1]
                img = torch.where((ranks[i] < count)[None, None], torch.zeros_like(xi), xi)
                row.append(model(img).softmax(1)[0, t[i]].item())
                if count == h * w:
                    break
                k += 1
            vals.append(row)
    return torch.tensor(vals, dtype=torch.float64)


def _deletion_at(net, x, t, protocol, device, args) -> dict:
    sal = saliency_map(net, x, t)
    bs = x.shape[0]
    n_points = protocol.points(224 * 224)
    bare = bare_forwards(net.model, x[:1], bs * n_points, args.chunk)  # batched as ours are

    def ours():
        return perturbation_curve(net, x, sal, t, "deletion", protocol, chunk=args.chunk)

    def naive():
        return naive_curve(net.model, x, sal, t, protocol)

    fns = {"ours": ours, "bare_forwards": bare}
    if bs <= args.naive_max_batch:
        fns["naive_loop"] = naive
    r = measure(fns, device, max(2, args.repeats // 2))
    r["points_per_curve"] = n_points
    if "naive_loop" in r:
        r["max_auc_difference"] = float((auc(ours()) - auc(naive())).abs().max())
        r["ratio_to_naive"] = ratio(r["ours"], r["naive_loop"])
    r["ratio_to_bare_forwards"] = ratio(r["ours"], r["bare_forwards"])
    return r


def _protocol(args):
    return PROTOCOLS["rise"] if not args.quick else with_steps("rise", pixels_per_step=224 * 8)


def bench_deletion(net, device, args) -> dict:
    """Deletion curves: ours (chunked, channels-last) vs the naive loop vs the bare forward passes."""
    protocol = _protocol(args)
    photos = convvis.sample_names()
    out = {}
    for bs in args.batch_sizes[:2]:  # 225 points per curve: batch 32 would take many minutes on a CPU
        x, t = _batch(net, photos, bs)
        r = out[f"batch_{bs}"] = _deletion_at(net, x, t, protocol, device, args)
        print(f"  deletion, batch {bs:3d} ({r['points_per_curve']} points): ours / bare forwards "
              f"{r['ratio_to_bare_forwards']:.2f}"
              + (f", / naive loop {r['ratio_to_naive']:.2f} (AUCs differ by {r['max_auc_difference']:.1e})"
                 if "ratio_to_naive" in r else ""), flush=True)
    return out


def _class_model_at(net, targets, steps, device, args) -> dict:

    x = torch.zeros(len(targets), 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
    t = torch.tensor(targets, device=device)

    def ours():
        visualise(net, targets, **{**paper_preset(), "steps": steps}, progress=False)

    def floor():
        for _ in range(steps):
            forward_backward(net.model, x, t)

    r = measure({"ours": ours, "floor": floor}, device, max(2, args.repeats // 2))
    r["steps"] = steps
    r["ratio_step_to_forward_backward"] = ratio(r["ours"], r["floor"])
    return r


def bench_class_model(net, device, args) -> dict:
    """One class-model step (pixels, paper preset) against one forward+backward of the same batch."""
    steps = 5 if args.quick else 10
    out = {}
    for bs in args.batch_sizes:
        targets = list(range(0, 1000, 1000 // bs))[:bs]
        r = out[f"batch_{bs}"] = _class_model_at(net, targets, steps, device, args)
        print(f"  class model, batch {bs:3d}: time per step / forward+backward "
              f"{r['ratio_step_to_forward_backward']:.2f}", flush=True)
    return out


def _mask_iou(a, b) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def _unhurried_mask(photo, saliency, sklearn: bool):
    """The cut with colour models fitted on every seed pixel to convergence (ours, or scikit-learn's)."""
    fg, bg = seg.seeds_from_saliency(saliency)
    if sklearn:
        from sklearn.mixture import GaussianMixture

        def fit(c):
            g = GaussianMixture(5, covariance_type="full", reg_covar=1e-4, max_iter=200, random_state=0)
            g.fit(c)
            return convvis.ColourModel(g.weights_, g.means_, g.covariances_)
    else:
        def fit(c):
            return convvis.fit_colour_model(c, max_samples=None, max_iter=200, tol=1e-7)

    photo = photo.astype(np.float64)
    cost_fg, cost_bg = convvis.unaries(photo, fit(photo[fg]), fit(photo[bg]), ~(fg | bg))
    return seg.graph_cut(cost_fg, cost_bg, seg.pairwise_weights(photo)[0], fg, bg)


def bench_segmentation(net, device, args) -> dict:
    """The graph-cut pipeline per 224 x 224 photo, by stage, against OpenCV's GrabCut (1 iteration)."""
    photos_names = convvis.sample_names()[: (4 if args.quick else 17)]
    x, t = _batch(net, photos_names, len(photos_names))
    maps = saliency_map(net, x, t).cpu().numpy()
    photos = convvis.deprocess(x, net)
    stages: dict[str, list[float]] = {}
    ious = []
    fns = {}
    for i in range(len(photos_names)):
        fns[f"ours_{i}"] = lambda i=i: segment(photos[i], maps[i])
        fns[f"grabcut_{i}"] = lambda i=i: grabcut_mask(photos[i], maps[i], iterations=1)
    r = measure(fns, device, max(2, args.repeats // 2))
    sk_ious = []
    for i in range(len(photos_names)):
        result = segment(photos[i], maps[i])
        for k, v in result.timings.items():
            stages.setdefault(k, []).append(v)
        slow = _unhurried_mask(photos[i], maps[i], sklearn=False)
        ious.append(_mask_iou(result.mask, slow))
        # two unhurried fits from different EM codes: how far apart equally good answers are
        sk_ious.append(_mask_iou(_unhurried_mask(photos[i], maps[i], sklearn=True), slow))
    ours = statistics.median(r[f"ours_{i}"]["median"] for i in range(len(photos_names)))
    grab = statistics.median(r[f"grabcut_{i}"]["median"] for i in range(len(photos_names)))
    out = {
        "photos": len(photos_names),
        "median_seconds_ours": ours,
        "median_seconds_grabcut_1_iteration": grab,
        "ratio_to_grabcut": ours / grab,
        "stage_median_seconds": {k: statistics.median(v) for k, v in stages.items()},
        "mask_iou_vs_unhurried": {"min": min(ious), "median": statistics.median(ious)},
        "mask_iou_unhurried_vs_scikit_learn_unhurried": {
            "min": min(sk_ious), "median": statistics.median(sk_ious)},
        "timings": r,
    }
    st = ", ".join(f"{k} {1000 * v:.0f} ms" for k, v in out["stage_median_seconds"].items())
    print(f"  segmentation: ours / GrabCut (1 iteration) {out['ratio_to_grabcut']:.2f} per photo; "
          f"stages: {st}; mask IoU vs unhurried fit: min {min(ious):.3f}, "
          f"median {statistics.median(ious):.3f} (unhurried ours vs unhurried scikit-learn: min "
          f"{min(sk_ious):.3f}, median {statistics.median(sk_ious):.3f})", flush=True)
    return out


def _class_model_step(net, targets, size):

    return lambda: visualise(net, targets, **{**paper_preset(), "steps": 2}, size=size, progress=False)


def _resized(x: torch.Tensor, size: int) -> torch.Tensor:
    import torch.nn.functional as F

    y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return y.contiguous(memory_format=torch.channels_last) if y.shape[1] == 3 else y


def _scaling_point(net, x, t, device, reps) -> dict:
    r = measure({"saliency": lambda: saliency_map(net, x, t),
                 "floor": lambda: forward_backward(net.model, x, t),
                 "class_model_2_steps": _class_model_step(net, t.tolist(), x.shape[-1])}, device, reps)
    return {k: v["median"] for k, v in r.items()}


def _segmentation_point(photos, maps, device, reps) -> float:
    """Median over photos of the pipeline's time per photo."""
    r = measure({f"photo_{i}": (lambda i=i: segment(photos[i], maps[i])) for i in range(len(photos))},
                device, reps)
    return statistics.median(v["median"] for v in r.values())


def bench_scaling(net, device, args) -> dict:
    """How time grows with batch size and image size, for saliency, a class-model step and the cut.

    Times at each point (median of interleaved runs, with the forward+backward floor measured
    alongside), and the exponent of a power law fitted to them: time ~ batch^e, time ~ pixels^e.
    A class-model point runs 2 steps; its per-step time is half of it.
    """
    photos = convvis.sample_names()
    batches = [1, 4, 16] if args.quick else [1, 2, 4, 8, 16, 32, 64]
    sizes = [224, 320, 448]
    size_batch = 4 if args.quick else 8
    reps = max(2, args.repeats // 3)
    out: dict = {"batch": {}, "size": {}, "segmentation_size": {}}
    for bs in batches:
        x, t = _batch(net, photos, bs)
        out["batch"][bs] = _scaling_point(net, x, t, device, reps)
    x8, t8 = _batch(net, photos, size_batch)
    for size in sizes:
        out["size"][size] = _scaling_point(net, _resized(x8, size), t8, device, reps)
    x1, t1 = _batch(net, photos[:4], 4)
    maps = saliency_map(net, x1, t1)
    for size in sizes:
        photos_at = convvis.deprocess(_resized(x1, size), net)
        maps_at = _resized(maps[:, None], size)[:, 0].cpu().numpy()
        out["segmentation_size"][size] = _segmentation_point(photos_at, maps_at, device, reps)
    pixels = [s * s for s in sizes]
    ex = out["exponents"] = {}
    for what in ("saliency", "floor", "class_model_2_steps"):
        ex[f"{what}_vs_batch"] = exponent(batches, [out["batch"][b][what] for b in batches])
        ex[f"{what}_vs_pixels"] = exponent(pixels, [out["size"][s][what] for s in sizes])
    ex["segmentation_vs_pixels"] = exponent(pixels, [out["segmentation_size"][s] for s in sizes])
    out["size_batch"] = size_batch
    for axis in ("batch", "pixels"):
        fits = ", ".join(f"{k.rsplit('_vs_', 1)[0]} {v:.2f}"
                         for k, v in ex.items() if k.endswith(f"_vs_{axis}"))
        print(f"  time ~ {axis}^e: {fits}", flush=True)
    return out


# ---- page faults: the same calls with freed memory kept for reuse and without (issue #24) -------


def _usage() -> tuple[float, float, int]:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return r.ru_utime, r.ru_stime, r.ru_minflt


def _faults_probe(keep: bool, bs: int, rounds: int) -> dict:
    """In a fresh process: saliency and the bare forward+backward at one batch, per image.

    ``keep``: :func:`convvis.setup`'s ``keep_freed_memory``. mallopt is process-wide and cannot
    be undone, so each side runs in its own process. Wall, user and system seconds and minor page
    faults (``getrusage``) are per image, medians over ``rounds`` interleaved runs after one
    warm-up; the peak resident memory (VmHWM) is of the whole process; a hash of the maps checks
    that both sides compute the same bits.
    """
    import hashlib

    device = convvis.setup(seed=0, device="cpu", keep_freed_memory=keep)
    net = convvis.load_model(device=device)
    x, t = _batch(net, convvis.sample_names(), bs)
    fns = {"saliency": lambda: saliency_map(net, x, t),
           "forward_backward": lambda: forward_backward(net.model, x, t)}
    maps = saliency_map(net, x, t)
    for fn in fns.values():  # warm-up
        fn()
    rows: dict[str, dict[str, list[float]]] = {k: {"s": [], "user": [], "sys": [], "faults": []} for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            u0, s0, f0 = _usage()
            t0 = time.perf_counter()
            fn()
            wall = time.perf_counter() - t0
            u1, s1, f1 = _usage()
            for k, v in (("s", wall), ("user", u1 - u0), ("sys", s1 - s0), ("faults", f1 - f0)):
                rows[name][k].append(v / bs)
    out = {name: {"images_per_s": 1 / statistics.median(r["s"]),
                  "user_ms_per_image": 1000 * statistics.median(r["user"]),
                  "system_ms_per_image": 1000 * statistics.median(r["sys"]),
                  "minor_faults_per_image": statistics.median(r["faults"]),
                  "seconds_per_image_runs": r["s"], "user_s_per_image_runs": r["user"],
                  "system_s_per_image_runs": r["sys"], "minor_faults_per_image_runs": r["faults"]}
           for name, r in rows.items()}
    out["peak_rss_bytes"] = _proc_status_bytes("VmHWM")
    out["maps_sha256"] = hashlib.sha256(maps.contiguous().numpy().tobytes()).hexdigest()
    out["keep_freed_memory_applied"] = bool(convvis.runtime._malloc_state["applied"])
    return out


def _faults_in_child(keep: bool, bs: int, rounds: int) -> dict:
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items()
           if k not in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "CONVVIS_KEEP_FREED_MEMORY")}
    cmd = [sys.executable, __file__, "--faults-probe", "keep" if keep else "release", str(bs),
           "--repeats", str(rounds)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _pooled(children: list[dict], fn: str) -> dict:
    """Medians over every timed run of every child process of one side: a stall of the shared
    machine during one run moves the median of the pooled runs less than a child's median."""
    def med(key):
        return statistics.median(v for c in children for v in c[fn][key])

    return {"images_per_s": 1 / med("seconds_per_image_runs"),
            "user_ms_per_image": 1000 * med("user_s_per_image_runs"),
            "system_ms_per_image": 1000 * med("system_s_per_image_runs"),
            "minor_faults_per_image": med("minor_faults_per_image_runs")}


def bench_faults(net, device, args) -> dict:
    """Saliency and forward+backward per image, with freed memory kept for reuse and without.

    Each (batch, side) runs in a fresh process on the CPU; the sides alternate, ``--fault-pairs``
    times per batch, so a slow spell on a shared machine hits both. Reported per side: images/s,
    user and system CPU ms and minor page faults per image (medians over the pairs), the largest
    peak RSS; and the ratios kept / released. Medians are over every timed run of a side (pooled).
    """
    out: dict = {"method": "fresh process per (batch, side); getrusage(RUSAGE_SELF) deltas per call"}
    for bs in args.fault_batches:
        runs: dict[str, list[dict]] = {"released": [], "kept": []}
        for _ in range(args.fault_pairs):
            for side in ("released", "kept"):
                runs[side].append(_faults_in_child(side == "kept", bs, args.fault_rounds))
        r: dict = {}
        for side, rs in runs.items():
            r[side] = {fn: _pooled(rs, fn) for fn in ("saliency", "forward_backward")}
            r[side]["peak_rss_bytes"] = max(x["peak_rss_bytes"] for x in rs)
            r[side]["runs"] = rs
        r["maps_identical"] = len({x["maps_sha256"] for rs in runs.values() for x in rs}) == 1
        for fn in ("saliency", "forward_backward"):
            r[f"speedup_{fn}"] = r["kept"][fn]["images_per_s"] / r["released"][fn]["images_per_s"]
        r["peak_rss_ratio"] = r["kept"]["peak_rss_bytes"] / r["released"]["peak_rss_bytes"]
        out[f"batch_{bs}"] = r
        for fn in ("saliency", "forward_backward"):
            a, b = r["released"][fn], r["kept"][fn]
            print(f"  {fn:16s} batch {bs:3d}: images/s {a['images_per_s']:5.1f} -> {b['images_per_s']:5.1f}; "
                  f"user ms/image {a['user_ms_per_image']:5.1f} -> {b['user_ms_per_image']:5.1f}; system "
                  f"{a['system_ms_per_image']:5.1f} -> {b['system_ms_per_image']:5.1f}; minor faults/image "
                  f"{a['minor_faults_per_image']:7.0f} -> {b['minor_faults_per_image']:7.0f}", flush=True)
        print(f"  batch {bs:3d}: peak RSS {r['released']['peak_rss_bytes'] / 2**20:.0f} -> "
              f"{r['kept']['peak_rss_bytes'] / 2**20:.0f} MiB (x{r['peak_rss_ratio']:.2f}); maps "
              f"{'bit-for-bit identical' if r['maps_identical'] else 'DIFFERENT'}", flush=True)
    return out


def _cuda_peak(net, kind: str, bs: int, device, args) -> int | None:
    x, t = _batch(net, convvis.sample_names(), bs)
    if kind == "saliency":
        return peak_memory(lambda: saliency_map(net, x, t), device)
    sal = saliency_map(net, x, t)
    protocol = _protocol(args)

    def curve():
        return perturbation_curve(net, x, sal, t, "deletion", protocol, chunk=args.chunk)

    return peak_memory(curve, device)


def bench_memory(net, device, args) -> dict:
    """Peak memory of saliency and deletion per batch size, and the largest batch within a budget.

    CUDA: ``torch.cuda.max_memory_allocated`` above what was allocated before the call. CPU (Linux):
    peak resident memory of the call in a fresh process (:func:`peak_rss_in_child`).
    """
    batches = [1, 4, 16] if args.quick else [1, 4, 16, 32, 64]
    budget = args.memory_budget_gib * 2**30
    out: dict = {"method": "torch.cuda.max_memory_allocated" if device.type == "cuda"
                 else "peak RSS of the call in a fresh process (VmHWM reset via /proc/self/clear_refs)"}
    for kind in ("saliency", "deletion"):
        points = {}
        for bs in batches:
            if device.type == "cuda":
                peak = _cuda_peak(net, kind, bs, device, args)
            else:
                peak = peak_rss_in_child(kind, bs, args)
            if peak is None:
                print(f"  {kind}: peak memory not measurable here (needs CUDA or Linux /proc)")
                break
            points[bs] = peak
        if points:
            fit = largest_batch(points, budget)
            out[kind] = {"peak_bytes": points, **fit}
            print(f"  {kind}: peak " + ", ".join(f"batch {b} {v / 2**20:.0f} MiB" for b, v in points.items())
                  + f"; {fit['bytes_per_image'] / 2**20:.1f} MiB per image; largest batch within "
                  f"{args.memory_budget_gib:g} GiB: {fit['largest_batch']}", flush=True)
    return out


def bench_book(net, device, args) -> dict:
    """Execute every chapter top to bottom in a fresh kernel, as the book build does; seconds each."""
    import nbformat
    from nbclient import NotebookClient

    out = {}
    for nb_path in sorted((ROOT.parent / "chapters").glob("*.ipynb")):
        nb = nbformat.read(nb_path, as_version=4)
        t0 = time.perf_counter()
        NotebookClient(nb, timeout=1800, kernel_name="python3",
                       resources={"metadata": {"path": str(nb_path.parent)}}).execute()
        out[nb_path.stem] = time.perf_counter() - t0
        print(f"  {nb_path.stem}: {out[nb_path.stem]:.0f} s", flush=True)
    total = sum(out.values())
    print(f"  whole book: {total / 60:.1f} min (limit 15 min on a 2-core CPU)", flush=True)
    return {"seconds": out, "total_seconds": total}


def _ops(fn: Callable[[], object]) -> int:
    with count_operations() as c:
        fn()
    return c.count


def bench_host(net, device, args) -> dict:
    """What each hot path adds to its bare passes on the host: torch operations and time per call.

    At small batches a GPU waits for its host: every torch operation is issued by the CPU, one
    dispatch and one kernel launch each, and the device finishes it sooner than the next one comes.
    There a call costs what its host work costs, and whatever a method adds to the bare passes
    (checks, selection, bookkeeping) shows up in full. This benchmark measures that host work where
    the arithmetic is negligible: Lite0 on a ``--host-size`` image (default 32 x 32), batch 1, on
    one CPU thread (on a GPU, on the device as is). Per hot path, for ours and the bare passes:

    - the torch operations dispatched per call (exact: counted, the same on every machine);
    - the median time per call, ours and bare interleaved (``measure``), and their difference:
      the host time a call adds.

    Hot paths: ``saliency_map`` against a forward+backward; a deletion curve against the bare
    forward passes of its chunks (per chunk); a class-model step (paper preset) against a
    forward+backward. Host reads are not counted here: tests/test_host_reads.py holds each hot
    path to at most one per call.
    """

    size, steps, chunk = args.host_size, 10, args.chunk
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)  # the dispatch cost alone, not a thread pool's hand-offs
    try:
        x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
        x = x.contiguous(memory_format=torch.channels_last)
        t = torch.tensor([3], device=device)
        sal = saliency_map(net, x, t)
        protocol = with_steps("rise", pixels_per_step=max(1, size * size // 32))
        n_points = protocol.points(size * size)
        n_chunks = len(chunk_sizes(n_points, chunk))
        bare = bare_forwards(net.model, x, n_points, chunk)

        def steps_floor():
            for _ in range(steps):
                forward_backward(net.model, x, t)

        paths = {
            "saliency_map": (lambda: saliency_map(net, x, t), lambda: forward_backward(net.model, x, t), 1),
            "deletion_chunk": (lambda: perturbation_curve(net, x, sal, t, "deletion", protocol, chunk=chunk),
                               bare, n_chunks),
            "class_model_step": (lambda: visualise(net, [3], **{**paper_preset(), "steps": steps}, size=size,
                                                   progress=False), steps_floor, steps),
        }
        out: dict = {"image_size": size, "device": str(device), "cpu_threads": torch.get_num_threads(),
                     "method": "Lite0, batch 1, tiny image: the host's work per call; ops counted by a "
                               "TorchDispatchMode, times interleaved (median)"}
        for name, (ours, bare, per) in paths.items():
            r = measure({"ours": ours, "bare": bare}, device, max(args.repeats, 15), warmup=2)
            ops_ours, ops_bare = _ops(ours), _ops(bare)
            r.update({
                "calls_per_run": per,
                "ops_per_call": {"ours": ops_ours / per, "bare": ops_bare / per},
                "extra_ops_per_call": (ops_ours - ops_bare) / per,
                "extra_ms_per_call": 1000 * (r["ours"]["median"] - r["bare"]["median"]) / per,
                "ratio": ratio(r["ours"], r["bare"]),
            })
            out[name] = r
            print(f"  host work, {name:16s}: {ops_ours / per:6.1f} ops per call vs "
                  f"{ops_bare / per:6.1f} bare (+{r['extra_ops_per_call']:.1f}); "
                  f"{1000 * r['ours']['median'] / per:6.2f} ms vs {1000 * r['bare']['median'] / per:6.2f} ms "
                  f"per call (+{r['extra_ms_per_call']:.2f} ms, "
                  f"x{r['ratio']:.3f})", flush=True)
        return out
    finally:
        torch.set_num_threads(threads)


BENCHMARKS: dict[str, Callable] = {
    "saliency": bench_saliency,
    "deletion": bench_deletion,
    "class_model": bench_class_model,
    "segmentation": bench_segmentation,
    "scaling": bench_scaling,
    "memory": bench_memory,
    "faults": bench_faults,
    "host": bench_host,
    "book": bench_book,  # full runs only (minutes): not part of --quick unless named in --only
}


def summary(report: dict) -> str:
    """The headline ratios of a report as a short text table."""
    res, rows = report["results"], []
    for bs, r in res.get("saliency", {}).items():
        if bs.startswith("batch_"):
            name = f"saliency, {bs.replace('_', ' ')}"
            rows.append((name, "/ forward+backward", r["ratio_to_floor_channels_last"]))
            if "ratio_to_captum" in r:
                rows.append((name, "/ captum Saliency", r["ratio_to_captum"]))
    for bs, r in res.get("faults", {}).items():
        if bs.startswith("batch_"):
            name = bs.replace("_", " ")
            kept = f"saliency, {name}, freed memory kept"
            rows.append((kept, "/ released (speed)", r["speedup_saliency"]))
            rows.append((kept, "/ released (peak RSS)", r["peak_rss_ratio"]))
    for bs, r in res.get("deletion", {}).items():
        rows.append((f"deletion, {bs.replace('_', ' ')}", "/ bare forwards", r["ratio_to_bare_forwards"]))
    for bs, r in res.get("class_model", {}).items():
        rows.append((f"class-model step, {bs.replace('_', ' ')}", "/ forward+backward",
                     r["ratio_step_to_forward_backward"]))
    for name, r in res.get("host", {}).items():
        if isinstance(r, dict) and "ratio" in r:
            rows.append((f"host work, {name.replace('_', ' ')} (tiny image)", "/ bare passes", r["ratio"]))
    if "segmentation" in res:
        rows.append(("graph-cut pipeline, per photo", "/ OpenCV GrabCut",
                     res["segmentation"]["ratio_to_grabcut"]))
    for k, v in res.get("scaling", {}).get("exponents", {}).items():
        rows.append((k.replace("_", " "), "exponent", v))
    if "book" in res:
        rows.append(("whole book, CPU", "minutes", res["book"]["total_seconds"] / 60))
    width = max((len(a) for a, _, _ in rows), default=10)
    lines = [f"{'measurement':{width}}  {'against':20}  value", "-" * (width + 30)]
    lines += [f"{a:{width}}  {b:20}  {v:.2f}" for a, b, v in rows]
    return "\n".join(lines)


def machine() -> dict:
    info = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:  # the code measured: the appendix labels each report with it
        import subprocess

        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                                        capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller sizes (minutes on a laptop CPU)")
    p.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run only these")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (median reported)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA when available)")
    p.add_argument("--chunk", type=int, default=8, help="images per forward pass for deletion/insertion")
    p.add_argument("--out", type=Path, default=None, help="where to write the JSON report")
    p.add_argument("--memory-budget-gib", type=float, default=None,
                   help="memory budget for the largest-batch figure (default 4 on CPU, 16 on CUDA)")
    p.add_argument("--fault-batches", type=int, nargs="+", default=None,
                   help="batch sizes of the page-fault benchmark (default 1 8 16 32 80)")
    p.add_argument("--fault-pairs", type=int, default=None,
                   help="fresh-process pairs (released, kept) per batch in the page-fault benchmark")
    p.add_argument("--host-size", type=int, default=32,
                   help="image side of the host-work benchmark (small: the arithmetic is negligible)")
    p.add_argument("--memory-probe", nargs=2, metavar=("KIND", "BATCH"), help=argparse.SUPPRESS)
    p.add_argument("--faults-probe", nargs=2, metavar=("SIDE", "BATCH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.faults_probe:  # internal: one side of the page-fault benchmark in this fresh process
        side, bs = args.faults_probe
        print(json.dumps(_faults_probe(side == "keep", int(bs), args.repeats or 3)))
        return 0
    if args.memory_probe:  # internal: one memory measurement in this fresh process
        print(json.dumps(_memory_probe(args.memory_probe[0], int(args.memory_probe[1]), args)))
        return 0
    args.batch_sizes = [1, 8] if args.quick else [1, 8, 32]
    args.repeats = args.repeats or (5 if args.quick else 9)
    args.naive_max_batch = 1 if args.quick else 8
    args.fault_batches = args.fault_batches or ([1, 8, 16] if args.quick else [1, 8, 16, 32, 80])
    args.fault_pairs = args.fault_pairs or (1 if args.quick else 2)
    args.fault_rounds = 2 if args.quick else 3

    device = convvis.setup(seed=0, device=args.device)
    if args.memory_budget_gib is None:
        args.memory_budget_gib = 16.0 if device.type == "cuda" else 4.0
    net = convvis.load_model(device=device)
    report = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), "quick": args.quick, "device": str(device), "only": args.only,
              "results": {}}
    print(f"convvis benchmarks on {device} ({report['machine']['processor']}, "
          f"{report['machine']['cpu_threads']} threads), quick={args.quick}")
    chosen = args.only or [b for b in BENCHMARKS if not (args.quick and b == "book")]
    report["seconds"] = {}  # wall time of each benchmark: how long a full run takes (README, appendix)
    for name in chosen:
        print(f"[{name}]", flush=True)
        t0 = time.perf_counter()
        report["results"][name] = BENCHMARKS[name](net, device, args)
        report["seconds"][name] = time.perf_counter() - t0
    stem = f"{device.type}-{dt.date.today().isoformat()}{'-quick' if args.quick else ''}"
    out = args.out or ROOT / "results" / f"{stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(summary(report))
    print(f"report written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
