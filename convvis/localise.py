"""The paper's ILSVRC localisation result in one command (paper Sect. 3.2; issue #17).

    python -m convvis.localise ILSVRC2012_img_val ILSVRC2012_bbox_val/val --out results.jsonl

For each photo: the network's top-k classes; for each of them the paper's saliency map
(:func:`convvis.saliency.saliency_map`), seeds, colour models, graph cut, largest component and
box (:func:`convvis.segment`, paper defaults); the box mapped back to the original
photo's pixels; and the ILSVRC rule (:func:`convvis.ilsvrc.localisation_correct`: right class and
IoU >= 0.5). The summary gives top-1 and top-k localisation error beside the classification-only
error (right class among the top k, box ignored), so the share of the error that is
classification is visible, and prints the published weakly supervised figures next to it.

Input: the whole photo resized to the model's S x S input (no crop; see ``convvis.ilsvrc``),
so the box covers the whole photo and maps back by scaling.

Pipeline: a ``DataLoader`` (``loader_workers`` processes decode JPEG + XML) feeds batches to the
device, where the main process computes the top-k classes and the k saliency maps of every photo
in one batched backward pass, then (the batched path, the default) the dense part of every
(photo, class) pair's graph cut together on the same device: seeds, colour models, unaries, and
the pairwise weights once per photo (:mod:`convvis.batched_segmentation`); a pool of ``workers``
processes (spawned, one thread each) runs what is left, the max-flow, largest component and box,
one task per photo, while the network works on the next batch. ``--reference`` runs
:func:`convvis.segment` whole in the pool instead (the one-photo reference; the batched path
agrees with it as :mod:`convvis.batched_segmentation` states). At most ``in_flight``
tasks wait at any time, and results are written in input order as they come, so memory stays
bounded whatever the data set's size.

Output: one JSON line per photo (``{"image", "size", "truth", "predictions", "correct"}``, boxes
``[x0, y0, x1, y1)`` in photo pixels; or ``{"image", "error", "detail"}`` for a photo that cannot
be scored). A rerun skips the photos already in the file; at the end the file is rewritten sorted
by photo name, so an interrupted and resumed run ends with the same file as one clean run. The
graph cut's random draws use a fixed seed (``segment(seed=0)``), so results are deterministic.

Past one machine: ``--shard K/N`` runs only the photos :func:`shard_of` puts in shard K of N (by
a hash of the name, so the split does not depend on the machine or on the folder listing), into
``OUT`` with ``.shard-K-of-N`` before its suffix; ``python -m convvis.localise summary FILES...``
scores their union exactly as one run would (``--merged`` also writes the one run's file).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import sys
import time
from collections import Counter, deque
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .batched_segmentation import BATCHED_SETTINGS, cut_prepared, prepare_cuts
from .ilsvrc import ILSVRCLocalisation, imagenet_wnids, localisation_correct
from .images import box_to_photo, deprocess
from .loaded_model import LoadedModel
from .models import load_model
from .runtime import keep_freed_memory, resolve_device
from .saliency import saliency_map
from .segmentation import bounding_box, largest_component, segment

__all__ = ["evaluate", "localise_one", "summarise", "merge_results", "shard_of", "shard_path", "parse_shard",
           "format_summary", "main", "PUBLISHED"]

# Published weakly supervised top-5 localisation errors (%), each with its split and model.
# Different data, splits and networks: context for the reader, not a like-for-like comparison.
PUBLISHED = [
    # Simonyan, Vedaldi & Zisserman 2013 (arXiv:1312.6034), Sect. 3.2: saliency + graph cut.
    {"method": "Simonyan et al. 2013, saliency + graph cut (this paper)", "split": "ILSVRC-2013 test",
     "model": "their ConvNet (weights never published)", "top5": 46.4},
    # Zhou et al. 2016, CAM (CVPR 2016, arXiv:1512.04150), abstract: "37.1% top-5 error for
    # object localization on ILSVRC 2014" (GoogLeNet-GAP; the test set, their box heuristics).
    {"method": "Zhou et al. 2016, CAM", "split": "ILSVRC-2014 test", "model": "GoogLeNet-GAP",
     "top5": 37.1},
    # Selvaraju et al. 2017, Grad-CAM (ICCV 2017, arXiv:1610.02391), Table 1: Grad-CAM on VGG-16,
    # top-1 / top-5 localisation error 56.51 / 46.41 on the ILSVRC-15 validation set.
    {"method": "Selvaraju et al. 2017, Grad-CAM", "split": "ILSVRC-2015 val", "model": "VGG-16",
     "top5": 46.41},
]


# ---- the per-photo work, in a pool process ------------------------------------------------------


def _init_worker() -> None:
    torch.set_num_threads(1)  # one process per core; the graph cut is single-threaded anyway
    keep_freed_memory()  # issue #24: freed arrays are reused, not faulted in again


def localise_one(task: dict) -> dict:
    """Graph cut + box + score for one photo: the pool's task (all arrays are NumPy).

    A task from the batched path carries ``"prepared"`` (:meth:`convvis.PreparedCuts.task`:
    the pairwise weights, folded unaries and seeds of its k classes), and only the max-flow, the
    largest component and the box are left; otherwise it carries the photo and its k maps and runs
    :func:`convvis.segment`, the one-photo reference, for each class.
    """
    h, w = task["size"]
    s = task["input_size"]
    prepared = task.get("prepared")
    preds = []
    for k, cls in enumerate(task["classes"]):
        pred = {"class": int(cls), "wnid": task["class_wnids"][k], "box": None}
        if prepared is not None:
            if prepared["notes"][k] is not None:  # e.g. a constant map: no seeds, no box
                pred["note"] = prepared["notes"][k]
            else:
                mask = cut_prepared(prepared["weights"], prepared["pay"][k], prepared["labels"][k])
                box = bounding_box(largest_component(mask))
                if box is not None:
                    pred["box"] = box_to_photo(box, (h, w), s)
        elif task["maps"] is not None:
            try:
                seg = segment(task["photo"], task["maps"][k], **task["segment"])
                if seg.box is not None:
                    pred["box"] = box_to_photo(seg.box, (h, w), s)
            except ValueError as e:  # a constant map gives no seeds: no box for this class
                pred["note"] = str(e)
        preds.append(pred)
    objects = [(list(c), b) for c, b in task["objects"]]
    truth_classes = {c for cs, _ in objects for c in cs}
    guesses = [(p["class"], p["box"]) for p in preds]
    correct = {"top1_cls": preds[0]["class"] in truth_classes,
               "topk_cls": any(p["class"] in truth_classes for p in preds)}
    if task["maps"] is not None or prepared is not None:
        correct["top1_loc"] = localisation_correct(guesses[:1], objects)
        correct["topk_loc"] = localisation_correct(guesses, objects)
    return {"image": task["name"], "size": [h, w],
            "truth": [[wn, b] for wn, (_, b) in zip(task["truth_wnids"], objects)],
            "predictions": preds, "correct": correct}


# ---- the results file ---------------------------------------------------------------------------


def _read_done(out: Path) -> set[str]:
    """Names already in ``out``; a last line cut short by an interruption is removed."""
    done: set[str] = set()
    if not out.exists():
        return done
    good = 0
    with open(out, "rb") as fh:
        for line in fh:
            if not line.endswith(b"\n"):
                break
            try:
                done.add(json.loads(line)["image"])
            except (ValueError, KeyError, TypeError):
                break
            good += len(line)
    if good != out.stat().st_size:
        with open(out, "r+b") as fh:
            fh.truncate(good)
    return done


def _records(out: Path):
    with open(out, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def _finalise(out: Path) -> None:
    """Rewrite ``out`` sorted by image name, one line per image (atomically)."""
    lines = {}
    for rec in _records(out):
        lines.setdefault(rec["image"], json.dumps(rec, sort_keys=True))
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for name in sorted(lines):
            fh.write(lines[name] + "\n")
    os.replace(tmp, out)


@contextlib.contextmanager
def _single_threaded_children():
    """Spawned children read these at start-up: one BLAS/OpenMP thread per pool process."""
    keys = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---- shards: one run split over machines -------------------------------------------------------


def shard_of(name: str, count: int) -> int:
    """The shard (1 .. ``count``) a photo belongs to, from its name alone.

    The first 8 bytes of the name's SHA-256, modulo ``count``, plus one: the same on every machine
    and Python version (unlike ``hash``), and independent of which other photos exist, so shards
    never overlap and their union is every photo, however the folders are listed.
    """
    if count < 1:
        raise ValueError(f"the shard count must be at least 1, got {count}")
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") % count + 1


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> ``(K, N)`` with 1 <= K <= N; anything else raises ``ValueError``."""
    parts = str(text).split("/")
    try:
        k, n = (int(v) for v in parts)
    except ValueError:
        raise ValueError(f"a shard is K/N with integers 1 <= K <= N (e.g. 2/8), got {text!r}") from None
    if not 1 <= k <= n:
        raise ValueError(f"a shard is K/N with 1 <= K <= N, got {text!r}")
    return k, n


def shard_path(out: str | os.PathLike, shard: tuple[int, int]) -> Path:
    """The results file of one shard: ``results.jsonl`` -> ``results.shard-02-of-16.jsonl``."""
    out = Path(out)
    k, n = shard
    width = len(str(n))
    return out.with_name(f"{out.stem}.shard-{k:0{width}d}-of-{n}{out.suffix}")


def merge_results(paths: Sequence[str | os.PathLike], out: str | os.PathLike | None = None) -> list[str]:
    """The union of results files as one run's sorted lines (each ends with a newline).

    A photo in two files (shards run with different ``N``, or one file given twice) raises
    ``ValueError`` naming it and both files. ``out``: also write the lines there (atomically), which
    gives the file one run over all the photos would have written, byte for byte.
    """
    lines: dict[str, str] = {}
    where: dict[str, Path] = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"no results file {path}")
        seen = set()
        for rec in _records(path):
            name = rec["image"]
            if name in where and name not in seen:
                raise ValueError(f"{name} is in both {where[name]} and {path}: the shards overlap "
                                 "(were they run with different N?)")
            seen.add(name)
            where[name] = path
            lines.setdefault(name, json.dumps(rec, sort_keys=True) + "\n")
    ordered = [lines[name] for name in sorted(lines)]
    if out is not None:
        out = Path(out)
        tmp = out.with_name(out.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.writelines(ordered)
        os.replace(tmp, out)
    return ordered


# ---- the evaluation -----------------------------------------------------------------------------


def evaluate(
    images_dir: str | os.PathLike,
    annotations_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    model="efficientnet_lite0",
    device: str | torch.device | None = None,
    batch_size: int = 16,
    workers: int | None = None,
    loader_workers: int | None = None,
    limit: int | None = None,
    top_k: int = 5,
    classes_only: bool = False,
    in_flight: int | None = None,
    segment_kwargs: dict | None = None,
    shard: tuple[int, int] | None = None,
    batched: bool | None = None,
    progress: bool = True,
) -> dict:
    """Run the ILSVRC localisation evaluation; append rows to ``out``; return the summary.

    The summary is what :func:`convvis.localise.summarise` returns.

    ``model``: a name for :func:`convvis.load_model` or a :class:`convvis.LoadedModel`.
    ``workers``: graph-cut processes (default: the CPU count; 0 runs the cuts in this process).
    ``loader_workers``: ``DataLoader`` processes decoding photos (default ``max(1, workers // 4)``;
    0 decodes in this process). ``in_flight``: the most graph-cut tasks waiting at once (default
    ``2 * workers + batch_size``). ``classes_only``: skip saliency and graph cut (classification
    error only). ``segment_kwargs`` go to :func:`convvis.segment` (default: the
    paper's settings). ``shard=(K, N)``: only the photos :func:`shard_of` puts in shard K of N
    (after ``limit``); run all N, each into its own file, and :func:`merge_results` or
    ``python -m convvis.localise summary`` gives what one run would. ``batched`` (default: True
    when ``segment_kwargs`` are ones it supports): the dense work of every (photo, class) pair of a
    network batch (seeds, colour models, unaries, pairwise weights once per photo) runs together
    on the network's device (``convvis.batched_segmentation.prepare_cuts``) and the pool processes run
    only the max-flow, largest component and box; False runs :func:`convvis.segment`, the one-photo
    reference, in the pool. The summary counts photos in
    this data set (``limit`` and ``shard`` included) only.
    A missing folder raises ``FileNotFoundError`` before anything runs.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    if shard is not None:
        shard = parse_shard(f"{shard[0]}/{shard[1]}")
    out = Path(out)
    dev = resolve_device(device)
    for what, d in (("image", images_dir), ("annotation", annotations_dir)):
        if not Path(d).is_dir():  # fail before loading the model
            raise FileNotFoundError(f"no {what} folder {d}")
    wnids = imagenet_wnids()
    net = model if isinstance(model, LoadedModel) else load_model(model, device=dev)
    dev = net.device
    data = ILSVRCLocalisation(images_dir, annotations_dir, net, limit=limit, wnids=wnids)
    if len(net.class_names) not in (0, 1000):
        raise ValueError(f"the model has {len(net.class_names)} classes; ILSVRC needs the 1000")
    workers = (os.cpu_count() or 1) if workers is None else workers
    loader_workers = max(1, workers // 4) if loader_workers is None else loader_workers
    in_flight = in_flight or 2 * workers + batch_size
    out.parent.mkdir(parents=True, exist_ok=True)
    done = _read_done(out)
    mine = [i for i, n in enumerate(data.names) if shard is None or shard_of(n, shard[1]) == shard[0]]
    todo = [i for i in mine if data.names[i] not in done]
    seg_kw = dict(segment_kwargs or {})
    s = net.preprocessing.input_size
    supported = (set(seg_kw) <= BATCHED_SETTINGS | {"hard_seeds", "smooth", "iterations"}
                 and seg_kw.get("hard_seeds", "both") == "both" and not seg_kw.get("smooth", 0)
                 and not seg_kw.get("iterations", 0))
    if batched and not supported:
        raise ValueError(f"the batched path supports segment()'s settings {sorted(BATCHED_SETTINGS)} "
                         f"with hard_seeds='both', smooth=0, iterations=0; got {seg_kw}")
    batched = supported if batched is None else batched
    mean = torch.tensor(net.preprocessing.mean, device=dev).view(3, 1, 1)
    std = torch.tensor(net.preprocessing.std, device=dev).view(3, 1, 1)

    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(data, todo), batch_size=batch_size, num_workers=loader_workers,
        collate_fn=list, pin_memory=dev.type == "cuda",
        multiprocessing_context="spawn" if loader_workers else None,
        worker_init_fn=keep_freed_memory if loader_workers else None,
        prefetch_factor=2 if loader_workers else None)
    pool = None
    if workers > 0 and not classes_only:
        with _single_threaded_children():
            pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker)
    bar = tqdm(total=len(todo), unit="img", desc="localise", disable=not progress, smoothing=0.1)
    pending: deque = deque()  # (ready record | AsyncResult), in input order
    try:
        with open(out, "a", encoding="utf-8") as fh:

            def write(entry):
                rec = entry if isinstance(entry, dict) else entry.get()
                fh.write(json.dumps(rec, sort_keys=True) + "\n")
                fh.flush()
                bar.update(1)

            def drain(keep: int):
                while pending and (len(pending) > keep or _ready(pending[0])):
                    write(pending.popleft())

            for batch in loader:
                ok = [it for it in batch if it["error"] is None]
                classes = maps = photos = prepared = None
                if ok:
                    x = torch.stack([it["image"] for it in ok]).to(dev, non_blocking=True)
                    with torch.no_grad():
                        scores = net.model(x)
                    classes = scores.topk(top_k, dim=1).indices  # (n, k)
                    if not classes_only:
                        # k maps per photo in one backward pass: photo j repeated for its k classes
                        m = saliency_map(net, x.repeat_interleave(top_k, 0), classes.reshape(-1))
                        if batched:
                            # deprocess's arithmetic, on the device (float32, then clipped)
                            ph = (x.detach().float() * std + mean).clamp(0.0, 1.0).movedim(1, -1)
                            prepared = prepare_cuts(ph, m.reshape(len(ok), top_k, s, s).float(), **seg_kw)
                        else:
                            maps = m.reshape(len(ok), top_k, s, s).float().cpu().numpy()
                            photos = deprocess(x, net)
                    classes = classes.cpu().tolist()
                j = 0
                for it in batch:
                    if it["error"] is not None:
                        pending.append({"image": it["name"], "error": it["error"][0],
                                        "detail": it["error"][1]})
                        continue
                    task = {"name": it["name"], "size": tuple(it["size"]), "input_size": s,
                            "classes": classes[j], "class_wnids": [wnids[c] for c in classes[j]],
                            "objects": it["objects"],
                            "truth_wnids": it["wnids"], "segment": seg_kw,
                            "maps": None if maps is None else maps[j],
                            "photo": None if photos is None else photos[j],
                            "prepared": None if prepared is None else prepared.task(j)}
                    j += 1
                    if pool is None:
                        pending.append(localise_one(task))
                    else:
                        pending.append(pool.apply_async(localise_one, (task,)))
                drain(in_flight)
            drain(0)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    _finalise(out)
    return summarise(out, [data.names[i] for i in mine], top_k=top_k)


def _ready(entry) -> bool:
    return isinstance(entry, dict) or entry.ready()


def summarise(out: str | os.PathLike | Sequence[str | os.PathLike], names: Sequence[str] | None = None,
              top_k: int = 5) -> dict:
    """Error rates (%) and error counts from a results file (only ``names``, when given).

    ``out`` may also be a list of files, the shards of one run: they are merged first
    (:func:`merge_results`), so the summary is the one a single run would give.
    """
    keep = set(names) if names is not None else None
    n = 0
    hits: Counter = Counter()
    errors: Counter = Counter()
    has_loc = False
    if isinstance(out, (str, os.PathLike)):
        records = _records(Path(out))
    else:
        records = (json.loads(line) for line in merge_results(out))
    for rec in records:
        if keep is not None and rec["image"] not in keep:
            continue
        if "error" in rec:
            errors[rec["error"]] += 1
            continue
        n += 1
        hits.update(k for k, v in rec["correct"].items() if v)
        has_loc = has_loc or "top1_loc" in rec["correct"]
    def err(key):  # noqa: E306
        return round(100.0 * (1 - hits[key] / n), 2) if n else None
    summary = {"scored": n, "errors": dict(sorted(errors.items())), "top_k": top_k,
               "top1_cls_error": err("top1_cls"), "topk_cls_error": err("topk_cls")}
    if has_loc:
        summary.update(top1_loc_error=err("top1_loc"), topk_loc_error=err("topk_loc"))
    return summary


def format_summary(summary: dict, model: str = "") -> str:
    """The summary as a small table, beside the published figures."""
    k = summary["top_k"]
    lines = [f"Scored {summary['scored']} images; "
             f"{sum(summary['errors'].values())} could not be scored"
             + "".join(f"\n  {kind}: {c}" for kind, c in summary["errors"].items())]
    lines.append("")
    lines.append(f"{'':44s} {'top-1':>7s} {f'top-{k}':>7s}")
    if "top1_loc_error" in summary:
        lines.append(f"{'localisation error (%)':44s} {summary['top1_loc_error']:7.2f} "
                     f"{summary['topk_loc_error']:7.2f}")
    lines.append(f"{'classification-only error (%)':44s} {summary['top1_cls_error']:7.2f} "
                 f"{summary['topk_cls_error']:7.2f}")
    lines.append("")
    ours = f"; ours: {model}, whole photos resized" if model else ""
    lines.append(f"Published top-5 localisation errors (weakly supervised){ours}:")
    for p in PUBLISHED:
        lines.append(f"  {p['top5']:6.2f} %  {p['method']}; {p['split']}; {p['model']}")
    return "\n".join(lines)


def _summary_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m convvis.localise summary",
        description="Score the union of results files (the shards of one run) exactly as one run "
                    "over all their photos would.")
    p.add_argument("files", nargs="+", help="results files (e.g. results.shard-*-of-16.jsonl)")
    p.add_argument("--merged", default=None,
                   help="also write the union here, sorted: the file one run would have written")
    p.add_argument("--model", default="", help="the model's name, for the printed table only")
    a = p.parse_args(argv)
    try:
        lines = merge_results(a.files, a.merged)
    except (FileNotFoundError, ValueError) as e:
        p.error(str(e))
    # top-k as the run used it: the number of predictions of a scored photo
    ks = {len(json.loads(line)["predictions"]) for line in lines if '"predictions"' in line}
    if len(ks) > 1:
        p.error(f"the files mix runs with different top-k ({sorted(ks)})")
    summary = summarise(a.files, top_k=ks.pop() if ks else 5)
    print(format_summary(summary, a.model))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["summary"]:
        return _summary_main(argv[1:])
    p = argparse.ArgumentParser(
        prog="python -m convvis.localise",
        description="The paper's weakly supervised localisation (saliency + graph cut) on "
                    "ILSVRC-format data, scored by the ILSVRC rule in the original photos' pixels. "
                    "`python -m convvis.localise summary FILES...` scores the shards of a split run.")
    p.add_argument("images_dir", help="folder of photos (ILSVRC2012_img_val)")
    p.add_argument("annotations_dir", help="folder of one XML per photo (ILSVRC2012_bbox_val/val)")
    p.add_argument("--out", required=True, help="results file (JSON lines; a rerun resumes it)")
    p.add_argument("--model", default="efficientnet_lite0", help="convvis.load_model name")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA when available)")
    p.add_argument("--batch-size", type=int, default=16, help="photos per network batch")
    p.add_argument("--workers", type=int, default=None,
                   help="graph-cut processes (default: CPU count; 0: in this process)")
    p.add_argument("--loader-workers", type=int, default=None,
                   help="photo-decoding processes (default: workers // 4, at least 1)")
    p.add_argument("--limit", type=int, default=None, help="only the first N photos (sorted by name)")
    p.add_argument("--top-k", type=int, default=5, help="classes (and boxes) per photo")
    p.add_argument("--classes-only", action="store_true", help="classification error only, no boxes")
    p.add_argument("--shard", default=None, metavar="K/N",
                   help="only shard K of N (1 <= K <= N, split by photo name); results go to "
                        "OUT's name with .shard-K-of-N before the suffix")
    p.add_argument("--reference", action="store_true",
                   help="run convvis.segment (the one-photo reference) in the pool instead of the "
                        "batched path")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    for what, d in (("images", a.images_dir), ("annotations", a.annotations_dir)):
        if not Path(d).is_dir():
            p.error(f"the {what} folder {d} does not exist or is not a folder")
    try:
        shard = None if a.shard is None else parse_shard(a.shard)
    except ValueError as e:
        p.error(str(e))
    out = a.out if shard is None else shard_path(a.out, shard)
    t0 = time.perf_counter()
    keep_freed_memory()  # issue #24; the loader and pool processes call it in their initialisers
    try:
        summary = evaluate(a.images_dir, a.annotations_dir, out, model=a.model, device=a.device,
                           batch_size=a.batch_size, workers=a.workers, loader_workers=a.loader_workers,
                           limit=a.limit, top_k=a.top_k, classes_only=a.classes_only, shard=shard,
                           batched=not a.reference, progress=not a.no_progress)
    except FileNotFoundError as e:
        p.error(str(e))
    print(format_summary(summary, a.model))
    print(f"\nResults in {out} ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
