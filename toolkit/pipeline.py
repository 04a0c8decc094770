"""The stage registry and the driver behind `tailor run`.

A stage is skipped when its record's fingerprint matches: the fingerprint covers the config
sections the stage reads, the target, and the fingerprints of the stages it depends on, so a
changed config redoes exactly what depends on it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import time
from dataclasses import dataclass

from .config import RunConfig, config_hash
from .progress import console, live
from .rundir import RunDir

COMMON_SECTIONS = ("seed", "task", "teacher", "student")


@dataclass(frozen=True)
class Stage:
    name: str
    summary: str
    needs: tuple[str, ...] = ()
    sections: tuple[str, ...] = ()
    uses_target: bool = False
    module_name: str = ""  # default: edge_tailor.stages.<name>

    @property
    def module(self):
        return importlib.import_module(self.module_name or f"edge_tailor.stages.{self.name}")


STAGES: tuple[Stage, ...] = (
    Stage("baseline", "measure the embedded world / models before training: accuracies, drafts, style signal",
          sections=("elicit", "prefer", "evaluate")),
    Stage("elicit", "the teacher drafts questions and one rationale per reasoning technique (ARTE 1)",
          sections=("elicit",)),
    Stage("prefer", "score each draft by the student's one-shot accuracy on a preference set (ARTE 2)",
          needs=("elicit",), sections=("prefer", "evaluate")),
    Stage("align", "DPO + LoRA on the teacher with question- and rationale-level pairs (ARTE 3); with "
          "align.rounds > 1, elicit, prefer and align again from the aligned teacher",
          needs=("prefer",), sections=("align", "elicit", "prefer", "evaluate")),
    Stage("generate", "aligned and original teacher write the training data; measure the change (ARTE 4)",
          needs=("align",), sections=("generate", "elicit", "prefer", "evaluate")),
    Stage("distill", "LoRA SFT of the student on the aligned teacher's data, with the target's QAT",
          needs=("generate",), sections=("distill", "evaluate"), uses_target=True),
    Stage("ablation", "student trained on original vs aligned teacher data, several seeds",
          needs=("distill", "baseline"), sections=("distill", "evaluate"), uses_target=True),
    Stage("export", "ONNX export (Optimum, KV cache), fp32 parity, quantization per target, INT8 accuracy",
          needs=("distill",), sections=("export", "evaluate"), uses_target=True),
    Stage("bench", "latency on the edge runtime with the target's shapes, and the PyTorch fp32 reference",
          needs=("export",), sections=("bench",), uses_target=True),
    Stage("report", "report.json, report.md with plots, and the verified bundle/",
          needs=("baseline", "generate", "ablation", "export", "bench"), uses_target=True),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


def fingerprint(cfg: RunConfig, st: Stage, upstream: dict[str, str], target_digest: str) -> str:
    parts = {key: getattr(cfg, key) for key in COMMON_SECTIONS + st.sections}
    data = {k: (v.model_dump(mode="json") if hasattr(v, "model_dump") else v) for k, v in parts.items()}
    data["upstream"] = {n: upstream[n] for n in st.needs}
    if st.uses_target:
        data["target"] = target_digest
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def plan(cfg: RunConfig, run: RunDir, target_digest: str, force: set[str] = frozenset(),
         stages: tuple[Stage, ...] | None = None) -> list[tuple[Stage, str, bool]]:
    """Each stage with its fingerprint and whether it must run."""
    fingerprints: dict[str, str] = {}
    rerun: set[str] = set()
    out = []
    for st in stages or STAGES:
        fp = fingerprint(cfg, st, fingerprints, target_digest)
        fingerprints[st.name] = fp
        record = run.record(st.name)
        must = (st.name in force or record is None or record.get("fingerprint") != fp
                or any(n in rerun for n in st.needs))
        if must:
            rerun.add(st.name)
        out.append((st, fp, must))
    return out


def run_stage(cfg: RunConfig, run: RunDir, st: Stage, fp: str) -> dict:
    run.start_stage(st.name)
    started = time.perf_counter()
    try:
        record = st.module.run(cfg, run)
    except BaseException as exc:
        run.fail_stage(st.name, f"{type(exc).__name__}: {exc}")
        raise
    extra = tuple(record.pop("extra_files", ()))  # files a stage writes at the run's root (report.json)
    return run.finish_stage(st.name, fp, record, time.perf_counter() - started, extra)


def run_pipeline(cfg: RunConfig, run: RunDir, target_digest: str, only: set[str] | None = None,
                 force: set[str] = frozenset(), stages: tuple[Stage, ...] | None = None) -> dict[str, dict]:
    run.root.mkdir(parents=True, exist_ok=True)
    run.init_manifest(cfg.model_dump(mode="json"), config_hash(cfg), cfg.seed)
    records = {}
    with live():
        for st, fp, must in plan(cfg, run, target_digest, force, stages):
            if only and st.name not in only:
                continue
            if not must:
                console.print(f"[dim]- {st.name}: up to date, skipped[/dim]")
                records[st.name] = run.record(st.name)
                continue
            console.print(f"[bold]> {st.name}[/bold]: {st.summary}")
            record = run_stage(cfg, run, st, fp)
            console.print(f"[green]  done[/green] in {record['seconds']:.0f} s")
            records[st.name] = record
    return records
