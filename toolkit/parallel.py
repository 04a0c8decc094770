"""Independent CPU jobs (trainings, generation runs) side by side in worker processes.

These tiny models run fastest on one torch thread (measured 6x slower on two threads at batch 64),
so a 2-core machine finishes two jobs in the time of one only with two processes. The standard
library pool does the work; this module picks the worker count and keeps progress output to one
line in the parent."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Callable, Hashable, TypeVar

import torch

from . import distributed
from .interrupts import ignore_interrupts
from .models import pick_device
from .progress import track

R = TypeVar("R")


def worker_count(device: str, jobs: int, requested: int = 0) -> int:
    """`requested` if set; else one worker per `torch threads` cores on a CPU, one on CUDA."""
    if distributed.world_size() > 1:
        return 1  # the ranks share out the work inside each job (edge_tailor.distributed); no pools beside them
    if requested:
        return max(1, min(jobs, requested))
    if pick_device(device).type == "cuda":
        return 1
    return max(1, min(jobs, (os.cpu_count() or 1) // max(1, torch.get_num_threads())))


def die_with_parent() -> None:
    """Ask Linux to end this process when its parent dies (prctl PR_SET_PDEATHSIG).

    A stage killed with SIGKILL cannot clean up after itself; without this its benchmark subprocess
    and worker processes would go on running (and writing) after it. No-op outside Linux.
    """
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _quiet_worker(threads: int) -> None:
    die_with_parent()
    ignore_interrupts()
    os.environ["TQDM_DISABLE"] = "1"  # the parent shows one bar over the jobs instead of interleaved ones
    os.environ["EDGE_TAILOR_QUIET"] = "1"
    torch.set_num_threads(threads)


def run_jobs(fn: Callable[..., R], jobs: dict[Hashable, tuple], workers: int, description: str) -> dict[Hashable, R]:
    """{key: fn(*args)} for every job, in `workers` processes (in this process when 1).

    When anything stops the parent (a job's error, Ctrl-C, SIGTERM), the workers are ended at once:
    the pool's own exit would first wait for every running job to finish."""
    if workers <= 1:
        return {key: fn(*args) for key, args in track(jobs.items(), description, total=len(jobs))}
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_quiet_worker, initargs=(torch.get_num_threads(),))
    try:
        futures = {pool.submit(fn, *args): key for key, args in jobs.items()}
        results = {futures[f]: f.result() for f in track(as_completed(futures), description, total=len(futures))}
    except BaseException:
        _end_workers(pool)
        raise
    pool.shutdown()
    return results


def _end_workers(pool: ProcessPoolExecutor, grace_s: float = 2.0) -> None:
    # Python 3.14 has pool.terminate_workers(); before it the worker processes are only in _processes.
    processes = list((pool._processes or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(grace_s)
        if process.is_alive():
            process.kill()
            process.join()
