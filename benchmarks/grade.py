"""Time ``python -m convvis.grade`` on the course's sample submissions, against a baseline checkout.

    git archive <commit> | tar -x -C /tmp/base      # the grader to compare with
    python benchmarks/grade.py --baseline /tmp/base [--repeats 1]

The sample submissions are what a teacher sees in a class: the teacher edition of chapter 5 (the
chapter's solution, executed in full), its untouched student edition, and four short notebooks of
chapters 4 and 5 (a right answer, a wrong one, a hand-off to the library, an answered and an
unanswered exercise side by side). Each grader runs as its own command (``PYTHONPATH`` set to its
checkout), the two interleaved ``--repeats`` times; the figure is the ratio of their median wall
times measured in this run, with user and system CPU time and page faults of each command and the
children it waited for. Processes inside a bubblewrap sandbox are reaped in their own PID namespace
and do not show in those counts: for a sandboxed grader only the wall time compares.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

RIGHT_RULE = '''def my_relu_backward(x, grad, rule):
    if rule == "gradient":
        return grad * (x > 0)
    if rule == "deconvnet":
        return grad.clamp(min=0)
    return grad.clamp(min=0) * (x > 0)
'''
CHECK_RULE = "from convvis.checks import check_relu_rule\ncheck_relu_rule(my_relu_backward)"
SMALL = {
    "ann_05_deconvnet": [RIGHT_RULE, CHECK_RULE],
    "ben_05_deconvnet": ["def my_relu_backward(x, grad, rule):\n    return grad * (x > 0)", CHECK_RULE],
    "cat_05_deconvnet": ["from convvis.deconvnet import relu_backward as my_relu_backward", CHECK_RULE],
    "dan_04_graphcut_segmentation": [
        "import numpy as np\ndef my_seeds(s, fq=0.95, bq=0.3):\n"
        "    return s > np.quantile(s, fq), s < np.quantile(s, bq)\n"
        "def my_graph_cut(cost_fg, cost_bg, weights, fg_seeds, bg_seeds):\n"
        "    raise NotImplementedError('Exercise: write the body of my_graph_cut()')",
        "from convvis.checks import check_seeds, check_graph_cut\ncheck_seeds(my_seeds)",
        "check_graph_cut(my_graph_cut)"],
}


def sample_submissions(folder: Path) -> Path:
    import nbformat

    from convvis.assignments import make_editions

    make_editions([ROOT / "chapters" / "05_deconvnet.ipynb"], folder / "editions")
    subs = folder / "submissions"
    subs.mkdir()
    for who in ("teacher", "student"):
        (subs / f"{who}_05_deconvnet.ipynb").write_text(
            (folder / "editions" / who / "05_deconvnet.ipynb").read_text())
    for name, cells in SMALL.items():
        nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells]),
                       subs / f"{name}.ipynb")
    return subs


def run_grader(tree: Path, subs: Path, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "convvis.grade", str(subs), "--out", str(out),
                           "--chapters", *map(str, sorted((tree / "chapters").glob("*.ipynb")))],
                          env=env, capture_output=True, text=True, cwd=out.parent)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"the grader in {tree} failed:\n{proc.stdout}\n{proc.stderr}")
    return {"wall_s": wall, "user_s": after.ru_utime - before.ru_utime,
            "sys_s": after.ru_stime - before.ru_stime, "major_faults": after.ru_majflt - before.ru_majflt,
            "minor_faults": after.ru_minflt - before.ru_minflt, "summary": proc.stdout.strip().splitlines()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", type=Path, help="a checkout of the grader to compare with")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--out", type=Path, help="write the timings as JSON here")
    args = p.parse_args(argv)
    trees = {"this": ROOT} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    with tempfile.TemporaryDirectory(prefix="convvis-bench-grade-") as tmp:
        subs = sample_submissions(Path(tmp))
        runs = {k: [] for k in trees}
        for i in range(args.repeats):
            for name, tree in (reversed(trees.items()) if i % 2 else trees.items()):
                runs[name].append(run_grader(tree, subs, Path(tmp) / f"{name}-{i}.csv"))
                r = runs[name][-1]
                print(f"{name:9s} run {i}: {r['wall_s']:.1f} s wall, {r['user_s']:.1f} s user, "
                      f"{r['sys_s']:.1f} s sys, {r['major_faults']} major / {r['minor_faults']} minor faults",
                      flush=True)
                print("    " + "\n    ".join(r["summary"][-3:]), flush=True)
    med = {k: statistics.median(r["wall_s"] for r in v) for k, v in runs.items()}
    if "baseline" in med:
        print(f"wall time this / baseline: {med['this'] / med['baseline']:.2f} "
              f"(medians {med['this']:.1f} s / {med['baseline']:.1f} s over {args.repeats} run(s))")
    if args.out:
        args.out.write_text(json.dumps(runs, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
