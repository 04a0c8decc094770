"""Stage `bench`: latency of the quantized model on the target's edge runtime (in a clean
subprocess: its peak memory is the runtime's alone), plus the interleaved PyTorch fp32 reference
that relative budgets compare against."""

from __future__ import annotations

import json
import subprocess
import sys

from ..config import RunConfig
from ..errors import ArtifactError
from ..rundir import RunDir
from ..target import load_target
from ..tasks import load_task


def latency_subprocess(model_dir, model_file: str, prompt_text: str) -> dict:
    cmd = [sys.executable, "-m", "edge_tailor.benchmarks.latency", str(model_dir), "--model-file", model_file,
           "--prompt-text", prompt_text]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise ArtifactError(model_dir / model_file, "latency benchmark", done.stderr.strip().splitlines()[-1])
    return json.loads(done.stdout)


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
    ids = bench_prompt(EdgeModel.load(model_dir), target.bench.prompt_tokens, prompt_text)
    main["reference"] = interleaved(run_dir.stage_dir("distill") / "student", model_dir, ids, target.bench.new_tokens,
                                    target.runtime.intra_op_threads, rounds=cfg.bench.reference_rounds)
    main["variants"] = latency
    (run_dir.stage_dir("bench") / "latency.json").write_text(json.dumps(main, indent=2))
    return {"metrics": main}
