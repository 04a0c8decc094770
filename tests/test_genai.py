"""Every bundle carries a genai_config.json, and onnxruntime-genai decodes the bundle to the edge runtime's tokens.

Built once per module from the embedded student: exported, quantized INT8 for ci-x86 as exported
("unfused") and with the attention fusion ("attention": GroupQueryAttention over a shared cache),
each bundled with make_bundle.
"""

from __future__ import annotations

import json

import onnx
import pytest

from edge_tailor.export.bundle import make_bundle, verify_bundle
from edge_tailor.export.genai_config import genai_config, write_genai_config
from edge_tailor.export.onnx_export import export_onnx
from edge_tailor.export.quantize import quantize_for_target
from edge_tailor.export.runtime import EdgeModel, sha256_file
from edge_tailor.models import resolve_model_path
from edge_tailor.toyworld.task import toy_task

pytestmark = pytest.mark.slow

REPORT = {"target": "ci-x86", "accuracy": {"student_fp32": 0.8, "student_int8": 0.79},
          "latency": {"ms_per_token_p50": 0.3, "model_mb": 1.0},
          "budgets": {"model_mb": {"limit": 16.0, "measured": 1.0, "passed": True}}, "passed": True}
CARD = {"summary": "A test student.", "training_data": "The embedded world.", "smoke_prompt": "Q: 3+4=?\nA:"}
NEW_TOKENS = 24
TASK = toy_task()
PROMPTS = [TASK.prompt(ex.question) for ex in TASK.test[:4]]


@pytest.fixture(scope="module")
def fp32_dir(tmp_path_factory):
    return export_onnx(resolve_model_path("embedded:student"), tmp_path_factory.mktemp("genai") / "fp32")


@pytest.fixture(scope="module", params=["unfused", "attention"])
def bundle(request, fp32_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"genai-{request.param}")
    fuse = None if request.param == "unfused" else request.param
    quantize_for_target(fp32_dir, root / "int8", "ci-x86", fuse=fuse)
    return request.param, make_bundle(root / "int8", "ci-x86", root / "bundle", REPORT, CARD)


def _genai_greedy(model, ids: list[int], max_new_tokens: int, eos: set[int]) -> list[int]:
    """New tokens of onnxruntime-genai's greedy search, without the eos it stopped at (as the edge runtime returns them)."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + max_new_tokens, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    while not generator.is_done():
        generator.generate_next_token()
    sequence = [int(t) for t in generator.get_sequence(0)]
    assert sequence[:len(ids)] == ids  # genai returns prompt + new tokens
    new = sequence[len(ids):]
    assert not eos & set(new[:-1]), "genai went on past an eos"
    return new[:-1] if new and new[-1] in eos else new


def test_bundle_genai_config_matches_the_graph(bundle):
    kind, path = bundle
    config = json.loads((path / "genai_config.json").read_text())
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["genai_config"] == "genai_config.json"
    assert manifest["files"]["genai_config.json"]["sha256"] == sha256_file(path / "genai_config.json")
    assert verify_bundle(path, target="ci-x86")["passed"]

    model, decoder = config["model"], config["model"]["decoder"]
    graph_model = onnx.load(str(path / decoder["filename"]), load_external_data=False)
    graph = graph_model.graph
    inputs = {i.name: [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim] for i in graph.input}
    outputs = {o.name: [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim] for o in graph.output}
    hf = json.loads((path / "config.json").read_text())
    layers = decoder["num_hidden_layers"]
    assert decoder["filename"] == "model.onnx" and layers == hf["num_hidden_layers"] == 3
    names_in, names_out = decoder["inputs"], decoder["outputs"]
    past = {names_in[k] % i for k in ("past_key_names", "past_value_names") for i in range(layers)}
    present = {names_out[k] % i for k in ("present_key_names", "present_value_names") for i in range(layers)}
    plain_in = {v for k, v in names_in.items() if not k.endswith("_names")}
    assert plain_in == {"input_ids", "attention_mask", "position_ids"} and plain_in | past == set(inputs)
    assert {names_out["logits"]} | present == set(outputs)
    first_past = inputs[names_in["past_key_names"] % 0]
    assert decoder["num_key_value_heads"] == first_past[1] == hf["num_key_value_heads"]
    assert decoder["head_size"] == first_past[3] == hf["head_dim"] == 32
    assert decoder["num_attention_heads"] == hf["num_attention_heads"] and decoder["hidden_size"] == hf["hidden_size"]
    assert model["vocab_size"] == outputs["logits"][-1] == hf["vocab_size"]
    assert model["type"] == "llama" and model["context_length"] == config["search"]["max_length"] == 512

    edge = EdgeModel.load(path)
    assert [model["eos_token_id"]] == edge.eos_ids and model["pad_token_id"] == edge.pad_id
    assert model["bos_token_id"] == hf["bos_token_id"]
    # ci-x86's [runtime]: 2 intra-op threads, 1 inter-op, level "all", spinning on, CPU provider
    options = decoder["session_options"]
    assert options["provider_options"] == [] and options["intra_op_num_threads"] == 2
    assert options["inter_op_num_threads"] == 1 and options["graph_optimization_level"] == "ORT_ENABLE_ALL"
    assert options["session.intra_op.allow_spinning"] == options["session.inter_op.allow_spinning"] == "1"

    shared = {p.key: p.value for p in graph_model.metadata_props}.get("edge_tailor.kv_cache") == "shared"
    assert shared == (kind == "attention") == edge.shared_kv
    assert config["search"]["past_present_share_buffer"] is shared
    assert config["search"]["do_sample"] is False and config["search"]["num_beams"] == 1


def test_genai_greedy_tokens_equal_the_edge_runtime(bundle):
    import onnxruntime_genai as og

    kind, path = bundle
    model = og.Model(str(path))  # reads the bundle's genai_config.json
    tokenizer = og.Tokenizer(model)
    genai = {}
    for prompt in PROMPTS:
        ids = [int(t) for t in tokenizer.encode(prompt)]
        genai[prompt] = ids, _genai_greedy(model, ids, NEW_TOKENS, {1})
    del tokenizer, model

    edge = EdgeModel.load(path)  # verifies the files: genai wrote nothing into the bundle
    assert edge.eos_ids == [1]
    for prompt, (ids, tokens) in genai.items():
        assert ids == edge.encode(prompt), prompt
        expected = edge.generate(prompt, NEW_TOKENS)
        assert tokens == expected.tokens, (kind, prompt, tokens, expected.tokens)
        assert len(tokens) == NEW_TOKENS or expected.stop_reason == "eos"


def test_genai_and_edge_runtime_stop_at_the_same_eos(bundle):
    # The student rarely ends within 24 tokens; make "." an eos for both so the stop rule is exercised.
    import onnxruntime_genai as og

    kind, path = bundle
    edge = EdgeModel.load(path)
    dot = edge.encode(".")
    assert len(dot) == 1
    config = og.Config(str(path))
    config.overlay(json.dumps({"model": {"eos_token_id": [1, dot[0]]}}))
    model = og.Model(config)
    stopped = 0
    for prompt in PROMPTS:
        ids = edge.encode(prompt)
        expected = edge.generate(prompt, NEW_TOKENS, stop=[dot[0]])
        assert _genai_greedy(model, ids, NEW_TOKENS, {1, dot[0]}) == expected.tokens, (kind, prompt)
        stopped += expected.stop_reason == "stop"
    assert stopped >= 2  # the rule was exercised, not just the length limit


def test_write_genai_config_for_another_model_file_and_target(tmp_path, bundle):
    kind, path = bundle
    folder = tmp_path / "copy"
    folder.mkdir()
    for name in ("model.onnx", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((path / name).read_bytes())
    (folder / "model_alt.onnx").write_bytes((path / "model.onnx").read_bytes())
    written = write_genai_config(folder, "model_alt.onnx", target="arm64-a76")
    config = json.loads(written.read_text())
    assert written == folder / "genai_config.json" and config["model"]["decoder"]["filename"] == "model_alt.onnx"
    options = config["model"]["decoder"]["session_options"]
    assert options["intra_op_num_threads"] == 4 and options["session.intra_op.allow_spinning"] == "0"
    # no target and no target.toml: ONNX Runtime's defaults (no thread counts written)
    assert "intra_op_num_threads" not in genai_config(folder)["model"]["decoder"]["session_options"]
