"""Shared benchmark plumbing: one subprocess per configuration, peak RSS, JSON output."""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def load_average() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def reset_peak_rss() -> bool:
    """Resets the kernel's peak-RSS mark of this process (Linux ``clear_refs`` 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def high_water_rss() -> int:
    """``VmHWM``: the peak RSS since the process started or since :func:`reset_peak_rss`."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return peak_rss()


def live_peak_bytes(step: Callable[[], None]) -> int:
    """Runs ``step`` once under PyTorch's profiler and returns the peak of the bytes that
    PyTorch's CPU allocator holds during it, above what it held at the start (from the
    profiler's allocation and free events, in time order): the tensors alive at the step's worst
    moment. Unlike RSS, this does not depend on where the C library's heap places blocks and
    whether it hands freed ones back (under glibc's defaults, the same step's peak RSS differs
    by up to 2x from one run to the next). Blocks allocated before the step and freed during it
    count as held throughout (the profiler does not know their size), an overestimate alike for
    every peer."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [
        e
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and "CPU" in str(e.device_type())
    ]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def time_steps(step: Callable[[], None], repeat: int, live: bool = False) -> dict:
    """Runs ``step`` once to warm up, then ``repeat`` times (and with ``live`` once more,
    profiled, untimed).

    ``peak_extra_bytes``: peak RSS above the RSS before the first step (so it includes one-time
    work of the first step, e.g. building and caching a sparsity pattern).
    ``step_peak_extra_bytes``: peak RSS of the timed steps above the RSS after the warm-up step
    (the steady state of training on the same graph; ``None`` where the mark cannot be reset).
    ``live_step_peak_bytes`` (with ``live``): :func:`live_peak_bytes` of one more step, the
    tensor analogue of ``step_peak_extra_bytes``.
    """
    baseline = current_rss()
    times = []
    step_baseline = step_peak = None
    for i in range(repeat + 1):
        if i == 1:
            step_baseline = current_rss()
            step_peak = reset_peak_rss()
        start = time.perf_counter()
        step()
        if i > 0:
            times.append(time.perf_counter() - start)
    times.sort()
    record = {
        "time_min_s": times[0],
        "time_median_s": times[len(times) // 2],
        "times_s": times,
        "peak_extra_bytes": peak_rss() - baseline,
        "step_peak_extra_bytes": high_water_rss() - step_baseline if step_peak else None,
    }
    if live:
        record["live_step_peak_bytes"] = live_peak_bytes(step)
    return record


def run_child(
    script: str, spec: str, repeat: int, tuned: bool, extra_env: dict | None = None
) -> tuple[dict | None, str]:
    """Runs ``script --child spec`` in a fresh process (``extra_env`` added to its environment);
    returns (record, error line)."""
    env = dict(os.environ)
    env.update(extra_env or {})
    if tuned:
        env["MALLOC_MMAP_MAX_"] = "0"
    load = load_average()
    cmd = [sys.executable, script, "--child", spec, "--repeat", str(repeat)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return None, (proc.stderr.strip().splitlines() or ["failed"])[-1]
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    record["load_before"] = load
    return record, ""


def machine_summary(tuned: bool, pool: bool = False) -> dict:
    """Date, machine and the allocator setting every child ran under: ``MALLOC_MMAP_MAX_=0``
    (``tuned``) or glibc's defaults, PyTorch's ``THP_MEM_ALLOC_ENABLE=1`` (large blocks
    2 MB-aligned on transparent huge pages) when it is set in this environment, which the
    children inherit, and gtlib's output pool (``GTLIB_OUTPUT_POOL``) when ``pool`` or set."""
    allocator = "MALLOC_MMAP_MAX_=0" if tuned else "default glibc"
    if os.environ.get("THP_MEM_ALLOC_ENABLE", "0") not in ("", "0"):
        allocator += " + THP_MEM_ALLOC_ENABLE=1"
    setting = "1" if pool else os.environ.get("GTLIB_OUTPUT_POOL", "0").strip()
    if setting.lower() not in ("", "0", "off", "false"):
        allocator += f" + GTLIB_OUTPUT_POOL={setting}"
    return {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "allocator": allocator,
    }


def write_json(path: str, summary: dict) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=1))
    tmp.replace(out)
    print(f"wrote {out}")
