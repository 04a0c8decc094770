"""`tailor run` end to end on the shipped embedded world, with small stage sizes."""

import json

import pytest

from edge_tailor.cli import main
from edge_tailor.pipeline import STAGE_NAMES
from small_runs import overrides

pytestmark = pytest.mark.slow
SMALL = overrides("smoke", align__rounds=2, distill__compare_ptq="true")
REPORT_KEYS = {"target", "accuracy", "ablation", "latency", "budgets", "passed"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    code = main(["run", "--out", str(out), *SMALL])
    (out / "smoke" / "exit_code.txt").write_text(str(code))
    return out / "smoke"


def test_exit_code_is_the_reports_verdict(run_dir):
    report = json.loads((run_dir / "report.json").read_text())
    # a tiny run may break a budget: then the report says which and `run` exits 1, never anything else
    assert (run_dir / "exit_code.txt").read_text() == ("0" if report["passed"] else "1")
    assert report["passed"] == all(b["passed"] for b in report["budgets"].values())
    acc = report["accuracy"]
    assert all(0 <= acc[k] <= 1 for k in ("teacher", "student_before", "student_fp32", "student_int8"))
    assert acc["test_questions"] == 24
    kernel = report["kernel"]  # the host the INT8 accuracy was measured on; ci-x86 is exact on every x86-64
    assert kernel["target"] == "ci-x86" and kernel["target_isa"] == "avx2" and kernel["exact_on_host"]


def test_every_stage_finished_with_a_record(run_dir):
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert [s for s in STAGE_NAMES if manifest["stages"][s]["status"] == "done"] == list(STAGE_NAMES)
    for stage in STAGE_NAMES:
        assert (run_dir / "records" / f"{stage}.json").exists()


def test_report_has_the_contract_keys(run_dir):
    report = json.loads((run_dir / "report.json").read_text())
    assert REPORT_KEYS <= report.keys()
    assert {"teacher", "student_before", "student_fp32", "student_int8"} <= report["accuracy"].keys()
    assert {"mean", "std", "seeds"} <= report["ablation"]["aligned_teacher"].keys()
    ab = report["ablation"]
    assert len(ab["original_teacher"]["seeds"]) == len(ab["gold"]["seeds"]) == 2
    # two teacher seeds (two DPO runs, each writing its own data) x two student seeds in the aligned arm
    assert len(ab["aligned_teacher"]["seeds"]) == 4 and set(ab["aligned_teacher"]["by_teacher_seed"]) == {"0", "1"}
    assert ab["trainings"] == 2 * 4 - 1  # original, aligned x 2, gold: 2 student seeds each, less distill's run
    # paired over the same seeds and questions: the mean difference is the difference of the means
    d = ab["difference"]
    assert d["n"] == {"teacher_seeds": 2, "seeds": 2, "questions": report["accuracy"]["test_questions"],
                      "pairs": 4 * report["accuracy"]["test_questions"]}
    assert d["mean"] == pytest.approx(ab["aligned_teacher"]["mean"] - ab["original_teacher"]["mean"], abs=2e-4)
    assert d["ci95"][0] <= d["mean"] <= d["ci95"][1]
    assert ab["gold"]["examples"] > 0
    assert {"ms_per_token_p50", "ms_per_token_p95", "ttft_ms", "tokens_per_s", "peak_rss_mb",
            "model_mb"} <= report["latency"].keys()
    # INT8 weights and an fp32 embedding: between 1 and 2.5 bytes a parameter (fp32 would be 4)
    assert 1.0 < report["latency"]["model_bytes_per_param"] < 2.5 and report["latency"]["parameters"] > 100_000
    for budget in report["budgets"].values():
        assert {"limit", "measured", "passed"} <= budget.keys()
    assert (run_dir / "report.md").read_text().startswith("# edge-tailor report")
    assert (run_dir / "report" / "accuracy_latency.png").stat().st_size > 1000


def test_stage_records_hold_the_counts(run_dir):
    record = lambda s: json.loads((run_dir / "records" / f"{s}.json").read_text())["metrics"]  # noqa: E731
    elicit, align, generate = record("elicit"), record("align"), record("generate")
    assert elicit["raw_questions"] >= elicit["questions_kept"] > 0 and isinstance(elicit["questions_dropped"], dict)
    assert sum(align["pairs"].values()) > 0 and align["loss"] and align["reward_margin"]
    # a second ARTE round: drafts from the aligned teacher, scored, paired, a second adapter stacked on the first
    (second,) = align["rounds"]
    assert second["round"] == 2 and second["drafts"] > 0 and sum(second["pairs"].values()) > 0
    assert second["loss"] and (run_dir / "align" / "round2" / "adapter" / "adapter_config.json").exists()
    # the second teacher seed aligned its own teacher through both rounds, in its own folder, and wrote its own data
    (other,) = align["teacher_seeds"]["1"]["rounds"]
    assert other["round"] == 2 and (run_dir / "align" / "seed1" / "round2" / "adapter" / "adapter_config.json").exists()
    assert align["teacher_seeds"]["0"]["loss"] == align["loss"]
    assert set(generate["data"]) == {"original", "aligned", "aligned-seed1"}
    assert set(generate["held_out"]) == {"original", "aligned"}  # the base teacher against the shipped one
    rows = {w: [json.loads(line) for line in (run_dir / "generate" / f"{w}.jsonl").read_text().splitlines()]
            for w in generate["data"]}
    assert len({len(r) for r in rows.values()}) == 1 and rows["aligned"] != rows["aligned-seed1"]
    # every teacher wrote its rationales to the original teacher's drafted questions (generate.questions)
    drafted = {json.loads(line)["question"] for line in (run_dir / "generate" / "questions.jsonl").read_text().splitlines()}
    assert all(r["question"] in drafted for data in rows.values() for r in data)
    assert generate["drafting"]["questions"] == len(drafted) and generate["drafting"]["drafted_by"] == "original"


def test_bundle_verifies_and_rerun_skips_everything(run_dir, capsys):
    # the embedded student has no chat template and no BOS: its recorded prompt format leaves prompts as they are
    assert json.loads((run_dir / "bundle" / "prompt_format.json").read_text()) == \
        {"mode": "plain", "bos": "", "prefix": "", "suffix": ""}
    assert main(["verify", str(run_dir / "bundle")]) == 0
    capsys.readouterr()
    code = main(["run", "--out", str(run_dir.parent), *SMALL])
    assert code == int((run_dir / "exit_code.txt").read_text())
    assert capsys.readouterr().err.count("up to date, skipped") == len(STAGE_NAMES)


def test_bench_measures_a_bundle(run_dir, capsys):
    assert main(["bench", str(run_dir / "bundle")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"ms_per_token_p50", "ms_per_token_p95", "ttft_ms", "prompt_tokens_per_s", "peak_rss_mb",
            "model_mb"} <= result.keys()
    acc = result["accuracy"]
    assert acc["n"] == 1000 and acc["stderr"] == pytest.approx((acc["accuracy"] * (1 - acc["accuracy"]) / 1000) ** 0.5, abs=1e-3)


def test_bench_runs_a_bundle_under_another_target(run_dir, capsys):
    assert main(["bench", str(run_dir / "bundle"), "--target", "x86-avx2-ipc", "--no-accuracy"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["threads"] == 4 and result["repeats"] == 10  # x86-avx2-ipc's runtime and bench blocks
    assert "INT8 kernel" in captured.err and "x86-avx2-ipc" in captured.err
    assert main(["verify", str(run_dir / "bundle")]) == 0  # the bundle itself was not touched


# distill.compare_ptq: QAT against PTQ on the run's student

def test_every_arm_is_trained_like_the_student_and_measured_against_its_own_fp32_graph(run_dir):
    report = json.loads((run_dir / "report.json").read_text())
    comparison = report["qat_vs_ptq"]
    arms = comparison["arms"]
    distilled = json.loads((run_dir / "records" / "distill.json").read_text())["metrics"]["training"]
    ptq, qat4 = arms["ptq"]["training"], arms["qat_weight_only_4bit"]["training"]
    # the same rows and steps as distill; only the fake quantization differs
    assert ptq["examples"] == qat4["examples"] == distilled["examples"]
    assert ptq["steps"] == qat4["steps"] == distilled["steps"]
    assert ptq["fake_quantized_linears"] == 0 < qat4["fake_quantized_linears"]
    assert arms["qat_target"]["training"] == "the distill stage's student"
    assert set(arms["ptq"]["fidelity"]) == {"target", "weight_only_4bit"}
    for scheme, pair in comparison["by_scheme"].items():
        assert pair["qat"] == arms[f"qat_{scheme}"]["fidelity"][scheme] and pair["ptq"] == arms["ptq"]["fidelity"][scheme]
        for figures in pair.values():
            assert 0 < figures["top1_agreement"] <= 1 and figures["mean_kl"] >= 0 and figures["positions"] > 0
    # 4-bit blocks lose more than the target's INT8 scheme on the same PTQ model (the embedded student measured
    # KL 0.0098 vs 0.0019): a comparison that measured the wrong file under a scheme would not show it
    assert arms["ptq"]["fidelity"]["target"]["mean_kl"] < arms["ptq"]["fidelity"]["weight_only_4bit"]["mean_kl"]
    assert "## QAT against PTQ" in (run_dir / "report.md").read_text()


def test_the_arms_leave_only_their_figures_behind(run_dir):
    folder = run_dir / "ablation" / "qat_vs_ptq"
    assert folder.is_dir() and not [p for p in folder.rglob("*") if p.suffix in {".onnx", ".safetensors"}]


def test_each_teacher_drafts_its_own_questions_when_question_pairs_align_drafting(run_dir, tmp_path):
    """generate.questions=each_teacher (what align.question_pairs needs): no shared draft, every teacher drafts."""
    import shutil

    from edge_tailor.config import load_config
    from edge_tailor.rundir import RunDir
    from edge_tailor.stages import generate

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / "generate")
    (copy / "generate").mkdir()
    cfg = load_config(overrides=SMALL[1:] + ["generate.questions=each_teacher", "align.question_pairs=true"])
    metrics = generate.run(cfg, RunDir(copy))["metrics"]
    assert "drafting" not in metrics and not (copy / "generate" / "questions.jsonl").exists()
    assert all(d["raw_questions"] >= d["questions"] > 0 for d in metrics["data"].values())
    assert {p.name for p in (copy / "generate").iterdir()} == {"original.jsonl", "aligned.jsonl", "aligned-seed1.jsonl"}
