"""The student's fine-tuning on one teacher's data and its test accuracy: what `distill` ships and what
`ablation` repeats over teachers and seeds (same budget, same recipe)."""

from __future__ import annotations

from .config import RunConfig
from .evaluate import evaluate_model, student_tools
from .models import load_model
from .rundir import RunDir, read_jsonl
from .sft import train_student
from .tailored import VERIFIED_GOLD
from .target import load_target
from .tasks import load_task


CORRECT_FILE = "test_correct.json"  # per test question, right or wrong: what the ablation pairs arms by
GOLD = "gold"  # the ablation's ceiling: the task's own gold rationales instead of a teacher's data


def gold_source(cfg: RunConfig, run_dir: RunDir) -> str:
    """What the gold ceiling trains on, in words (report.json `ablation.gold.questions`)."""
    if load_task(cfg.task).gold_rationale is not None:
        return "the task's worked solutions to the aligned teacher's training questions"
    if (run_dir.stage_dir("generate") / VERIFIED_GOLD).is_file():
        return ("answer-verified rationales: the original teacher's chains of thought (the task's CoT demonstrations "
                "in context) to the task's preference-split questions whose final answer is the gold one")
    return "the task's own examples with rationales"


def gold_rows(cfg: RunConfig, run_dir: RunDir) -> list[dict]:
    """The gold ceiling's rows, as many as the aligned teacher's data has (fewer where there are fewer): the
    task's own worked solutions to the aligned teacher's training questions where the task can solve any question
    (BBH boolean_expressions, the embedded world: every arm then trains on the same questions, and only the
    rationales differ); else answer-verified rationales where `generate` wrote them; else the task's gold
    examples."""
    task = load_task(cfg.task)
    generated = run_dir.stage_dir("generate")
    aligned = read_jsonl(generated / "aligned.jsonl")
    if task.gold_rationale is not None:
        solved = ((row["question"], task.gold_rationale(row["question"])) for row in aligned)
        return [{"prompt": task.prompt(q), "completion": " " + r} for q, r in solved if r]
    if (generated / VERIFIED_GOLD).is_file():
        return [{"prompt": r["prompt"], "completion": r["completion"]}
                for r in read_jsonl(generated / VERIFIED_GOLD)[: len(aligned)]]
    return [{"prompt": task.prompt(ex.question), "completion": " " + ex.rationale} for ex in task.gold(len(aligned))]


def training_rows(cfg: RunConfig, run_dir: RunDir, teacher: str) -> list[dict]:
    if teacher == GOLD:
        return gold_rows(cfg, run_dir)
    rows = read_jsonl(run_dir.stage_dir("generate") / f"{teacher}.jsonl")
    if cfg.distill.use_annotations:
        annotated = run_dir.stage_dir("elicit") / "annotated.jsonl"
        if annotated.exists():
            task = load_task(cfg.elicit.annotate)
            rows += [{"prompt": task.prompt(r["question"]), "completion": " " + r["completion"]}
                     for r in read_jsonl(annotated)]
    return rows


def held_out_prompts(cfg: RunConfig, run_dir: RunDir, task) -> list[str]:
    """Prompts for fidelity that the student never trained on (annotated preference questions are training
    data): the preference split, the test split beyond `evaluate.test_questions`, then the scored test
    questions, so a task whose every test question is scored still has held-out prompts."""
    from .errors import InputError

    trained = {row["prompt"] for row in training_rows(cfg, run_dir, "aligned")}
    scored = cfg.evaluate.test_questions
    pool = task.preference + task.test[scored:] + task.test[:scored]
    prompts = [p for p in (task.prompt(ex.question) for ex in pool) if p not in trained]
    if not prompts:
        raise InputError(run_dir.stage_dir("generate") / "aligned.jsonl", None,
                         f"no held-out prompt left for the fidelity check: the student trained on every one of the "
                         f"{len(task.preference)} preference and {len(task.test)} test questions")
    return prompts[: cfg.export.fidelity_prompts]


def kd_teacher(cfg: RunConfig, run_dir: RunDir, which: str, student):
    """The teacher whose data this is (aligned or original), when logit distillation is on."""
    if not cfg.distill.logit_distillation.enabled or which == GOLD:
        return None
    from .logit_kd import check_shared_vocabulary
    from .tailored import teacher_seed_of
    from .teacher import load_teacher

    teacher_seed = teacher_seed_of(which)
    teacher = (load_model(cfg.teacher, cfg.device) if teacher_seed is None
               else load_teacher(cfg, run_dir, teacher_seed=teacher_seed))
    check_shared_vocabulary(student.model, teacher.model, cfg.student.path, cfg.teacher.path)
    return teacher.model


def train_on(cfg: RunConfig, run_dir: RunDir, teacher: str, seed: int, workdir, quant):
    """The student fine-tuned on one teacher's rows (annotations included where configured), with `quant`'s
    fake quantization (None: plain LoRA SFT); returns (model, tokenizer, training record)."""
    rows = training_rows(cfg, run_dir, teacher)
    if not rows:
        from .errors import InputError

        raise InputError(run_dir.stage_dir("generate") / f"{teacher}.jsonl", None,
                         "no training examples: the teacher wrote no answer-consistent data (see the generate record)")
    student = load_model(cfg.student, cfg.device)
    model, record = train_student(student.model, student.tokenizer, rows, cfg.distill, quant=quant, seed=seed,
                                  device=cfg.device, workdir=workdir, teacher=kd_teacher(cfg, run_dir, teacher, student))
    return model, student.tokenizer, record


def distill_and_evaluate(cfg: RunConfig, run_dir: RunDir, teacher: str, seed: int, workdir, qat: bool):
    task = load_task(cfg.task)
    quant = load_target(cfg.target).quant if qat else None
    model, tokenizer, record = train_on(cfg, run_dir, teacher, seed, workdir, quant)
    ev = cfg.evaluate
    result = evaluate_model(model, tokenizer, task, task.test[: ev.test_questions],
                            max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size,
                            tools=student_tools(ev.calculator, task),
                            description=f"student ({teacher} data, seed {seed}) on test")
    return model, tokenizer, record, result
