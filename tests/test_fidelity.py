"""Fidelity of a quantized graph to fp32 (top-1 agreement and KL per position), the candidates the
export tries in order, and a `verify` that fails a bundle whose tokens reproduce but are not fp32's."""

from __future__ import annotations

import json

import pytest

from edge_tailor.errors import ArtifactError
from edge_tailor.export.bundle import REFERENCE, make_bundle, verify_bundle
from edge_tailor.export.fidelity import decode_starts, fidelity, fp32_reference, reference_sequences
from edge_tailor.export.onnx_export import export_onnx
from edge_tailor.export.quantize import quantize_for_target
from edge_tailor.models import resolve_model_path
from edge_tailor.stages.export import candidates, choose, holds
from edge_tailor.target import load_target
from edge_tailor.toyworld.task import toy_task

pytestmark = pytest.mark.slow
TASK = toy_task()


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fidelity")
    fp32 = export_onnx(resolve_model_path("embedded:student"), root / "fp32")
    quantize_for_target(fp32, root / "int8", "ci-x86")
    teacher = export_onnx(resolve_model_path("embedded:teacher"), root / "teacher")  # same tokenizer, other model
    sequences = reference_sequences(fp32, [TASK.prompt(ex.question) for ex in TASK.preference[:12]], 24)
    return root, fp32, teacher, sequences


def test_fidelity_separates_a_faithful_int8_from_another_model(graphs):
    root, fp32, teacher, sequences = graphs
    same = fidelity(fp32, fp32, "model.onnx", sequences)
    assert same["top1_agreement"] == 1.0 and same["mean_kl"] == pytest.approx(0, abs=1e-6)
    int8 = fidelity(fp32, root / "int8", "model.onnx", sequences)
    assert int8["top1_agreement"] >= 0.98 and int8["mean_kl"] <= 0.02, int8
    other = fidelity(fp32, teacher, "model.onnx", sequences)
    assert other["top1_agreement"] < 0.9 and other["mean_kl"] > 10 * int8["mean_kl"], other
    assert int8["positions"] == sum(len(s) for s in sequences) and int8["sequences"] == 12


def test_decode_positions_are_those_from_the_last_prompt_token_on(graphs):
    root, fp32, teacher, sequences = graphs
    starts = decode_starts(fp32, [TASK.prompt(ex.question) for ex in TASK.preference[:12]])
    assert all(0 < start < len(s) - 1 for start, s in zip(starts, sequences))
    every = fidelity(fp32, teacher, "model.onnx", sequences)
    decode = fidelity(fp32, teacher, "model.onnx", sequences, decode_from=starts)
    assert decode["positions"] == sum(len(s) - start for start, s in zip(starts, sequences))
    assert decode["positions_counted"] == "decode" and decode["all_positions"]["positions"] == every["positions"]
    assert {k: decode["all_positions"][k] for k in ("top1_agreement", "mean_kl")} == \
        {k: every[k] for k in ("top1_agreement", "mean_kl")}
    assert decode["top1_agreement"] != every["top1_agreement"]  # a subset, not the whole
    last = fidelity(fp32, fp32, "model.onnx", sequences, decode_from=[len(s) - 1 for s in sequences])
    assert last["positions"] == len(sequences) and last["top1_agreement"] == 1.0


def test_verify_counts_the_positions_the_export_counted(graphs):
    root, fp32, teacher, sequences = graphs
    # the teacher's tokens as the reference, counted from the last position only, where both models agree there
    reference = fp32_reference(teacher, sequences[:4])
    shipped = fp32_reference(root / "int8", sequences[:4])  # what the bundled file predicts
    agreeing = [[i for i, (a, b) in enumerate(zip(x, y)) if a == b] for x, y in
                zip(reference["fp32_top1"], shipped["fp32_top1"])]
    assert all(agreeing), "the embedded teacher and the INT8 student agree somewhere in each sequence"
    reference["decode_from"] = [positions[-1] for positions in agreeing]
    reference["fp32_top1"] = [t[:p + 1] for t, p in zip(reference["fp32_top1"], reference["decode_from"])]
    bundle = _bundle(root, fp32, reference, "counted")
    assert json.loads((bundle / "manifest.json").read_text())["fidelity"]["top1_agreement"] == 1.0
    assert verify_bundle(bundle)["passed"]


def test_candidates_come_in_the_order_qat_prefers():
    assert [n for n, _ in candidates(load_target("ci-x86"))] == ["target", "lm_head_fp32", "weight_only_8bit",
                                                               "weight_only_4bit"]
    head = dict(candidates(load_target("ci-x86")))["lm_head_fp32"]
    assert not head.quant.quantize_lm_head and head.quant.reduce_range  # only the head changes
    w8 = dict(candidates(load_target("ci-x86")))["weight_only_8bit"].quant
    assert (w8.activations.dtype, w8.weight_only_blocks.bits, w8.weight_only_blocks.block_size) == ("none", 8, 32)


@pytest.mark.parametrize(("drop", "top1", "kl", "ok"), [
    (0.01, 0.99, 0.001, True), (0.06, 0.99, 0.001, False), (0.0, 0.97, 0.001, False), (0.0, 0.99, 0.03, False),
])
def test_an_attempt_holds_only_within_every_budget(drop, top1, kl, ok):
    attempt = {"drop": drop, "fidelity": {"top1_agreement": top1, "mean_kl": kl}}
    assert holds(attempt, load_target("ci-x86")) is ok


def _bundle(root, fp32, reference, name):
    report = {"target": "ci-x86", "accuracy": {}, "latency": {}}
    return make_bundle(root / "int8", "ci-x86", root / name, report, {"task": "toy-arith"}, reference=reference)


def test_verify_checks_agreement_with_the_fp32_reference(graphs):
    root, fp32, teacher, sequences = graphs
    bundle = _bundle(root, fp32, fp32_reference(fp32, sequences[:4]), "good")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["fidelity"]["file"] == REFERENCE and manifest["fidelity"]["min_top1_agreement"] == 0.98
    assert manifest["fidelity"]["top1_agreement"] >= 0.98
    assert verify_bundle(bundle)["passed"]
    # a model whose greedy tokens reproduce perfectly but are not the fp32 model's: the teacher's
    wrong = _bundle(root, fp32, fp32_reference(teacher, sequences[:4]), "wrong")
    with pytest.raises(ArtifactError, match=r"model.onnx: fidelity: top-1 agreement with the fp32 reference"):
        verify_bundle(wrong)


def test_the_first_candidate_that_holds_ships_else_the_smallest_drop():
    def a(name, drop, ok, measured_only=False):
        return {"setting": name, "drop": drop, "holds": ok, "measured_only": measured_only}

    target, head, w8, w4 = a("target", 0.08, False), a("lm_head_fp32", 0.01, True), a("w8", 0.0, True), \
        a("w4", -0.01, True, measured_only=True)
    assert choose([target, head, w8, w4]) == (head, True)  # order wins over a smaller drop: QAT's scheme first
    assert choose([a("target", 0.01, True), head, w8, w4])[0]["setting"] == "target"
    broken = [a("target", 0.08, False), a("lm_head_fp32", 0.06, False), a("w8", 0.07, False), w4]
    assert choose(broken) == (broken[1], False)  # never the measured-only 4-bit file, even with the best drop


def test_an_unscored_attempt_never_holds_and_the_most_faithful_ships_when_none_was_scored():
    # export skips the accuracy pass of a file whose fidelity already breaks a budget: drop None
    unscored = {"drop": None, "fidelity": {"top1_agreement": 0.99, "mean_kl": 0.001}}
    assert holds(unscored, load_target("ci-x86")) is False

    def a(name, drop, kl, measured_only=False):
        return {"setting": name, "drop": drop, "holds": False, "measured_only": measured_only,
                "fidelity": {"top1_agreement": 0.5, "mean_kl": kl}}

    none_scored = [a("target", None, 0.6), a("lm_head_fp32", None, 0.4), a("w8", None, 0.5), a("w4", 0.01, 0.1, True)]
    assert choose(none_scored) == (none_scored[1], False)
    some_scored = [a("target", None, 0.01), a("lm_head_fp32", 0.09, 0.4), a("w8", 0.07, 0.5)]
    assert choose(some_scored) == (some_scored[2], False)  # a scored file beats an unscored one
