"""The project's own CI latency gate: export the embedded student, build the graph the target
ships (attention-fused unless it says otherwise), quantize it for `ci-x86`, and check the target's relative latency budget (edge runtime INT8 vs PyTorch fp32 eager on the
same model, interleaved in one process). A change that slows the edge runtime fails CI.

    python -m edge_tailor.benchmarks.ci_gate [--out DIR] [--target ci-x86]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from edge_tailor.models import resolve_model_path
from edge_tailor.target import load_target, target_path

from .gate import check_budgets, print_table
from .latency import bench_prompt
from .reference import interleaved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/ci-gate"))
    parser.add_argument("--target", default="ci-x86")
    parser.add_argument("--model", default="embedded:student")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1,
                        help="threads for both sides (1: a busy neighbour on a shared runner slowed torch's "
                             "2-thread pool 17x but ORT's 8x, which would hide a regression)")
    args = parser.parse_args(argv)

    from edge_tailor.export.fusion import graph_to_ship
    from edge_tailor.export.onnx_export import export_onnx
    from edge_tailor.export.runtime import EdgeModel
    from edge_tailor.export.quantize import quantize_for_target
    from edge_tailor.toyworld.task import toy_task

    target = load_target(args.target)
    model_dir = Path(resolve_model_path(args.model))
    shutil.rmtree(args.out, ignore_errors=True)
    export_onnx(model_dir, args.out / "fp32")
    task = toy_task()
    graph_dir, graph = graph_to_ship(args.out / "fp32", args.out / "fused", target.export.attention,
                                     [task.prompt(ex.question) for ex in task.test[:8]])
    print(f"graph: {json.dumps(graph)}")
    quantize_for_target(graph_dir, args.out / "int8", target)
    shutil.copy2(target_path(args.target), args.out / "int8" / "target.toml")
    ids = bench_prompt(EdgeModel.load(args.out / "int8"), target.bench.prompt_tokens,
                       "".join(task.prompt(ex.question) for ex in task.test[:8]))
    reference = interleaved(model_dir, args.out / "int8", ids, target.bench.new_tokens, args.threads,
                            rounds=args.rounds)
    report = {"target": target.name, "accuracy": {}, "latency": {"reference": reference}}
    results = check_budgets(report, target, kinds=("relative",))
    if not results:
        print(f"target {target.name} has no relative budget to gate on", file=sys.stderr)
        return 2
    print(json.dumps(reference))
    print_table(results, target)
    from edge_tailor.export.bundle import make_bundle

    bundle = make_bundle(args.out / "int8", target_path(args.target), args.out / "bundle",
                         {**report, "budgets": results}, {"task": "toy-arith", "base_model": args.model})
    print(f"bundle for the edge-only environment check: {bundle}")
    passed = all(r["passed"] for r in results.values())
    print("latency gate:", "PASSED" if passed else "FAILED")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
