"""What a bundle computes on the CPU this script runs on: run under user-mode emulation of the target's
instruction set by `tailor verify --on-target` (edge_tailor.emulation), natively for the host's side.

    python -B target_probe.py BUNDLE OUT_DIR [--model-file model.onnx]

Like the edge runtime it imports only onnxruntime, numpy and the bundle's own `edge_runtime.py`, so it
runs in an emulated root that holds those alone. It writes OUT_DIR/probe.json (the smoke decode's greedy
tokens, per reference sequence the argmax at every counted position) and OUT_DIR/logits.npy (the model's
logits at those positions, float32, one row per position, sequences in order): the host compares them
with the fp32 reference.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle")
    parser.add_argument("out_dir")
    parser.add_argument("--model-file", default="model.onnx")
    args = parser.parse_args(argv)
    bundle, out = Path(args.bundle), Path(args.out_dir)
    sys.dont_write_bytecode = True  # the bundle's file list is verified: no __pycache__ may appear in it
    sys.path.insert(0, str(bundle))
    import numpy as np
    import onnxruntime
    import edge_runtime

    # the host verified the files; threads=1: the integer kernels' results do not depend on the thread count
    model = edge_runtime.EdgeModel.load(bundle, threads=1, model_file=args.model_file, verify=False)
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    smoke = manifest["smoke"]
    tokens = model.generate(smoke["prompt"], smoke["max_new_tokens"]).tokens
    reference = json.loads((bundle / manifest["fidelity"]["file"]).read_text(encoding="utf-8"))
    starts = reference.get("decode_from") or [0] * len(reference["sequences"])
    rows, argmax = [], []
    for sequence, start in zip(reference["sequences"], starts):
        logits = model.prefill_logits(sequence)[start:len(sequence)].astype(np.float32)
        rows.append(logits)
        argmax.append(logits.argmax(-1).tolist())
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "logits.npy", np.concatenate(rows) if rows else np.zeros((0, 0), np.float32))
    (out / "probe.json").write_text(json.dumps({"tokens": tokens, "argmax": argmax,
                                                "onnxruntime": onnxruntime.__version__}), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
