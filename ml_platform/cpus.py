"""How many cores this process may use: the cores it may run on, capped by a cgroup CPU quota.

In a Kubernetes pod ``os.cpu_count()`` and the affinity mask report the node's cores; the pod's CPU
limit is only in the cgroup's quota (``cpu.max`` in cgroup v2, ``cpu.cfs_quota_us`` in v1). A worker
pool sized by the node would start, say, 32 threads under a 2-CPU limit: throttled, and holding 32
batches of memory for the speed of 2.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """At least 1: the affinity mask's cores, fewer when a cgroup quota allows fewer (rounded up)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def _cgroup_quota(root: Path) -> float | None:
    """CPUs allowed by the cgroup quota (v2, else v1); None when there is none or it cannot be read."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]  # "max 100000" or "200000 100000"
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None
