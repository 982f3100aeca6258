"""Throughput of ``python -m convvis.localise`` (issue #17, #25), on a fixture in the ILSVRC layout.

    python benchmarks/localise.py                 # about 3-5 minutes on a 2-core CPU
    python benchmarks/localise.py --images 96 --workers 1 2 4
    python benchmarks/localise.py --agreement 272 --workers 2      # batched path vs segment()
    python benchmarks/localise.py --memory-run 320 --workers 2     # RSS every second, 50-photo windows

Writes the book's 17 sample photos with their boxes, repeated with flips (``--fixture`` photos,
``convvis.ilsvrc.write_sample_fixture``), then measures on the first ``--images`` of them:

* **decoding alone**: reading JPEG + XML and resizing, per photo, in one process;
* **saliency stage alone**, in steady state: the network in the main process (forward, top-k, k
  saliency maps per photo, maps to the CPU), in batches of ``--batch-size``, photos decoded
  beforehand; ``--warmup`` batches (the same shapes) run first, untimed, so one-time start-up
  (CUDA context, kernel selection, allocator) is not in the rate;
* **dense stage alone** (the batched path), in steady state the same way: seeds, colour models,
  unaries and pairwise weights of every (photo, class) pair (``convvis.prepare_cuts``), in the
  main process on the network's device;
* **the pool's work per photo**, in one process with one thread, on the same ``--cut-images``
  photos in one run: today's whole task (``segment()`` for each of the k classes: the reference
  path) and what the batched path leaves to the pool (max-flow, largest component, box); their
  ratio, with user and system CPU time and page faults;
* **end to end**: ``convvis.localise.evaluate`` (batched path) with ``--workers`` w and one loader
  process, in steady state: (N - B) / (wall(N) - wall(B)) for N = ``--images`` and B one batch, so
  the processes' start-up (in both runs) cancels; against the slower stage;
* **peak memory**: the largest sum of RSS over the main process and all its children, sampled
  every 0.1 s during the end-to-end runs;
* **projection** for the 50,000 ILSVRC-2012 validation photos, from rates measured in this run
  only, with every assumption printed.

A JSON report goes to ``benchmarks/results/localise-<host>-<date>.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import os
import pickle
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

import convvis
from convvis import colour_model
from convvis.batched_segmentation import cut_prepared, prepare_cuts
from convvis.diagnostics import count_host_reads, count_operations
from convvis.ilsvrc import ILSVRCLocalisation, imagenet_wnids, write_sample_fixture
from convvis.localise import evaluate, localise_one
from convvis.saliency import saliency_map
from convvis.segmentation import bounding_box, box_iou, largest_component, segment

ROOT = Path(__file__).resolve().parent
VAL_IMAGES = 50_000


class _Sampler:
    """Runs ``self._sample`` in a daemon thread while the ``with`` block runs; it stops when
    ``self._stop`` is set, on exit."""

    def __enter__(self):
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._sample, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


class PeakRSS(_Sampler):
    """Largest total RSS of this process and its descendants, sampled in a thread."""

    def __init__(self, every: float = 0.1):
        self.every, self.peak = every, 0

    def _sample(self):
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(self.every)


def _usage():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {"wall": time.perf_counter(), "user": r.ru_utime, "system": r.ru_stime,
            "minor_faults": r.ru_minflt, "major_faults": r.ru_majflt}


def _since(u0):
    u1 = _usage()
    return {k: u1[k] - u0[k] for k in u0}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stage_rates(net, data, n, batch_size, top_k, warmup, cut_images) -> tuple[dict, dict]:
    """Images/s of each stage alone (see the module's docstring), and the per-photo pool work."""
    t0 = time.perf_counter()
    items = [data[i] for i in range(n)]
    decode = n / (time.perf_counter() - t0)
    wnids = imagenet_wnids()
    s = net.preprocessing.input_size
    dev = net.device
    mean = torch.tensor(net.preprocessing.mean, device=dev).view(3, 1, 1)
    std = torch.tensor(net.preprocessing.std, device=dev).view(3, 1, 1)
    batches = [items[i : i + batch_size] for i in range(0, n, batch_size)]

    def network(chunk):
        x = torch.stack([it["image"] for it in chunk]).to(dev)
        with torch.no_grad():
            classes = net.model(x).topk(top_k, 1).indices
        m = saliency_map(net, x.repeat_interleave(top_k, 0), classes.reshape(-1))
        return x, classes, m.reshape(len(chunk), top_k, s, s).float()

    def dense(x, m):
        ph = (x.detach().float() * std + mean).clamp(0.0, 1.0).movedim(1, -1)
        return prepare_cuts(ph, m)

    for chunk in batches[:warmup]:  # the same work and shapes as the timed batches, untimed
        x, _, m = network(chunk)
        m.cpu()
        dense(x, m)
    _sync(dev)
    saliency_s, dense_s, outputs = [], [], []
    for chunk in batches:
        t0 = time.perf_counter()
        x, classes, m = network(chunk)
        maps = m.cpu().numpy()  # waits for the device
        photos = convvis.deprocess(x, net)
        saliency_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        prepared = dense(x, m)
        _sync(dev)
        dense_s.append(time.perf_counter() - t0)
        outputs.append((chunk, classes.tolist(), maps, photos, prepared))
    ref_tasks, batched_tasks = [], []
    for chunk, classes, maps, photos, prepared in outputs:
        for j, it in enumerate(chunk):
            base = {"name": it["name"], "size": tuple(it["size"]), "input_size": s, "classes": classes[j],
                    "class_wnids": [wnids[c] for c in classes[j]], "objects": it["objects"],
                    "truth_wnids": it["wnids"], "segment": {}, "maps": None, "photo": None}
            ref_tasks.append({**base, "maps": maps[j], "photo": photos[j]})
            batched_tasks.append({**base, "prepared": prepared.task(j)})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a pool process
    pool = {}
    try:
        for name, tasks in (("reference", ref_tasks[:cut_images]), ("batched", batched_tasks[:cut_images])):
            u0 = _usage()
            for task in tasks:
                localise_one(task)
            used = _since(u0)
            pool[name] = {"photos": len(tasks), "s_per_photo": used["wall"] / len(tasks),
                          "user_s": used["user"], "system_s": used["system"],
                          "minor_faults": used["minor_faults"], "major_faults": used["major_faults"]}
    finally:
        torch.set_num_threads(threads)
    pool["ratio_batched_to_reference"] = pool["batched"]["s_per_photo"] / pool["reference"]["s_per_photo"]
    rates = {"decode_per_process": decode, "saliency": n / sum(saliency_s),
             "saliency_median_batch_s": statistics.median(saliency_s), "dense": n / sum(dense_s),
             "dense_median_batch_s": statistics.median(dense_s), "warmup_batches": warmup,
             "timed_batches": len(batches),
             "graph_cut_per_process": 1 / pool["batched"]["s_per_photo"],
             "reference_task_per_process": 1 / pool["reference"]["s_per_photo"]}
    return rates, pool


def agreement(net, data, n, batch_size, top_k) -> dict:
    """The batched path against segment() on every (photo, class) pair of the first n photos."""
    s = net.preprocessing.input_size
    mean = torch.tensor(net.preprocessing.mean, device=net.device).view(3, 1, 1)
    std = torch.tensor(net.preprocessing.std, device=net.device).view(3, 1, 1)
    ious, same, hits = [], 0, {"reference": 0, "batched": 0}
    pairs = seeds_equal = notes_equal = 0
    for start in range(0, n, batch_size):
        chunk = [data[i] for i in range(start, min(n, start + batch_size))]
        chunk = [it for it in chunk if it["error"] is None]
        x = torch.stack([it["image"] for it in chunk]).to(net.device)
        with torch.no_grad():
            classes = net.model(x).topk(top_k, 1).indices
        m = saliency_map(net, x.repeat_interleave(top_k, 0), classes.reshape(-1))
        m = m.reshape(len(chunk), top_k, s, s).float()
        prepared = prepare_cuts((x.float() * std + mean).clamp(0.0, 1.0).movedim(1, -1), m)
        maps, photos = m.cpu().numpy(), convvis.deprocess(x, net)
        for j, it in enumerate(chunk):
            h, w = it["size"]
            truth = [b for _, b in it["objects"]]
            for c in range(top_k):
                pairs += 1
                try:
                    ref = segment(photos[j], maps[j, c])
                except ValueError as e:
                    notes_equal += prepared.notes[j][c] == str(e)
                    continue
                seeds_equal += bool(np.array_equal(prepared.labels[j, c] == 1, ref.fg_seeds)
                                    and np.array_equal(prepared.labels[j, c] == 2, ref.bg_seeds))
                mask = cut_prepared(prepared.weights[j], prepared.pay[j, c], prepared.labels[j, c])
                box = bounding_box(largest_component(mask))
                union = (mask | ref.mask).sum()
                ious.append(float((mask & ref.mask).sum() / union) if union else 1.0)
                decide = {}
                for name, b in (("reference", ref.box), ("batched", box)):
                    pb = None if b is None else convvis.box_to_photo(b, (h, w), s)
                    decide[name] = pb is not None and max(box_iou(pb, t) for t in truth) >= 0.5
                    hits[name] += decide[name]
                same += decide["reference"] == decide["batched"]
    q = np.quantile(ious, [0, 0.01, 0.05, 0.25, 0.5]) if ious else []
    return {"photos": n, "pairs": pairs, "cut_pairs": len(ious), "seeds_equal": seeds_equal,
            "notes_equal": notes_equal, "same_decision": same,
            "same_decision_share": same / max(len(ious), 1),
            "iou_ge_0.5_reference": hits["reference"], "iou_ge_0.5_batched": hits["batched"],
            "mask_iou_quantiles": dict(zip(["min", "p1", "p5", "p25", "median"], map(float, q))),
            "mask_iou_equal_1_share": float(np.mean(np.array(ious) == 1.0)) if ious else None,
            "mask_iou_histogram": np.histogram(
                ious, bins=[0, 0.5, 0.9, 0.99, 0.999, 1.0 - 1e-12, 1.0])[0].tolist()}


def dense_host_work(net, data, batch_size, top_k) -> dict:
    """What the dense stage's GPU code asks of the host, measured on any device, per batch.

    On a GPU the dense stage (``prepare_cuts``) is small arithmetic on small arrays: what it costs
    there is the host's work of issuing it. This counts, for one batch of ``batch_size`` photos x
    ``top_k`` maps run with ``engine="torch"`` (the code a GPU runs), the torch operations it
    dispatches and the host reads it makes (each waits for the device's queue; both counted by
    ``convvis.diagnostics``), and times the
    NumPy part it keeps on the host on every device (the k-means++ starting point,
    ``initial_assignments``), with one thread. It also measures what handing the batch's tasks to
    a pool process costs the main process (pickling, the pipe; ``Pool.apply_async``) and what
    unpickling one costs a worker, per photo; and counts the operations of one forward and one
    forward+backward of the network at batch 1, so that a per-operation host cost can be read off
    a GPU's measured pass times (``benchmarks/project_gpu.py``).
    """
    dev = net.device
    s = net.preprocessing.input_size
    mean = torch.tensor(net.preprocessing.mean, device=dev).view(3, 1, 1)
    std = torch.tensor(net.preprocessing.std, device=dev).view(3, 1, 1)
    chunk = [it for it in (data[i] for i in range(batch_size)) if it["error"] is None]
    x = torch.stack([it["image"] for it in chunk]).to(dev)
    with torch.no_grad():
        classes = net.model(x).topk(top_k, 1).indices
    m = saliency_map(net, x.repeat_interleave(top_k, 0), classes.reshape(-1))
    m = m.reshape(len(chunk), top_k, s, s).float()
    ph = (x.float() * std + mean).clamp(0.0, 1.0).movedim(1, -1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    init_s = []
    original = colour_model.initial_assignments

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        out = original(*args, **kwargs)
        init_s.append(time.perf_counter() - t0)
        return out

    try:
        prepare_cuts(ph, m, engine="torch")  # warm
        with count_operations() as ops:
            prepare_cuts(ph, m, engine="torch")
        with count_host_reads() as reads:  # apart: the counter's host copies are operations too
            prepare_cuts(ph, m, engine="torch")
        walls, inits = [], []
        colour_model.initial_assignments = timed
        for _ in range(3):
            init_s.clear()
            t0 = time.perf_counter()
            prepared = prepare_cuts(ph, m, engine="torch")
            _sync(dev)
            walls.append(time.perf_counter() - t0)
            inits.append(sum(init_s))
        xb = x[:1].detach().clone().requires_grad_(True)
        with count_operations() as fwd, torch.no_grad():
            net.model(x[:1])
        with count_operations() as fwd_bwd:
            torch.autograd.grad(net.model(xb)[:, 0].sum(), xb)
    finally:
        colour_model.initial_assignments = original
        torch.set_num_threads(threads)
    tasks = [{"name": it["name"], "size": tuple(it["size"]), "input_size": s, "classes": [0] * top_k,
              "class_wnids": [""] * top_k, "objects": it["objects"], "truth_wnids": it["wnids"],
              "segment": {}, "maps": None, "photo": None, "prepared": prepared.task(j)}
             for j, it in enumerate(chunk)]
    blobs = [pickle.dumps(t) for t in tasks]
    t0 = time.perf_counter()
    for b in blobs:
        pickle.loads(b)
    unpickle = (time.perf_counter() - t0) / len(blobs)
    handoff = []
    with mp.get_context("spawn").Pool(1) as pool:
        pool.apply_async(len, ({},)).get()  # started
        for _ in range(3):
            u0 = _usage()
            pending = [pool.apply_async(len, (t,)) for t in tasks]
            for r in pending:
                r.get()
            used = _since(u0)
            handoff.append((used["user"] + used["system"]) / len(tasks))
    return {"photos": len(chunk), "top_k": top_k, "engine": "torch", "device": str(dev),
            "ops_per_batch": ops.count, "host_reads_per_batch": len(reads),
            "host_reads": {r: reads.count(r) for r in sorted(set(reads))},
            "numpy_init_s_per_batch": statistics.median(inits),
            "wall_s_per_batch_one_thread": statistics.median(walls),
            "ops_forward_batch_1": fwd.count, "ops_forward_backward_batch_1": fwd_bwd.count,
            "task_bytes_per_photo": statistics.mean(len(b) for b in blobs),
            "prepared_bytes_per_batch": sum(a.nbytes for a in (prepared.weights, prepared.pay,
                                                               prepared.labels)),
            "handoff_cpu_s_per_photo": statistics.median(handoff),
            "unpickle_s_per_photo": unpickle}


class RSSSeries(_Sampler):
    """Every ``every`` seconds: RSS of this process and of its children, and photos written so far."""

    def __init__(self, out: Path, every: float = 1.0):
        self.out, self.every, self.rows = out, every, []

    def _sample(self):
        me = psutil.Process()
        while not self._stop.is_set():
            kids = 0
            for p in me.children(recursive=True):
                try:
                    kids += p.memory_info().rss
                except psutil.Error:
                    pass
            try:
                with open(self.out, "rb") as fh:
                    done = fh.read().count(b"\n")
            except OSError:
                done = 0
            self.rows.append((time.perf_counter(), done, me.memory_info().rss, kids))
            self._stop.wait(self.every)


def memory_run(net, img, xml, tmp, n, workers, batch_size, top_k) -> dict:
    """RSS of main + workers every second over n photos; peak per 50-photo window after the first 100."""
    out = Path(tmp) / "memory.jsonl"
    with RSSSeries(out) as series:
        evaluate(img, xml, out, model=net, workers=workers, loader_workers=1, batch_size=batch_size,
                 limit=n, top_k=top_k, progress=False)
    windows = {}
    for _, done, main_rss, kids in series.rows:
        if done >= 100:
            w = 100 + 50 * ((done - 100) // 50)
            cur = windows.setdefault(w, [0, 0, 0])
            cur[0], cur[1], cur[2] = max(cur[0], main_rss + kids), max(cur[1], main_rss), max(cur[2], kids)
    keys = sorted(k for k in windows if k + 50 <= n)  # whole windows only
    peaks = [windows[k][0] for k in keys]
    growth = max(peaks) / peaks[0] - 1 if peaks else None
    return {"photos": n, "workers": workers, "samples": len(series.rows),
            "windows": {f"{k}-{k + 50}": {"peak_total": v[0], "peak_main": v[1], "peak_workers": v[2]}
                        for k, v in sorted(windows.items()) if k in keys},
            "growth_over_first_window": growth, "all_main_min_max": (
                min(r[2] for r in series.rows), max(r[2] for r in series.rows)) if series.rows else None}


def _cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gib(b):
    return b / 2**30


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fixture", type=int, default=272, help="photos written (17 samples x 4 flips x 4)")
    p.add_argument("--images", type=int, default=32, help="photos measured per run (--limit)")
    p.add_argument("--workers", type=int, nargs="+", default=None, help="default: 1 .. CPU count")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2, help="untimed batches before the stages are timed")
    p.add_argument("--cut-images", type=int, default=24,
                   help="photos for the per-process pool work (both paths; at most --images)")
    p.add_argument("--agreement", type=int, default=0, metavar="N",
                   help="also compare the batched path with segment() on the first N fixture photos")
    p.add_argument("--memory-run", type=int, default=0, metavar="N",
                   help="also run N photos (>= 300 to judge) with the first --workers value, sampling "
                        "RSS every second; report the peak per 50-photo window after the first 100")
    p.add_argument("--skip-stages", action="store_true", help="only --agreement / --memory-run")
    p.add_argument("--device", default=None)
    p.add_argument("--commit", default=None, help="the commit measured (default: git's HEAD here)")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    logical = psutil.cpu_count(logical=True) or os.cpu_count() or 1
    physical = psutil.cpu_count(logical=False) or logical
    workers = a.workers or list(range(1, logical + 1))
    device = convvis.setup(seed=0, device=a.device)
    net = convvis.load_model(device=device)
    commit = a.commit or os.popen(f"git -C {ROOT} rev-parse --short HEAD 2>/dev/null").read().strip() or None
    report = {"date": dt.datetime.now().isoformat(timespec="seconds"), "device": str(device),
              "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                              else _cpu_name()),
              "cpu_count": logical, "physical_cores": physical, "platform": platform.platform(),
              "python": sys.version.split()[0], "torch": torch.__version__, "commit": commit,
              "images": a.images, "batch_size": a.batch_size, "top_k": a.top_k, "model": net.name}
    print(f"machine: {physical} physical cores, {logical} logical; device {device} "
          f"({report['device_name']}); torch {torch.__version__}; commit {commit}")
    u_start = _usage()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        fixture = max(a.fixture, a.memory_run, a.agreement, a.images)
        img, xml = write_sample_fixture(tmp, fixture)
        print(f"fixture: {fixture} photos in the ILSVRC layout ({time.perf_counter() - t0:.1f} s)")
        data = ILSVRCLocalisation(img, xml, net)
        if a.agreement:
            t0 = time.perf_counter()
            agree = agreement(net, data, a.agreement, a.batch_size, a.top_k)
            report["agreement"] = agree
            q = agree["mask_iou_quantiles"]
            print(f"\nbatched path vs segment() on {agree['photos']} photos, {agree['pairs']} (photo, class) "
                  f"pairs ({time.perf_counter() - t0:.0f} s):")
            print(f"  seeds identical: {agree['seeds_equal']} of {agree['cut_pairs']}; pairs without seeds "
                  f"with the same note: {agree['notes_equal']} of {agree['pairs'] - agree['cut_pairs']}")
            print(f"  same IoU >= 0.5 decision (box vs the ground truth): {agree['same_decision']} of "
                  f"{agree['cut_pairs']} ({100 * agree['same_decision_share']:.2f} %); IoU >= 0.5: "
                  f"{agree['iou_ge_0.5_reference']} segment(), {agree['iou_ge_0.5_batched']} batched")
            print("  mask IoU with segment()'s: " + ", ".join(f"{k} {v:.4f}" for k, v in q.items())
                  + f"; equal to 1: {100 * agree['mask_iou_equal_1_share']:.2f} % of pairs")
            print(f"  histogram [0, .5, .9, .99, .999, 1), [1]: {agree['mask_iou_histogram']}")
        if a.memory_run:
            t0 = time.perf_counter()
            mem = memory_run(net, img, xml, tmp, a.memory_run, workers[0], a.batch_size, a.top_k)
            report["memory_run"] = mem
            print(f"\nmemory run: {mem['photos']} photos, {mem['workers']} worker(s), "
                  f"{mem['samples']} samples at 1 s ({time.perf_counter() - t0:.0f} s); "
                  "peak RSS per 50-photo window (GiB):")
            for k, v in mem["windows"].items():
                print(f"  photos {k}: total {_gib(v['peak_total']):.2f} (main {_gib(v['peak_main']):.2f}, "
                      f"workers {_gib(v['peak_workers']):.2f})")
            if mem["growth_over_first_window"] is not None:
                print(f"  largest window peak / first window peak - 1: "
                      f"{100 * mem['growth_over_first_window']:+.1f} % (target: at most +10 %)")
        if not a.skip_stages:
            run_stages(a, net, data, img, xml, tmp, workers, physical, logical, device, report)
    used = _since(u_start)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    report["rusage"] = {"main": used, "children_user_s": kids.ru_utime, "children_system_s": kids.ru_stime,
                        "children_minor_faults": kids.ru_minflt, "children_major_faults": kids.ru_majflt}
    print(f"\nCPU time: main process user {used['user']:.1f} s, system {used['system']:.1f} s, "
          f"{used['minor_faults']} minor / {used['major_faults']} major page faults; finished children "
          f"user {kids.ru_utime:.1f} s, system {kids.ru_stime:.1f} s; wall {used['wall']:.1f} s")
    out = a.out or ROOT / "results" / f"localise-{platform.node()}-{dt.date.today()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    print(f"report: {out}")
    return 0


def run_stages(a, net, data, img, xml, tmp, workers, physical, logical, device, report):
    stages, pool = stage_rates(net, data, a.images, a.batch_size, a.top_k, a.warmup,
                               min(a.cut_images, a.images))
    report["stages"], report["pool_work"] = stages, pool
    print(f"\ndecoding alone:       {stages['decode_per_process']:7.2f} images/s per process")
    print(f"saliency stage alone: {stages['saliency']:7.2f} images/s steady (top-{a.top_k} maps, {device}; "
          f"{stages['warmup_batches']} warm-up batches untimed, {stages['timed_batches']} timed, median "
          f"{1000 * stages['saliency_median_batch_s']:.1f} ms per batch of {a.batch_size})")
    print(f"dense stage alone:    {stages['dense']:7.2f} images/s steady (seeds, colour models, unaries, "
          f"pairwise weights of {a.top_k} classes per photo, {device}; median "
          f"{1000 * stages['dense_median_batch_s']:.1f} ms per batch)")
    r, b = pool["reference"], pool["batched"]
    print(f"pool work per photo, one process, {r['photos']} photos: today's whole task (segment() x "
          f"{a.top_k}) {1000 * r['s_per_photo']:.0f} ms (user {r['user_s']:.1f} s, "
          f"system {r['system_s']:.1f} s, "
          f"{r['minor_faults']} minor faults); batched path's (max-flow, component, box) "
          f"{1000 * b['s_per_photo']:.0f} ms (user {b['user_s']:.1f} s, system {b['system_s']:.1f} s, "
          f"{b['minor_faults']} minor faults)")
    print(f"  ratio batched / today: {pool['ratio_batched_to_reference']:.2f} (target: at most 0.5)")
    host = dense_host_work(net, data, a.batch_size, a.top_k)
    report["dense_host_work"] = host
    print(f"dense stage's GPU code (engine='torch'), per batch of {host['photos']} photos x {a.top_k} maps: "
          f"{host['ops_per_batch']} torch operations, {host['host_reads_per_batch']} host reads "
          f"({', '.join(f'{k} {v}' for k, v in host['host_reads'].items())}), NumPy k-means++ start "
          f"{1000 * host['numpy_init_s_per_batch']:.1f} ms, "
          f"{1000 * host['wall_s_per_batch_one_thread']:.0f} ms "
          f"in all here with one thread; one forward at batch 1: {host['ops_forward_batch_1']} operations, "
          f"forward+backward {host['ops_forward_backward_batch_1']}")
    print(f"handing a task to a pool process: {host['task_bytes_per_photo'] / 2**20:.2f} MiB pickled, "
          f"{1000 * host['handoff_cpu_s_per_photo']:.2f} ms of the main process's CPU time per photo; "
          f"unpickling it {1000 * host['unpickle_s_per_photo']:.2f} ms")
    runs = {}
    n0 = a.batch_size
    for w in workers:
        walls = {}
        with PeakRSS() as mem:
            for n in (n0, a.images):  # the same start-up cost in both: their difference is steady
                out = Path(tmp) / f"run{w}-{n}.jsonl"
                t0 = time.perf_counter()
                summary = evaluate(img, xml, out, model=net, workers=w, loader_workers=1,
                                   batch_size=a.batch_size, limit=n, top_k=a.top_k, progress=False)
                walls[n] = time.perf_counter() - t0
        steady = (a.images - n0) / (walls[a.images] - walls[n0])
        main_rate = 1 / (1 / stages["saliency"] + 1 / stages["dense"])  # both run in the main process
        slower = min(main_rate, stages["graph_cut_per_process"] * w)
        runs[w] = {"wall_s": walls[a.images], "wall_first_batch_s": walls[n0],
                   "steady_images_per_s": steady, "slower_stage_images_per_s": slower,
                   "ratio": steady / slower, "peak_rss_bytes": mem.peak, "summary": summary}
        print(f"end to end, {w} worker(s): {steady:6.2f} images/s steady "
              f"({steady / slower:.2f}x the slower stage, {slower:.2f}/s); {a.images} photos in "
              f"{walls[a.images]:.1f} s, {n0} in {walls[n0]:.1f} s (start-up included); "
              f"peak RSS {_gib(mem.peak):.2f} GiB")
    report["runs"] = runs
    best_w, best = max(runs.items(), key=lambda kv: kv[1]["steady_images_per_s"])
    rate = best["steady_images_per_s"]
    startup = best["wall_first_batch_s"] - a.batch_size / rate
    main_rate = 1 / (1 / stages["saliency"] + 1 / stages["dense"])
    pool_procs = max(1, physical - 2)
    stage_bound = min(main_rate, stages["graph_cut_per_process"] * pool_procs,
                      stages["decode_per_process"] * max(1, best_w // 4))
    proj = {
        "measured_minutes": (VAL_IMAGES / rate + max(startup, 0.0)) / 60,
        "measured_rate": rate, "measured_workers": best_w, "startup_s": startup,
        "stage_bound_rate": stage_bound, "stage_bound_minutes": VAL_IMAGES / stage_bound / 60,
        "assumptions": [
            f"{VAL_IMAGES} photos, top-{a.top_k}, batches of {a.batch_size}, {net.name}, on this machine",
            f"measured: the best steady end-to-end rate of this run ({rate:.2f} images/s with {best_w} "
            f"workers, one loader process), holding for all {VAL_IMAGES} photos; start-up "
            f"({max(startup, 0.0):.1f} s, from the one-batch run) added once",
            "ILSVRC photos are resized to the model's input square, so the per-photo cost does not "
            "depend on their size; the fixture's photos stand for them (their content changes the "
            "max-flow's time)",
            f"stage bound: the main process (saliency {stages['saliency']:.1f}/s and dense stage "
            f"{stages['dense']:.1f}/s in turn: {main_rate:.1f}/s), the pool ({pool_procs} processes, "
            f"physical cores - 2, x {stages['graph_cut_per_process']:.2f}/s each, scaling linearly), "
            f"decoding ({max(1, best_w // 4)} loader process(es) x {stages['decode_per_process']:.0f}/s); "
            "the slowest of the three",
        ],
    }
    report["projection"] = proj
    print(f"\nProjection for the {VAL_IMAGES} validation photos (rates measured in this run only):")
    print(f"  from the best measured end-to-end rate: {proj['measured_minutes']:.1f} min")
    print(f"  from the per-stage rates (slowest stage): {proj['stage_bound_minutes']:.1f} min")
    for line in proj["assumptions"]:
        print(f"  assumption: {line}")


if __name__ == "__main__":
    sys.exit(main())
