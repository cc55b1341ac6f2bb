"""Shared benchmark helpers: this machine's copy bandwidth (measured once per session) so every
memory-bound benchmark can report "% of bandwidth", and a synchronising wrapper for CUDA timings.

Run: pytest bench            (full)
     VTP_BENCH_QUICK=1 pytest bench --benchmark-disable   (smoke: smallest shapes, one call each)
"""
from __future__ import annotations

import os
import time

import torch

QUICK = os.environ.get("VTP_BENCH_QUICK", "0") not in ("", "0")


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure_copy_bandwidth(device: str = "cpu", nbytes: int = 256 << 20, repeats: int = 5) -> float:
    """Best-of-N read+write bandwidth of a large copy, in bytes/s (counts both the read and the write)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * nbytes / best


def report_bandwidth(benchmark, bytes_moved: int, bandwidth_bps: float) -> None:
    """Attach achieved GB/s and % of the copy bandwidth to the benchmark's JSON and table."""
    stats = getattr(benchmark, "stats", None)
    if stats is None or not getattr(stats, "stats", None) or not stats.stats.data:
        return  # --benchmark-disable
    seconds = stats.stats.min
    achieved = bytes_moved / seconds
    benchmark.extra_info["GB/s"] = round(achieved / 1e9, 2)
    benchmark.extra_info["copy GB/s"] = round(bandwidth_bps / 1e9, 2)
    benchmark.extra_info["% of bandwidth"] = round(100 * achieved / bandwidth_bps, 1)


def timed(fn, device: str):
    """Wrap fn so a CUDA call is timed to completion."""
    if device != "cuda":
        return fn

    def run(*a, **k):
        out = fn(*a, **k)
        torch.cuda.synchronize()
        return out
    return run
