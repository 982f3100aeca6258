"""The untrusted side of grading: a submission runs in a sandbox, and only data comes back.

:mod:`convvis.grade` never imports or runs a student's code in its own process. For each
submission it writes, into a fresh folder,

* ``in/``: each exercise's :func:`convvis.checks.fixture` as data (``<exercise>.json`` +
  ``<exercise>.npz``), made by the grader (read-only inside the sandbox);
* ``scratch/``: a copy of that one notebook, with one cell per exercise appended that calls
  :func:`answer` (the only writable folder inside the sandbox);

and runs ``convvis/sandbox_runner.py`` on it inside bubblewrap (:func:`command`). That runner
executes the notebook with nbclient (the kernel starts inside the sandbox too) and writes
``scratch/run.json`` (where the notebook stopped, which cells raised). :func:`answer`, run in the
student's kernel after their cells, calls the student's function on the fixture's inputs and
writes its outputs as data only: ``scratch/<exercise>.out.json`` (structure, exceptions, what was
seen in the kernel) and ``scratch/<exercise>.out.npz`` (the arrays). The grader reads them back
with :func:`read_outputs` (``allow_pickle=False``, sizes bounded, structure validated) and compares
in its own process. Everything in ``scratch/`` is written by code the student controls: it can
make that student's own answer fail or error, never pass, and it cannot reach anyone else's row.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from . import checks

__all__ = ["LIMITS", "RUNNER", "limits", "runner_command", "BadOutput", "write_fixture", "read_fixture",
           "answer", "read_outputs", "available", "command"]

# per sandboxed process: address space (bytes), processes of the sandbox's user, size of one file
# written (bytes), open files; the wall-clock limit is the grader's --timeout
LIMITS = {"memory": 8 << 30, "processes": 256, "file_size": 1 << 30, "open_files": 1024}
_MAX_OUTPUT_BYTES = 64 << 20  # what one exercise's outputs may hold, uncompressed
_MAX_JSON_BYTES = 1 << 20


# ---- fixtures in, outputs out: data only ---------------------------------------------------------


def write_fixture(fix, folder: Path) -> None:
    """``fix`` (a :class:`convvis.checks.Fixture`) as ``<exercise>.json`` + ``<exercise>.npz``."""
    arrays, cases = {}, []
    for i, case in enumerate(fix.cases):
        spec = {}
        for name, value in case.items():
            if isinstance(value, np.ndarray):
                arrays[f"c{i}.{name}"] = value
                spec[name] = {"array": f"c{i}.{name}"}
            elif isinstance(value, list):
                for j, v in enumerate(value):
                    arrays[f"c{i}.{name}.{j}"] = np.asarray(v)
                spec[name] = {"arrays": [f"c{i}.{name}.{j}" for j in range(len(value))]}
            else:
                spec[name] = value
        cases.append(spec)
    model = None
    if fix.model is not None:
        model = list(fix.model)
        arrays.update({f"model.{k}": v for k, v in fix.model.items()})
    (folder / f"{fix.exercise}.json").write_text(json.dumps({"exercise": fix.exercise, "model": model,
                                                              "cases": cases}))
    np.savez(folder / f"{fix.exercise}.npz", **arrays)


def read_fixture(folder: Path, exercise: str):
    """The :class:`convvis.checks.Fixture` that :func:`write_fixture` wrote."""
    meta = json.loads((Path(folder) / f"{exercise}.json").read_text())
    with np.load(Path(folder) / f"{exercise}.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    cases = [{name: arrays[v["array"]] if isinstance(v, dict) and "array" in v
              else [arrays[k] for k in v["arrays"]] if isinstance(v, dict) else v
              for name, v in spec.items()} for spec in meta["cases"]]
    model = None if meta["model"] is None else {k: arrays[f"model.{k}"] for k in meta["model"]}
    return checks.Fixture(meta["exercise"], model, cases)


def _encode(out, arrays: dict, key: str):
    if isinstance(out, torch.Tensor):
        arrays[key] = out.numpy()
        return {"tensor": key}
    if isinstance(out, np.ndarray):
        arrays[key] = out
        return {"ndarray": key}
    if isinstance(out, (tuple, list)):
        return {type(out).__name__: [_encode(o, arrays, f"{key}.{i}") for i, o in enumerate(out)]}
    return {"returned": out.type_name if isinstance(out, checks.Returned) else type(out).__name__}


def _one_line(text, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def answer(checker: str, function: str, namespace: dict, folder: str) -> None:
    """Run in the student's kernel, after their cells: call ``namespace[function]`` on each case of
    the checker's fixture (read from ``folder/in``) and write the outputs, as data, to
    ``folder/scratch``. Nothing here decides a grade."""
    exercise = checks.EXERCISES[checker]
    root = Path(folder)
    record, arrays = {"checker": checker, "function": function, "cases": []}, {}
    try:
        if function not in namespace:
            raise NameError(f"the notebook defines no function named {function}")
        fn = namespace[function]
        fix = read_fixture(root / "in", exercise)
        model = checks.fixture_model(fix)
        for i, case in enumerate(fix.cases):
            args = checks.arguments(fix, case, model)
            before = checks.kernel_snapshot(exercise, model, args)
            out, entered, error = checks.watched_call(exercise, fn, *args)
            seen = [checks.handed_off(entered)] if entered else []
            entry = {"seen": seen}
            if error is not None:
                entry["error"] = _one_line(f"{type(error).__name__}: {error}")
                record["cases"].append(entry)
                break
            problem = checks.kernel_problem(exercise, model, args, before)
            if problem:
                seen.append(problem)
            entry["output"] = _encode(checks.output_data(out), arrays, f"c{i}")
            record["cases"].append(entry)
    except Exception as e:  # the harness itself could not run: the grader reports an error
        record["error"] = _one_line(f"{type(e).__name__}: {e}")
    np.savez(root / "scratch" / f"{exercise}.out.npz", **arrays)
    (root / "scratch" / f"{exercise}.out.json").write_text(json.dumps(record))


class BadOutput(ValueError):
    """The sandbox's files are missing, too large or malformed."""


def _arrays(path: Path) -> dict:
    if not path.is_file() or path.is_symlink():
        raise BadOutput(f"{path.name} is missing")
    if path.stat().st_size > _MAX_OUTPUT_BYTES:
        raise BadOutput(f"{path.name} is larger than {_MAX_OUTPUT_BYTES >> 20} MiB")
    try:
        with zipfile.ZipFile(path) as z:
            if sum(i.file_size for i in z.infolist()) > _MAX_OUTPUT_BYTES:
                raise BadOutput(f"{path.name} unpacks to more than {_MAX_OUTPUT_BYTES >> 20} MiB")
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
    except BadOutput:
        raise
    except Exception as e:  # not an npz, an object array (refused without pickle), a truncated file
        raise BadOutput(f"{path.name} cannot be read as plain arrays: {type(e).__name__}: {e}") from None
    for k, a in out.items():
        if not (a.dtype == bool or np.issubdtype(a.dtype, np.number)):
            raise BadOutput(f"{path.name}: array {k!r} has dtype {a.dtype}")
    return out


def _decode(spec, arrays: dict, depth: int = 0):
    if not isinstance(spec, dict) or len(spec) != 1 or depth > 2:
        raise BadOutput("malformed output record")
    (kind, value), = spec.items()
    if kind in ("tensor", "ndarray"):
        if not isinstance(value, str) or value not in arrays:
            raise BadOutput("an output refers to a missing array")
        a = arrays[value]
        return torch.from_numpy(a.copy()) if kind == "tensor" else a.copy()
    if kind in ("tuple", "list") and isinstance(value, list) and len(value) <= 8:
        items = [_decode(v, arrays, depth + 1) for v in value]
        return tuple(items) if kind == "tuple" else items
    if kind == "returned" and isinstance(value, str):
        return checks.Returned(_one_line(value, 80))
    raise BadOutput("malformed output record")


def read_outputs(scratch: Path, exercise: str, n_cases: int) -> dict:
    """What :func:`answer` wrote for ``exercise``, validated, in the grader's process:
    ``{"error": str | None, "cases": [{"seen": [str], "error": str | None, "output": data | None}]}``.
    Raises :class:`BadOutput` when the files are missing, too large or malformed."""
    path = Path(scratch) / f"{exercise}.out.json"
    if not path.is_file() or path.is_symlink():
        raise BadOutput("no outputs came back from the kernel")
    if path.stat().st_size > _MAX_JSON_BYTES:
        raise BadOutput(f"{path.name} is larger than {_MAX_JSON_BYTES >> 10} KiB")
    try:
        record = json.loads(path.read_text())
    except Exception as e:
        raise BadOutput(f"{path.name} is not JSON: {type(e).__name__}") from None
    if not isinstance(record, dict) or not isinstance(record.get("cases", []), list):
        raise BadOutput("malformed output record")
    error = record.get("error")
    cases = record.get("cases", [])
    if len(cases) > n_cases:
        raise BadOutput("more outputs than cases")
    arrays = _arrays(Path(scratch) / f"{exercise}.out.npz") if cases else {}
    got = []
    for c in cases:
        if not isinstance(c, dict) or not isinstance(c.get("seen", []), list):
            raise BadOutput("malformed output record")
        got.append({"seen": [_one_line(s) for s in c.get("seen", [])[:4] if isinstance(s, str)],
                    "error": _one_line(c["error"]) if isinstance(c.get("error"), str) else None,
                    "output": _decode(c["output"], arrays) if "output" in c else None})
    return {"error": _one_line(error) if isinstance(error, str) else None, "cases": got}


# ---- the sandbox ---------------------------------------------------------------------------------


_PROBE: dict = {}


def available() -> tuple[bool, str]:
    """(True, "bwrap") when a bubblewrap sandbox can be made here, else (False, why not)."""
    if "result" in _PROBE:
        return _PROBE["result"]
    if platform.system() != "Linux":
        result = False, f"no sandbox on {platform.system()}: bubblewrap needs Linux namespaces"
    elif shutil.which("bwrap") is None:
        result = False, "bwrap not found: install bubblewrap (apt-get install bubblewrap)"
    elif os.geteuid() == 0 and shutil.which("setpriv") is None:
        result = False, "running as root, and setpriv (util-linux) is missing to drop to an unprivileged user"
    else:
        probe = _bwrap_prefix([], Path(tempfile.gettempdir()) / "convvis-probe") + ["true"]
        try:
            p = subprocess.run(probe, capture_output=True, text=True, timeout=30)
            result = (True, "bwrap") if p.returncode == 0 else (
                False, "bwrap failed a trial run (" + _one_line(p.stderr, 200) + "): unprivileged user "
                "namespaces may be disabled, or bwrap is older than 0.7")
        except (OSError, subprocess.TimeoutExpired) as e:
            result = False, f"bwrap did not run: {e}"
    _PROBE["result"] = result
    return result


def _readable_roots() -> list[Path]:
    """What the sandbox sees read-only: the Python installation and environment, every import path
    (the package, an editable checkout and the book with it), and $CONVVIS_DATA."""
    paths = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix),
             Path(sys.executable).resolve().parent.parent, Path(__file__).resolve().parent.parent}
    paths |= {Path(p) for p in sys.path if p and Path(p).is_absolute()}
    paths |= {Path(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}
    if os.environ.get("CONVVIS_DATA"):
        paths.add(Path(os.environ["CONVVIS_DATA"]))
    paths.add(_torch_home())  # downloaded weights, for a notebook that loads another model
    paths = {p.resolve() for p in paths if p.exists()}
    system = [Path(p) for p in ("/usr", "/etc", "/opt")]
    # drop what a system folder or another root already covers
    return sorted(p for p in paths if not any(q != p and p.is_relative_to(q) for q in paths | set(system))
                  and str(p) != "/")


def _bwrap_prefix(ro: list[Path], folder: Path) -> list[str]:
    cmd = ["bwrap", "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
           "--unshare-cgroup-try", "--die-with-parent", "--new-session",
           "--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc", "--ro-bind-try", "/opt", "/opt",
           "--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--size", str(256 << 20), "--tmpfs", "/tmp"]
    for link in ("bin", "lib", "lib64", "lib32", "sbin"):
        p = Path("/") / link
        if p.is_symlink():
            cmd += ["--symlink", os.readlink(p), str(p)]
        elif p.is_dir():
            cmd += ["--ro-bind", str(p), str(p)]
    made = {Path("/"), Path("/tmp")}
    for target in [*ro, folder / "in", folder / "scratch"]:
        for parent in reversed(target.parents):
            system = ("/usr", "/etc", "/proc", "/dev")
            if parent not in made and not any(parent.is_relative_to(Path(s)) for s in system):
                cmd += ["--perms", "0755", "--dir", str(parent)]
                made.add(parent)
    for p in ro:
        cmd += ["--ro-bind", str(p), str(p)]
    if os.geteuid() == 0:
        # as root, the limit on processes does not apply, so the sandbox drops to nobody (setpriv)
        cmd += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        cmd += ["--unshare-user"]
    return cmd


def command(folder: Path, timeout: float, hidden: list[Path] = (), kernel_name: str = "python3") -> list[str]:
    """The bwrap command line that runs ``folder/scratch/notebook.ipynb`` (see the module docstring).

    The sandbox has: a read-only view of /usr, /etc, the Python environment, the package and the
    book (:func:`_readable_roots`); ``folder/in`` read-only and ``folder/scratch`` writable; an empty
    /tmp of its own (256 MiB); no network (its own network namespace has only a loopback); its own
    process tree, killed with the grader's process; no capabilities; and :data:`LIMITS`. Each of
    ``hidden`` (the submissions, the output CSV) that lies inside a readable root is covered: a
    folder by an empty one, a file by an empty file; elsewhere it is not mounted at all.
    """
    folder = Path(folder).resolve()
    ro = _readable_roots()
    cmd = _bwrap_prefix(ro, folder)
    visible = [*ro, Path("/usr"), Path("/etc"), Path("/opt")]
    covered: list[Path] = []
    for h in sorted({Path(h).resolve() for h in hidden}, key=lambda p: len(p.parts)):
        if not any(h.is_relative_to(r) for r in visible) or any(h.is_relative_to(c) for c in covered):
            continue
        if h.is_dir() and not any(r.is_relative_to(h) for r in visible):
            cmd += ["--tmpfs", str(h)]
            covered.append(h)
        elif h.is_dir():  # holds the package or the environment: cover its notebooks and tables instead
            for f in sorted(h.rglob("*")):
                if f.suffix in (".ipynb", ".csv") and f.is_file() and any(f.is_relative_to(r) for r in ro):
                    cmd += ["--ro-bind", "/dev/null", str(f)]
        elif h.is_file():
            cmd += ["--ro-bind", "/dev/null", str(h)]
    scratch = folder / "scratch"
    cmd += ["--ro-bind", str(folder / "in"), str(folder / "in"), "--bind", str(scratch), str(scratch),
            "--chdir", str(scratch), "--clearenv"]
    for k, v in _sandbox_env(scratch).items():
        cmd += ["--setenv", k, v]
    inner = [*runner_command(scratch / "notebook.ipynb", timeout, kernel_name)]
    if os.geteuid() == 0:
        inner = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "--no-new-privs",
                 "--inh-caps=-all", "--bounding-set=-all", *inner]
    return [*cmd, "--", *inner]


def _sandbox_env(scratch: Path) -> dict[str, str]:
    """The kernel's whole environment: no proxies, no tokens, home in the scratch folder."""
    env = {"HOME": str(scratch), "TMPDIR": "/tmp", "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
           "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "MPLBACKEND": "Agg",
           "JUPYTER_PLATFORM_DIRS": "1"}
    for k in ("PYTHONPATH", "CONVVIS_DATA", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if os.environ.get(k):
            env[k] = os.environ[k]
    env["TORCH_HOME"] = str(_torch_home())
    return env


def _torch_home() -> Path:
    """torch's cache folder ($TORCH_HOME, by default ~/.cache/torch), as the grader's user has it."""
    return Path(torch.hub.get_dir()).parent


RUNNER = Path(__file__).resolve().parent / "sandbox_runner.py"


def runner_command(notebook: Path, timeout: float, kernel_name: str = "python3") -> list[str]:
    """The command that executes ``notebook``: :data:`RUNNER` run by path with ``-I``, so that it
    imports nbclient only, not this package (whose import costs seconds per notebook)."""
    return [sys.executable, "-I", str(RUNNER), str(notebook), "--timeout", f"{timeout:g}",
            "--kernel", kernel_name, "--limits", json.dumps(limits())]


def limits() -> dict:
    limits = dict(LIMITS)
    if os.geteuid() != 0:
        # the process limit counts every process of the user: leave the teacher's own ones room
        uid = os.getuid()
        mine = sum(1 for p in Path("/proc").iterdir() if p.name.isdigit() and _owner(p) == uid)
        limits["processes"] += mine
    return limits


def _owner(p: Path) -> int | None:
    try:
        return p.stat().st_uid
    except OSError:
        return None
