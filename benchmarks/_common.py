"""Shared bits of the benchmark scripts: threads, machine description, timing, JSON output, KEY=VALUE options."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from typing import Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch


def set_threads(threads: int | None) -> int:
    """One torch thread unless told otherwise (the machine is shared); returns the count used."""
    torch.set_num_threads(int(threads) if threads else 1)
    return torch.get_num_threads()


def machine() -> dict:
    """What the numbers were measured on."""
    from advsample.committee import default_device

    device = default_device()
    return {
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def synchronize() -> None:
    """Wait for the GPU's queued work (CUDA runs kernels asynchronously); nothing on the CPU."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def finished(step: Callable[[], None]) -> Callable[[], None]:
    """``step`` that returns only when its GPU work is done."""

    def run() -> None:
        step()
        synchronize()

    return run


def median_ms(step: Callable[[], None], repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``step`` in ms (its GPU work included) over ``repeats`` calls after ``warmup`` calls."""
    step = finished(step)
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def interleaved_median_ms(steps: dict[str, Callable[[], None]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median ms per step (GPU work included) for several steps timed in alternation (fair under a fluctuating load)."""
    steps = {name: finished(step) for name, step in steps.items()}
    for _ in range(warmup):
        for step in steps.values():
            step()
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def emit(result: dict, as_json: bool) -> None:
    """Human-readable lines, then (with --json) one JSON object as the last line."""
    if as_json:
        print(json.dumps(result, default=float))


def key_values(parser, flag: str, items: list[str]) -> dict:
    """``KEY=VALUE`` items as a dict, each value read as JSON (else kept as a string)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not key or not sep:
            parser.error(f"{flag}: give KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out
