"""Decode engines timed side by side in one process, and the interleaved timer they run under.

An engine decodes the same prompt greedily to exactly N new tokens (``decode(n)``): PyTorch eager and
Optimum's ``ORTModelForCausalLM`` through Hugging Face ``generate``, and the edge runtime
(``EdgeModel``). ``run_rounds`` times each engine end to end at N and at 1 token, so ms per token =
(t(N) - t(1)) / (N - 1) cancels prefill and set-up; used by the ``bench`` stage and
``benchmarks/peers.py``. ``interleave`` is the round loop itself, shared with ``benchmarks/reference.py``.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np

from .hardware import weight_bytes_per_token


class Engine:
    """One way to decode: ``decode(n)`` generates exactly ``n`` greedy tokens and returns them."""

    name: str
    kind: str  # "pytorch", "optimum", "edge", "genai" or "llama.cpp"
    model_file: Path | None = None

    def decode(self, n: int) -> list[int]:
        raise NotImplementedError


class GenerateEngine(Engine):
    """Engines timed through Hugging Face's `generate` (PyTorch and Optimum)."""

    def decode(self, n: int) -> list[int]:
        with self.torch.inference_mode():
            out = self.model.generate(self.ids, attention_mask=self.torch.ones_like(self.ids), max_new_tokens=n,
                                      min_new_tokens=n, do_sample=False, pad_token_id=self.model.config.pad_token_id)
        return out[0, self.ids.shape[1]:].tolist()


class TorchEngine(GenerateEngine):
    def __init__(self, model_dir: Path, prompt: list[int], threads: int):
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        self.name, self.kind, self.torch = "pytorch fp32", "pytorch", torch
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.ids = torch.tensor([prompt])


class OptimumEngine(GenerateEngine):
    def __init__(self, name: str, onnx_dir: Path, prompt: list[int], threads: int):
        import onnxruntime as ort
        import torch
        from optimum.onnxruntime import ORTModelForCausalLM

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.name, self.kind, self.torch, self.model_file = name, "optimum", torch, onnx_dir / "model.onnx"
        # Optimum's defaults otherwise (no IOBinding on CPU): Optimum as a user runs it.
        self.model = ORTModelForCausalLM.from_pretrained(onnx_dir, file_name="model.onnx", use_cache=True,
                                                         provider="CPUExecutionProvider", session_options=options)
        self.ids = torch.tensor([prompt])



class EdgeEngine(Engine):
    def __init__(self, name: str, onnx_dir: Path, prompt: list[int], threads: int, model_file: str = "model.onnx"):
        from edge_tailor.export.runtime import EdgeModel

        self.name, self.kind, self.model_file = name, "edge", onnx_dir / model_file
        # the ci-x86 target's runtime block: 2 threads, spinning on, all graph optimizations
        self.model = EdgeModel.load(onnx_dir, threads=threads, model_file=model_file)
        self.model.eos_ids = []  # exactly n tokens, as min_new_tokens does for generate
        self.prompt = prompt
        self.in_loop_ms: list[float] = []

    def decode(self, n: int) -> list[int]:
        result = self.model.generate(self.prompt, max_new_tokens=n)
        self.in_loop_ms = result.per_token_ms
        return result.tokens


class GenaiEngine(Engine):
    """onnxruntime-genai on a bundle folder (its ``genai_config.json``), greedy, exactly n new tokens."""

    def __init__(self, name: str, folder: Path, prompt: list[int], threads: int):
        import onnxruntime_genai as og

        self.og, self.name, self.kind, self.prompt = og, name, "genai", prompt
        config = og.Config(str(folder))
        # the engines are timed at the same thread count; genai reads it from the session options
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads,
                                                                              "inter_op_num_threads": 1}}}}))
        self.model = og.Model(config)
        decoder = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]
        self.model_file = folder / decoder["filename"]

    def decode(self, n: int) -> list[int]:
        length = len(self.prompt) + n
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=length, min_length=length, do_sample=False)
        generator = self.og.Generator(self.model, params)
        generator.append_tokens(self.prompt)
        while not generator.is_done():
            generator.generate_next_token()
        return [int(t) for t in generator.get_sequence(0)][len(self.prompt):]


class LlamaCppEngine(Engine):
    """llama.cpp's own ``llama-bench`` (a subprocess per round): token generation after a prompt-sized context.

    ``llama-bench -p 0 -n N -d P -r 1``: the context is filled with P tokens first, untimed, then N
    tokens are generated and timed; ms/token = 1000 / tokens/s. Its tokens are random ids and stay
    in llama.cpp, so there are no tokens to compare and no first-token time.
    """

    def __init__(self, name: str, gguf: Path, prompt_tokens: int, threads: int, llama):
        self.name, self.kind, self.model_file, self.llama = name, "llama.cpp", gguf, llama
        self.prompt_tokens, self.threads = prompt_tokens, threads

    def measure_once(self, new_tokens: int) -> dict:
        from .llamacpp import bench

        result = bench(self.model_file, threads=self.threads, prompt_tokens=0, new_tokens=new_tokens, repeats=1,
                       depth=self.prompt_tokens, llama=self.llama, timeout=600)
        return {"per_token": result["ms_per_token"], "t1": None, "tokens": [], "in_loop": None}


# --- measuring -------------------------------------------------------------------------------------

def per_token_ms(t_n: float, t_1: float, n: int) -> float:
    """ms per generated token from end-to-end times (seconds) of an n-token and a 1-token decode."""
    return (t_n - t_1) / (n - 1) * 1000


def interleave(measures: dict[str, Callable[[], object]], rounds: int, warmup: int, rotate: bool = True,
               after_round: Callable[[int, dict[str, list]], None] | None = None) -> dict[str, list]:
    """Call every measure once a round for ``warmup + rounds`` rounds; keep what the last ``rounds`` returned.

    Round by round, so drift on a shared, noisy machine hits every engine alike and their ratios hold
    better than the absolute times; with ``rotate`` the order shifts each round, so no engine always
    runs right after the same one. ``after_round(r, kept)`` is called after round ``r`` (0-based).
    """
    names = list(measures)
    kept: dict[str, list] = {name: [] for name in names}
    for r in range(warmup + rounds):
        shift = r % len(names) if rotate else 0
        for name in names[shift:] + names[:shift]:
            result = measures[name]()
            if r >= warmup:
                kept[name].append(result)
        if after_round is not None:
            after_round(r, kept)
    return kept


def _timed_decodes(engine: Engine, new_tokens: int) -> Callable[[], dict]:
    """One measurement of an engine: end-to-end times of a 1-token and an n-token greedy decode."""
    if isinstance(engine, LlamaCppEngine):
        return lambda: engine.measure_once(new_tokens)

    def measure() -> dict:
        started = time.perf_counter()
        engine.decode(1)
        t1 = time.perf_counter() - started
        started = time.perf_counter()
        out = engine.decode(new_tokens)
        tn = time.perf_counter() - started
        return {"per_token": per_token_ms(tn, t1, new_tokens), "t1": t1 * 1000, "tokens": out,
                "in_loop": list(engine.in_loop_ms) if isinstance(engine, EdgeEngine) else None}
    return measure


def run_rounds(engines: list[Engine], new_tokens: int, rounds: int, warmup: int,
               log: Callable[[str], None]) -> dict[str, dict]:
    def progress(r: int, kept: dict[str, list]) -> None:
        label = "warm-up" if r < warmup else "round"
        log(f"[peers] {label} {r + 1 if r < warmup else r - warmup + 1}: " + ", ".join(
            f"{n} {m[-1]['per_token']:.2f}" for n, m in kept.items() if m and r >= warmup))

    kept = interleave({e.name: _timed_decodes(e, new_tokens) for e in engines}, rounds, warmup,
                      after_round=progress)
    samples = {name: {"per_token": [m["per_token"] for m in ms], "t1": [m["t1"] for m in ms if m["t1"] is not None],
                      "in_loop": [statistics.median(m["in_loop"]) for m in ms if m["in_loop"] is not None]}
               for name, ms in kept.items()}
    tokens = {name: ms[-1]["tokens"] for name, ms in kept.items()}
    results = {}
    for e in engines:
        s = samples[e.name]
        q1, q3 = np.percentile(s["per_token"], [25, 75])
        results[e.name] = {
            "kind": e.kind, "ms_per_token": round(statistics.median(s["per_token"]), 3),
            "ms_per_token_iqr": [round(float(q1), 3), round(float(q3), 3)],
            "ms_per_token_rounds": [round(x, 3) for x in s["per_token"]],
            "ttft_ms": round(statistics.median(s["t1"]), 2) if s["t1"] else None,
            "edge_in_loop_ms_per_token": round(statistics.median(s["in_loop"]), 3) if s["in_loop"] else None,
            "model_file": str(e.model_file) if e.model_file else None,
            "model_mb": round(e.model_file.stat().st_size / 1e6, 1) if e.model_file else None,
            "weight_mb_per_token": round(weight_bytes_per_token(e.model_file) / 1e6, 1)
            if e.model_file and e.model_file.suffix == ".onnx" else None,
            "tokens": tokens[e.name],
        }
    return results
