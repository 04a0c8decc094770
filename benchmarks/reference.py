"""The relative latency budget's reference: PyTorch fp32 eager decode of the same model,
measured interleaved with the edge runtime in one process, so the ratio holds on a shared,
noisy machine where absolute times drift."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from edge_tailor.export.runtime import EdgeModel

from .engines import interleave


@torch.no_grad()
def torch_decode_ms(model, prompt_ids: list[int], new_tokens: int) -> list[float]:
    """Per-token ms of a greedy decode with the KV cache (prefill excluded)."""
    ids = torch.tensor([prompt_ids])
    out = model(input_ids=ids, use_cache=True)
    past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    times = []
    for _ in range(new_tokens - 1):
        start = time.perf_counter()
        out = model(input_ids=token, past_key_values=past, use_cache=True)
        past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        times.append((time.perf_counter() - start) * 1000)
    return times


def interleaved(model_dir: Path, bundle: Path, prompt_ids: list[int], new_tokens: int, threads: int,
                rounds: int = 5, warmup: int = 2, model_file: str = "model.onnx") -> dict:
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True).eval()
    edge = EdgeModel.load(bundle, threads=threads, model_file=model_file)
    edge.eos_ids = []
    # no rotation: torch then edge in every round, the order the recorded reference ratios were measured in
    kept = interleave({"torch": lambda: torch_decode_ms(model, prompt_ids, new_tokens),
                       "edge": lambda: edge.generate(prompt_ids, max_new_tokens=new_tokens).per_token_ms},
                      rounds, warmup, rotate=False)
    torch_ms, edge_ms = ([ms for one in kept[name] for ms in one] for name in ("torch", "edge"))
    t50, e50 = statistics.median(torch_ms), statistics.median(edge_ms)
    return {"torch_fp32_ms_per_token_p50": round(t50, 4), "edge_ms_per_token_p50": round(e50, 4),
            "ratio": round(e50 / t50, 4), "rounds": rounds, "warmup": warmup, "threads": threads,
            "model_file": model_file}
