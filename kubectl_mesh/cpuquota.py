"""How many CPUs this process may keep busy: its affinity, capped by a CPU quota (cgroup v2's
`cpu.max`, v1's CFS quota). The texts are read by pure functions; the files at the edge."""

from __future__ import annotations

import math
import os


def cpus_allowed(
    affinity: int, cgroup: str | os.PathLike[str] = "/sys/fs/cgroup", own: str | None = None
) -> int:
    """The CPUs this process may keep busy: those it may run on, capped by a container's CPU
    quota (a pod limited to 1 CPU on a 2-core node: 2 workers would be throttled, and cost
    more than one process). cgroup v2's `cpu.max`, else v1's `cpu/cpu.cfs_quota_us` and
    `cpu.cfs_period_us`: in the process's own cgroup (`own`: the text of /proc/self/cgroup)
    when it is there below the mount (a host, `systemd-run -p CPUQuota=`), else at the mount's
    top (a container sees its own cgroup there). No file, or no quota: the affinity alone."""
    root = os.fspath(cgroup)
    if own is None:
        own = _read_text("/proc/self/cgroup") or ""
    v2_path, v1_path = own_cgroups(own)

    def first(*candidates: tuple[str, ...]) -> str | None:
        return next(
            (t for t in (_read_text(os.path.join(root, *c)) for c in candidates) if t is not None), None
        )

    v2 = first((v2_path, "cpu.max"), ("cpu.max",))
    if v2 is not None:
        quota = cgroup_v2_cpus(v2)
    else:
        v1_dir = ("cpu", v1_path) if v1_path is not None else ("cpu",)
        quota_us = first((*v1_dir, "cpu.cfs_quota_us"), ("cpu", "cpu.cfs_quota_us"))
        period_us = first((*v1_dir, "cpu.cfs_period_us"), ("cpu", "cpu.cfs_period_us"))
        quota = None if quota_us is None or period_us is None else cgroup_v1_cpus(quota_us, period_us)
    return max(1, min(affinity, quota) if quota is not None else affinity)


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read(4096)
    except OSError:
        return None


def own_cgroups(proc_self_cgroup: str) -> tuple[str, str | None]:
    """Pure: the process's cgroup v2 path and its v1 `cpu` controller's path (None: no such
    line), relative, from /proc/self/cgroup's text (`0::/path`, `4:cpu,cpuacct:/path`)."""
    v2, v1 = "", None
    for line in proc_self_cgroup.splitlines():
        number, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if number == "0" and not controllers:
            v2 = path.lstrip("/")
        elif "cpu" in controllers.split(","):
            v1 = path.lstrip("/")
    return v2, v1


def cgroup_v2_cpus(cpu_max: str) -> int | None:
    """CPUs of a cgroup v2 `cpu.max` (`QUOTA PERIOD` in microseconds, or `max PERIOD`): the
    quota over the period, rounded up; None for no quota or a text that is not one."""
    fields = cpu_max.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    return _quota_cpus(fields[0], fields[1])


def cgroup_v1_cpus(cfs_quota_us: str, cfs_period_us: str) -> int | None:
    """CPUs of cgroup v1's `cpu.cfs_quota_us` (-1: none) over `cpu.cfs_period_us`, as v2's."""
    return _quota_cpus(cfs_quota_us.strip(), cfs_period_us.strip())


def _quota_cpus(quota: str, period: str) -> int | None:
    if not (quota.isdigit() and period.isdigit()) or int(quota) == 0 or int(period) == 0:
        return None  # -1 (v1's "none") is not digits
    return max(1, math.ceil(int(quota) / int(period)))
