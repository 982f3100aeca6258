"""Executes one notebook inside the grader's sandbox (see :mod:`convvis.sandbox`).

Run by path, ``python -I sandbox_runner.py NOTEBOOK --timeout S --kernel NAME --limits JSON``: it
imports nothing of ``convvis`` (the kernel does), sets the resource limits its children inherit,
runs the notebook with nbclient and writes ``run.json`` beside it: where the notebook stopped and
which cells raised. It runs beside the student's kernel, so the grader trusts that file only to
speak for this notebook.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def _one_line(text, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def apply_limits(limits: dict) -> None:
    """Set this process's resource limits (its children inherit them). POSIX only."""
    import resource  # not on Windows, where no sandbox is made either

    for name, rlimit in (("memory", resource.RLIMIT_AS), ("processes", resource.RLIMIT_NPROC),
                         ("file_size", resource.RLIMIT_FSIZE), ("open_files", resource.RLIMIT_NOFILE)):
        value = int(limits[name])
        soft, hard = resource.getrlimit(rlimit)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(rlimit, (value, value))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_notebook(path: Path, timeout: float, kernel_name: str = "python3") -> dict:
    """Execute the notebook at ``path`` (inside the sandbox) and say where it stopped."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    nb = nbformat.read(path, as_version=4)
    deadline = time.monotonic() + timeout
    client = NotebookClient(
        nb, kernel_name=kernel_name, allow_errors=True, startup_timeout=120,
        timeout_func=lambda cell: max(1, int(deadline - time.monotonic())),
        shutdown_kernel="immediate", resources={"metadata": {"path": str(Path(path).parent)}})
    stopped = None
    try:
        client.execute()
    except CellTimeoutError:
        stopped = ["timeout", f"the notebook ran past the {timeout:g} s time limit"]
    except DeadKernelError as e:
        stopped = ["error", _one_line(f"the kernel died: {e}", 300)]
    except Exception as e:
        stopped = ["error", _one_line(f"the notebook could not be run: {type(e).__name__}: {e}", 300)]
    running = max((i for i, c in enumerate(nb.cells) if c.cell_type == "code"
                   and c.get("execution_count") is not None), default=None)
    errors = [[i, o.ename, _one_line(o.evalue, 300)] for i, c in enumerate(nb.cells) if c.cell_type == "code"
              for o in c.get("outputs", []) if o.output_type == "error"]
    return {"stopped": stopped, "running": running, "errors": errors}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sandbox_runner.py", description="Run inside the sandbox by "
                                "python -m convvis.grade; not meant to be called by hand.")
    r = p
    r.add_argument("notebook", type=Path)
    r.add_argument("--timeout", type=float, required=True)
    r.add_argument("--limits", type=json.loads, default=None)
    r.add_argument("--kernel", default="python3")
    args = p.parse_args(argv)
    if args.limits:
        apply_limits(args.limits)
    result = run_notebook(args.notebook, args.timeout, args.kernel)
    (args.notebook.parent / "run.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
