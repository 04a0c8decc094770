"""The bundle's model card, rendered from what `report` assembles out of a run's records."""

import json

from edge_tailor.benchmarks.report import assemble
from edge_tailor.export.model_card import render_model_card
from edge_tailor.rundir import RunDir, write_json_atomic
from edge_tailor.target import load_target


def _attempt(setting: str, quantization: dict, shipped: bool) -> dict:
    files = {"model.onnx": {"kind": "int8-dynamic", "mb": 0.96}}
    return {"setting": setting, "quantization": {**quantization, "files": files}, "shipped": shipped, "holds": shipped,
            "accuracy": {"model.onnx": {"accuracy": 0.5333, "stderr": 0.0288, "n": 300}}, "drop": 0.0034,
            "fidelity": {"top1_agreement": 0.995, "mean_kl": 0.0002}}


def _records(tmp_path, head_quantized: bool) -> RunDir:
    run = RunDir(tmp_path / "run")
    accuracy = lambda a, n=300: {"accuracy": a, "stderr": round((a * (1 - a) / n) ** 0.5, 4), "n": n}  # noqa: E731
    records = {
        "baseline": {"teacher_with_tools": accuracy(0.97), "teacher": accuracy(0.013),
                     "student_before": {**accuracy(0.35), "tools": "calculator"}},
        "distill": {"student_fp32": accuracy(0.5367), "qat": True,
                    "training": {"examples": 673, "steps": 150, "fake_quantized_linears": 22}},
        "export": {"student_int8": accuracy(0.5333), "chosen": "lm_head_fp32" if not head_quantized else "target",
                   "parity": {"max_abs_logit_diff": 1e-5, "greedy_match": 8, "prompts": 8},
                   "attempts": [_attempt("target", {"lm_head": {"quantized": True}, "fp32_matmuls": []}, head_quantized),
                                *([] if head_quantized else [_attempt("lm_head_fp32", {
                                    "lm_head": {"quantized": False}, "fp32_matmuls": ["/lm_head/MatMul"]}, True)])],
                   "fidelity": {"top1_agreement": 0.995, "mean_kl": 0.0002}},
        "bench": {"ms_per_token_p50": 0.35, "ms_per_token_p95": 0.5, "ttft_ms": 3.0, "tokens_per_s": 2857.0,
                  "peak_rss_mb": 79.0, "model_mb": 0.96, "parameters": 617344, "model_bytes_per_param": 1.63,
                  "reference": {"torch_fp32_ms_per_token_p50": 1.09, "edge_ms_per_token_p50": 0.38, "ratio": 0.35}},
    }
    for stage, metrics in records.items():
        write_json_atomic(run.record_path(stage), {"stage": stage, "metrics": metrics})
    return run


def _card(tmp_path, head_quantized=True) -> str:
    target = load_target("ci-x86")
    report = assemble(_records(tmp_path, head_quantized), "ci-x86")
    json.dumps(report)  # what the bundle stores
    return render_model_card(target, report, {"task": "toy-arith"}, {"model.onnx": 0.96})


def test_card_shows_fractions_counts_and_errors_not_raw_fields(tmp_path):
    card = _card(tmp_path)
    assert "| Student quantized (this bundle) | 53.3% | 2.9% |" in card
    assert "| Teacher | 97.0% | 1.0% |" in card
    assert "Test questions: 300." in card and "The student decodes with: calculator." in card
    assert "Teacher without its generation tools: 1.3%." in card
    assert "30000" not in card and "{'" not in card and "stderr" not in card


def test_card_describes_the_file_shipped_after_a_fallback(tmp_path):
    assert "output head quantized" in _card(tmp_path / "a", head_quantized=True)
    card = _card(tmp_path / "b", head_quantized=False)
    assert "output head fp32" in card and "output head quantized" not in card
    assert "1 MatMul(s) kept in fp32" in card


def test_card_states_units_once_in_mib(tmp_path):
    card = _card(tmp_path)
    assert "peak RSS, MiB" in card and "model size, MiB" in card and "| file | MiB |" in card
    assert card.count("MiB (2^20 bytes)") == 1 and " MB" not in card


def test_a_skipped_ablation_reads_as_not_measured_and_annotations_are_counted(tmp_path, monkeypatch):
    from edge_tailor.benchmarks.report import markdown
    from edge_tailor.config import load_config
    from edge_tailor.stages import ablation
    from edge_tailor.stages.report import card_info

    cfg = load_config(overrides=["distill.ablation_seeds=0", "distill.use_annotations=true"])
    monkeypatch.setattr(ablation, "run_jobs", lambda *a, **kw: (_ for _ in ()).throw(AssertionError("trained")))
    run = _records(tmp_path, True)
    write_json_atomic(run.record_path("ablation"), {"stage": "ablation", **ablation.run(cfg, run)})
    report = assemble(run, "ci-x86")
    assert report["ablation"]["skipped"].startswith("distill.ablation_seeds is 0")
    assert report["ablation"]["original_teacher"] is None and report["ablation"]["difference"] is None
    report |= {"passed": True, "budgets": {}}
    assert "Not measured: distill.ablation_seeds is 0" in markdown(report, "plots")
    info = card_info(cfg, report, False, {"examples": 673}, annotated=73)
    assert info["training_data"].startswith("600 examples written by the teacher")
    assert "73 TeacherLM annotations" in info["training_data"]
    assert "ARTE ablation: not measured" in info["method"] and "None" not in info["method"]


def test_the_report_says_what_the_one_shot_signal_could_tell_apart(tmp_path):
    from edge_tailor.arte import signal_quality
    from edge_tailor.benchmarks.report import markdown

    run = _records(tmp_path, True)
    noise = [[(i * 7 + j * 3) % 5 < 2 for j in range(32)] for i in range(12)]
    write_json_atomic(run.record_path("prefer"), {"stage": "prefer", "metrics": {
        "drafts_scored": 12, "scorer": "in_context", "preference_set": {"kept": 32, "of": 48, "method": "index"},
        "score_by_technique": {"decompose": 0.41, "verify": 0.44}, "score_std_by_technique": {"decompose": 0.08,
                                                                                              "verify": 0.07},
        "signal": signal_quality(noise)}})
    write_json_atomic(run.record_path("generate"), {"stage": "generate", "metrics": {"data": {
        "original": {"style_mix": {"answer-only": 0.6, "short": 0.4}}, "aligned": {"style_mix": {"short": 1.0}}}}})
    report = assemble(run, "ci-x86") | {"passed": True, "budgets": {}}
    sig = report["alignment"]["signal"]
    assert sig["by_technique"] == {"decompose": 0.41, "verify": 0.44} and sig["drafts"] == 12 and sig["questions"] == 32
    assert report["alignment"]["data_style_mix"]["original"] == {"answer-only": 0.6, "short": 0.4}
    text = markdown(report, "plots")
    assert "decompose 0.410 +- 0.080, verify 0.440 +- 0.070" in text
    assert f"sampling error of {sig['sampling_error']:.3f} for one draft on 32 questions" in text
    assert "original: answer-only 60%, short 40%; aligned: short 100%" in text
