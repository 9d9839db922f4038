"""Peak resident memory of this process and of its children, as the scoring jobs, the benchmark and
the memory tests report it.

On Linux the process's peak is /proc/self/status VmHWM, not getrusage's ru_maxrss: the kernel keeps
ru_maxrss across exec, so a process started by a large parent (pytest after hundreds of tests, a
notebook) would report the parent's peak as its own (seen in CI: 3.3 GB for a job that used 1 GB).
"""
from __future__ import annotations

import contextlib
import resource
import sys
from pathlib import Path

_RUSAGE_SCALE = 1 / 2**20 if sys.platform == "darwin" else 1 / 1024  # ru_maxrss: bytes on macOS, KiB on Linux


def peak_rss_mb() -> float:
    """This process's peak resident set size since it started (its exec), MiB."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _RUSAGE_SCALE


def largest_child_peak_rss_mb() -> float:
    """The largest peak resident set size of this process's finished children (decoding workers), MiB."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * _RUSAGE_SCALE
