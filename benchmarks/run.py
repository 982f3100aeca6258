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
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import convvis
from convvis.gradients import frozen_parameters
from convvis.metrics import PROTOCOLS, _ranks, auc, perturbation_curve, with_steps
from convvis.saliency import saliency_map

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
    """Peak bytes allocated by ``fn`` on a CUDA device (None on CPU, where tracemalloc cannot see torch)."""
    if device.type != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return int(torch.cuda.max_memory_allocated(device))


# ---- the floor: one forward + backward pass to the input ---------------------------------------


def forward_backward(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> None:
    """The least any input-gradient method can do: forward, select S_c, backward to the input."""
    with frozen_parameters(model), torch.enable_grad():
        xi = x.detach().requires_grad_(True)
        torch.autograd.grad(model(xi).gather(1, t[:, None]).sum(), xi)


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
    r = measure(fns, device, args.repeats)
    if Saliency is not None:
        r["ratio_to_captum"] = ratio(r["ours"], r["captum_default_layout"])
    r["ratio_to_floor_default_layout"] = ratio(r["ours"], r["floor_default_layout"])
    r["ratio_to_floor_channels_last"] = ratio(r["ours"], r["floor_channels_last"])
    r["images_per_s"] = x.shape[0] / r["ours"]["median"]
    r["peak_bytes"] = peak_memory(lambda: saliency_map(net, x, t), device)
    return r


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
              + (f", / captum {r['ratio_to_captum']:.2f}" if "ratio_to_captum" in r else ""), flush=True)
    return out


def naive_curve(model, x, sal, t, protocol) -> torch.Tensor:
    """Deletion the straightforward way: one forward pass per step and image."""
    n, _, h, w = x.shape
    step = protocol.step_size(h * w)
    ranks = _ranks(sal)
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
    n_points = -(-(224 * 224) // protocol.step_size(224 * 224)) + 1
    # the bare forward passes the curves need, batched as ours are, on ready-made inputs
    chunk = x[:1].expand(args.chunk, -1, -1, -1).contiguous(memory_format=torch.channels_last)
    n_chunks = -(-(bs * n_points) // args.chunk)

    def bare():
        with torch.no_grad():
            for _ in range(n_chunks):
                net.model(chunk)

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


def bench_deletion(net, device, args) -> dict:
    """Deletion curves: ours (chunked, channels-last) vs the naive loop vs the bare forward passes."""
    protocol = PROTOCOLS["rise"] if not args.quick else with_steps("rise", pixels_per_step=224 * 8)
    photos = convvis.sample_names()
    out = {}
    for bs in args.batch_sizes:
        x, t = _batch(net, photos, bs)
        r = out[f"batch_{bs}"] = _deletion_at(net, x, t, protocol, device, args)
        print(f"  deletion, batch {bs:3d} ({r['points_per_curve']} points): ours / bare forwards "
              f"{r['ratio_to_bare_forwards']:.2f}"
              + (f", / naive loop {r['ratio_to_naive']:.2f} (AUCs differ by {r['max_auc_difference']:.1e})"
                 if "ratio_to_naive" in r else ""), flush=True)
    return out


def _class_model_at(net, targets, steps, device, args) -> dict:
    from convvis.class_model import paper_preset, visualise

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
    from convvis import segmentation as seg

    fg, bg = seg.seeds_from_saliency(saliency)
    if sklearn:
        from sklearn.mixture import GaussianMixture

        def fit(c):
            g = GaussianMixture(5, covariance_type="full", reg_covar=1e-4, max_iter=200, random_state=0)
            g.fit(c)
            return seg.ColourModel(g.weights_, g.means_, g.covariances_)
    else:
        def fit(c):
            return seg.fit_colour_model(c, max_samples=None, max_iter=200, tol=1e-7)

    photo = photo.astype(np.float64)
    cost_fg, cost_bg = seg._unaries(photo, fit(photo[fg]), fit(photo[bg]), ~(fg | bg))
    return seg.graph_cut(cost_fg, cost_bg, seg.pairwise_weights(photo)[0], fg, bg)


def bench_segmentation(net, device, args) -> dict:
    """The graph-cut pipeline per 224 x 224 photo, by stage, against OpenCV's GrabCut (1 iteration)."""
    from convvis.segmentation import grabcut_mask, segment

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
        seg = segment(photos[i], maps[i])
        for k, v in seg.timings.items():
            stages.setdefault(k, []).append(v)
        slow = _unhurried_mask(photos[i], maps[i], sklearn=False)
        ious.append(_mask_iou(seg.mask, slow))
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


BENCHMARKS: dict[str, Callable] = {
    "saliency": bench_saliency,
    "deletion": bench_deletion,
    "class_model": bench_class_model,
    "segmentation": bench_segmentation,
}


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
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller sizes (minutes on a laptop CPU)")
    p.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run only these")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (median reported)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA when available)")
    p.add_argument("--chunk", type=int, default=8, help="images per forward pass for deletion/insertion")
    p.add_argument("--out", type=Path, default=None, help="where to write the JSON report")
    args = p.parse_args(argv)
    args.batch_sizes = [1, 8] if args.quick else [1, 8, 32]
    args.repeats = args.repeats or (5 if args.quick else 9)
    args.naive_max_batch = 1 if args.quick else 8

    device = convvis.setup(seed=0, device=args.device)
    net = convvis.load_model(device=device)
    report = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), "quick": args.quick, "device": str(device), "results": {}}
    print(f"convvis benchmarks on {device} ({report['machine']['processor']}, "
          f"{report['machine']['cpu_threads']} threads), quick={args.quick}")
    for name in args.only or BENCHMARKS:
        print(f"[{name}]", flush=True)
        report["results"][name] = BENCHMARKS[name](net, device, args)
    stem = f"{device.type}-{dt.date.today().isoformat()}{'-quick' if args.quick else ''}"
    out = args.out or ROOT / "results" / f"{stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"report written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
