"""Executors with one signature, ``map_fn(fn, items, on_result=None) -> [fn(item) for item in items]``.

The library takes one as an argument wherever work splits into independent pieces (store shards,
cache shards, synthetic clips): ``serial_map`` in this process, ``process_map`` over this machine's
cores, and ``search.prepare.ray_map`` over a Ray cluster.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import signal
from typing import Callable, Sequence


_CPU_LIMIT: int | None = None


def limit_cpus(n: float) -> int:
    """Use at most ``n`` CPUs in this process from now on (whole CPUs, at least one): what a Ray task or
    trial was given, not what the node has, so that trials sharing a node do not oversubscribe it.
    Sets torch's intra-op threads too (their count also decides the order of floating-point sums: a
    trial resumed elsewhere computes what it computed before only with as many threads). Returns it."""
    import torch  # late: `python -m search --help` and synth import this module (start-up time)

    global _CPU_LIMIT
    _CPU_LIMIT = max(1, int(n))
    torch.set_num_threads(_CPU_LIMIT)
    return _CPU_LIMIT


def available_cpus() -> int:
    """The CPUs this process may use: :func:`limit_cpus`'s limit, else the cores it may run on."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(cores, _CPU_LIMIT) if _CPU_LIMIT else cores


def serial_map(fn: Callable, items: Sequence, progress: Callable[[object], None] | None = None) -> list:
    """Run ``fn`` over ``items`` in this process (the default executor; ``search`` passes Ray's)."""
    results = []
    for item in items:
        results.append(fn(item))
        if progress:
            progress(results[-1])
    return results


def _ignore_interrupts() -> None:
    """Ctrl-C reaches every process of the terminal's group: the parent handles it (stops the pool
    and removes what was half-written); a worker printing its own KeyboardInterrupt would not help."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def process_map(fn: Callable, items: Sequence, progress: Callable[[object], None] | None = None,
                workers: int | None = None) -> list:
    """``serial_map`` over the CPUs this process may use (:func:`available_cpus`, or ``workers``
    processes), for work started outside Ray's scheduling: the synthetic set, the median-filter cache
    that the first trial needing it builds. Processes are spawned, not forked, so that a caller's
    threads (torch's, BLAS's) are not copied mid-state."""
    workers = min(len(items), workers or available_cpus())
    if workers <= 1:
        return serial_map(fn, items, progress)
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=_ignore_interrupts)
    try:
        futures = [pool.submit(fn, item) for item in items]
        if progress:
            for future in concurrent.futures.as_completed(futures):
                progress(future.result())
        return [future.result() for future in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
