"""Peer comparison: ms per generated token of the edge runtime against PyTorch and Optimum.

    python -m edge_tailor.benchmarks.peers [--out runs/peers] [--quick] [--rounds 9]

On a reference Llama built here with random weights (134M parameters: hidden 768, 12 layers,
12 heads, intermediate 2048, vocabulary 32000, untied head; ``--quick``: a 7M one for smoke
runs), batch 1, the target's 2 threads, a fixed 64-token prompt and 32 new tokens, one process:

- PyTorch eager fp32 and Optimum ``ORTModelForCausalLM`` fp32 and INT8 (the ``ci-x86`` target's
  dynamic per-channel INT8 file, head quantized), all through Hugging Face ``generate``;
- the edge runtime (``EdgeModel``) on fp32 and on that same INT8 file, then on the fused variants:
  ``fuse="ort"`` (ONNX Runtime's transformer optimizer) + INT8, and the attention-fused graph
  (``GroupQueryAttention`` over a cache updated in place, packed projections) at fp32, INT8 and
  weight-only ``MatMulNBits`` 8-bit and 4-bit (block 128, ``accuracy_level`` 4); Optimum also runs
  the attention-fused INT8 file, which separates what the graph gains from what the loop gains;
- the memory-bandwidth floor: weight bytes read per token / measured read bandwidth.

Method: every engine decodes the same prompt greedily to exactly N new tokens and to 1, timed
end to end (wall clock); ms per token = (t(N) - t(1)) / (N - 1), so prefill and set-up cancel and
each engine's per-step Python overhead counts. Engines run interleaved round by round (the order
rotates) after warm-up rounds; figures are medians over rounds, so drift on a shared box hits
every engine alike and the ratios hold better than the absolute numbers.

Built models and exports are cached under ``--out``; the results land there as ``peers.json``
(also kept as ``history/peers-<UTC time>.json``), ``peers.md`` and ``peers.png``. How to read them
and the figures measured: ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass(frozen=True)
class ModelSize:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    vocab: int


REFERENCE = ModelSize(hidden=768, intermediate=2048, layers=12, heads=12, vocab=32000)  # 134.1M parameters
QUICK = ModelSize(hidden=256, intermediate=688, layers=4, heads=4, vocab=8000)  # 7.3M: a smoke run

# Measured elsewhere on this machine class (shared/DESIGN.md), same weights; shown for context only.
EXTERNAL_MS = {"llama.cpp Q8_0": 3.6, "llama.cpp Q4_0": 2.3, "onnxruntime-genai int4": 3.4}
PROMPT_TEXT = ("Q: Line 3 assembles 12 housings per hour and Line 7 assembles 9. How many housings do both "
               "lines assemble in a shift of 8 hours? Think step by step.\nA:")
RECIPE = "peers-v2: fp32 export; ci-x86 int8; ort fusion; attention fusion + packed projections; MatMulNBits 8/4-bit b128 acc4"
GOALS = {"edge int8 best / optimum int8": 0.6, "edge 4-bit / optimum int8": 0.4}


# --- the reference model and its exports ----------------------------------------------------------

def build_model(model_dir: Path, size: ModelSize, seed: int = 0) -> dict:
    """A Llama with random weights and a small BPE tokenizer, saved once (reused while the size matches)."""
    marker = model_dir / "peers_model.json"
    if marker.is_file() and json.loads(marker.read_text()).get("size") == asdict(size):
        return json.loads(marker.read_text())
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from edge_tailor.toyworld.tokenizer import train_tokenizer

    # The tokenizer only turns the prompt into ids; its vocabulary is smaller than the model's, and
    # the ids it does not use cost the same per token (the head reads every row).
    texts = [PROMPT_TEXT] + [f"Line {i % 9} assembles {i % 13} housings per hour; report {i} totals." for i in range(400)]
    tokenizer = train_tokenizer(texts, vocab_size=400)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=size.vocab, hidden_size=size.hidden, intermediate_size=size.intermediate,
                         num_hidden_layers=size.layers, num_attention_heads=size.heads,
                         num_key_value_heads=size.heads, max_position_embeddings=1024,
                         tie_word_embeddings=False,  # as most 100M+ models: the head is a matrix of its own
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    info = {"size": asdict(size), "parameters": sum(p.numel() for p in model.parameters()), "seed": seed,
            "weights": "random (transformers' init, std 0.02)", "tokenizer_vocab": len(tokenizer)}
    marker.write_text(json.dumps(info, indent=1))
    return info


def _weight_only_target(bits: int, block: int = 128):
    """ci-x86 with weight-only MatMulNBits (int8 compute, symmetric, head included) instead of dynamic INT8."""
    from edge_tailor.target import Target, load_target

    data = load_target("ci-x86").model_dump()
    data["target"]["name"] = f"ci-x86-w{bits}-b{block}"
    data["quant"]["reduce_range"] = False  # 8-bit weight-only blocks keep all 8 bits
    data["quant"].update(weights={"dtype": "int4" if bits == 4 else "int8", "symmetric": True,
                                  "granularity": "per_group", "group_size": block},
                         activations={"dtype": "none", "symmetric": False, "granularity": "per_token",
                                      "mode": "dynamic", "calibration_samples": None},
                         weight_only_blocks={"enabled": True, "bits": bits, "block_size": block, "accuracy_level": 4})
    return Target.model_validate(data)


def prepare(out: Path, size: ModelSize, log: Callable[[str], None]) -> dict:
    """Build, export and quantize what is missing under ``out``; return the folders and what each step took."""
    from edge_tailor.export.onnx_export import copy_side_files, export_onnx
    from edge_tailor.export.fusion import fuse_graph
    from edge_tailor.export.quantize import quantize_for_target

    dirs = {name: out / name for name in ("model", "fp32", "int8", "ort-int8", "fused-fp32", "fused-int8", "fused-q8",
                                          "fused-q4", "fused-q4-b256")}
    steps: dict[str, float] = {}

    def step(name: str, fn: Callable[[], object]) -> None:
        stamp = dirs[name] / "peers_recipe.txt"  # a cached folder is reused only if made by this recipe
        if stamp.is_file() and stamp.read_text() == RECIPE and (dirs[name] / "model.onnx").is_file():
            return
        log(f"[peers] making {name} ...")
        shutil.rmtree(dirs[name], ignore_errors=True)
        started = time.perf_counter()
        fn()
        steps[name] = round(time.perf_counter() - started, 1)
        stamp.write_text(RECIPE)

    started = time.perf_counter()
    info = build_model(dirs["model"], size)
    steps["model"] = round(time.perf_counter() - started, 1)
    step("fp32", lambda: export_onnx(dirs["model"], dirs["fp32"]))
    step("int8", lambda: quantize_for_target(dirs["fp32"], dirs["int8"], "ci-x86"))
    step("ort-int8", lambda: quantize_for_target(dirs["fp32"], dirs["ort-int8"], "ci-x86", fuse="ort"))

    def fused_fp32() -> None:
        dirs["fused-fp32"].mkdir(parents=True, exist_ok=True)
        copy_side_files(dirs["fp32"], dirs["fused-fp32"])
        fuse_graph(dirs["fp32"] / "model.onnx", dirs["fused-fp32"] / "model.onnx", attention=True)

    # the attention-fused fp32 graph is fused once; every precision quantizes that file
    step("fused-fp32", fused_fp32)
    step("fused-int8", lambda: quantize_for_target(dirs["fused-fp32"], dirs["fused-int8"], "ci-x86"))
    step("fused-q8", lambda: quantize_for_target(dirs["fused-fp32"], dirs["fused-q8"], _weight_only_target(8)))
    step("fused-q4", lambda: quantize_for_target(dirs["fused-fp32"], dirs["fused-q4"], _weight_only_target(4)))
    # coarser blocks: fewer scales per weight, faster here, more quantization error (llama.cpp Q4_0 uses 32)
    step("fused-q4-b256", lambda: quantize_for_target(dirs["fused-fp32"], dirs["fused-q4-b256"],
                                                      _weight_only_target(4, block=256)))
    return {"dirs": dirs, "model": info, "prepare_seconds": steps}


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


# --- memory bandwidth ------------------------------------------------------------------------------

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


# --- engines ---------------------------------------------------------------------------------------

class Engine:
    """One way to decode: ``decode(n)`` generates exactly ``n`` greedy tokens and returns them."""

    name: str
    kind: str  # "pytorch", "optimum" or "edge"
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


ENGINES = {  # name: (kind, folder)
    "pytorch fp32": ("pytorch", "model"), "optimum fp32": ("optimum", "fp32"), "optimum int8": ("optimum", "int8"),
    "optimum fused int8": ("optimum", "fused-int8"), "edge fp32": ("edge", "fp32"),
    "edge fused fp32": ("edge", "fused-fp32"), "edge int8": ("edge", "int8"), "edge ort-fused int8": ("edge", "ort-int8"),
    "edge fused int8": ("edge", "fused-int8"), "edge fused 8-bit": ("edge", "fused-q8"),
    "edge fused 4-bit": ("edge", "fused-q4"), "edge fused 4-bit b256": ("edge", "fused-q4-b256"),
}


def make_engines(dirs: dict[str, Path], prompt: list[int], threads: int, log: Callable[[str], None],
                 names: list[str] | None = None) -> list[Engine]:
    engines: list[Engine] = []
    for name in names or list(ENGINES):
        kind, folder = ENGINES[name]
        if kind == "pytorch":
            engines.append(TorchEngine(dirs[folder], prompt, threads))
        elif kind == "optimum":
            engines.append(OptimumEngine(name, dirs[folder], prompt, threads))
        else:
            engines.append(EdgeEngine(name, dirs[folder], prompt, threads))
        log(f"[peers] loaded {name}")
    return engines


# --- measuring -------------------------------------------------------------------------------------

def per_token_ms(t_n: float, t_1: float, n: int) -> float:
    """ms per generated token from end-to-end times (seconds) of an n-token and a 1-token decode."""
    return (t_n - t_1) / (n - 1) * 1000


def run_rounds(engines: list[Engine], new_tokens: int, rounds: int, warmup: int,
               log: Callable[[str], None]) -> dict[str, dict]:
    samples = {e.name: {"per_token": [], "t1": [], "in_loop": []} for e in engines}
    tokens = {}
    for r in range(warmup + rounds):
        shift = r % len(engines)
        for engine in engines[shift:] + engines[:shift]:  # rotate: no engine always runs after the same one
            started = time.perf_counter()
            engine.decode(1)
            t1 = time.perf_counter() - started
            started = time.perf_counter()
            out = engine.decode(new_tokens)
            tn = time.perf_counter() - started
            if r >= warmup:
                s = samples[engine.name]
                s["per_token"].append(per_token_ms(tn, t1, new_tokens))
                s["t1"].append(t1 * 1000)
                if isinstance(engine, EdgeEngine):
                    s["in_loop"].append(statistics.median(engine.in_loop_ms))
            tokens[engine.name] = out
        label = "warm-up" if r < warmup else "round"
        log(f"[peers] {label} {r + 1 if r < warmup else r - warmup + 1}: " + ", ".join(
            f"{n} {s['per_token'][-1]:.2f}" for n, s in samples.items() if s["per_token"] and r >= warmup))
    results = {}
    for e in engines:
        s = samples[e.name]
        q1, q3 = np.percentile(s["per_token"], [25, 75])
        results[e.name] = {
            "kind": e.kind, "ms_per_token": round(statistics.median(s["per_token"]), 3),
            "ms_per_token_iqr": [round(float(q1), 3), round(float(q3), 3)],
            "ms_per_token_rounds": [round(x, 3) for x in s["per_token"]],
            "ttft_ms": round(statistics.median(s["t1"]), 2),
            "edge_in_loop_ms_per_token": round(statistics.median(s["in_loop"]), 3) if s["in_loop"] else None,
            "model_file": str(e.model_file) if e.model_file else None,
            "model_mb": round(e.model_file.stat().st_size / 1e6, 1) if e.model_file else None,
            "weight_mb_per_token": round(weight_bytes_per_token(e.model_file) / 1e6, 1) if e.model_file else None,
            "tokens": tokens[e.name],
        }
    return results


def parity(results: dict[str, dict]) -> dict:
    """Greedy tokens: pairs that must agree exactly (same file, same arithmetic) and agreement of the lossy ones."""
    def agree(a: str, b: str) -> dict:
        x, y = results[a]["tokens"], results[b]["tokens"]
        same = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
        return {"identical": x == y, "first_difference_at": None if x == y else same}

    pairs = [("edge fp32", "optimum fp32"), ("edge fp32", "pytorch fp32"), ("edge fused fp32", "pytorch fp32"),
             ("edge int8", "optimum int8"), ("edge fused int8", "optimum fused int8"),
             ("edge ort-fused int8", "edge int8"), ("edge fused int8", "edge int8"), ("edge int8", "pytorch fp32"),
             ("edge fused 8-bit", "pytorch fp32"), ("edge fused 4-bit", "pytorch fp32")]
    return {f"{a} vs {b}": agree(a, b) for a, b in pairs if a in results and b in results}


# --- reporting -------------------------------------------------------------------------------------

def ratios(results: dict[str, dict]) -> dict:
    """The goals' ratios, for the engines this run measured (``--engines`` may leave some out)."""
    ms = {n: r["ms_per_token"] for n, r in results.items()}
    out: dict = {"goals": GOALS}
    if "optimum int8" not in ms:
        return out
    base = ms["optimum int8"]
    int8_class = [n for n in ("edge int8", "edge ort-fused int8", "edge fused int8", "edge fused 8-bit") if n in ms]
    if "edge int8" in ms:
        out["edge int8 / optimum int8"] = round(ms["edge int8"] / base, 3)
    if int8_class:
        best = min(int8_class, key=ms.get)
        out.update({"edge int8 best / optimum int8": round(ms[best] / base, 3), "edge int8 best": best})
    if "edge fused 4-bit" in ms:  # block 128: the shipped targets' 4-bit scheme
        out["edge 4-bit / optimum int8"] = round(ms["edge fused 4-bit"] / base, 3)
    if "edge fused 4-bit b256" in ms:
        out["edge 4-bit b256 / optimum int8"] = round(ms["edge fused 4-bit b256"] / base, 3)
    if "edge int8" in ms and "pytorch fp32" in ms:
        out["edge int8 / pytorch fp32"] = round(ms["edge int8"] / ms["pytorch fp32"], 3)
    return out


def previous_run(path: Path, report: dict) -> dict | None:
    """The last run's medians from the same folder, if it measured the same model with the same settings."""
    if not path.is_file():
        return None
    try:
        old = json.loads(path.read_text())
        same = old["model"]["size"] == report["model"]["size"] and all(
            old["settings"][k] == report["settings"][k] for k in ("threads", "prompt_tokens", "new_tokens"))
        return {"date": old["date"], "ms_per_token": {n: r["ms_per_token"] for n, r in old["results"].items()}} \
            if same else None
    except (KeyError, ValueError):
        return None


def markdown(report: dict) -> str:
    previous = (report.get("previous") or {}).get("ms_per_token", {})
    extra = f" previous run ({report['previous']['date'][:16]}) |" if previous else ""
    rows = ["| engine | ms/token (median) | IQR | 1st token ms | file MB | weights read/token MB | vs Optimum INT8 |"
            + extra, "| --- | ---: | --- | ---: | ---: | ---: | ---: |" + (" ---: |" if previous else "")]
    base = report["results"].get("optimum int8", {}).get("ms_per_token", float("nan"))
    for name, r in report["results"].items():
        mb = f"{r['model_mb']:.0f}" if r.get("model_mb") else "-"
        wmb = f"{r['weight_mb_per_token']:.0f}" if r.get("weight_mb_per_token") else "-"
        before = (f" {previous[name]:.2f} |" if name in previous else " - |") if previous else ""
        rows.append(f"| {name} | {r['ms_per_token']:.2f} | {r['ms_per_token_iqr'][0]:.2f}-{r['ms_per_token_iqr'][1]:.2f} "
                    f"| {r['ttft_ms']:.0f} | {mb} | {wmb} | {r['ms_per_token'] / base:.2f} |" + before)
    for name, f in report["floors"].items():
        rows.append(f"| floor: {name} weights at {report['bandwidth']['read_gb_s']:.0f} GB/s "
                    f"| {f['ms_per_token']:.2f} | | | | {f['weight_mb']:.0f} | {f['ms_per_token'] / base:.2f} |"
                    + (" |" if previous else ""))
    ratio = report["ratios"]
    model = report["model"]
    lines = [f"# Peer comparison ({report['date'][:10]})", "",
             f"Model: Llama, {model['parameters'] / 1e6:.1f}M parameters, random weights "
             f"(hidden {model['size']['hidden']}, {model['size']['layers']} layers, vocab {model['size']['vocab']}). "
             f"Batch 1, {report['settings']['threads']} threads, prompt {report['settings']['prompt_tokens']} tokens, "
             f"{report['settings']['new_tokens']} new tokens, {report['settings']['rounds']} interleaved rounds after "
             f"{report['settings']['warmup']} warm-up; ms/token = (t(N) - t(1)) / (N - 1), median over rounds.", "",
             f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, load average "
             f"{report['machine']['loadavg_before']} before / {report['machine']['loadavg_after']} after, "
             f"nice {report['machine']['nice']}.", "", *rows, "",
             *([f"Edge best INT8-class ({ratio['edge int8 best']}) / Optimum INT8: "
                f"**{ratio['edge int8 best / optimum int8']:.2f}** (goal <= {GOALS['edge int8 best / optimum int8']})"
                + (f"; edge 4-bit / Optimum INT8: **{ratio['edge 4-bit / optimum int8']:.2f}** "
                   f"(goal <= {GOALS['edge 4-bit / optimum int8']})" if "edge 4-bit / optimum int8" in ratio else "")
                + (f"; with 256-wide blocks: **{ratio['edge 4-bit b256 / optimum int8']:.2f}**"
                   if "edge 4-bit b256 / optimum int8" in ratio else "") + ".",
                ""] if "edge int8 best" in ratio else []),
             "Measured elsewhere on this machine class, same weights (not this run): " +
             ", ".join(f"{k} {v} ms" for k, v in EXTERNAL_MS.items()) + "."]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["results"])
    values = [report["results"][n]["ms_per_token"] for n in names]
    colors = {"pytorch": "#888888", "optimum": "#d08c3c", "edge": "#2f6fb0"}
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1.6))
    ax.barh(names, values, color=[colors[report["results"][n]["kind"]] for n in names])
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:.2f}", va="center", fontsize=8)
    for (name, floor), style in zip(report["floors"].items(), ("--", ":")):
        ax.axvline(floor["ms_per_token"], color="black", linestyle=style, linewidth=1,
                   label=f"bandwidth floor {name}: {floor['ms_per_token']:.2f} ms")
    for (name, ms), color in zip(EXTERNAL_MS.items(), ("#6a9f3a", "#2e7d32", "#9c27b0")):
        ax.axvline(ms, color=color, linewidth=0.8, alpha=0.7, label=f"{name} {ms} ms (2 threads, not this run)")
    ax.invert_yaxis()
    ax.set_xscale("log")
    ticks = [t for t in (0.1, 0.2, 0.5, 1, 2, 3, 5, 10, 20, 50, 100, 200, 500) if min(values) / 1.5 <= t <= max(values) * 1.5]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("ms per generated token (log scale; lower is better)")
    model = report["model"]
    threads = report["settings"]["threads"]
    ax.set_title(f"Decode latency, {model['parameters'] / 1e6:.0f}M Llama, batch 1, {threads} "
                 f"thread{'s' * (threads > 1)} ({report['date'][:10]})", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "transformers", "optimum", "optimum-onnx", "onnxruntime", "onnx", "numpy", "edge-tailor"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Decode latency of the edge runtime against PyTorch and Optimum.")
    parser.add_argument("--out", type=Path, default=Path("runs/peers"), help="cache and results folder")
    parser.add_argument("--quick", action="store_true", help="a 7M-parameter model: a smoke run in about a minute")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of every engine (ci-x86: 2)")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--engines", type=lambda v: [n.strip() for n in v.split(",")], default=None,
                        help=f"comma-separated subset to time (default all): {', '.join(ENGINES)}")
    args = parser.parse_args(argv)
    unknown = [n for n in args.engines or [] if n not in ENGINES]
    if unknown:
        parser.error(f"unknown engine(s) {unknown}; choose from: {', '.join(ENGINES)}")
    if args.new_tokens < 2:
        parser.error("--new-tokens must be at least 2 (per token = (t(N) - t(1)) / (N - 1))")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started = time.perf_counter()
    size = QUICK if args.quick else REFERENCE
    out = args.out / ("quick" if args.quick else "reference")
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    prepared = prepare(out, size, log)
    dirs = prepared["dirs"]
    gc.collect()  # the exporter's and quantizers' copies of the weights, before 11 engines load theirs

    log("[peers] measuring memory bandwidth ...")
    bandwidth = measure_bandwidth(threads=args.threads)
    floors = {}
    for name, folder in (("int8", "int8"), ("4-bit", "fused-q4")):
        nbytes = weight_bytes_per_token(dirs[folder] / "model.onnx")
        floors[name] = {"weight_mb": round(nbytes / 1e6, 1),
                        "ms_per_token": round(nbytes / (bandwidth["read_gb_s"] * 1e9) * 1000, 3)}

    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(dirs["model"] / "tokenizer.json")).encode(PROMPT_TEXT).ids
    prompt = (ids * (args.prompt_tokens // len(ids) + 1))[:args.prompt_tokens]
    engines = make_engines(dirs, prompt, args.threads, log, args.engines)
    results = run_rounds(engines, args.new_tokens, args.rounds, args.warmup, log)
    machine["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]

    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "-m", "edge_tailor.benchmarks.peers", *(argv or sys.argv[1:])]),
        "machine": machine, "versions": versions(), "model": prepared["model"],
        "settings": {"threads": args.threads, "batch": 1, "prompt_tokens": args.prompt_tokens,
                     "new_tokens": args.new_tokens, "rounds": args.rounds, "warmup": args.warmup,
                     "engines": [e.name for e in engines],
                     "method": "(t(N) - t(1)) / (N - 1), end-to-end greedy decode, median over interleaved rounds"},
        "bandwidth": bandwidth, "floors": floors, "results": results, "ratios": ratios(results),
        "parity": parity(results), "external_ms_not_this_run": EXTERNAL_MS,
        "prepare_seconds": prepared["prepare_seconds"],
    }
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["previous"] = previous_run(out / "peers.json", report)
    (out / "peers.json").write_text(json.dumps(report, indent=1))
    (out / "history").mkdir(exist_ok=True)  # every run stays comparable: history/peers-<UTC time>.json
    stamp = report["date"].replace(":", "").replace("-", "")[:15]
    (out / "history" / f"peers-{stamp}.json").write_text(json.dumps(report, indent=1))
    table = markdown(report)
    (out / "peers.md").write_text(table)
    plot(report, out / "peers.png")
    print(table)
    print(f"parity: {json.dumps(report['parity'])}")
    print(f"wrote {out / 'peers.json'}, {out / 'peers.md'}, {out / 'peers.png'} in {report['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
