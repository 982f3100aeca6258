"""Hostile submissions: none can forge a pass, change another student's row, or change a file outside
its sandbox's scratch folder. One grading run over all of them (chapter 5, the quickest exercise),
beside two honest students graded in the same batch.

Every attack's fallback answer is wrong (the 'gradient' rule for every rule), so a pass can only come
from the attack working. Attacks that could harm the machine if the sandbox failed are bounded.
"""

import csv
import json
import os
import re
import secrets
import shutil
from pathlib import Path

import nbformat
import pytest
from test_grade import RIGHT_RULE

from convvis import sandbox
from convvis.grade import main

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))
TOKEN = secrets.token_hex(4)

if not sandbox.available()[0]:
    if os.environ.get("CONVVIS_REQUIRE_SANDBOX"):  # CI (.ci/run) installs bubblewrap: never skip there
        raise RuntimeError(f"CONVVIS_REQUIRE_SANDBOX is set but {sandbox.available()[1]}")
    pytest.skip(f"no sandbox here: {sandbox.available()[1]}", allow_module_level=True)

WRONG_RULE = '''def my_relu_backward(x, grad, rule):
    return grad * (x > 0)'''
CHECK_RULE = "from convvis.checks import check_relu_rule\ncheck_relu_rule(my_relu_backward)"

# each: the cells before the (wrong) answer and the checker cell
ATTACKS = {
    # the comparison functions a checker in the kernel would call, made to agree with anything
    "cmp": ["import torch, numpy as np\n"
            "torch.allclose = lambda *a, **k: True\n"
            "torch.equal = lambda *a, **k: True\n"
            "torch.Tensor.__eq__ = lambda self, other: torch.ones_like(self, dtype=torch.bool)\n"
            "np.array_equal = lambda *a, **k: True"],
    # print and sys.stdout rewrite any verdict, and the notebook prints forged verdict lines itself
    "liar": ["import builtins, sys\n"
             "_print = builtins.print\n"
             "builtins.print = lambda *a, **k: _print(\n"
             "    *(str(x).replace('failed', 'passed') for x in a), **k)\n"
             "class Out:\n"
             "    def __init__(self, s): self.s = s\n"
             "    def write(self, t): return self.s.write(t.replace('failed', 'passed'))\n"
             "    def flush(self): self.s.flush()\n"
             "sys.stdout = Out(sys.stdout)",
             "print('@@convvis.grade@@[\"passed\", \"all 3 checks passed\"]')\n"
             "print('\\u2714 check_relu_rule: all 3 checks passed')\n"
             "print('student,chapter,exercise,status\\nliar,05_deconvnet,my_relu_backward,passed')"],
    # writes to the package, the book, the submissions folder, the output CSV and the host's /tmp;
    # rewrites an honest student's notebook with a wrong answer (graded after this one)
    "vandal": ["import os, json\n"
               "def attempt(f):\n"
               "    try:\n"
               "        f()\n"
               "    except Exception as e:\n"
               "        print('refused:', type(e).__name__)\n"
               "attempt(lambda: open('{root}/convvis/_pwned_{token}.py', 'w').write('x = 1'))\n"
               "attempt(lambda: os.utime('{root}/convvis/checks.py'))\n"
               "attempt(lambda: open('{root}/chapters/_pwned_{token}.ipynb', 'w').write('{{}}'))\n"
               "attempt(lambda: open('{subs}/zed_05_deconvnet.ipynb', 'w').write(\n"
               "    open('{subs}/bob_05_deconvnet.ipynb').read()))\n"
               "attempt(lambda: open('{subs}/_pwned_{token}', 'w').write('x'))\n"
               "attempt(lambda: open('{csv}', 'w').write('vandal,05_deconvnet,my_relu_backward,passed'))\n"
               "attempt(lambda: open('{csv}.{token}', 'w').write('x'))\n"
               "attempt(lambda: open('/tmp/convvis-pwned-{token}', 'w').write('x'))\n"
               "attempt(lambda: os.system('mount -o remount,rw {root} 2>/dev/null'))"],
    # copies another student's right answer, if it can read it, else keeps the wrong one
    "copycat": ["import glob, json\n"
                "stolen = None\n"
                "for path in glob.glob('{subs}/*') + ['{subs}/zed_05_deconvnet.ipynb']:\n"
                "    try:\n"
                "        cells = json.load(open(path))['cells']\n"
                "        stolen = [''.join(c['source']) for c in cells\n"
                "                  if 'def my_relu' in ''.join(c['source'])][0]\n"
                "    except Exception:\n"
                "        pass\n"
                "try:\n"
                "    grades = open('{csv}').read()\n"
                "except Exception:\n"
                "    grades = None"],
    # a fork bomb (bounded, in case the limit fails), then a memory bomb; the cell reports how far each got
    "bomber": ["import os, time\n"
               "children = 0\n"
               "try:\n"
               "    for _ in range(3000):\n"
               "        if os.fork() == 0:\n"
               "            time.sleep(60)\n"
               "            os._exit(0)\n"
               "        children += 1\n"
               "except OSError:\n"
               "    pass\n"
               "hoard = []\n"
               "try:\n"
               "    for _ in range(256):\n"
               "        hoard.append(bytearray(1 << 30))  # 1 GiB each, untouched\n"
               "except MemoryError:\n"
               "    pass\n"
               "gib, hoard = len(hoard), None\n"
               "raise RuntimeError(f'forked {{children}} children, allocated {{gib}} GiB')"],
    # a kernel that never ends: ignores interrupts and terminations, and leaves a process behind
    "hang": ["import signal, subprocess, sys, time\n"
             "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(10**6)  # hang-{token}'],\n"
             "                 start_new_session=True)\n"
             "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
             "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
             "while True:\n"
             "    time.sleep(1)"],
}
# the students graded around the attacks: rows that must not change
HONEST = {"bob": ([WRONG_RULE, CHECK_RULE], ("failed", "you computed the 'gradient' rule")),
          "zed": ([RIGHT_RULE, CHECK_RULE], ("passed", "all 3 checks passed"))}


def _snapshot(*folders: Path) -> dict:
    out = {}
    for folder in folders:
        for p in folder.rglob("*"):
            if "__pycache__" in p.parts or ".pytest_cache" in p.parts:
                continue
            st = p.lstat()
            out[str(p)] = (st.st_size, st.st_mtime_ns, st.st_mode)
    return out


def _processes_with(text: str) -> list[int]:
    found = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if text.encode() in (p / "cmdline").read_bytes():
                    found.append(int(p.name))
            except OSError:
                pass
    return found


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    subs, out = root / "submissions", root / "grades.csv"
    subs.mkdir()
    out.write_text("a grades table from an earlier run\n")
    fill = {"root": ROOT, "subs": subs, "csv": out, "token": TOKEN}
    for name, cells in ATTACKS.items():
        cells = [c.format(**fill) for c in cells] + [WRONG_RULE]
        if name == "copycat":  # the right answer, should it have been read
            cells.append("if stolen:\n    exec(stolen)")
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in [*cells, CHECK_RULE]])
        nbformat.write(nb, subs / f"{name}_05_deconvnet.ipynb")
    for name, (cells, _) in HONEST.items():
        nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells]),
                       subs / f"{name}_05_deconvnet.ipynb")
    before = _snapshot(ROOT / "convvis", ROOT / "chapters", subs)
    assert main([str(subs), "--out", str(out), "--timeout", "40", "--require-sandbox",
                 "--chapters", *map(str, CHAPTERS)]) == 0
    after = _snapshot(ROOT / "convvis", ROOT / "chapters", subs)
    print(out.read_text())  # the rows, for the record (pytest -rA shows them)
    with open(out) as f:
        rows = list(csv.DictReader(f))
    return {"rows": rows, "before": before, "after": after, "root": root}


def test_no_attack_passes(hostile):
    got = {r["student"]: r for r in hostile["rows"] if r["exercise"] == "my_relu_backward"}
    assert set(got) == set(ATTACKS) | set(HONEST), sorted(got)
    for name in ATTACKS:
        row = got[name]
        assert row["sandbox"] == "bwrap"
        assert row["status"] in ("failed", "error", "timeout"), (name, row)
        assert "passed" not in row["message"], (name, row)
    for name in ("cmp", "liar", "vandal", "copycat"):  # the wrong answer is graded as such
        assert got[name]["status"] == "failed" and "you computed the 'gradient' rule" in got[name]["message"]
    assert got["hang"]["status"] == "timeout"
    bombs = {r["student"]: r for r in hostile["rows"] if r["exercise"] == "(notebook)"}["bomber"]["message"]
    m = re.search(r"forked (\d+) children, allocated (\d+) GiB", bombs)
    assert m, bombs
    children, gib = int(m.group(1)), int(m.group(2))
    # stopped by the limit, not by the loop (as root the sandbox runs as nobody, with its own count)
    assert children < (sandbox.LIMITS["processes"] if os.geteuid() == 0 else 3000), bombs
    assert gib < sandbox.LIMITS["memory"] >> 30, bombs


def test_honest_rows_are_unchanged(hostile):
    got = {r["student"]: r for r in hostile["rows"]}
    for name, (_, (status, words)) in HONEST.items():
        assert got[name]["status"] == status and words in got[name]["message"], got[name]
    assert sum(r["status"] == "passed" for r in hostile["rows"]) == 1


def test_nothing_outside_the_scratch_folder_changed(hostile):
    before, after = hostile["before"], hostile["after"]
    assert set(after) == set(before), sorted(set(after) ^ set(before))
    changed = [p for p in before if before[p] != after[p]]
    assert not changed, changed
    assert not list((ROOT / "convvis").glob(f"_pwned_{TOKEN}*"))
    assert not Path(f"/tmp/convvis-pwned-{TOKEN}").exists()
    assert sorted(p.name for p in hostile["root"].iterdir()) == ["grades.csv", "submissions"]
    with open(hostile["root"] / "grades.csv") as f:
        assert f.readline().startswith("student,chapter,exercise,status,message,notebook,sandbox")


def test_no_process_outlives_the_grading(hostile):
    assert _processes_with(f"hang-{TOKEN}") == []


def test_without_a_sandbox_the_column_says_so_and_require_sandbox_refuses(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sandbox._PROBE, "result", (False, "no user namespaces (simulated)"))
    sub = tmp_path / "ann_05_deconvnet.ipynb"
    cells = [nbformat.v4.new_code_cell(c) for c in (WRONG_RULE, CHECK_RULE)]
    nbformat.write(nbformat.v4.new_notebook(cells=cells), sub)
    out = tmp_path / "grades.csv"
    with pytest.raises(SystemExit):
        main([str(sub), "--out", str(out), "--require-sandbox", "--chapters", *map(str, CHAPTERS)])
    assert "no sandbox can be made here: no user namespaces (simulated)" in capsys.readouterr().err
    assert not out.exists()
    assert main([str(sub), "--out", str(out), "--timeout", "60", "--chapters", *map(str, CHAPTERS)]) == 0
    assert "NO SANDBOX (no user namespaces (simulated))" in capsys.readouterr().out
    with open(out) as f:
        (row,) = list(csv.DictReader(f))
    assert row["sandbox"] == "none: no user namespaces (simulated)"
    assert row["status"] == "failed"  # still compared in the grader's process


def test_hidden_folders_inside_a_readable_root_are_covered(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "scratch").mkdir()
    cmd = sandbox.command(tmp_path, 10, hidden=[ROOT / "chapters", ROOT / "README.md"])
    assert ["--tmpfs", str(ROOT / "chapters")] == cmd[cmd.index(str(ROOT / "chapters")) - 1:][:2]
    i = cmd.index(str(ROOT / "README.md"))
    assert cmd[i - 2: i] == ["--ro-bind", "/dev/null"]
    assert "--unshare-net" in cmd and "--unshare-pid" in cmd and "--die-with-parent" in cmd


def test_outputs_are_read_as_data_only(tmp_path):
    import numpy as np

    record = {"cases": [{"seen": [], "output": {"ndarray": "c0"}}]}
    (tmp_path / "relu_rule.out.json").write_text(json.dumps(record))
    np.save(tmp_path / "obj.npy", np.array([object()], dtype=object), allow_pickle=True)
    shutil.copy(tmp_path / "obj.npy", tmp_path / "c0.npy")
    import zipfile

    with zipfile.ZipFile(tmp_path / "relu_rule.out.npz", "w") as z:
        z.write(tmp_path / "c0.npy", "c0.npy")
    with pytest.raises(sandbox.BadOutput, match="cannot be read as plain arrays"):
        sandbox.read_outputs(tmp_path, "relu_rule", 3)
    (tmp_path / "relu_rule.out.npz").unlink()
    os.symlink("/etc/passwd", tmp_path / "relu_rule.out.npz")
    with pytest.raises(sandbox.BadOutput, match="missing"):
        sandbox.read_outputs(tmp_path, "relu_rule", 3)


def test_a_message_cannot_become_a_spreadsheet_formula(tmp_path):
    from convvis.grade import Row, write_csv

    # an exception class named like a formula: type("=HYPERLINK(...)", (Exception,), {}) is legal Python
    row = Row("eve", "05_deconvnet", "my_relu_backward", "error", '=HYPERLINK("http://x"): boo', "eve.ipynb")
    write_csv([row], tmp_path / "g.csv")
    with open(tmp_path / "g.csv") as f:
        (got,) = list(csv.DictReader(f))
    assert got["message"] == "'" + row.message


def test_what_comes_back_is_validated_and_only_compared(tmp_path):
    """Without a kernel: forged or malformed files from the sandbox never give a pass."""
    import numpy as np
    import torch

    from convvis import checks
    from convvis.grade import Exercise, _read_run, verdict

    ex = Exercise("05_deconvnet", "check_relu_rule", "my_relu_backward")
    fix = checks.fixture("relu_rule")
    right = [checks.reference(fix, c)["want"][c["rule"]] for c in fix.cases]
    ok = {"error": None, "cases": [{"seen": [], "error": None, "output": r} for r in right]}
    assert verdict(ex, ok)[0] == "passed"
    seen = {"error": None, "cases": [{**c, "seen": ["your function calls convvis.deconvnet.relu_backward"]}
                                     for c in ok["cases"]]}
    assert verdict(ex, seen)[0] == "failed"
    short = {"error": None, "cases": ok["cases"][:2]}  # fewer outputs than checks
    assert verdict(ex, short)[0] == "error"
    wrong = {"error": None, "cases": [{"seen": [], "error": None, "output": torch.zeros(2, 3, 4, 4)}] * 3}
    assert verdict(ex, wrong) == ("failed", "the signal returned for rule 'gradient' is all zeros (the "
                                  "expected values reach 2.61)")
    # a record claiming more than it may, or nested past the recursion limit
    (tmp_path / "relu_rule.out.json").write_text("[" * 100000)
    with pytest.raises(sandbox.BadOutput):
        sandbox.read_outputs(tmp_path, "relu_rule", 3)
    (tmp_path / "run.json").write_text("[" * 100000)
    assert _read_run(tmp_path) == {}
    record = {"cases": [{"seen": [], "output": {"tensor": "c0"}}] * 4}
    (tmp_path / "relu_rule.out.json").write_text(json.dumps(record))
    np.savez(tmp_path / "relu_rule.out.npz", c0=right[0].numpy())
    with pytest.raises(sandbox.BadOutput, match="more outputs than cases"):
        sandbox.read_outputs(tmp_path, "relu_rule", 3)
