"""What a teacher does in every stage: draft questions from seeds and write rationales."""

from __future__ import annotations

import random
from typing import Sequence

from .config import ElicitConfig
from .drafting import DraftFilter, drafting_prompt, parse_drafts
from .generation import ToolSettings, generate
from .tasks.base import Example, Task


def tool_settings(task: Task, cfg: ElicitConfig) -> ToolSettings:
    return ToolSettings(calculator=cfg.calculator, grounding=cfg.grounding and task.solution_steps is not None)


def draft_questions(model, tokenizer, task: Task, seeds: Sequence[Example], wanted: int, cfg: ElicitConfig,
                    seed: int, exclude: Sequence[str] = (), max_rounds: int = 4) -> tuple[list[Example], DraftFilter, int]:
    """Sample drafting prompts until `wanted` valid, new questions (or `max_rounds` rounds)."""
    rng = random.Random(seed)
    filt = DraftFilter(task, seen=set(exclude) | {s.question for s in seeds})
    raw = 0
    for round_ in range(max_rounds):
        missing = wanted - len(filt.kept)
        if missing <= 0:
            break
        n_prompts = max(4, missing // 2 + 1)
        prompts = [drafting_prompt(task, rng.sample(list(seeds), min(cfg.seeds_per_prompt, len(seeds))))
                   for _ in range(n_prompts)]
        outputs = generate(model, tokenizer, prompts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                           top_p=cfg.top_p, batch_size=cfg.batch_size, seed=seed + round_,
                           description=f"drafting questions (round {round_ + 1})")
        for output in outputs:
            parsed = parse_drafts(task, output)
            filt.outputs.append({"round": round_ + 1, "output": output, "parsed": len(parsed)})
            for question, target in parsed:
                raw += 1
                if len(filt.kept) < wanted:
                    filt.add(question, target)
    return filt.kept[:wanted], filt, raw


def require_drafts(filt: DraftFilter, raw: int, who: str = "teacher") -> None:
    """Stop with a clear error when a teacher's drafts gave no usable question (rather than train on nothing)."""
    if filt.kept:
        return
    import logging

    from .errors import InputError

    log = logging.getLogger("edge_tailor.drafting")  # to <run>/log.txt: every raw output, for diagnosis
    for i, out in enumerate(filt.outputs):
        log.warning("draft %d (round %d, %d parsed): %r", i, out["round"], out["parsed"], out["output"])
    sample = "; ".join(repr(o["output"][:160]) for o in filt.outputs[:2])
    why = (f"{len(filt.outputs)} drafting outputs gave {raw} questions, none usable "
           f"(dropped: {dict(filt.dropped) or 'none parsed'}); every raw output is in the run's log.txt; "
           f"the first: {sample}")
    raise InputError("config", who, why + ". Use an instruction-following teacher, or raise elicit.max_new_tokens")


def teacher_demos(task: Task, cfg: ElicitConfig) -> list[tuple[str, str]]:
    """The worked demonstrations the teacher sees before each question (`elicit.rationale_demos`)."""
    return [(s.question, s.rationale) for s in task.seed if s.rationale][: cfg.rationale_demos]


def rationale_prompt(task: Task, question: str, cfg: ElicitConfig, technique: str | None = None) -> str:
    """What the teacher is asked to write a rationale to: technique None is the plain (erased) prompt, which the
    DPO pairs train on and the training data is written from."""
    demos = teacher_demos(task, cfg)
    return task.technique_prompt(question, technique, demos) if technique else task.prompt(question, demos)


def write_rationales(model, tokenizer, task: Task, questions: Sequence[Example], cfg: ElicitConfig, *,
                     techniques: Sequence[str | None], temperature: float, seed: int,
                     description: str = "writing rationales") -> list[dict]:
    """One rationale per (question, technique); technique None is the plain (erased) prompt."""
    jobs = [(q, t) for q in questions for t in techniques]
    prompts = [rationale_prompt(task, q.question, cfg, t) for q, t in jobs]
    tools = tool_settings(task, cfg)
    solutions = [task.solution_steps(q.question) or [] for q, _ in jobs] if tools.grounding else None
    texts = generate(model, tokenizer, prompts, max_new_tokens=cfg.rationale_tokens, temperature=temperature,
                     top_p=cfg.top_p, batch_size=cfg.batch_size, tools=tools, solutions=solutions, seed=seed,
                     stop=task.style.stop, description=description)
    drafts = []
    for (question, technique), text in zip(jobs, texts):
        rationale = text.strip()
        extracted = task.extract(rationale)
        drafts.append({"question": question.question, "answer": question.answer, "technique": technique,
                       "rationale": rationale, "well_formed": extracted is not None,
                       "correct": extracted is not None and task.is_correct(rationale, question)})
    return drafts
