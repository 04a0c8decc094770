"""The stage registry and the driver behind `tailor run`.

A stage is skipped when its record's fingerprint matches: the fingerprint covers the config
sections the stage reads, the target, and the fingerprints of the stages it depends on, so a
changed config redoes exactly what depends on it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import shutil
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import distributed
from .config import EvalConfig, RunConfig, TaskSpec, config_hash
from .errors import EnvironmentFailure, InputError, RunLocked
from .interrupts import Interrupted
from .progress import console, live, run_log
from .rundir import FollowerRunDir, RunDir

COMMON_SECTIONS = ("seed", "task", "teacher", "student")
LOG_FILE = "log.txt"  # <run>/log.txt: library warnings, logging and output of each command (edge_tailor.progress)


@dataclass(frozen=True)
class Stage:
    name: str
    summary: str
    needs: tuple[str, ...] = ()
    sections: tuple[str, ...] = ()
    uses_target: bool = False
    module_name: str = ""  # default: edge_tailor.stages.<name>
    ignores: tuple[str, ...] = ()  # "section.key"s of its sections that it never reads (out of its fingerprint)
    # with several processes (edge_tailor.distributed): every rank runs it, training data-parallel and generating
    # its share; False: the main process alone (export, latency, the bundle), the others wait
    every_rank: bool = True

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
    Stage("align", "DPO + LoRA on the teacher with question- and rationale-level pairs (ARTE 3), once per "
          "teacher seed; with align.rounds > 1, elicit, prefer and align again from the aligned teacher",
          needs=("prefer",), sections=("align", "elicit", "prefer", "evaluate")),
    Stage("generate", "aligned teachers and the original one write the training data; measure the change (ARTE 4)",
          needs=("align",), sections=("generate", "elicit", "prefer", "evaluate")),
    Stage("distill", "LoRA SFT of the student on the aligned teacher's data, with the target's QAT",
          needs=("generate",), sections=("distill", "evaluate"), uses_target=True,
          # `ablation` reads these: more seeds or the QAT-vs-PTQ arms must not retrain the student
          ignores=("distill.ablation_seeds", "distill.ablation_qat", "distill.compare_ptq")),
    Stage("ablation", "student trained on original vs aligned teacher data and gold rationales, several seeds; with "
          "distill.compare_ptq, QAT against PTQ",
          needs=("distill", "baseline"), sections=("distill", "evaluate", "export"), uses_target=True,
          # the QAT-vs-PTQ arms read the fidelity and calibration keys, never these
          ignores=("export.parity_prompts", "export.parity_tokens", "export.fusion_check_prompts", "export.try_all")),
    Stage("export", "ONNX export (Optimum, KV cache), fp32 parity, quantization per target, INT8 accuracy",
          needs=("distill",), sections=("export", "evaluate"), uses_target=True, every_rank=False),
    Stage("bench", "latency on the edge runtime with the target's shapes, and the PyTorch fp32 reference",
          needs=("export",), sections=("bench",), uses_target=True, every_rank=False),
    Stage("report", "report.json, report.md with plots, and the verified bundle/",
          needs=("baseline", "generate", "ablation", "export", "bench"), uses_target=True, every_rank=False),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


def fingerprint(cfg: RunConfig, st: Stage, upstream: dict[str, str], target_digest: str) -> str:
    parts = {key: getattr(cfg, key) for key in COMMON_SECTIONS + st.sections}
    data = {k: (v.model_dump(mode="json") if hasattr(v, "model_dump") else v) for k, v in parts.items()}
    for dotted in st.ignores:
        section, key = dotted.split(".", 1)
        data[section].pop(key, None)
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
    started = time.perf_counter()
    try:
        run.start_stage(st.name)
        record = st.module.run(cfg, run)
        record["world_size"] = distributed.world_size() if st.every_rank else 1
        extra = tuple(record.pop("extra_files", ()))  # files a stage writes at the run's root (report.json)
        return run.finish_stage(st.name, fp, record, time.perf_counter() - started, extra)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM (edge_tailor.interrupts): redone by the next run
        run.abort_stage(st.name, f"{type(exc).__name__}: {exc}", status="interrupted")
        raise Interrupted.from_exception(exc, st.name) from None
    except OSError as exc:  # a full disk, a read-only folder, permission denied: the file and the stage named
        run.abort_stage(st.name, f"{type(exc).__name__}: {exc}")
        where = exc.filename if exc.filename is not None else run.stage_dir(st.name)
        raise EnvironmentFailure(where, f"{exc.strerror or exc} (in stage '{st.name}', whose output was removed: "
                                 "free space or fix the permission, then run the same command again)") from None
    except Exception as exc:  # nothing half-written stays
        run.abort_stage(st.name, f"{type(exc).__name__}: {exc}")
        if disk_full(exc, run.stage_dir(st.name).parent):
            raise EnvironmentFailure(run.stage_dir(st.name), f"the disk is full: {type(exc).__name__}: {exc} (in stage "
                                     f"'{st.name}', whose output was removed: free space, then run the same "
                                     "command again)") from None
        raise
    except BaseException as exc:
        run.abort_stage(st.name, f"{type(exc).__name__}: {exc}")
        raise


LOW_DISK_BYTES = 64 << 20
_DISK_FULL_WORDS = ("no space left on device", "os error 28", "storagefull", "disk quota exceeded")


def disk_full(exc: BaseException, folder: Path) -> bool:
    """Whether a stage's non-OSError failure is a full disk. torch.save on a full disk raises RuntimeError
    'unexpected pos 704 vs 598' and native writers (safetensors, onnx) wrap the OS error in their own types,
    so the message is checked and, where it says nothing, the space left where the run writes."""
    if any(word in str(exc).lower() for word in _DISK_FULL_WORDS):
        return True
    try:
        return shutil.disk_usage(folder).free < LOW_DISK_BYTES
    except OSError:
        return False


def _first_missing(path: Path) -> Path | None:
    """The topmost folder of ``path`` (itself included) that does not exist yet."""
    path = path.absolute()
    missing = None
    while not path.exists():
        missing, path = path, path.parent
        if path == path.parent:
            break
    return missing


def run_pipeline(cfg: RunConfig, run: RunDir, target_digest: str, only: set[str] | None = None,
                 force: set[str] = frozenset(), stages: tuple[Stage, ...] | None = None,
                 config_text: str | None = None) -> dict[str, dict]:
    """Run the stages into ``run`` under its lock; ``config_text`` (the resolved config) is
    written to config.yaml together with the manifest, and <run>/log.txt is appended to (library
    output, see edge_tailor.progress.run_log). If setting up fails, a run directory this call
    created is removed again."""
    stages = stages or STAGES
    if not distributed.is_main():
        return _follow(cfg, run, target_digest, only, force, stages)
    created = _first_missing(run.root)
    records = {}
    with ExitStack() as stack:
        try:
            run.root.mkdir(parents=True, exist_ok=True)
            stack.enter_context(run.lock())
            run.check_state(tuple(st.name for st in stages))
            run.begin(config_text, config_hash(cfg), cfg.seed)
            stack.enter_context(run_log(run.root / LOG_FILE))
        except RunLocked:
            raise  # the folder is another process's
        except BaseException:
            if created is not None:
                shutil.rmtree(created, ignore_errors=True)
            raise
        distributed.barrier()  # the run directory is set up: the other ranks may read it
        with live():
            records = _run_stages(cfg, run, plan(cfg, run, target_digest, force, stages), only)
    distributed.barrier()  # the last stage's files are written: every rank may read them
    return records


def _run_stages(cfg: RunConfig, run: RunDir, steps: list[tuple[Stage, str, bool]], only: set[str] | None) -> dict:
    """The planned stages in order. With several processes every rank walks the same plan (checked), runs the
    `every_rank` stages together and waits at a barrier after each stage, while the main process writes it."""
    distributed.agree([(st.name, fp, must) for st, fp, must in steps], "the stages to run and their fingerprints")
    records = {}
    say = console.print if distributed.is_main() else (lambda *args, **kwargs: None)
    for st, fp, must in steps:
        if only and st.name not in only:
            continue
        if not must:
            say(f"[dim]- {st.name}: up to date, skipped[/dim]")
            records[st.name] = run.record(st.name)
            continue
        say(f"[bold]> {st.name}[/bold]: {st.summary}")
        if distributed.is_main() or st.every_rank:
            records[st.name] = run_stage(cfg, run, st, fp)
        distributed.barrier()
        if not distributed.is_main():
            records[st.name] = run.record(st.name)  # what the main process wrote, read by the later stages
        say(f"[green]  done[/green] in {records[st.name]['seconds']:.0f} s")
    return records


def _follow(cfg: RunConfig, run: RunDir, target_digest: str, only: set[str] | None, force: set[str],
            stages: tuple[Stage, ...]) -> dict[str, dict]:
    """A rank other than the main one: it reads the main process's run directory and writes the stages it runs
    with it into a scratch folder of its own (edge_tailor.rundir.FollowerRunDir), removed at the end."""
    import tempfile

    distributed.barrier()  # the main process holds the lock and has set the run directory up
    with tempfile.TemporaryDirectory(prefix=f"edge-tailor-rank{distributed.rank()}-") as scratch, \
            run_log(Path(scratch) / LOG_FILE):  # its library output, as rank 0's goes to <run>/log.txt
        follower = FollowerRunDir(run.root, scratch)
        records = _run_stages(cfg, follower, plan(cfg, follower, target_digest, force, stages), only)
    distributed.barrier()
    return records


# ---------------------------------------------------------------------------------------------
# Preflight: every input checked before anything is written.

Origin = Callable[[str], str]  # config field -> where its value came from ("command line" or a file)


def _check_task(spec: TaskSpec, field: str, origin: Origin):
    """The task ``spec`` names, loaded; an InputError naming the setting and its origin otherwise."""
    from .tasks import load_task

    if spec.name == "toy-arith":
        if spec.path or spec.cot_prompt:
            key = f"{field}.path" if spec.path else f"{field}.cot_prompt"
            given = spec.path or spec.cot_prompt
            if not Path(given).exists():
                raise InputError(given, None, f"file not found ({key}, from {origin(key)})")
            raise InputError(origin(key), key, f"'{given}': task 'toy-arith' is built in and reads no file; set "
                             f"{field}.name to gsm8k, bbh or multiple-choice to use a data file")
        return load_task(spec)
    if not spec.path:
        key = f"{field}.path"
        raise InputError(origin(key), key, f"task '{spec.name}' needs a data file")
    if spec.cot_prompt and spec.name != "bbh":
        key = f"{field}.cot_prompt"
        raise InputError(origin(key), key, f"only task 'bbh' reads a chain-of-thought prompt, not '{spec.name}'")
    try:
        return load_task(spec)
    except InputError as exc:
        if exc.source == "config":
            raise InputError(origin(field), f"{field}.{str(exc.where).split('.')[-1]}", exc.problem) from None
        if exc.where is None:  # a whole-file problem (missing, unreadable, empty): say which setting named it
            key = f"{field}.cot_prompt" if spec.cot_prompt and exc.source == str(Path(spec.cot_prompt)) else \
                f"{field}.path"
            raise InputError(exc.source, None, f"{exc.problem} ({key}, from {origin(key)})") from None
        raise
    except ValueError as exc:  # a loader's own bounds (too few records to split)
        raise InputError(spec.path, None, f"too few records for the task's splits: {exc} ({field}.path)") from None


def _check_against_task(cfg: RunConfig, task, origin: Origin) -> None:
    """Values that must name or fit what the task has: its reasoning techniques, the size of its test split."""
    techniques = cfg.elicit.techniques or []
    unknown = sorted({t for t in techniques if t not in task.techniques})
    twice = sorted({t for t in techniques if techniques.count(t) > 1})
    if unknown or twice:
        problem = f"unknown technique(s) {', '.join(map(repr, unknown))}" if unknown else \
            f"{', '.join(map(repr, twice))} given twice"
        raise InputError(origin("elicit.techniques"), "elicit.techniques",
                         f"{problem}; task '{task.name}' has {', '.join(task.techniques)}")
    asked, default = cfg.evaluate.test_questions, EvalConfig.model_fields["test_questions"].default
    if asked > len(task.test) and asked != default:
        raise InputError(origin("evaluate.test_questions"), "evaluate.test_questions",
                         f"{asked} is more than the {len(task.test)} test questions of task '{task.name}'")


def _check_model(role: str, spec, origin: Origin) -> None:
    from .models import check_model_spec

    key = f"{role}.path"
    try:
        check_model_spec(spec)
    except InputError as exc:
        if exc.source == "config":
            raise InputError(origin(key), key, exc.problem) from None
        raise InputError(exc.source, exc.where, f"{exc.problem} ({key}, from {origin(key)})") from None


def preflight(cfg: RunConfig, origin: Origin, run: RunDir | None = None, only: set[str] | None = None):
    """Check every input of a run before anything is written and return its target: the target,
    the task and annotation files, both models (embedded world, local folder or hub cache, remote
    code), the device, and an existing run directory's state files. Raises InputError."""
    from .annotate import check_order
    from .target import load_target

    try:
        target = load_target(cfg.target)
    except InputError as exc:
        named = Path(cfg.target).suffix != ".toml" and Path(cfg.target).parent == Path(".")
        if named and exc.source == str(cfg.target):  # an unknown name, not a file
            raise InputError(origin("target"), "target", f"'{cfg.target}': {exc.problem}") from None
        raise
    _check_against_task(cfg, _check_task(cfg.task, "task", origin), origin)
    for field in ("align.batch_size", "distill.batch_size"):  # several processes share every global batch
        section, key = field.split(".")
        try:
            distributed.per_device_batch(getattr(getattr(cfg, section), key), field)
        except InputError as exc:
            raise InputError(origin(field), field, exc.problem) from None
    if cfg.elicit.annotate is not None:
        _check_task(cfg.elicit.annotate, "elicit.annotate", origin)
        try:
            check_order(cfg.elicit.annotate_order)
        except InputError as exc:
            raise InputError(origin("elicit.annotate_order"), "elicit.annotate_order", exc.problem) from None
    if cfg.prefer.model_results and not Path(cfg.prefer.model_results).is_file():
        raise InputError(cfg.prefer.model_results, None,
                         f"file not found (prefer.model_results, from {origin('prefer.model_results')})")
    for role in ("teacher", "student"):
        _check_model(role, getattr(cfg, role), origin)
    if cfg.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise InputError(origin("device"), "device", "cuda was asked for but no CUDA device is visible "
                             "(use auto or cpu)")
    if run is not None:
        if run.root.exists() and not run.root.is_dir():
            raise InputError(run.root, None, "exists and is not a run directory (a file)")
        if run.root.is_dir():
            run.check_state(STAGE_NAMES)
        for name in sorted(only or ()):
            st = next(s for s in STAGES if s.name == name)
            for need in st.needs:
                if need not in only and run.record(need) is None:
                    raise InputError(run.record_path(need), None, f"missing: stage '{name}' needs stage '{need}', "
                                     f"which has not finished in {run.root}: run it first (`tailor {need} --run "
                                     f"{run.root}`, or add --only {need} to `tailor run`)")
    return target
