"""clara.memory reads a process's own peak, not the peak of the process that started it (the kernel
keeps getrusage's ru_maxrss across exec: CI saw a 1 GB scoring job report pytest's 3.3 GB)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHILD = "import json, resource; from clara.memory import peak_rss_mb; " \
        "print(json.dumps({'peak': peak_rss_mb(), 'ru_maxrss': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))"


def test_a_child_of_a_large_process_reports_its_own_peak():
    parent = textwrap.dedent(f"""
        import subprocess, sys
        ballast = b"x" * (600 * 2**20)  # 600 MiB, written, so resident
        done = subprocess.run([sys.executable, "-c", {CHILD!r}], capture_output=True, text=True, check=True)
        print(done.stdout)
    """)
    done = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    child = json.loads(done.stdout.strip().splitlines()[-1])
    assert 5 < child["peak"] < 300, child  # the interpreter and clara.memory: tens of MiB
    if sys.platform.startswith("linux"):
        assert child["ru_maxrss"] > 600, child  # what the old reading would have reported
