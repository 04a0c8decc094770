"""The peer benchmark's pieces (no timing asserted) and the attention fusion it measures.

The fusion test uses a tiny random Llama with grouped KV heads (4 query heads, 2 KV heads): the
fused graph must give the exported graph's logits and greedy tokens through the edge runtime's
shared-cache path, for one prompt and for a left-padded batch, and through a plain
``past_key_values`` loop (what Optimum runs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_tailor.benchmarks import engines, hardware, peers
from edge_tailor.export import runtime
from edge_tailor.export.onnx_export import copy_side_files, export_onnx
from edge_tailor.export.fusion import KV_CACHE_META, fuse_graph
from edge_tailor.export.quantize import quantize_for_target

PROMPTS = [[5, 9, 14, 3, 7, 22, 8], [11, 4, 6], [30, 2, 17, 9, 1]]


def test_per_token_ms_cancels_prefill():
    # 1 token in 0.100 s, 33 tokens in 0.260 s: 32 more steps cost 0.160 s, 5 ms each
    assert engines.per_token_ms(0.260, 0.100, 33) == pytest.approx(5.0)


def test_weight_bytes_count_matmul_weights_not_the_embedding(tmp_path):
    embed = numpy_helper.from_array(np.zeros((100, 8), np.float32), "embed")
    w = numpy_helper.from_array(np.zeros((8, 16), np.float32), "w")
    q = numpy_helper.from_array(np.zeros((16, 4), np.int8), "q")
    scale = numpy_helper.from_array(np.ones(4, np.float32), "scale")
    nodes = [helper.make_node("Gather", ["embed", "ids"], ["h"]),
             helper.make_node("MatMul", ["h", "w"], ["h2"]),
             helper.make_node("DequantizeLinear", ["q", "scale"], ["qf"], axis=1),
             helper.make_node("MatMul", ["h2", "qf"], ["out"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])],
                              [embed, w, q, scale])
    onnx.save(helper.make_model(graph), str(tmp_path / "m.onnx"))
    assert hardware.weight_bytes_per_token(tmp_path / "m.onnx") == 8 * 16 * 4 + 16 * 4 + 4 * 4


def test_bandwidth_is_bytes_over_the_fastest_repeat_of_the_fastest_reader(monkeypatch):
    """The arithmetic, with the clock replaced (a test does not time things): GB/s = bytes / best time."""
    times = iter([0.02, 0.01, 0.04, 0.05, 0.008, 0.009, 0.03, 0.02])  # two repeats per reader, in reader order
    monkeypatch.setattr(hardware, "_timed", lambda fn: next(times))
    bw = hardware.measure_bandwidth(mb=16, repeats=2, threads=2)
    nbytes = 16 * 2**20
    assert bw["by_reader"] == {"numpy_max_1t": round(nbytes / 0.01 / 1e9, 2), "torch_sum_1t": round(nbytes / 0.04 / 1e9, 2),
                               "numpy_max_2t": round(nbytes / 0.008 / 1e9, 2), "torch_sum_2t": round(nbytes / 0.02 / 1e9, 2)}
    assert bw["read_gb_s"] == bw["by_reader"]["numpy_max_2t"] and bw["buffer_mb"] == 16


def _report() -> dict:
    names = {"pytorch fp32": "pytorch", "optimum int8": "optimum", "edge int8": "edge", "edge ort-fused int8": "edge",
             "edge fused int8": "edge", "edge fused 8-bit": "edge", "edge fused 4-bit": "edge"}
    results = {n: {"kind": k, "ms_per_token": ms, "ms_per_token_iqr": [ms, ms], "ttft_ms": 10.0, "model_mb": None,
                   "tokens": [1, 2]} for (n, k), ms in zip(names.items(), [30, 6, 4.5, 4.2, 3.3, 3.0, 2.2])}
    floors = {"int8": {"weight_mb": 110, "ms_per_token": 2.3}}
    report = {"date": "2026-01-01T00:00:00", "results": results, "ratios": peers.ratios(results, floors),
              "floors": floors,
              "bandwidth": {"read_gb_s": 48.0},
              "model": {"parameters": 134e6, "size": {"hidden": 768, "layers": 12, "vocab": 32000}},
              "settings": {"threads": 2, "prompt_tokens": 64, "new_tokens": 32, "rounds": 9, "warmup": 2},
              "machine": {"cpu": "x", "cores": 2, "loadavg_before": [0, 0, 0], "loadavg_after": [0, 0, 0], "nice": 0}}
    return report


def test_ratios_pick_the_fastest_int8_class_engine():
    r = _report()["ratios"]
    assert r["edge int8 best"] == "edge fused 8-bit"
    assert r["edge int8 best / optimum int8"] == pytest.approx(0.5)
    assert r["edge 4-bit / optimum int8"] == pytest.approx(2.2 / 6, abs=1e-3)


def test_ratios_against_llama_cpp_and_the_floors():
    results = {n: {"ms_per_token": ms} for n, ms in
               {"edge fused 8-bit": 8.0, "edge fused 4-bit": 6.0, "llama.cpp Q8_0": 10.0, "llama.cpp Q4_0": 5.0}.items()}
    floors = {"8-bit": {"ms_per_token": 5.0}, "4-bit": {"ms_per_token": 2.5}}
    r = peers.ratios(results, floors)
    assert r["edge fused 8-bit / llama.cpp Q8_0"] == pytest.approx(0.8)
    assert r["edge fused 4-bit / llama.cpp Q4_0"] == pytest.approx(1.2)
    assert r["edge fused 8-bit / its floor"] == pytest.approx(1.6) and r["edge fused 4-bit / its floor"] == pytest.approx(2.4)
    assert r["llama.cpp Q8_0 / the 8-bit floor"] == pytest.approx(2.0)
    assert "edge int8 best" not in r  # no Optimum INT8 in this run: no ratio to it


def test_prepare_makes_only_what_the_engines_need_and_what_that_is_made_from(tmp_path, monkeypatch):
    made = []
    monkeypatch.setattr("edge_tailor.export.onnx_export.export_onnx", lambda src, dst: made.append("fp32") or
                        Path(dst).mkdir(parents=True))

    def fake_quantize(src, dst, target, fuse=None):
        made.append(Path(dst).name)
        Path(dst).mkdir(parents=True)

    def fake_fuse(src, dst, attention):
        made.append("fused-fp32")

    monkeypatch.setattr("edge_tailor.export.quantize.quantize_for_target", fake_quantize)
    monkeypatch.setattr("edge_tailor.export.fusion.fuse_graph", fake_fuse)
    monkeypatch.setattr("edge_tailor.export.genai_config.write_genai_config", lambda folder, target=None: None)
    prepared = peers.prepare(tmp_path, tmp_path / "model", {"fused-q8"}, lambda m: None)
    assert made == ["fp32", "fused-fp32", "fused-q8"]  # in dependency order, nothing else
    assert (tmp_path / "fused-q8" / "peers_recipe.txt").read_text() == peers.RECIPE
    assert set(prepared["prepare_seconds"]) == {"fp32", "fused-fp32", "fused-q8"}
    made.clear()
    peers.prepare(tmp_path, tmp_path / "model", {"fused-q8"}, lambda m: None)
    assert made == []  # stamped folders are reused


def test_table_and_plot(tmp_path):
    report = _report()
    table = peers.markdown(report)
    assert "| edge fused 4-bit | 2.20 |" in table and "| floor: int8 weights at 48 GB/s | 2.30 |" in table and "**0.50**" in table
    peers.plot(report, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000


# --- attention fusion ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from edge_tailor.toyworld.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("tiny")
    tokenizer = train_tokenizer([f"part {i} of order {i * 7}" for i in range(50)], vocab_size=300)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=False, initializer_range=0.2,  # wide logits: clear greedy margins
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    LlamaForCausalLM(config).eval().save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    export_onnx(root / "model", root / "fp32")
    (root / "fused").mkdir()
    copy_side_files(root / "fp32", root / "fused")
    fused = fuse_graph(root / "fp32" / "model.onnx", root / "fused" / "model.onnx", attention=True)
    assert fused["GroupQueryAttention"] == 2
    return root


def _logits_loop(path: Path, ids: list[int], steps: int) -> tuple[list[int], list[np.ndarray]]:
    """Greedy decode with plain past_key_values feeding (no shared buffer), as Optimum runs a graph."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    pasts = [i for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    feed = {p.name: np.zeros((1, p.shape[1], 0, p.shape[3]), np.float32) for p in pasts}
    x = np.array([ids], np.int64)
    tokens, logits = [], []
    for _ in range(steps):
        n = len(ids) + len(tokens)
        outs = session.run(None, {"input_ids": x, "attention_mask": np.ones((1, n), np.int64),
                                  "position_ids": np.arange(n - x.shape[1], n, dtype=np.int64)[None], **feed})
        logits.append(outs[0][0, -1])
        tokens.append(int(outs[0][0, -1].argmax()))
        feed = {p.name: o for p, o in zip(pasts, outs[1:])}
        x = np.array([[tokens[-1]]], np.int64)
    return tokens, logits


@pytest.mark.slow
def test_attention_fusion_matches_the_exported_graph(tiny):
    model = onnx.load(str(tiny / "fused" / "model.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("GroupQueryAttention") == 2 and "Softmax" not in ops and ops.count("Concat") == 1  # the bias shape
    assert ops.count("MatMul") == 2 * 4 + 1 and ops.count("Split") == 2  # q/k/v packed into the attention, gate/up split
    assert "RotaryEmbedding" not in ops  # inside GroupQueryAttention
    assert {p.key: p.value for p in model.metadata_props}[KV_CACHE_META] == "shared"
    exported = onnx.load(str(tiny / "fp32" / "model.onnx")).graph
    assert [i.name for i in model.graph.input] == [i.name for i in exported.input]
    assert [o.name for o in model.graph.output] == [o.name for o in exported.output]

    ref_tokens, ref_logits = _logits_loop(tiny / "fp32" / "model.onnx", PROMPTS[0], 8)
    tokens, logits = _logits_loop(tiny / "fused" / "model.onnx", PROMPTS[0], 8)
    assert tokens == ref_tokens
    assert max(np.abs(a - b).max() for a, b in zip(ref_logits, logits)) < 1e-4

    plain, fused = runtime.EdgeModel.load(tiny / "fp32"), runtime.EdgeModel.load(tiny / "fused")
    assert fused.shared_kv and not plain.shared_kv
    plain.eos_ids = fused.eos_ids = []
    assert fused.generate(PROMPTS[0], 8).tokens == plain.generate(PROMPTS[0], 8).tokens == ref_tokens
    # left-padded batch: the mask becomes the attention bias, position_ids feed the rotary
    batch_plain = [r.tokens for r in plain.generate_batch(PROMPTS, 6)]
    assert [r.tokens for r in fused.generate_batch(PROMPTS, 6)] == batch_plain
    assert batch_plain == [plain.generate(p, 6).tokens for p in PROMPTS]


@pytest.mark.slow
def test_fused_graph_quantizes_and_keeps_the_shared_cache(tiny, tmp_path):
    summary = quantize_for_target(tiny / "fused", tmp_path / "int8", "ci-x86")
    # per layer: packed q/k/v, o, packed gate/up, down; plus the head (the attention MatMuls are gone)
    assert summary["files"]["model.onnx"]["quantized_nodes"] == 2 * 4 + 1
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "int8" / "model.onnx")).metadata_props}
    assert meta[KV_CACHE_META] == "shared"
    model = runtime.EdgeModel.load(tmp_path / "int8")
    unfused = quantize_for_target(tiny / "fp32", tmp_path / "int8-unfused", "ci-x86")
    assert unfused["files"]["model.onnx"]["quantized_nodes"] == 2 * 7 + 1
    plain = runtime.EdgeModel.load(tmp_path / "int8-unfused")
    model.eos_ids = plain.eos_ids = []
    assert model.shared_kv and not plain.shared_kv
    # the same INT8 weights through the in-place cache and through per-step concatenation: 24 steps each,
    # one prompt and a left-padded batch (a cache slot read before it was written would change tokens)
    assert model.generate(PROMPTS[1], 24).tokens == plain.generate(PROMPTS[1], 24).tokens
    assert [r.tokens for r in model.generate_batch(PROMPTS, 24)] == [r.tokens for r in plain.generate_batch(PROMPTS, 24)]

    ort_fused = quantize_for_target(tiny / "fp32", tmp_path / "ort", "ci-x86", fuse="ort")
    assert ort_fused["fused"]["SkipSimplifiedLayerNormalization"] > 0 and "GroupQueryAttention" not in ort_fused["fused"]
    assert not runtime.EdgeModel.load(tmp_path / "ort").shared_kv
    with pytest.raises(Exception, match="unknown fusion 'everything'"):
        quantize_for_target(tiny / "fp32", tmp_path / "bad", "ci-x86", fuse="everything")


@pytest.mark.slow
def test_genai_engine_decodes_exactly_n_tokens_equal_to_the_edge_engine(tiny, tmp_path):
    from edge_tailor.export.genai_config import write_genai_config

    quantize_for_target(tiny / "fused", tmp_path / "q8", peers._weight_only_target(8, 32))
    write_genai_config(tmp_path / "q8", target="ci-x86")
    prompt = PROMPTS[0]
    edge = engines.EdgeEngine("edge", tmp_path / "q8", prompt, threads=1)
    genai = engines.GenaiEngine("genai", tmp_path / "q8", prompt, threads=1)
    assert genai.model_file == tmp_path / "q8" / "model.onnx"
    for n in (1, 20):
        tokens = genai.decode(n)
        assert len(tokens) == n  # min_length: no early stop at an eos, as the edge engine's empty eos list
        assert tokens == edge.decode(n)


def test_profile_summary_splits_prefill_decode_kernels_and_scheduling():
    from edge_tailor.benchmarks.profile import summarize

    def run(ts, dur):
        return {"cat": "Session", "name": "model_run", "ts": ts, "dur": dur}

    def node(ts, dur, op):
        return {"cat": "Node", "name": f"n{ts}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}

    events = [run(0, 900), node(10, 800, "MatMulNBits"),  # the prefill: not counted per step
              run(1000, 100), node(1010, 60, "MatMulNBits"), node(1080, 20, "GroupQueryAttention"),
              run(2000, 120), node(2010, 70, "MatMulNBits"), node(2090, 30, "GroupQueryAttention"),
              {"cat": "Node", "name": "n_fence_before", "ts": 2011, "dur": 5}]
    s = summarize(events)
    assert s["decode_steps"] == 2 and s["prefill_run_ms"] == 0.9
    assert s["session_run_ms"] == pytest.approx(0.11) and s["kernels_ms"] == pytest.approx(0.09)
    assert s["between_kernels_ms"] == pytest.approx(0.02)
    assert list(s["ops"]) == ["MatMulNBits", "GroupQueryAttention"]
    assert s["ops"]["MatMulNBits"] == {"ms_per_step": 0.065, "kernels_per_step": 1.0, "share_of_run": pytest.approx(0.5909, abs=1e-4)}
    with pytest.raises(ValueError, match="fewer than two"):
        summarize([run(0, 10)])


def test_the_floor_uses_the_faster_bandwidth_reading():
    before = {"read_gb_s": 16.0, "by_reader": {"numpy_max_2t": 16.0}, "buffer_mb": 512}
    after = {"read_gb_s": 24.9, "by_reader": {"numpy_max_2t": 24.9}, "buffer_mb": 512}
    for a, b in ((before, after), (after, before)):
        best = peers.faster_bandwidth(a, b)
        assert best["read_gb_s"] == 24.9 and best["by_reader"] == {"numpy_max_2t": 24.9}
    assert peers.faster_bandwidth(before, after)["before_gb_s"] == 16.0
