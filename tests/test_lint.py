import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_is_clean():
    # ruff is a test dependency (requirements.txt installs convvis[test]); run it from this
    # interpreter's environment so the test cannot skip itself by not finding it on PATH.
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
