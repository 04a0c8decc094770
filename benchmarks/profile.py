"""Where a decode step's milliseconds go: ONNX Runtime's profiler over the edge runtime's greedy loop.

    python -m edge_tailor.benchmarks.profile FOLDER [--model-file model.onnx] [--threads 2] [--new-tokens 32]

FOLDER is a bundle or an export folder (model + tokenizer.json). The edge runtime decodes a fixed
64-token prompt to N new tokens once untimed (warm-up), then once with ONNX Runtime's profiler on.
The profile's ``model_run`` events are the session runs (the first is the prefill, the rest are
decode steps); each node event is one kernel. Per decode step it reports:

- wall ms/token of the loop (the mean of ``EdgeModel.generate``'s own step times, profiler on: slightly
  slower than without),
- ``session run`` ms (the ``model_run`` events) and what is outside them: the Python loop,
  IOBinding, argmax, the tokenizer;
- per operator type: kernel ms per step, kernels per step and the share of the session run;
  the rest of a run (``run - kernels``) is ONNX Runtime's own scheduling between kernels.

Written to ``<FOLDER>/../profile-<folder name>.json`` (or ``--out``) and printed as a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

PROMPT_TEXT = ("Q: Line 3 assembles 12 housings per hour and Line 7 assembles 9. How many housings do both "
               "lines assemble in a shift of 8 hours? Think step by step.\nA:")


def summarize(events: list[dict]) -> dict:
    """Per-step figures from an ONNX Runtime profile (a list of trace events, durations in microseconds)."""
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])
    if len(runs) < 2:
        raise ValueError("the profile holds fewer than two session runs: nothing but the prefill to report")
    decode = runs[1:]  # the first run is the prefill
    spans = [(r["ts"], r["ts"] + r["dur"]) for r in decode]
    per_op: dict[str, dict] = defaultdict(lambda: {"us": 0.0, "kernels": 0})
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        if any(start <= e["ts"] <= end for start, end in spans):
            op = e.get("args", {}).get("op_name", "?")
            per_op[op]["us"] += e["dur"]
            per_op[op]["kernels"] += 1
    steps = len(decode)
    run_ms = sum(r["dur"] for r in decode) / steps / 1000
    kernels_ms = sum(v["us"] for v in per_op.values()) / steps / 1000
    ops = {op: {"ms_per_step": round(v["us"] / steps / 1000, 4), "kernels_per_step": round(v["kernels"] / steps, 1),
                "share_of_run": round(v["us"] / steps / 1000 / run_ms, 4)}
           for op, v in sorted(per_op.items(), key=lambda kv: -kv[1]["us"])}
    return {"decode_steps": steps, "session_run_ms": round(run_ms, 4), "kernels_ms": round(kernels_ms, 4),
            "between_kernels_ms": round(run_ms - kernels_ms, 4),
            "prefill_run_ms": round(runs[0]["dur"] / 1000, 3), "ops": ops}


def profile(folder: Path, model_file: str = "model.onnx", threads: int = 2, new_tokens: int = 32,
            prompt_tokens: int = 64) -> dict:
    import onnxruntime as ort

    from edge_tailor.export.runtime import EdgeModel

    plain = EdgeModel.load(folder, threads=threads, model_file=model_file, verify=False)
    ids = plain.tokenizer.encode(PROMPT_TEXT, add_special_tokens=False).ids
    prompt = (ids * (prompt_tokens // len(ids) + 1))[:prompt_tokens]
    with tempfile.TemporaryDirectory() as tmp:
        options = plain.settings.session_options()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(folder / model_file), sess_options=options,
                                       providers=[plain.settings.execution_provider])
        model = EdgeModel(session, plain.tokenizer, [], plain.pad_id, plain.settings)
        model.generate(prompt, max_new_tokens=new_tokens)  # warm-up: first-run allocations, page faults
        result = model.generate(prompt, max_new_tokens=new_tokens)
        events = json.loads(Path(session.end_profiling()).read_text())
    # two decodes in the profile, the same number of runs each: keep the second (warm) one
    runs = sorted((e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"))
    events = [e for e in events if e.get("ts", 0) >= runs[len(runs) // 2]]
    summary = summarize(events)
    wall = statistics.mean(result.per_token_ms)  # a mean, as the profile's per-step figures are
    summary.update({"folder": str(folder), "model_file": model_file, "threads": threads, "prompt_tokens": len(prompt),
                    "new_tokens": new_tokens, "wall_ms_per_token": round(wall, 4),
                    "outside_session_ms": round(wall - summary["session_run_ms"], 4)})
    return summary


def markdown(summary: dict, top: int = 12) -> str:
    run = summary["session_run_ms"]
    lines = [f"Profile of {summary['folder']}/{summary['model_file']}: {summary['threads']} threads, prompt "
             f"{summary['prompt_tokens']} tokens, {summary['decode_steps']} decode steps (profiler on).", "",
             "| where | ms per token | share |", "| --- | ---: | ---: |",
             f"| wall (the loop's step time, mean) | {summary['wall_ms_per_token']:.3f} | |",
             f"| outside the session (Python loop, binding, argmax) | {summary['outside_session_ms']:.3f} | "
             f"{summary['outside_session_ms'] / summary['wall_ms_per_token']:.0%} of wall |",
             f"| session run | {run:.3f} | {run / summary['wall_ms_per_token']:.0%} of wall |",
             f"| between kernels (ORT scheduling) | {summary['between_kernels_ms']:.3f} | "
             f"{summary['between_kernels_ms'] / run:.0%} of run |"]
    for op, v in list(summary["ops"].items())[:top]:
        lines.append(f"| {op} ({v['kernels_per_step']:g} kernels) | {v['ms_per_step']:.3f} | {v['share_of_run']:.0%} of run |")
    rest = list(summary["ops"].values())[top:]
    if rest:
        lines.append(f"| {len(rest)} other op types | {sum(v['ms_per_step'] for v in rest):.3f} | "
                     f"{sum(v['share_of_run'] for v in rest):.0%} of run |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a bundle or an export folder (model + tokenizer.json)")
    parser.add_argument("--model-file", default="model.onnx")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=None, help="the JSON to write (default: beside FOLDER)")
    args = parser.parse_args(argv)
    if not (args.folder / args.model_file).is_file():
        parser.error(f"{args.folder / args.model_file}: no such model file")
    summary = profile(args.folder, args.model_file, args.threads, args.new_tokens)
    out = args.out or args.folder.parent / f"profile-{args.folder.name}.json"
    out.write_text(json.dumps(summary, indent=1))
    print(markdown(summary))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
