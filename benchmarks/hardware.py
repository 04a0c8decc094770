"""What the machine can deliver, for the peer comparison's floors and reports: the memory read bandwidth,
the weight bytes a decode step reads from an ONNX file, and the machine's description."""

from __future__ import annotations

import os
import platform
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np


def weight_bytes_per_token(onnx_path: Path) -> int:
    """Bytes of the weights a decode step reads: every constant input of a (quantized) MatMul, scales included.

    The embedding table is left out (a step gathers one row of it); norms and biases are a rounding error.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path), load_external_data=False)
    sizes = {}
    for t in model.graph.initializer:
        sizes[t.name] = numpy_helper.to_array(t).nbytes if not t.external_data else \
            int(next(e.value for e in t.external_data if e.key == "length"))
    matmuls = {"MatMul", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulNBits", "Gemm", "QLinearMatMul"}
    used = {i for n in model.graph.node if n.op_type in matmuls for i in n.input if i in sizes}
    # DequantizeLinear feeding a MatMul (QDQ format) reads its quantized weight too
    producer = {o: n for n in model.graph.node for o in n.output}
    for n in model.graph.node:
        if n.op_type in matmuls:
            for i in n.input:
                p = producer.get(i)
                if p is not None and p.op_type == "DequantizeLinear":
                    used |= {x for x in p.input if x in sizes}
    return sum(sizes[i] for i in used)


def measure_bandwidth(mb: int = 512, repeats: int = 7, threads: int = 2) -> dict:
    """Read bandwidth in GB/s over a float32 buffer far larger than the caches; the fastest reader counts.

    Readers: numpy's max (vectorised, cheap per byte; Python threads over disjoint slices read in
    parallel since numpy drops the GIL) and torch's sum, on 1 and on ``threads`` threads. A reader
    that computes more per byte (numpy's pairwise float64 sum: ~17 GB/s where these reach ~38)
    would understate the bandwidth and so the floor. The best of the repeats is what the memory
    system can deliver.
    """
    import torch

    data = np.ones(mb * 2**20 // 4, dtype=np.float32)  # written, so every page is resident
    tensor = torch.from_numpy(data)
    parts = np.array_split(data, threads)

    def numpy_max_parallel() -> None:
        workers = [threading.Thread(target=np.max, args=(p,)) for p in parts]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    def torch_sum(n: int) -> Callable[[], object]:
        def run() -> object:
            torch.set_num_threads(n)
            return tensor.sum()
        return run

    readers = {"numpy_max_1t": data.max, "torch_sum_1t": torch_sum(1)}
    if threads > 1:
        readers.update({f"numpy_max_{threads}t": numpy_max_parallel, f"torch_sum_{threads}t": torch_sum(threads)})
    previous = torch.get_num_threads()
    out = {}
    for name, fn in readers.items():
        fn()  # warm
        best = min(_timed(fn) for _ in range(repeats))
        out[name] = round(data.nbytes / best / 1e9, 2)
    torch.set_num_threads(previous)
    return {"read_gb_s": max(out.values()), "by_reader": out, "buffer_mb": mb}


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "nice": os.nice(0), "loadavg_before": [round(x, 2) for x in os.getloadavg()]}
