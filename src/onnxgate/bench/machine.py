"""Is the machine quiet enough for the figures to mean anything?

Two signals, both cheap and Linux-first (other systems get ``None`` and no warning):

- the 1-minute load average when the benchmark starts, against the usable cores (our own run raises it later, so
  only the starting value says something about other work);
- the CPU time *other* processes used while the benchmark ran: the machine's busy time from ``/proc/stat`` minus
  this process's and its waited-for children's CPU time. Expressed in cores (0.5 = half a core on average).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

# Thresholds for the warning: a quarter of a core used by others on average, or a load average at half the cores.
OTHER_CORES_LIMIT = 0.25
LOAD_PER_CORE_LIMIT = 0.5


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _machine_busy_seconds() -> float | None:
    """Busy CPU seconds of all cores since boot (everything but idle and iowait), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # guest time is already inside user time


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@dataclass
class MachineLoad:
    cores: int
    load_average_start: list[float] | None
    other_cores: float | None = None  # average cores used by other processes during the benchmark

    def warnings(self) -> list[str]:
        found = []
        # The load average trails by a minute and counts this process's own earlier work (the previous model of a
        # reference-set run), so it only decides when the direct measurement of other processes is missing.
        if (self.other_cores is None and self.load_average_start
                and self.load_average_start[0] >= LOAD_PER_CORE_LIMIT * self.cores):
            found.append(f"the machine was busy when the benchmark started (load average "
                         f"{self.load_average_start[0]:.2f} on {self.cores} cores)")
        if self.other_cores is not None and self.other_cores >= OTHER_CORES_LIMIT:
            found.append(f"other processes used {self.other_cores:.2f} of {self.cores} cores on average while it ran")
        return found

    def to_dict(self) -> dict:
        return {"cores": self.cores, "load_average_start": self.load_average_start,
                "other_cores": self.other_cores, "busy": bool(self.warnings())}


class LoadMonitor:
    """Start before the benchmark, ``stop()`` after it: returns the MachineLoad of the whole run."""

    def __init__(self):
        self._load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        self._start = (time.monotonic(), _machine_busy_seconds(), _own_seconds())

    def stop(self) -> MachineLoad:
        wall0, busy0, own0 = self._start
        wall, busy = time.monotonic() - wall0, _machine_busy_seconds()
        other = None
        if busy is not None and busy0 is not None and wall > 0:
            other = max(0.0, ((busy - busy0) - (_own_seconds() - own0)) / wall)
        return MachineLoad(usable_cores(), self._load, other)
