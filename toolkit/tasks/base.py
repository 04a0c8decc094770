"""What a task is: examples in splits, prompt templates, answer extraction and scoring.

Every loader (the embedded arithmetic world, BBH, GSM8K, multiple choice) returns a ``Task``;
the stages only ever talk to this interface.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from .answers import extract_answer, normalize


@dataclass(frozen=True)
class Example:
    question: str
    answer: str  # gold answer in canonical form (see answers.normalize)
    rationale: str | None = None  # gold reasoning where the dataset has one (GSM8K)
    options: tuple[str, ...] = ()  # multiple choice: option texts, labelled (A), (B), ...


@dataclass(frozen=True)
class PromptStyle:
    """How questions, rationales and answers are laid out for one family of models.

    The ARTE template (PAPERS.md) for real instruction-following models; the embedded
    world uses a compact ``Q: .. A: ..`` layout that its tiny models were trained on.
    """

    demo: str  # "{question}" and "{rationale}" placeholders: a solved demonstration
    query: str  # "{question}" placeholder: ends where the model starts its rationale
    header: str = ""  # task description and instructions, printed once before demos
    answer_open: str = "<ans>"
    answer_close: str = "</ans>"
    stop: tuple[str, ...] = ("</ans>", "\nQuestion:")  # where a completion ends

    def render(self, question: str, demos: Sequence[tuple[str, str]] = ()) -> str:
        parts = [self.header] if self.header else []
        parts += [self.demo.format(question=q, rationale=r) for q, r in demos]
        parts.append(self.query.format(question=question))
        return "".join(parts)

    def wrap_answer(self, answer: str) -> str:
        return f"{self.answer_open}{answer}{self.answer_close}"


ARTE_STYLE = PromptStyle(
    header="{description}\nRemember you should include your final answer with the tag <ans> and </ans>.\n\n",
    demo="Question: {question}\nAnswer: Let's think step by step. {rationale}\n\n",
    query="Question: {question}\nAnswer: Let's think step by step.",
)


@dataclass
class Task:
    name: str
    description: str
    answer_kind: str  # one of answers.ANSWER_KINDS
    seed: list[Example]
    preference: list[Example]  # preference / validation split (ARTE's "validation")
    test: list[Example]
    style: PromptStyle = ARTE_STYLE
    # reasoning-technique prompts for elicitation: name -> instruction
    techniques: dict[str, str] = field(default_factory=dict)
    # re-derives the gold answer of a drafted question; None where the task has no parser
    solver: Callable[[str], str | None] | None = None
    source: str = ""  # file or generator the task came from
    # how the teacher drafts questions: "tagged" (ARTE's <Question_k> blocks) or "lines" (`Q:` lines)
    drafting: str = "tagged"
    # the prompt that shows seed questions for a "lines" task (the embedded world's); "tagged" uses ARTE's
    drafting_prompt: Callable[[list[str]], str] | None = None
    # step-by-step solution of a question as `a op b=r` equations, for the grounding tool
    solution_steps: Callable[[str], list[str] | None] | None = None
    # TeacherLM annotation prompts per kind (F, C, M) with {question} and {answer}; None = the paper's
    annotation_prompts: dict[str, str] | None = None
    # names the style of a rationale (for reports of what alignment changed); None where unknown
    style_of: Callable[[str], str] | None = None
    # the student decodes with the calculator unless the config says otherwise (evaluate.calculator)
    calculator: bool = False
    # extra `baseline` measurements, recorded under "world": (cfg, teacher, student, task, folder) -> dict
    baseline_probe: Callable[..., dict] | None = None
    # n questions with gold rationales, none from the test split, for the ablation's gold ceiling; None =
    # the seed and preference examples that carry a rationale (GSM8K's solutions, BBH's CoT demos)
    gold_examples: Callable[[int], list[Example]] | None = None
    # the task's own worked solution of any question it can solve (the embedded world renders one); then the
    # gold ceiling trains on gold rationales to the very questions the teachers wrote rationales to
    gold_rationale: Callable[[str], str | None] | None = None
    # the same worked solution rendered in each of `gold_styles` (question, style) -> rationale: what the
    # learnability benchmark trains one arm on per style; () where the task renders one style only
    gold_in_style: Callable[[str, str], str | None] | None = None
    gold_styles: tuple[str, ...] = ()

    def gold(self, n: int) -> list[Example]:
        """Up to ``n`` non-test examples with gold rationales: what the gold-ceiling student trains on."""
        if self.gold_examples is not None:
            return self.gold_examples(n)
        return [ex for ex in self.seed + self.preference if ex.rationale][:n]

    def __post_init__(self):
        if self.drafting == "lines" and self.drafting_prompt is None:
            raise ValueError(f"task {self.name!r}: drafting='lines' needs a drafting_prompt")

    def extract(self, completion: str) -> str | None:
        return extract_answer(completion, self.answer_kind, self.style)

    def is_correct(self, completion: str, example: Example) -> bool:
        got = self.extract(completion)
        return got is not None and got == normalize(example.answer, self.answer_kind)

    def prompt(self, question: str, demos: Sequence[tuple[str, str]] = ()) -> str:
        header = self.style.header.format(description=self.description) if self.style.header else ""
        return header + PromptStyle(self.style.demo, self.style.query).render(question, demos)

    def technique_prompt(self, question: str, technique: str, demos: Sequence[tuple[str, str]] = ()) -> str:
        """The prompt (zero-shot, or after `demos`) with a reasoning-technique instruction on the line before the
        answer."""
        plain = self.prompt(question, demos)
        head, _, tail = plain.rpartition("\n")
        return f"{head}\n{self.techniques[technique]}\n{tail}"
