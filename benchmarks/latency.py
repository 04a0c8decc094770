"""Latency of a bundle on its target's edge runtime: warm-up, repetitions, percentiles, memory.

Run as a subprocess (`python -m edge_tailor.benchmarks.latency BUNDLE`) so that peak resident
memory is that of the edge runtime alone (onnxruntime + numpy + tokenizers), as on the device.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
import tomllib
from pathlib import Path

import numpy as np

from edge_tailor.export.runtime import EdgeModel


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux keeps ru_maxrss across fork and exec, so a child
    would report its parent's peak; VmHWM belongs to the process's own address space."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def bench_prompt(model: EdgeModel, tokens: int, text: str) -> list[int]:
    """A prompt of exactly `tokens` tokens, made from task text (repeated if too short)."""
    ids = model.encode(text)
    while len(ids) < tokens:
        ids = ids + ids
    return ids[:tokens]


def measure(bundle: Path, model_file: str = "model.onnx", prompt_text: str = "", prompt_tokens: int | None = None,
            new_tokens: int | None = None, warmup: int | None = None, repeats: int | None = None,
            threads: int | None = None) -> dict:
    bench = tomllib.loads((bundle / "target.toml").read_text())["bench"]  # a validated target: every key is there
    prompt_tokens = prompt_tokens or bench["prompt_tokens"]
    new_tokens = new_tokens or bench["new_tokens"]
    warmup = bench["warmup"] if warmup is None else warmup
    repeats = repeats or bench["repeats"]
    model = EdgeModel.load(bundle, threads=threads, model_file=model_file)
    model.eos_ids = []  # a benchmark decodes exactly new_tokens tokens
    ids = bench_prompt(model, prompt_tokens, prompt_text or "Q: A line makes 12 parts per hour.\nA:")
    for _ in range(warmup):
        model.generate(ids, max_new_tokens=new_tokens)
    per_token, ttft = [], []
    for _ in range(repeats):
        result = model.generate(ids, max_new_tokens=new_tokens)
        per_token += result.per_token_ms
        ttft.append(result.ttft_ms)
    p50 = percentile(per_token, 50)
    ttft_ms = statistics.median(ttft)
    return {
        "model_file": model_file, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "warmup": warmup,
        "repeats": repeats, "threads": model.settings.intra_op_threads,
        "ms_per_token_p50": round(p50, 4), "ms_per_token_p95": round(percentile(per_token, 95), 4),
        "ttft_ms": round(ttft_ms, 4), "tokens_per_s": round(1000 / p50, 2),
        "prompt_tokens_per_s": round(prompt_tokens / (ttft_ms / 1000), 1),
        "peak_rss_mb": peak_rss_mb(),
        "model_mb": round((bundle / model_file).stat().st_size / 2**20, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure a bundle's decode latency with the edge runtime.")
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--model-file", default="model.onnx")
    parser.add_argument("--prompt-text", default="")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    out = measure(args.bundle, args.model_file, args.prompt_text, repeats=args.repeats, warmup=args.warmup,
                  threads=args.threads)
    out["seconds"] = round(time.perf_counter() - started, 2)
    out["torch_imported"] = "torch" in sys.modules
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
