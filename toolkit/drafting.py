"""Question drafting: the prompt that shows k seed questions, and the parser of what comes back.

Two layouts: ARTE's tagged blocks (`<Question_k><input>..</input><target>..</target></Question_k>`)
for instruction-following teachers, and plain `Q:` lines for the embedded world's teacher.
Every drafted question is validated and de-duplicated; what is dropped is counted by reason, and
every raw output is kept (``DraftFilter.outputs``) so a run whose teacher drafted nothing usable can
be read from its folder and log.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from .prompt_format import ANSWER_START
from .tasks.base import Example, Task

TAGGED_INSTRUCTION = (
    "{description}\nHere are {k} example questions with their answers. Brainstorm, then write {m} new, "
    "different questions of the same kind, each as <Question_N><input>question</input><target>answer"
    "</target></Question_N>.\n\n")
_NO_TAG = r"((?:(?!<Question_|<input>|<target>).)*?)"  # a field never runs into the next block
_OPEN_INPUT = re.compile(r"<input>([^<\n]*)")  # a question runs to the next tag or line end
_BLOCK = re.compile(rf"<Question_\d+>\s*<input>{_NO_TAG}</input>\s*<target>{_NO_TAG}</target>\s*</Question_\d+>", re.S)


def drafting_prompt(task: Task, seeds: list[Example], new: int = 5) -> str:
    if task.drafting == "lines":
        return task.drafting_prompt([s.question for s in seeds])
    blocks = "".join(f"<Question_{i + 1}><input>{s.question}</input><target>{s.answer}</target></Question_{i + 1}>\n"
                      for i, s in enumerate(seeds))
    head = TAGGED_INSTRUCTION.format(description=task.description, k=len(seeds), m=new)
    # opened down to <input>: a real teacher then writes a question, where after a bare block tag
    # it was free to write anything (SmolLM2: 0 parsed of 16 drafts)
    return f"{head}{blocks}{ANSWER_START}<Question_{len(seeds) + 1}><input>"


def parse_drafts(task: Task, completion: str) -> list[tuple[str, str | None]]:
    """(question, target-or-None) pairs as written, before validation."""
    if task.drafting == "lines":
        lines = ("Q:" + completion).split("\n")
        return [(line[2:].strip(), None) for line in lines if line.startswith("Q:")]
    # the prompt already opened the first block, so restore its tags before matching
    text = f"<Question_0><input>{completion}"
    whole = [(q.strip(), t.strip()) for q, t in _BLOCK.findall(text)]
    if whole or task.solver is None:
        return whole
    # a task that computes its answers needs only the questions: a small teacher that opens blocks but
    # does not close them (SmolLM2) still drafts; the solver then rejects whatever is not a question
    return [(q.strip(), None) for q in _OPEN_INPUT.findall(text) if q.strip()]


@dataclass
class DraftFilter:
    """Validates drafted questions against the task and everything seen so far."""

    task: Task
    seen: set[str] = field(default_factory=set)
    dropped: Counter = field(default_factory=Counter)
    kept: list[Example] = field(default_factory=list)
    outputs: list[dict] = field(default_factory=list)  # every raw teacher output, for the stage folder

    def __post_init__(self):
        self.seen = {self._key(q) for q in self.seen}

    @staticmethod
    def _key(question: str) -> str:
        return " ".join(question.lower().split())

    def add(self, question: str, target: str | None) -> Example | None:
        from .tasks.answers import normalize

        if not question:
            self.dropped["empty"] += 1
            return None
        if self.task.solver is not None:
            answer = self.task.solver(question)
            if answer is None:
                self.dropped["unparseable"] += 1
                return None
        elif target:
            answer = normalize(target, self.task.answer_kind)
        else:
            self.dropped["no_target"] += 1
            return None
        key = self._key(question)
        if key in self.seen:
            self.dropped["duplicate"] += 1
            return None
        self.seen.add(key)
        example = Example(question, answer)
        self.kept.append(example)
        return example
