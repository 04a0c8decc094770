"""The graph that ships: the attention-fused export of the embedded student decodes exactly like the
unfused one (fp32: 8 prompts x 32 tokens), reads only cache slots it wrote, and the export stage
falls back to the unfused graph, saying why, when fusion fails."""

from __future__ import annotations

import numpy as np
import pytest

from edge_tailor.export import runtime
from edge_tailor.export.fusion import graph_to_ship
from edge_tailor.export.onnx_export import export_onnx
from edge_tailor.export.quantize import quantize_for_target
from edge_tailor.models import resolve_model_path
from edge_tailor.toyworld.task import toy_task

pytestmark = pytest.mark.slow
TASK = toy_task()
PROMPTS = [TASK.prompt(ex.question) for ex in TASK.test[:8]]


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fusion")
    fp32 = export_onnx(resolve_model_path("embedded:student"), root / "fp32")
    fused_dir, decision = graph_to_ship(fp32, root / "fused", "fused", PROMPTS)
    return root, fp32, fused_dir, decision


def _tokens(folder, prompts, n=32):
    model = runtime.EdgeModel.load(folder)
    model.eos_ids = []
    return [model.generate(p, n).tokens for p in prompts]


def test_fused_graph_ships_and_decodes_as_exported(graphs):
    root, fp32, fused_dir, decision = graphs
    assert decision["attention"] == "fused" and "why" not in decision
    assert decision["fused_ops"]["GroupQueryAttention"] == 3  # the student's 3 layers
    assert decision["checked"] == {"prompts": 8, "tokens": 32}
    assert runtime.EdgeModel.load(fused_dir).shared_kv and not runtime.EdgeModel.load(fp32).shared_kv
    assert _tokens(fused_dir, PROMPTS) == _tokens(fp32, PROMPTS)


def test_shared_cache_reads_only_slots_it_wrote(graphs, monkeypatch):
    """Fill every preallocated cache buffer with NaN first: a wrong seqlens_k, total length or slot offset
    would attend to an unwritten slot and turn the logits into NaN, or shift what the model sees."""
    _, fp32, fused_dir, _ = graphs
    keep = []
    real = runtime.ort.OrtValue.ortvalue_from_shape_and_type

    def poisoned(shape, dtype, device, index):
        if device != "cpu":
            return real(shape, dtype, device, index)
        buffer = np.full(shape, np.nan, dtype=dtype)
        keep.append(buffer)  # the OrtValue borrows this memory
        return runtime.ort.OrtValue.ortvalue_from_numpy(buffer)

    monkeypatch.setattr(runtime.ort.OrtValue, "ortvalue_from_shape_and_type", staticmethod(poisoned))
    fused = runtime.EdgeModel.load(fused_dir)
    fused.eos_ids = []
    # left-padded batch of different lengths, decoded far enough to fill most of each row's buffer
    batch = [r.tokens for r in fused.generate_batch(PROMPTS, 40, batch_size=8)]
    assert keep, "the shared-cache path did not allocate its buffers"
    monkeypatch.undo()
    plain = runtime.EdgeModel.load(fp32)
    plain.eos_ids = []
    assert batch == [r.tokens for r in plain.generate_batch(PROMPTS, 40, batch_size=8)]


def test_fused_int8_keeps_the_unfused_int8_tokens(graphs, tmp_path):
    _, fp32, fused_dir, _ = graphs
    quantize_for_target(fp32, tmp_path / "unfused", "ci-x86")
    quantize_for_target(fused_dir, tmp_path / "fused", "ci-x86")
    unfused, fused = _tokens(tmp_path / "unfused", PROMPTS), _tokens(tmp_path / "fused", PROMPTS)
    # packed projections quantize per output column exactly as unpacked ones; only float summation order differs
    assert sum(a == b for a, b in zip(unfused, fused)) >= 7, (unfused, fused)


def test_unfused_ships_with_the_reason_when_fusion_fails(graphs, tmp_path):
    root, fp32, _, _ = graphs
    broken = tmp_path / "fp32"
    broken.mkdir()
    for f in fp32.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "config.json").unlink()  # fusion needs heads and hidden size
    folder, decision = graph_to_ship(broken, tmp_path / "fused", "fused", PROMPTS[:2])
    assert folder == broken and decision["attention"] == "unfused" and decision["requested"] == "fused"
    assert decision["why"].startswith("fusion failed:") and "config.json" in decision["why"]
    folder, decision = graph_to_ship(fp32, tmp_path / "never", "unfused", PROMPTS[:2])
    assert folder == fp32 and decision == {"requested": "unfused", "attention": "unfused"}
    assert not (tmp_path / "never").exists()
