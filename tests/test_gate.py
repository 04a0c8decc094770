"""`tailor gate`: exit 0 when budgets hold, 1 when one breaks, 2 on a malformed report."""

import json

from edge_tailor.cli import main
from edge_tailor.target import target_path

REPORT = {
    "target": "ci-x86",
    "accuracy": {"teacher": 0.9, "student_before": 0.2, "student_fp32": 0.5, "student_int8": 0.49},
    "latency": {"ms_per_token_p50": 1.0, "ms_per_token_p95": 1.5, "ttft_ms": 3.0, "tokens_per_s": 1000.0,
                "peak_rss_mb": 120.0, "model_mb": 1.0,
                "reference": {"torch_fp32_ms_per_token_p50": 4.0, "edge_ms_per_token_p50": 1.2}},
}


def _target(tmp_path, **budgets):
    text = target_path("ci-x86").read_text()
    head = text[: text.index("[budgets]")]
    lines = "\n".join(f"{k} = {v}  # test budget" for k, v in budgets.items())
    path = tmp_path / "ci-x86.toml"
    path.write_text(head + "[budgets]\n" + lines + "\n")
    return str(path)


def _write(tmp_path, report):
    (tmp_path / "report.json").write_text(json.dumps(report))
    return str(tmp_path)


def test_generous_budgets_pass(tmp_path, capsys):
    run = _write(tmp_path, REPORT)
    target = _target(tmp_path, ms_per_token_p50=100, peak_rss_mb=4096, max_accuracy_drop=0.05)
    assert main(["gate", run, "--target", target]) == 0
    assert "PASSED" in capsys.readouterr().out


def test_impossible_budget_fails(tmp_path, capsys):
    run = _write(tmp_path, REPORT)
    target = _target(tmp_path, ms_per_token_p50=0.001, max_accuracy_drop=0.05)
    assert main(["gate", run, "--target", target]) == 1
    assert "broken budget(s): ms_per_token_p50" in capsys.readouterr().out


def test_relative_budget_uses_interleaved_figures(tmp_path):
    run = _write(tmp_path, REPORT)  # 1.2 / 4.0 = 0.3
    assert main(["gate", run, "--target", _target(tmp_path, **{"relative.ms_per_token_vs_torch_fp32": 0.31})]) == 0
    assert main(["gate", run, "--target", _target(tmp_path, **{"relative.ms_per_token_vs_torch_fp32": 0.29})]) == 1


def test_accuracy_drop_budget(tmp_path):
    run = _write(tmp_path, {**REPORT, "accuracy": {**REPORT["accuracy"], "student_int8": 0.3}})
    assert main(["gate", run, "--target", _target(tmp_path, max_accuracy_drop=0.05)]) == 1


def test_malformed_reports_exit_2(tmp_path, capsys):
    (tmp_path / "report.json").write_text("{not json")
    assert main(["gate", str(tmp_path)]) == 2
    assert "report.json: line 1: not valid JSON" in capsys.readouterr().err
    _write(tmp_path, {"target": "ci-x86", "accuracy": {}})
    assert main(["gate", str(tmp_path)]) == 2
    assert "latency" in capsys.readouterr().err
    _write(tmp_path, {**REPORT, "latency": {"ms_per_token_p50": "fast"}})
    assert main(["gate", str(tmp_path), "--target", _target(tmp_path, ms_per_token_p50=5)]) == 2
    assert main(["gate", str(tmp_path / "missing")]) == 2


def test_model_size_per_parameter_scales_with_the_student(tmp_path):
    # one limit for a 0.6M toy and a 135M real student: INT8 with an fp32 embedding ~1.9 bytes a
    # parameter passes, a file that ships fp32 weights (4 bytes a parameter) fails
    target = _target(tmp_path, model_bytes_per_param=2.5)
    for params, file_mb, want in ((617_344, 1.0, 0), (134_515_008, 239.2, 0), (134_515_008, 513.1, 1)):
        latency = {**REPORT["latency"], "parameters": params,
                   "model_bytes_per_param": round(file_mb * 2**20 / params, 3)}
        assert main(["gate", _write(tmp_path, {**REPORT, "latency": latency}), "--target", target]) == want
    assert main(["gate", _write(tmp_path, REPORT), "--target", target]) == 2  # a report without the figure
