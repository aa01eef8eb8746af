"""What both benchmark workers share: the same process settings, a step clock, peak RSS and the result line.

Stdlib only at import time: the TRL worker runs in another virtual environment (bench/.venv-trl) that has no
preftune installed, and both workers must set the allocator up before torch allocates anything.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULT_PREFIX = "BENCH_RESULT "
THREADS = 2  # the target machine has 2 cores; --threads changes it for both sides alike


def same_process_settings() -> bool:
    """preftune's own glibc settings (mallopt: no mmap, high trim threshold), applied to either side.

    Loaded from src/preftune/allocator.py by path, so the peer gets exactly the call preftune makes, without
    importing preftune (and its dependencies) into the peer's environment. Returns whether it took effect.
    """
    spec = importlib.util.spec_from_file_location(
        "_bench_allocator", REPO / "src" / "preftune" / "allocator.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return bool(module.keep_freed_memory())


def matches(name: str, filters: list[str], names: set[str]) -> bool:
    """Whether --configs picks ``name``: a filter that is a whole name picks that one only ("trl-all" is not
    also "trl-all-fastest"); any other filter picks every name holding it; no filter picks all."""
    return not filters or any(f == name or (f not in names and f in name) for f in filters)


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def status_mib(field: str) -> float | None:
    """A memory field of /proc/self/status (VmHWM, VmRSS, RssAnon, RssFile) in MiB; None where /proc is
    missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mib() -> float:
    """High-water resident set of this process (VmHWM), in MiB; ru_maxrss where /proc is missing."""
    peak = status_mib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def children_peak_rss_mib() -> float:
    """The largest high-water resident set among this process's finished children (worker processes), MiB."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def current_rss_mib() -> float:
    """Resident set of this process now (VmRSS), in MiB; NaN where /proc is missing."""
    now = status_mib("VmRSS")
    return now if now is not None else float("nan")


class StepClock:
    """Timestamps the end of each optimizer step; a step's time is the gap since the previous step's end, so
    data loading, forward, backward, the update and per-step bookkeeping all count, on both sides alike."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.ends: list[float] = []
        # CPU seconds of this process per step: on a shared machine wall time also measures the neighbours,
        # CPU time much less so (it still counts the thread pool's spinning while it waits for a core).
        self.cpu_ends: list[float] = []
        self.peak_rss_at_last_step = 0.0

    def tick(self) -> None:
        self.ends.append(time.perf_counter())
        self.cpu_ends.append(time.process_time())
        self.peak_rss_at_last_step = peak_rss_mib()

    def summary(self) -> dict[str, Any]:
        gaps = [b - a for a, b in zip(self.ends, self.ends[1:], strict=False)]
        cpu = [b - a for a, b in zip(self.cpu_ends, self.cpu_ends[1:], strict=False)]
        median = statistics.median(gaps) if gaps else float("nan")
        first_end = self.ends[0] - self.start if self.ends else float("nan")
        return {
            "steps": len(self.ends),
            "step_s": gaps,
            "step_cpu_s": cpu,
            "median_step_s": median,
            "first_step_end_s": first_end,
            # Everything before the steady state: model loading, tokenisation, any precompute pass and the
            # first step's one-off costs (the first step itself is counted as one median step).
            "setup_s": first_end - median if gaps else first_end,
            "total_s": self.ends[-1] - self.start if self.ends else float("nan"),
            "peak_rss_mib": self.peak_rss_at_last_step,
            # Measured right after the steps, in the same process under the same load: MFU's denominator.
            "matmul_peak_gflops": matmul_peak_gflops(),
        }


def matmul_peak_gflops(size: int = 2048, runs: int = 7) -> float:
    """Median GFLOP/s of a float32 size x size matmul on the current thread count."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


def ids_digest(triples: list[tuple[list[int], list[int], list[int]]]) -> dict[str, Any]:
    """Token count and hash of (prompt, chosen, rejected) ids: both sides must train on the very same ids."""
    tokens = sum(2 * len(p) + len(c) + len(r) for p, c, r in triples)
    text = json.dumps([[list(p), list(c), list(r)] for p, c, r in triples])
    return {"tokens": tokens, "ids_sha256": hashlib.sha256(text.encode()).hexdigest()[:16]}


def emit(
    side_fields: dict[str, Any],
    *,
    allocator_on: bool,
    versions: dict[str, str],
    first_steps: list[dict[str, float]],
    digest: dict[str, Any],
    clock: StepClock,
) -> None:
    """Print the result line: the side's own fields, then the fields both sides report alike."""
    import torch

    result = {
        **side_fields,
        "allocator_settings": allocator_on,
        "threads": torch.get_num_threads(),
        "versions": versions,
        "first_steps": first_steps,
        **digest,
        **clock.summary(),
    }
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()


def read_spec() -> dict[str, Any]:
    return json.loads(sys.argv[1])


def quiet_environment() -> None:
    """Offline and silent: no Hub calls, no progress bars (they cost time and flood the log)."""
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "TQDM_DISABLE"):
        os.environ.setdefault(key, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
