"""Stage `bench`: latency of the quantized model on the target's edge runtime (in a clean
subprocess: its peak memory is the runtime's alone), plus the interleaved PyTorch fp32 reference
that relative budgets compare against."""

from __future__ import annotations

import json
import subprocess
import sys

from ..config import RunConfig
from ..errors import ArtifactError
from ..hostcpu import kernel_record
from ..models import count_parameters
from ..rundir import RunDir
from ..target import load_target
from ..tasks import load_task


def latency_subprocess(model_dir, model_file: str, prompt_text: str) -> dict:
    cmd = [sys.executable, "-m", "edge_tailor.benchmarks.latency", str(model_dir), "--model-file", model_file,
           "--prompt-text", prompt_text]
    from ..parallel import die_with_parent

    done = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=die_with_parent)
    if done.returncode != 0:
        raise ArtifactError(model_dir / model_file, "latency benchmark", done.stderr.strip().splitlines()[-1])
    return json.loads(done.stdout)


def peer_comparison(student_dir, model_dir, models, ids, new_tokens: int, threads: int, rounds: int = 3) -> dict:
    """This run's student on PyTorch eager, Optimum's ORTModelForCausalLM and the edge runtime,
    interleaved in one process (the same engines and method as benchmarks/peers.py)."""
    from ..benchmarks.engines import EdgeEngine, OptimumEngine, TorchEngine, run_rounds

    engines = [TorchEngine(student_dir, ids, threads), OptimumEngine("optimum int8", model_dir, ids, threads)]
    engines += [EdgeEngine(f"edge {m}", model_dir, ids, threads, model_file=m) for m in models]
    results = run_rounds(engines, new_tokens, rounds=rounds, warmup=1, log=lambda line: None)
    return {name: {k: r[k] for k in ("kind", "ms_per_token", "ms_per_token_iqr", "ttft_ms", "model_mb")}
            for name, r in results.items()}


def run(cfg: RunConfig, run_dir: RunDir) -> dict:
    from ..benchmarks.latency import bench_prompt
    from ..benchmarks.reference import interleaved
    from ..export.runtime import EdgeModel

    task = load_task(cfg.task)
    target = load_target(cfg.target)
    model_dir = run_dir.stage_dir("export") / "quantized"
    prompt_text = "".join(task.prompt(ex.question) for ex in task.test[:8])
    models = sorted(p.name for p in model_dir.glob("*.onnx"))
    latency = {m: latency_subprocess(model_dir, m, prompt_text) for m in models}
    main = dict(latency["model.onnx"])
    main["parameters"] = count_parameters(run_dir.stage_dir("distill") / "student")
    main["model_bytes_per_param"] = round((model_dir / "model.onnx").stat().st_size / main["parameters"], 3)
    ids = bench_prompt(EdgeModel.load(model_dir), target.bench.prompt_tokens, prompt_text)
    main["reference"] = interleaved(run_dir.stage_dir("distill") / "student", model_dir, ids, target.bench.new_tokens,
                                    cfg.bench.reference_threads, rounds=cfg.bench.reference_rounds)
    main["variants"] = latency
    # every candidate the export measured, and the fp32 graph: the accuracy-latency picture of the report
    export = run_dir.stage_dir("export")
    shipped = run_dir.record("export")["metrics"]["chosen"]  # a copy of export/quantized: timed above
    main["attempts"] = {d.name: latency["model.onnx"] if d.name == shipped else latency_subprocess(d, "model.onnx", prompt_text)
                        for d in sorted((export / "attempts").iterdir()) if (d / "model.onnx").is_file()}
    graph = export / ("fused" if run_dir.record("export")["metrics"]["graph"]["attention"] == "fused" else "fp32")
    if (graph / "target.toml").is_file():
        main["fp32_graph"] = latency_subprocess(graph, "model.onnx", prompt_text)
    main["kernel"] = kernel_record(target)  # the CPU these latencies were measured on
    main["peers"] = peer_comparison(run_dir.stage_dir("distill") / "student", model_dir, models, ids,
                                    target.bench.new_tokens, target.runtime.intra_op_threads)
    (run_dir.stage_dir("bench") / "latency.json").write_text(json.dumps(main, indent=2))
    return {"metrics": main}
