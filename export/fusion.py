"""Graph surgery on an exported decoder: ONNX Runtime's transformer optimizer, then (optionally) one
``GroupQueryAttention`` per layer over a cache the edge runtime preallocates and updates in place.

- ``fuse_graph(fp32, out)``: RMSNorm plus residual add become ``SkipSimplifiedLayerNormalization``
  and the rotary embedding ``RotaryEmbedding`` (com.microsoft ops of the CPU provider).
- ``fuse_graph(fp32, out, attention=True)``: also each layer's attention (rotary, KV concat, scores,
  softmax, mask, output reshapes) becomes one ``GroupQueryAttention`` with the rotary inside, fed by
  one packed q/k/v MatMul; the gate/up projections are packed into one MatMul too. The graph keeps Optimum's inputs and outputs,
  so Optimum and any ``past_key_values`` loop still run it. Measured figures: ``benchmarks/README.md``.

ONNX Runtime's ``OnnxModel`` does the bookkeeping (producer/consumer maps, pruning, topological
order); what no library does is the attention rewrite for Optimum's Llama-family export, hence
``_fuse_attention`` and ``_pack``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx

from edge_tailor.errors import ArtifactError, InputError

FUSIONS = ("ort", "attention")
KV_CACHE_META = "edge_tailor.kv_cache"  # read by the edge runtime: "shared" = one in-place cache buffer
_PRESENT = re.compile(r"^present\.(\d+)\.(key|value)$")


def fusion_kind(fuse: str, source) -> bool:
    """``True`` for attention fusion, ``False`` for the optimizer's fusions only."""
    if fuse not in FUSIONS:
        raise InputError(source, "fuse", f"unknown fusion {fuse!r} (choose from: {', '.join(FUSIONS)})")
    return fuse == "attention"


def fuse_graph(fp32: str | Path, out: str | Path, attention: bool = False) -> dict[str, int]:
    """ONNX Runtime's transformer optimizer on an exported decoder; returns the fused op counts.

    ``model_type="gpt2"`` is the one whose fusions match Optimum's Llama-family export (RMSNorm +
    residual into ``SkipSimplifiedLayerNormalization``, rotary into ``RotaryEmbedding``); no model
    type fuses its attention. ``opt_level=0`` keeps the file free of ONNX Runtime's own
    machine-specific rewrites: the session applies those on the device. ``attention``: also
    replace each layer's attention by ``GroupQueryAttention`` (``_fuse_attention``).
    """
    from onnxruntime.transformers.optimizer import optimize_model

    fp32, out = Path(fp32), Path(out)
    config_file = fp32.parent / "config.json"
    if not config_file.is_file():
        raise ArtifactError(fp32.parent, "config.json", "missing: fusion needs the model's heads and hidden size")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    optimized = optimize_model(str(fp32), model_type="gpt2", num_heads=config["num_attention_heads"],
                               hidden_size=config["hidden_size"], opt_level=0)
    fused = {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}
    if not fused:
        raise ArtifactError(fp32, "fusion", "ONNX Runtime's transformer optimizer fused nothing in this graph")
    _trim_rotary_caches(optimized.model, config.get("max_position_embeddings"))
    if attention:
        fused["GroupQueryAttention"] = _fuse_attention(optimized, config, fp32)
    # onnx's shape inference stops at com.microsoft ops and the quantizer then cannot type the MatMuls
    # after them; ONNX Runtime's symbolic inference knows those ops, so record its types in the file.
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    optimized.model = SymbolicShapeInference.infer_shapes(optimized.model, auto_merge=True)
    big = fp32.stat().st_size + sum(f.stat().st_size for f in fp32.parent.glob("*.onnx_data")) > 1_800_000_000
    optimized.save_model_to_file(str(out), use_external_data_format=big)  # protobuf caps a file at 2 GB
    return fused


def _trim_rotary_caches(model: onnx.ModelProto, max_positions: int | None) -> None:
    """Cut the fusion's cos/sin caches (built for 131072 positions) to the model's own context length.

    RotaryEmbedding gathers one row per position, so rows past ``max_position_embeddings`` are never
    read; left in, they add 2 x 131072 x head_dim/2 floats (33 MB at head_dim 64) to every file.
    A sequence longer than the model's context then fails in RotaryEmbedding instead of running on
    positions the model never saw.
    """
    from onnx import numpy_helper

    if not max_positions:
        return
    caches = {n.input[i] for n in model.graph.node if n.op_type == "RotaryEmbedding" for i in (2, 3)}
    for i, tensor in enumerate(model.graph.initializer):
        if tensor.name in caches and tensor.dims[0] > max_positions:
            rows = numpy_helper.to_array(tensor)[:max_positions]
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(rows), tensor.name))


def _fuse_attention(onnx_model, config: dict, source: Path) -> int:
    """Replace each layer's attention by one ``GroupQueryAttention``; return how many layers.

    Works on Optimum's Llama-family export after the transformer optimizer (it finds layers by
    Optimum's node names and reuses the fusion's cos/sin caches). Inputs and outputs stay Optimum's:
    ``seqlens_k`` and ``total_sequence_length`` come from the mask's shape (every row's cache is T
    slots long under left padding) and the mask becomes an additive bias, so padding behaves as in
    the original graph. The rotary runs inside the attention op (``do_rotary``), on the fusion's caches.
    The file is marked ``edge_tailor.kv_cache = shared``: the operator may then read and write one
    preallocated buffer per cache tensor, which the edge runtime binds as both past and present.
    The q/k/v and gate/up projections are packed into one MatMul each (``_pack``).
    """
    from onnx import TensorProto, helper, numpy_helper

    model = onnx_model.model
    graph = model.graph
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    window = config.get("sliding_window")
    if window and config.get("use_sliding_window", True) and window < config.get("max_position_embeddings", 0):
        raise InputError(source, "sliding_window", "attention fusion does not handle sliding-window attention")
    producer = onnx_model.output_name_to_node()
    consumers = onnx_model.input_name_to_nodes()
    by_name = {n.name: n for n in graph.node}
    rotary = next((n for n in graph.node if n.op_type == "RotaryEmbedding"), None)
    layers = sorted({int(o.name.split(".")[1]) for o in graph.output if _PRESENT.match(o.name)})
    if rotary is None or not layers:
        raise ArtifactError(source, "attention fusion", "no fused RotaryEmbedding or no present.* outputs: "
                                                        "not a Llama-family decoder exported with its KV cache")
    cos, sin = rotary.input[2], rotary.input[3]

    def node(name: str):
        if name not in by_name:
            raise ArtifactError(source, "attention fusion", f"no node {name} (expects Optimum's Llama-family names)")
        return by_name[name]

    def projection(layer: int, proj: str) -> str:
        out = node(f"/model/layers.{layer}/self_attn/{proj}_proj/MatMul").output[0]
        after = consumers.get(out, [])
        return after[0].output[0] if len(after) == 1 and after[0].op_type == "Add" else out  # with a bias (Qwen2)

    def const(name: str, value) -> str:
        graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    g = "/gqa/"  # shared by all layers: total length T, seqlens_k = T - 1, bias [B, 1, S, T] from the mask
    one, one1, two1 = const(g + "one", np.int64(1)), const(g + "one1", [1]), const(g + "two1", [2])
    new = [
        helper.make_node("Shape", ["attention_mask"], [g + "mask_shape"]),
        helper.make_node("Shape", ["input_ids"], [g + "ids_shape"]),
        helper.make_node("Gather", [g + "mask_shape", one], [g + "total64"], axis=0),
        helper.make_node("Cast", [g + "total64"], [g + "total_sequence_length"], to=TensorProto.INT32),
        helper.make_node("Sub", [g + "total_sequence_length", const(g + "one32", np.int32(1))], [g + "last"]),
        helper.make_node("Slice", [g + "mask_shape", const(g + "zero1", [0]), one1], [g + "batch"]),
        helper.make_node("Expand", [g + "last", g + "batch"], [g + "seqlens_k"]),
        helper.make_node("Cast", ["attention_mask"], [g + "mask_float"], to=TensorProto.FLOAT),
        helper.make_node("Sub", [const(g + "one_float", np.float32(1)), g + "mask_float"], [g + "pads"]),
        # a large finite value, not -inf: a pad query row that sees only pads gets a uniform row, not NaN
        helper.make_node("Mul", [g + "pads", const(g + "masked", np.float32(-1e9))], [g + "bias2d"]),
        helper.make_node("Unsqueeze", [g + "bias2d", const(g + "axes12", [1, 2])], [g + "bias4d"]),
        helper.make_node("Slice", [g + "ids_shape", one1, two1], [g + "seq"]),
        helper.make_node("Slice", [g + "mask_shape", one1, two1], [g + "total1"]),
        helper.make_node("Concat", [g + "batch", one1, g + "seq", g + "total1"], [g + "bias_shape"], axis=0),
        helper.make_node("Expand", [g + "bias4d", g + "bias_shape"], [g + "attention_bias"]),
    ]
    for i, n in enumerate(new):
        n.name = f"{g}{n.op_type}_{i}"
    replaced = set()
    for i in layers:
        q, k, v = (projection(i, p) for p in "qkv")
        o_proj = node(f"/model/layers.{i}/self_attn/o_proj/MatMul")
        key, value = f"present.{i}.key", f"present.{i}.value"
        replaced |= {producer[key].name, producer[value].name}
        p = f"/model/layers.{i}/self_attn/fused/"
        # rotary inside the attention op: GroupQueryAttention numbers each row's slots 0..T-1 from
        # seqlens_k, pads included, so a left-padded row is shifted by its pad count against
        # position_ids; rotary scores depend only on position differences, so attention is unchanged
        new.append(helper.make_node(
            "GroupQueryAttention",
            [q, k, v, f"past_key_values.{i}.key", f"past_key_values.{i}.value", g + "seqlens_k",
             g + "total_sequence_length", cos, sin, "", g + "attention_bias"],
            [p + "output", key, value], p + "GroupQueryAttention", domain="com.microsoft", num_heads=heads,
            kv_num_heads=kv_heads, scale=float(head_dim ** -0.5), do_rotary=1, rotary_interleaved=0))
        o_proj.input[0] = p + "output"
    kept = [n for n in graph.node if n.name not in replaced]
    del graph.node[:]
    graph.node.extend(kept + new)
    for i in layers:
        qkv = _pack(graph, [f"/model/layers.{i}/self_attn/{p}_proj/MatMul" for p in "qkv"],
                    f"/model/layers.{i}/self_attn/qkv_proj")
        attention = next(n for n in graph.node if n.name == f"/model/layers.{i}/self_attn/fused/GroupQueryAttention")
        if qkv is not None and list(attention.input[:3]) == list(qkv.output):
            # q, k and v straight from the packed MatMul (GroupQueryAttention's packed input): no Split
            attention.input[0], attention.input[1], attention.input[2] = qkv.input[0], "", ""
        _pack(graph, [f"/model/layers.{i}/mlp/{p}_proj/MatMul" for p in ("gate", "up")], f"/model/layers.{i}/mlp/gate_up_proj")
    # drop what nothing reads any more (the old attention subgraphs), then restore topological order
    onnx_model.prune_graph(allow_remove_graph_inputs=False)
    onnx_model.topological_sort(is_deterministic=True)
    if not any(m.key == KV_CACHE_META for m in model.metadata_props):
        model.metadata_props.append(onnx.StringStringEntryProto(key=KV_CACHE_META, value="shared"))
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return len(layers)


def _pack(graph: onnx.GraphProto, names: list[str], packed: str):
    """Replace MatMuls that share an input by one MatMul on their concatenated weights and a Split.

    A decode step multiplies one token, so each MatMul is a pass over its weights plus a dispatch to
    the thread pool; one wider pass costs less than three. Per output column the arithmetic is the
    same, so per-channel and block-wise quantization give the same numbers as unpacked. Returns the
    Split, or ``None`` where the projections are left as they are.
    """
    from onnx import helper, numpy_helper

    by_name = {n.name: n for n in graph.node}
    nodes = [by_name.get(n) for n in names]
    initializers = {t.name: t for t in graph.initializer}
    if any(n is None or n.input[1] not in initializers for n in nodes) or len({n.input[0] for n in nodes}) != 1:
        return None  # not three (two) projections of one input with constant weights: leave them as they are
    weights = [numpy_helper.to_array(initializers[n.input[1]]) for n in nodes]
    if any(w.ndim != 2 for w in weights):
        return None
    graph.initializer.append(numpy_helper.from_array(np.concatenate(weights, axis=1), f"{packed}.weight"))
    split = numpy_helper.from_array(np.array([w.shape[1] for w in weights], np.int64), f"{packed}.split")
    graph.initializer.append(split)
    matmul = helper.make_node("MatMul", [nodes[0].input[0], f"{packed}.weight"], [f"{packed}/MatMul_output_0"],
                              f"{packed}/MatMul")
    # the Split writes the old outputs' names, so every consumer stays as it was
    parts = helper.make_node("Split", [matmul.output[0], split.name], [n.output[0] for n in nodes], f"{packed}/Split",
                             axis=-1)
    kept = [n for n in graph.node if n.name not in names]
    del graph.node[:]
    graph.node.extend(kept + [matmul, parts])
    return parts


def graph_to_ship(fp32_dir: str | Path, work_dir: str | Path, attention: str, prompts: list[str],
                  new_tokens: int = 32) -> tuple[Path, dict]:
    """The fp32 graph a target ships: attention-fused when asked and when it decodes exactly as exported.

    Returns the folder to quantize and what was decided. Fusion can fail on an architecture it does
    not know (sliding windows, other node names), and a fused graph must give the exported graph's
    greedy tokens through the edge runtime (shared cache) on every prompt; otherwise the unfused graph
    ships and ``why`` says what failed.
    """
    from .onnx_export import copy_side_files
    from .runtime import EdgeModel

    fp32_dir, work_dir = Path(fp32_dir), Path(work_dir)
    decision = {"requested": attention, "attention": "unfused"}
    if attention == "unfused":
        return fp32_dir, decision
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        decision["fused_ops"] = fuse_graph(fp32_dir / "model.onnx", work_dir / "model.onnx", attention=True)
    except (InputError, ArtifactError) as exc:
        return fp32_dir, {**decision, "why": f"fusion failed: {exc}"}
    copy_side_files(fp32_dir, work_dir)
    exported, fused = EdgeModel.load(fp32_dir, verify=False), EdgeModel.load(work_dir, verify=False)
    exported.eos_ids = fused.eos_ids = []  # compare every step, not only up to an early stop
    for i, prompt in enumerate(prompts):
        want, got = exported.generate(prompt, new_tokens).tokens, fused.generate(prompt, new_tokens).tokens
        if want != got:
            step = next(k for k, (a, b) in enumerate(zip(want, got)) if a != b)
            return fp32_dir, {**decision, "why": f"fused fp32 greedy tokens differ from the exported graph's on "
                                                 f"prompt {i} at step {step}"}
    return work_dir, {**decision, "attention": "fused", "checked": {"prompts": len(prompts), "tokens": new_tokens}}
