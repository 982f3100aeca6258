"""Legible class models beside the anchor, lucent: transfer legibility and time per step (issue #18).

    pip install -e ".[bench]"                # torch-lucent 0.1.8 and kornia 0.4.1 (optional extras)
    python benchmarks/class_models.py         # 16 classes, the legible preset's step count
    python benchmarks/class_models.py --quick # 4 classes, 32 steps: checks the script runs

Every run optimises the same classes, as one batch, on the same network (the embedded
EfficientNet-Lite0) for the same number of steps, and is judged by networks that took no part in
the optimisation (EfficientNet-Lite1 and -Lite2; :func:`convvis.legibility`). The runs:

* ``lucent, standard transforms``: lucent's ``render_vis`` with its defaults (decorrelated Fourier
  image, pad 12, jitter 8, scale 0.9-1.1, rotation -10..10 degrees, jitter 4; Adam, lr 0.05), on
  the class logit;
* ``lucent, no transforms``: the same without transforms;
* ``convvis legible preset``: ``visualise(net, classes, preset="legible")``;
* ``convvis legible, no RandomAffine``: the preset without its transforms (what they add).

Time per step is measured separately, interleaved (one short run of each in turn, ``--repeats``
rounds, median), and reported as a ratio to a plain forward and backward pass of the same batch
through the same network, measured in the same rounds. The machines are shared and noisy, so only
ratios from one run are compared. The targets of issue #18: legible preset top-1 >= 0.9 and top-5
= 1.0 with each judge, and time per step <= 1.1x the plain pass.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

import convvis
from convvis import class_model as cm

ROOT = Path(__file__).resolve().parent

# The chapter's Fig. 1 classes, then eight more from across ImageNet (animals, objects, food).
CLASSES = [543, 968, 251, 945, 951, 248, 897, 278, 76, 130, 963, 1, 207, 817, 954, 409]


def _run_module():
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def lucent_run(net, classes, steps: int, transforms: bool, seed: int = 0) -> torch.Tensor:
    """Lucent's render_vis on the class logits; returns (N,3,H,W) in ``net``'s normalised space."""
    try:
        from lucent.optvis import objectives, param, render, transform
    except ImportError as e:  # the optional extras are not installed
        raise SystemExit(f"lucent is not installed ({e}); run: pip install -e \".[bench]\"") from e
    model = net.model
    mean = torch.tensor(net.preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(net.preprocessing.std).view(1, 3, 1, 1)

    def normalise(x):  # lucent's own normalize() is torchvision's; ours is the model's
        return (x - mean.to(x.device)) / std.to(x.device)

    # the last hooked module is the classifier, whose output is the logits ("labels" in lucent)
    obj = sum(objectives.channel("labels", int(c), batch=i) for i, c in enumerate(classes))
    np.random.seed(seed)  # noqa: NPY002 - lucent's transforms draw from numpy's global generator
    torch.manual_seed(seed)  # ... and its initial spectrum from torch's
    tr = list(transform.standard_transforms) if transforms else []
    params = lambda: param.image(net.preprocessing.input_size, batch=len(classes))  # noqa: E731
    with convvis.frozen_parameters(model):
        imgs = render.render_vis(model, obj, params, transforms=tr + [normalise], thresholds=(steps,),
                                 preprocess=False, progress=False, show_image=False,
                                 fixed_image_size=net.preprocessing.input_size)
    pixels = torch.from_numpy(np.asarray(imgs[-1])).permute(0, 3, 1, 2).float()
    return normalise(pixels)


def ours(net, classes, steps: int, affine: bool = True) -> torch.Tensor:
    over = {} if affine else {"transforms": ()}
    return convvis.visualise(net, classes, preset="legible", steps=steps, progress=False, **over).image


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=len(CLASSES), help="how many of the 16 classes")
    ap.add_argument("--steps", type=int, default=cm.LEGIBLE_STEPS)
    ap.add_argument("--timing-steps", type=int, default=8, help="steps per timed run")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="4 classes, 32 steps, 2 repeats")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when there is one)")
    ap.add_argument("--out", type=Path, default=None, help="JSON report (default benchmarks/results/)")
    args = ap.parse_args(argv)
    if args.quick:
        args.classes, args.steps, args.repeats, args.timing_steps = 4, 32, 2, 4
    bench = _run_module()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    net = convvis.load_model("efficientnet_lite0", device=device)
    judges = [convvis.load_model(j, device=device) for j in cm.LEGIBILITY_JUDGES]
    classes = CLASSES[: args.classes]
    print(f"{len(classes)} classes, {args.steps} steps, batch {len(classes)}, on {device} "
          f"({torch.get_num_threads()} threads)", flush=True)

    runs = {
        "lucent, standard transforms": lambda s: lucent_run(net, classes, s, transforms=True),
        "lucent, no transforms": lambda s: lucent_run(net, classes, s, transforms=False),
        "convvis legible preset": lambda s: ours(net, classes, s),
        "convvis legible, no RandomAffine": lambda s: ours(net, classes, s, affine=False),
    }
    legible: dict[str, dict] = {}
    for name, fn in runs.items():
        t0 = time.perf_counter()
        image = fn(args.steps).to(device)
        seconds = time.perf_counter() - t0
        leg = convvis.legibility(image, classes, net, judges=judges)
        legible[name] = {j: {"top1": v.top1, "top5": v.topk, "ranks": v.ranks.tolist()}
                         for j, v in leg.items()}
        legible[name]["seconds"] = seconds
        print(f"  {name}: " + ", ".join(f"{j} {v.top1:.2f} / {v.topk:.2f}" for j, v in leg.items())
              + f"  ({seconds:.0f} s)", flush=True)

    # time per step: short runs of each, interleaved, against a plain forward+backward of the batch
    x = torch.zeros(len(classes), 3, 224, 224, device=device)
    t = torch.tensor(classes, device=device)
    k = args.timing_steps

    x = x.contiguous(memory_format=torch.channels_last)  # the layout visualise feeds the network

    def plain():
        for _ in range(k):
            bench.forward_backward(net.model, x, t)

    fns = {"plain forward+backward": plain, **{name: (lambda fn=fn: fn(k)) for name, fn in runs.items()}}
    timing = bench.measure(fns, device, repeats=args.repeats)
    base = timing["plain forward+backward"]["median"]

    judges_head = " | ".join(f"{j} top-1 / top-5" for j in cm.LEGIBILITY_JUDGES)
    print(f"\n| run | {judges_head} | ms per step | x plain |")
    print("|---" * (3 + len(cm.LEGIBILITY_JUDGES)) + "|")
    for name in fns:
        ms = 1000 * timing[name]["median"] / k
        leg = legible.get(name)
        judged = [f"{leg[j]['top1']:.2f} / {leg[j]['top5']:.2f}" if leg else "–"
                  for j in cm.LEGIBILITY_JUDGES]
        cells = " | ".join(judged)
        print(f"| {name} | {cells} | {ms:.0f} | {timing[name]['median'] / base:.2f} |")
    ours_leg = legible["convvis legible preset"]
    ratio = timing["convvis legible preset"]["median"] / base
    met = {
        "top1 >= 0.9 with each judge": all(ours_leg[j]["top1"] >= 0.9 for j in cm.LEGIBILITY_JUDGES),
        "top5 = 1.0 with each judge": all(ours_leg[j]["top5"] == 1.0 for j in cm.LEGIBILITY_JUDGES),
        "time per step <= 1.1x plain": ratio <= 1.1,
    }
    verdicts = "; ".join(f"{k_}: {'met' if v else 'NOT met'}" for k_, v in met.items())
    print(f"\ntargets (issue #18): {verdicts}")
    report = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "threads": torch.get_num_threads(), "device": str(device)},
        "classes": classes, "steps": args.steps, "timing_steps": k, "quick": args.quick,
        "legibility": legible, "timing": timing, "targets": met,
    }
    out = args.out or ROOT / "results" / f"class_models-{platform.node()}-{dt.date.today()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"report: {out}")
    return report


if __name__ == "__main__":
    main()
