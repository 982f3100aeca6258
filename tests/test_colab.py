"""The chapters' Colab install cell, run exactly as written in a Colab-like setting, offline.

The setting: a fake ``google.colab`` module (Colab's kernel imports the real one at start), a fresh
working folder (Colab's ``/content``), a throwaway virtual environment layered on this one (so pip
installs there, never into the environment running the tests, and finds torch & co. already
installed, as on Colab), and git's ``url.<base>.insteadOf`` sending the repository address of
``_config.yml`` to a local mirror of this checkout, whose branch named by the cell holds this
checkout's HEAD commit. The cell's text is never edited.
"""

import json
import os
import re
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))
REPO = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]


def install_cell(nb: Path) -> str:
    cells = json.loads(nb.read_text())["cells"]
    return "".join(next(c for c in cells if c["cell_type"] == "code")["source"])


def cell_ref(cell: str) -> str:
    return re.search(r'REPO, REF = "[^"]+", "([^"]+)"', cell).group(1)


def git(*args, cwd=None):
    out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    assert out.returncode == 0, f"git {' '.join(args)}: {out.stderr}"
    return out.stdout.strip()


@pytest.fixture(scope="module")
def cell():
    """The install cell (the same in every chapter: tests/test_book.py checks that)."""
    return install_cell(CHAPTERS[0])


@pytest.fixture(scope="module")
def remote(tmp_path_factory, cell):
    """A bare mirror of this checkout standing in for the repository on GitHub."""
    ref = cell_ref(cell)
    mirror = tmp_path_factory.mktemp("github") / "book.git"
    git("clone", "--quiet", "--mirror", str(ROOT), str(mirror))
    names = [f"refs/heads/{ref}", f"refs/remotes/origin/{ref}", f"refs/tags/{ref}"]
    found = [n for n in names if git("for-each-ref", n, cwd=mirror)]
    assert found, (f"the install cell fetches {ref!r}, which is neither a branch nor a tag of this "
                   "repository: Colab would fail to install the book")
    # Serve this checkout's committed state under that name, so the cell installs this code.
    git("fetch", "--quiet", str(ROOT), "HEAD", cwd=mirror)
    git("update-ref", f"refs/heads/{ref}", "FETCH_HEAD", cwd=mirror)
    return mirror


@pytest.fixture(scope="module")
def colab(tmp_path_factory):
    """Environment variables and interpreter of a Colab-like process, minus the address rewrite."""
    base = tmp_path_factory.mktemp("colab")
    fake = base / "fake"
    (fake / "google" / "colab").mkdir(parents=True)
    (fake / "google" / "colab" / "__init__.py").write_text('"""Stands in for Colab\'s module."""\n')
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    # Layer the new environment on this one: its site-packages are searched after the new one's
    # (a path in a .pth file is appended, and the .pth files inside it are not run, so this
    # environment's own editable convvis is invisible there).
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    here = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(purelib) / "zz_tests_parent_env.pth").write_text("\n".join(sorted(here)) + "\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GIT_", "PIP_", "CONVVIS_")) and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PYTHONPATH=str(fake), PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
               PYTHONDONTWRITEBYTECODE="1", GIT_CONFIG_NOSYSTEM="1", GIT_TERMINAL_PROMPT="0")
    return {"python": python, "env": env, "base": base}


def run_cell(colab, tmp_path, cell, target, after="", times=1):
    """Run the cell `times` times in one fresh process whose git sends REPO to `target`."""
    gitconfig = tmp_path / "gitconfig"
    gitconfig.write_text(f'[url "{target}"]\n\tinsteadOf = {REPO}\n'
                         "[user]\n\tname = test\n\temail = test@example.org\n")
    script = tmp_path / "kernel.py"
    script.write_text("import google.colab  # as Colab's kernel does at start\n"
                      f"CELL = {cell!r}\n"
                      f"for _ in range({times}):\n    exec(CELL, {{}})\n" + textwrap.dedent(after))
    env = dict(colab["env"], GIT_CONFIG_GLOBAL=str(gitconfig), HOME=str(tmp_path))
    return subprocess.run([str(colab["python"]), str(script)], cwd=tmp_path / "content", env=env,
                          capture_output=True, text=True, timeout=300)


CHECK = """
import convvis
print("convvis", convvis.__file__)
print("data", convvis.images.data_dir())
print("photo", tuple(convvis.images.to_photo(convvis.images.sample_path("cat")).shape))
"""


def test_install_cell_installs_the_book_and_runs_again(colab, remote, cell, tmp_path):
    (tmp_path / "content").mkdir()
    target = remote.as_uri()
    # First run and a second run in the same kernel.
    out = run_cell(colab, tmp_path, cell, target, after=CHECK, times=2)
    assert out.returncode == 0, out.stderr
    book = (tmp_path / "content" / "book").resolve()
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert Path(lines["convvis"]).resolve() == book / "convvis" / "__init__.py", out.stdout
    assert Path(lines["data"]).resolve() == book / "data"
    assert lines["photo"].endswith(", 3)")
    # The clone holds the commit under test, named as the cell names it.
    assert git("rev-parse", "HEAD", cwd=book) == git("rev-parse", "HEAD", cwd=ROOT)
    # "Restart and run all": a new process, the clone already there.
    out = run_cell(colab, tmp_path, cell, target, after=CHECK)
    assert out.returncode == 0, out.stderr
    assert Path(dict(ln.split(" ", 1) for ln in out.stdout.splitlines())["convvis"]).resolve() \
        == book / "convvis" / "__init__.py"
    # A process that does not run the cell (a subprocess, a restarted kernel) finds the installed copy.
    found = subprocess.run([str(colab["python"]), "-c", CHECK], cwd=tmp_path, env=colab["env"],
                           capture_output=True, text=True, timeout=120)
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.split()[1]).resolve() == book / "convvis" / "__init__.py"
    assert not Path(found.stdout.split()[1]).resolve().is_relative_to(ROOT)


def test_install_cell_that_cannot_reach_the_repository_says_so_in_one_line(colab, cell, tmp_path):
    (tmp_path / "content").mkdir()
    out = run_cell(colab, tmp_path, cell, (tmp_path / "nowhere.git").as_uri())
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: ") and REPO in last and f"branch {cell_ref(cell)}" in last, last
    assert "nowhere.git" in last, f"git's own message is missing: {last}"
