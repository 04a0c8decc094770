"""ARTE's premise as a figure: how much the embedded student learns from each rationale style and each
question difficulty, SFT on one kind alone with the `distill` stage's recipe and budget.

    python -m edge_tailor.benchmarks.learnability [--seeds 2] [--out runs/learnability]
    python -m edge_tailor.benchmarks.learnability --config configs/smollm2-arte.yaml --run runs/smollm2-arte

With ``--run`` (a finished run of a real task whose worked solutions come in several styles, `Task.gold_styles`:
BBH boolean_expressions), each arm trains the run's student on the task's worked solutions in one style to the
run's own training questions (`generate/questions.jsonl`, as many as its ablation's budget), with the ablation's
recipe (`distill.ablation_qat`), scored on the same test questions; the one-shot signal is the untrained
student's accuracy on the run's preference set with demonstrations of that style.

Each arm trains the default student on ``--examples`` gold-correct examples of one kind (fresh problems,
none from any split; style arms draw the task's mix of 1-3 operations, difficulty arms the step style),
the same steps, batch, learning rate and fake quantization as `distill`, and answers the same test questions
with the calculator, as every accuracy in a run is measured. One more arm mixes the styles in the teacher's own
default proportions (`WorldSpec.teacher_default_styles`): what the original teacher's data would teach were all
of it right. The trainings run side by side (`edge_tailor.parallel`). Beside it, the signal ARTE optimizes: the
untrained student's one-shot accuracy on the preference questions with a demonstration of that kind.
ARTE pays off where the teacher's default writing is a kind this student learns little from and the
student's one-shot preference can tell; this table says whether that holds in a world.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

def _teacher_default() -> dict[str, float]:
    from edge_tailor.toyworld.build import WorldSpec

    return dict(WorldSpec().teacher_default_styles)


# one style or one difficulty alone; and the teacher's own default mix of styles (gold-correct), which is what
# the original teacher's data would teach were every one of its rationales right
ARMS = {**{f"style:{s}": (s, None) for s in ("step", "verbose", "mistake", "terse")},
        **{f"ops:{n}": ("step", n) for n in (1, 2, 3)},
        "mix:teacher-default": ("teacher-default", None)}


def arm_examples(task, style: str, ops: int | None, n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` (question, gold rationale) pairs of one kind: fresh problems outside every split of ``task``."""
    from edge_tailor.toyworld.problems import TASK_OP_WEIGHTS
    from edge_tailor.toyworld.task import fresh_examples

    weights = TASK_OP_WEIGHTS if ops is None else tuple(float(k == ops) for k in (1, 2, 3))
    taken = frozenset(ex.question for split in (task.seed, task.preference, task.test) for ex in split)
    kind = _teacher_default() if style == "teacher-default" else style
    examples = fresh_examples(f"learnability:{seed}:{style}:{ops}", n, taken, kind, weights, rng_seed=seed)
    return [(ex.question, ex.rationale) for ex in examples]


def arm_rows(task, style: str, ops: int | None, n: int, seed: int) -> list[dict]:
    return [{"prompt": task.prompt(q), "completion": " " + r} for q, r in arm_examples(task, style, ops, n, seed)]


def one_shot_signal(cfg, task, style: str, ops: int | None, demos: int = 4) -> float:
    """What ARTE's preference stage sees of this kind: the untrained student's mean one-shot accuracy on the
    preference questions with a demonstration of this kind (``demos`` different ones, averaged)."""
    from edge_tailor.evaluate import student_tools
    from edge_tailor.models import load_model
    from edge_tailor.scoring import one_shot_accuracy

    student = load_model(cfg.student, cfg.device)
    demonstrations = arm_examples(task, style, ops, demos, cfg.seed + 99)
    scores = one_shot_accuracy(student.model, student.tokenizer, task, demonstrations, task.preference,
                               max_new_tokens=cfg.prefer.max_new_tokens, batch_size=cfg.prefer.batch_size,
                               tools=student_tools(cfg.evaluate.calculator, task), description="one-shot")
    return round(statistics.mean(scores), 4)


def train_and_test(cfg, task, rows: list[dict], seed: int) -> float:
    """Test accuracy of the student fine-tuned on `rows` exactly as `distill` fine-tunes it (QAT as configured)."""
    from edge_tailor.evaluate import evaluate_model, student_tools
    from edge_tailor.models import load_model
    from edge_tailor.sft import train_student
    from edge_tailor.target import load_target

    student = load_model(cfg.student, cfg.device)
    quant = load_target(cfg.target).quant if cfg.distill.qat else None
    with tempfile.TemporaryDirectory() as workdir:
        model, _ = train_student(student.model, student.tokenizer, rows, cfg.distill, quant=quant, seed=seed,
                                 device=cfg.device, workdir=Path(workdir))
    ev = cfg.evaluate
    result = evaluate_model(model, student.tokenizer, task, task.test[: ev.test_questions],
                            max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size,
                            tools=student_tools(ev.calculator, task), description="test")
    return round(result["accuracy"], 4)


def _job(cfg, arm: str, seed: int | None, n: int) -> float:
    """One training (student seed `seed`) or, with seed None, the one-shot signal of one arm."""
    from edge_tailor.tasks import load_task

    task = load_task(cfg.task)
    style, ops = ARMS[arm]
    if seed is None:
        return one_shot_signal(cfg, task, style, ops)
    return train_and_test(cfg, task, arm_rows(task, style, ops, n, seed), seed)


def run_questions(run: Path, n: int) -> tuple[list[str], list]:
    """A real run's training questions (the first `n`) and its preference set (edge_tailor.tasks Examples)."""
    from edge_tailor.rundir import read_jsonl
    from edge_tailor.tasks.base import Example

    questions = [r["question"] for r in read_jsonl(run / "generate" / "questions.jsonl")][:n]
    preference = [Example(r["question"], r["answer"]) for r in read_jsonl(run / "prefer" / "preference_set.jsonl")]
    return questions, preference


def _real_job(cfg, run: Path, style: str, seed: int | None, n: int) -> float:
    """One training on the worked solutions in `style` (student seed `seed`), or with seed None its one-shot signal."""
    from edge_tailor.evaluate import student_tools
    from edge_tailor.models import load_model
    from edge_tailor.scoring import one_shot_accuracy
    from edge_tailor.tasks import load_task

    task = load_task(cfg.task)
    questions, preference = run_questions(run, n)
    solved = [(q, task.gold_in_style(q, style)) for q in questions]
    if seed is None:
        student = load_model(cfg.student, cfg.device)
        scores = one_shot_accuracy(student.model, student.tokenizer, task, solved[:4], preference,
                                   max_new_tokens=cfg.prefer.max_new_tokens, batch_size=cfg.prefer.batch_size,
                                   tools=student_tools(cfg.evaluate.calculator, task), description="one-shot")
        return round(statistics.mean(scores), 4)
    rows = [{"prompt": task.prompt(q), "completion": " " + r} for q, r in solved if r]
    return train_and_test(cfg, task, rows, seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=2, help="student seeds per arm")
    parser.add_argument("--examples", type=int, help="training examples per arm (default: generate.examples; with "
                        "--run, the run's ablation budget)")
    parser.add_argument("--arms", help=f"comma-separated subset of the arms (embedded world: {', '.join(ARMS)}; "
                        "with --run: the task's worked-solution styles)")
    parser.add_argument("--config", help="run config (default: the embedded world); a real task needs --run")
    parser.add_argument("--run", type=Path, help="a finished run of --config: its training questions and preference set")
    parser.add_argument("--out", type=Path, default=Path("runs/learnability"))
    args = parser.parse_args(argv)
    import torch

    from edge_tailor.config import load_config
    from edge_tailor.tasks import load_task

    cfg = load_config(args.config)
    torch.set_num_threads(cfg.threads or 1)
    task = load_task(cfg.task)
    if args.run is not None:
        if not task.gold_styles:
            parser.error(f"task {task.name} renders its worked solutions in no more than one style: nothing to compare")
        known = {a: a for a in task.gold_styles}
        n = args.examples or len((args.run / "generate" / "aligned.jsonl").read_text().splitlines())
        job, ablation = _real_job, cfg.distill.qat if cfg.distill.ablation_qat is None else cfg.distill.ablation_qat
        cfg = cfg.model_copy(update={"distill": cfg.distill.model_copy(update={"qat": ablation})})
    elif task.name != "toy-arith" and not task.gold_styles:
        parser.error("a real task needs --run DIR (a finished run of --config) and worked solutions in several styles")
    else:
        known, n, job = ARMS, args.examples or cfg.generate.examples, _job
    arms = [a.strip() for a in (args.arms or ",".join(known)).split(",") if a.strip()]
    unknown = [a for a in arms if a not in known]
    if unknown:
        parser.error(f"unknown arm(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    from edge_tailor.parallel import run_jobs, worker_count

    started = time.perf_counter()
    seeds = [cfg.seed + s for s in range(args.seeds)]
    head = (cfg, args.run) if args.run is not None else (cfg,)
    jobs = {(arm, seed): (*head, arm, seed, n) for arm in arms for seed in [*seeds, None]}
    workers = worker_count(cfg.device, len(jobs), cfg.workers)
    done = run_jobs(job, jobs, workers, f"learnability: {len(jobs)} jobs, {workers} at a time")
    results = {}
    for arm in arms:
        accuracies = [done[arm, seed] for seed in seeds]
        results[arm] = {"mean": round(statistics.mean(accuracies), 4), "seeds": accuracies,
                        "one_shot": done[arm, None]}
        print(f"[learnability] {arm}: SFT {results[arm]['mean']:.3f} {accuracies}, "
              f"one-shot {results[arm]['one_shot']:.3f}", file=sys.stderr)
    one_shot_questions = len(run_questions(args.run, 0)[1]) if args.run is not None else len(task.preference)
    report = {"config": args.config, "run": str(args.run) if args.run else None, "task": task.name,
              "examples": n, "steps": cfg.distill.max_steps, "qat": cfg.distill.qat, "workers": workers,
              "one_shot_questions": one_shot_questions,
              "test_questions": min(cfg.evaluate.test_questions, len(task.test)), "seeds": args.seeds,
              "results": results, "seconds": round(time.perf_counter() - started, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "learnability.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
