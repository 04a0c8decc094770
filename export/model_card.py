"""The bundle's model card: README.md in the Hugging Face model-card layout, filled from the measured report.

``card_info`` keys (all optional): ``title``, ``summary``, ``base_model``, ``license``, ``language``,
``intended_use``, ``training_data``, ``method``, ``limitations`` (a string or a list of strings),
``task``.
"""

from __future__ import annotations

from edge_tailor.target import Target, format_budgets

_ACCURACY_ROWS = [("teacher", "Teacher"), ("student_before", "Student before distillation"),
                  ("student_fp32", "Student fp32 (PyTorch)"), ("student_int8", "Student quantized (this bundle)")]
_LATENCY_ROWS = [("ms_per_token_p50", "ms per token, p50"), ("ms_per_token_p95", "ms per token, p95"),
                 ("ttft_ms", "time to first token, ms"), ("tokens_per_s", "tokens per second"),
                 ("peak_rss_mb", "peak RSS, MiB"), ("model_mb", "model size, MiB"),
                 ("model_bytes_per_param", "bytes per parameter (file size / parameters)")]
UNITS_NOTE = "Sizes and memory are in MiB (2^20 bytes) throughout."
_DEFAULT_LIMITS = [
    "Accuracy and latency were measured on the task's test split and the benchmark shapes of the target "
    "file; other inputs, longer prompts or other hardware can behave differently.",
    "Quantization changes the numbers: the quantized model's answers can differ from the fp32 student's.",
    "A small distilled model answers within the narrow task it was tailored to; it is not a general assistant.",
]


def render_model_card(target: Target, report: dict, info: dict, model_sizes: dict[str, float]) -> str:
    title = info.get("title") or f"{info.get('task', 'edge-tailor')} student for {target.name}"
    front = ["---", "library_name: onnxruntime", "pipeline_tag: text-generation",
             f"license: {info.get('license', 'apache-2.0')}",
             "tags:", "- onnx", "- edge", "- edge-tailor", f"- {target.name}"]
    if info.get("base_model"):
        front.append(f"base_model: {info['base_model']}")
    if info.get("language"):
        front.append(f"language: {info['language']}")
    front.append("---")

    scheme = _scheme(target, (report.get("export") or {}).get("quantization"))
    lines = front + [
        "", f"# {title}", "",
        info.get("summary") or f"A small causal language model tailored to **{target.target.description}** "
                               f"(`{target.name}`), exported to ONNX and quantized for ONNX Runtime.",
        "", "## Intended use", "",
        info.get("intended_use") or "Answering the task it was distilled for, on the device the target file describes.",
        "", "## Training data", "",
        info.get("training_data") or "Not recorded.",
        "", "## Method", "",
        info.get("method") or "Distilled from a teacher, exported with Optimum (text-generation-with-past) and "
                              "quantized with ONNX Runtime.",
        "", f"Quantization of `model.onnx`, as shipped: {scheme}.",
        "", "## Accuracy", "", *_accuracy_table(report.get("accuracy") or {}),
        "", f"## Latency on {target.target.cpu}", "", *_latency_table(report.get("latency") or {}, target),
        "", "## Budgets", "", *_budget_table(report.get("budgets") or {}, target),
        "", "## How to run", "",
        "With only `onnxruntime`, `numpy` and `tokenizers` installed:", "",
        "```bash", "python edge_runtime.py . --prompt \"...\" --max-new-tokens "
                   f"{target.bench.new_tokens}", "```", "",
        "With Optimum:", "",
        "```python", "from optimum.onnxruntime import ORTModelForCausalLM",
        "model = ORTModelForCausalLM.from_pretrained(\"path/to/bundle\")", "```", "",
        "`tailor verify BUNDLE` re-checks every file's sha256 against `manifest.json` and the smoke decode "
        "recorded there.",
        "", "## Files", "", "| file | MiB |", "| --- | ---: |",
        *[f"| `{name}` | {mb:.3f} |" for name, mb in model_sizes.items()], "", UNITS_NOTE,
        "", "## Limitations", "", *[f"- {item}" for item in _limits(info)], "",
    ]
    return "\n".join(lines)


def _scheme(target: Target, shipped: dict | None) -> str:
    """The scheme of the file that ships: the export's final attempt (a fallback may have kept the head fp32)."""
    q = target.quant
    symmetry = "symmetric" if q.weights.symmetric else "asymmetric"
    text = (f"weights {q.weights.dtype} {q.weights.granularity} ({symmetry}), "
            f"activations {q.activations.dtype} {q.activations.mode}" + (", reduce_range" if q.reduce_range else ""))
    head = (shipped or {}).get("lm_head") or {}
    quantized = head.get("quantized", q.quantize_lm_head) if shipped else q.quantize_lm_head
    text += ", output head quantized" if quantized else ", output head fp32"
    fp32 = (shipped or {}).get("fp32_matmuls") or []
    if fp32:
        text += f"; {len(fp32)} MatMul(s) kept in fp32"
    return text


def _accuracy_table(accuracy: dict) -> list[str]:
    """Fractions of the test split with their sampling error; counts and tool notes below the table."""
    stderr = accuracy.get("stderr") or {}
    rows = [(label, accuracy[key], stderr.get(key)) for key, label in _ACCURACY_ROWS
            if isinstance(accuracy.get(key), (int, float))]
    if not rows:
        return ["Not measured."]
    table = ["| model | accuracy | sampling error |", "| --- | ---: | ---: |",
             *[f"| {label} | {_fraction(v)} | {_fraction(e) if e is not None else '-'} |" for label, v, e in rows]]
    notes = []
    if isinstance(accuracy.get("test_questions"), int):
        notes.append(f"Test questions: {accuracy['test_questions']}.")
    if accuracy.get("student_tools") not in (None, "none"):
        notes.append(f"The student decodes with: {accuracy['student_tools']}.")
    if isinstance(accuracy.get("teacher_no_tools"), (int, float)):
        notes.append(f"Teacher without its generation tools: {_fraction(accuracy['teacher_no_tools'])}.")
    return table + (["", " ".join(notes)] if notes else [])


def _latency_table(latency: dict, target: Target) -> list[str]:
    rows = [(label, latency[key]) for key, label in _LATENCY_ROWS if latency.get(key) is not None]
    if not rows:
        return ["Not measured."]
    b = target.bench
    return [f"Batch {b.batch}, {b.prompt_tokens}-token prompt, {b.new_tokens} new tokens, "
            f"{target.runtime.intra_op_threads} threads.", "",
            "| metric | value |", "| --- | ---: |", *[f"| {label} | {_number(v)} |" for label, v in rows]]


def _budget_table(budgets: dict, target: Target) -> list[str]:
    if budgets:
        return ["| budget | limit | measured | held |", "| --- | ---: | ---: | :---: |",
                *[f"| {name} | {_number(b.get('limit'))} | {_number(b.get('measured'))} | "
                  f"{'yes' if b.get('passed') else 'NO'} |" for name, b in budgets.items()]]
    return ["| budget | limit |", "| --- | --- |", *[f"| {name} | {limit} |" for name, limit in format_budgets(target)]]


def _limits(info: dict) -> list[str]:
    given = info.get("limitations")
    if isinstance(given, str):
        return [given]
    return list(given) if given else _DEFAULT_LIMITS


def _fraction(value) -> str:
    if isinstance(value, dict) and "mean" in value:
        return f"{value['mean']:.1%} ± {value.get('std', 0):.1%}"
    return f"{value:.1%}" if isinstance(value, (int, float)) else str(value)


def _number(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "-" if value is None else str(value)
