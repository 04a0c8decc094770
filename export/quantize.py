"""Quantize an fp32 ONNX decoder the way a target's ``[quant]`` block says.

- ``model.onnx``: INT8 through Optimum's ``ORTQuantizer`` (dynamic, or static QDQ calibrated on task
  text), weights per-channel or per-tensor, the target's ``ort_preset`` as the base config.
  Weight-only targets (``activations.dtype = "none"`` or ``weights.dtype = "int4"``) get MatMulNBits here.
- ``model_q4.onnx`` / ``model_q8.onnx``: ONNX Runtime ``MatMulNBits`` block-wise weight-only, when
  ``weight_only_blocks.enabled``.
- ``fuse="ort"`` first runs ONNX Runtime's transformer optimizer on the fp32 graph (``fuse_graph``):
  RMSNorm plus residual add become ``SkipSimplifiedLayerNormalization`` and the rotary embedding
  ``RotaryEmbedding`` (com.microsoft ops of the CPU provider); attention stays unfused.
  ``fuse="attention"`` also replaces each layer's attention (rotary, KV concat, scores, softmax,
  mask, output reshapes) by one ``GroupQueryAttention`` whose cache the edge runtime preallocates
  and updates in place, and packs the q/k/v and the gate/up projections into one MatMul each.
  The graph keeps Optimum's inputs and outputs, so Optimum and any ``past_key_values`` loop still
  run it. Measured figures: ``benchmarks/README.md``.

Only MatMuls with a constant weight (the linear layers and the output head) are quantized:
those are what QAT simulates in ``distill``. The attention-score and rotary MatMuls multiply two
activations; quantizing them adds error that training never saw.

Usage::

    summary = quantize_for_target("export/fp32", "export/int8", load_target("ci-x86"))
"""

from __future__ import annotations

import fnmatch
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx

from edge_tailor.errors import ArtifactError, InputError
from edge_tailor.target import Target, load_target, target_path

from .onnx_export import copy_side_files

# ops that may sit between the output head's MatMul and `logits` (bias, dtype cast, Gemma-style soft-cap)
_HEAD_PASSTHROUGH = {"Add", "Cast", "Identity", "Reshape", "Mul", "Div", "Tanh"}
FUSIONS = ("ort", "attention")
KV_CACHE_META = "edge_tailor.kv_cache"  # read by the edge runtime: "shared" = one in-place cache buffer
_PRESENT = re.compile(r"^present\.(\d+)\.(key|value)$")
_QUANTIZED_OPS = {"MatMulInteger", "DynamicQuantizeMatMul", "QLinearMatMul", "MatMulIntegerToFloat", "MatMulNBits"}


def quantize_for_target(onnx_dir: str | Path, out_dir: str | Path, target: Target | str | Path,
                        calibration_texts: Sequence[str] | None = None, fuse: str | None = None) -> dict:
    """Write the target's quantized model(s) plus config and tokenizer files to ``out_dir``; return what was done.

    ``fuse``: ``None`` quantizes the graph as exported; ``"ort"`` or ``"attention"`` fuse it first (``fuse_graph``).
    """
    onnx_dir, out_dir = Path(onnx_dir), Path(out_dir)
    # where an error should point: the target file, or the name of a Target built in code
    source = f"target {target.name}" if isinstance(target, Target) else target_path(target)
    target = target if isinstance(target, Target) else load_target(target)
    fp32 = onnx_dir / "model.onnx"
    if not fp32.is_file():
        raise ArtifactError(onnx_dir, "model.onnx", "missing: run export_onnx first")
    if out_dir.resolve() == onnx_dir.resolve():
        raise InputError(out_dir, None, "must differ from the fp32 folder (the quantizer would overwrite its input)")
    out_dir.mkdir(parents=True, exist_ok=True)
    fp32_mb = round(fp32.stat().st_size / 1e6, 3)
    with tempfile.TemporaryDirectory() as fused_tmp:
        fusion = None
        if fuse is not None:
            fusion = fuse_graph(fp32, Path(fused_tmp) / "model.onnx", attention=_fusion_kind(fuse, source))
            copy_side_files(onnx_dir, Path(fused_tmp))
            onnx_dir, fp32 = Path(fused_tmp), Path(fused_tmp) / "model.onnx"
        summary = _quantize(onnx_dir, fp32, out_dir, target, source, calibration_texts)
    return {**summary, "fp32_mb": fp32_mb, "fused": fusion}


def _fusion_kind(fuse: str, source) -> bool:
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
    import json

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
        fused["GroupQueryAttention"] = _fuse_attention(optimized.model, config, fp32)
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


def _fuse_attention(model: onnx.ModelProto, config: dict, source: Path) -> int:
    """Replace each layer's attention by rotary + ``GroupQueryAttention``; return how many layers.

    Works on Optimum's Llama-family export after the transformer optimizer (it finds layers by
    Optimum's node names and reuses the fusion's cos/sin caches). Inputs and outputs stay Optimum's:
    ``seqlens_k`` and ``total_sequence_length`` come from the mask's shape (every row's cache is T
    slots long under left padding) and the mask becomes an additive bias, so padding behaves as in
    the original graph. Rotary stays a separate op fed with ``position_ids`` for the same reason.
    The file is marked ``edge_tailor.kv_cache = shared``: the operator may then read and write one
    preallocated buffer per cache tensor, which the edge runtime binds as both past and present.
    The q/k/v and gate/up projections are packed into one MatMul each (``_pack``).
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    window = config.get("sliding_window")
    if window and config.get("use_sliding_window", True) and window < config.get("max_position_embeddings", 0):
        raise InputError(source, "sliding_window", "attention fusion does not handle sliding-window attention")
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
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
        rope = dict(domain="com.microsoft", interleaved=0, rotary_embedding_dim=head_dim)
        new += [
            helper.make_node("RotaryEmbedding", [q, "position_ids", cos, sin], [p + "q_rot"], p + "RotaryQ",
                             num_heads=heads, **rope),
            helper.make_node("RotaryEmbedding", [k, "position_ids", cos, sin], [p + "k_rot"], p + "RotaryK",
                             num_heads=kv_heads, **rope),
            helper.make_node("GroupQueryAttention",
                             [p + "q_rot", p + "k_rot", v, f"past_key_values.{i}.key", f"past_key_values.{i}.value",
                              g + "seqlens_k", g + "total_sequence_length", "", "", "", g + "attention_bias"],
                             [p + "output", key, value], p + "GroupQueryAttention", domain="com.microsoft",
                             num_heads=heads, kv_num_heads=kv_heads, scale=float(head_dim ** -0.5), do_rotary=0),
        ]
        o_proj.input[0] = p + "output"
    kept = [n for n in graph.node if n.name not in replaced]
    del graph.node[:]
    graph.node.extend(kept + new)
    for i in layers:
        _pack(graph, [f"/model/layers.{i}/self_attn/{p}_proj/MatMul" for p in "qkv"], f"/model/layers.{i}/self_attn/qkv_proj")
        _pack(graph, [f"/model/layers.{i}/mlp/{p}_proj/MatMul" for p in ("gate", "up")], f"/model/layers.{i}/mlp/gate_up_proj")
    _prune_and_sort(graph)
    if not any(m.key == KV_CACHE_META for m in model.metadata_props):
        model.metadata_props.append(onnx.StringStringEntryProto(key=KV_CACHE_META, value="shared"))
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return len(layers)


def _pack(graph: onnx.GraphProto, names: list[str], packed: str) -> bool:
    """Replace MatMuls that share an input by one MatMul on their concatenated weights and a Split.

    A decode step multiplies one token, so each MatMul is a pass over its weights plus a dispatch to
    the thread pool; one wider pass costs less than three. Per output column the arithmetic is the
    same, so per-channel and block-wise quantization give the same numbers as unpacked.
    """
    from onnx import helper, numpy_helper

    by_name = {n.name: n for n in graph.node}
    nodes = [by_name.get(n) for n in names]
    initializers = {t.name: t for t in graph.initializer}
    if any(n is None or n.input[1] not in initializers for n in nodes) or len({n.input[0] for n in nodes}) != 1:
        return False
    weights = [numpy_helper.to_array(initializers[n.input[1]]) for n in nodes]
    if any(w.ndim != 2 for w in weights):
        return False
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
    return True


def _prune_and_sort(graph: onnx.GraphProto) -> None:
    """Drop nodes and initializers nothing reads any more, then order the nodes topologically."""
    nodes = list(graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    live, frontier = set(), [o.name for o in graph.output]
    while frontier:
        i = producer.get(frontier.pop())
        if i is not None and i not in live:
            live.add(i)
            frontier += [x for x in nodes[i].input if x]
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, order = sorted(live), []
    while pending:
        ready = [i for i in pending if all(x in available for x in nodes[i].input)]
        if not ready:
            raise ArtifactError("fused graph", nodes[pending[0]].name, "an input is produced by no node")
        for i in ready:
            available.update(nodes[i].output)
        order += ready
        pending = sorted(set(pending) - set(ready))
    ordered = []
    for i in order:
        copy = onnx.NodeProto()
        copy.CopyFrom(nodes[i])
        ordered.append(copy)
    used = {x for n in ordered for x in n.input}
    produced = {o for n in ordered for o in n.output}
    initializers = [t for t in graph.initializer if t.name in used]
    value_info = [v for v in graph.value_info if v.name in produced]
    for field, kept in ((graph.node, ordered), (graph.initializer, initializers), (graph.value_info, value_info)):
        kept = list(kept)
        del field[:]
        field.extend(kept)


def _quantize(onnx_dir: Path, fp32: Path, out_dir: Path, target: Target, source, calibration_texts) -> dict:
    q = target.quant
    model = onnx.load(str(fp32), load_external_data=False)
    untied = q.quantize_lm_head and _untie_head(model, fp32.parent)
    graph = model.graph
    weight_matmuls = _weight_matmuls(graph)
    head = _lm_head(graph, weight_matmuls)
    if q.quantize_lm_head and head is None:
        raise ArtifactError(fp32, "logits", "no MatMul with a constant weight feeds the logits: cannot quantize the "
                                            "output head as quant.quantize_lm_head asks")
    excluded = _fallback_nodes(graph, q.fallback_fp32_nodes, source)
    if not q.quantize_lm_head and head:
        excluded.add(head)
    selected = [n for n in weight_matmuls if n not in excluded]

    weight_only = q.activations.dtype == "none" or q.weights.dtype == "int4"
    blocks = q.weight_only_blocks
    if weight_only and not (blocks and blocks.enabled):
        raise InputError(source, "quant.weight_only_blocks",
                         'weight-only quantization (activations.dtype = "none") ships as MatMulNBits: '
                         "enable this block")
    files = {}
    with tempfile.TemporaryDirectory() as tmp:
        src_dir = onnx_dir
        if untied:
            src_dir = Path(tmp)
            onnx.save(model, str(src_dir / "model.onnx"))
            copy_side_files(onnx_dir, src_dir)
        if weight_only:
            files["model.onnx"] = _matmul_nbits(src_dir / "model.onnx", out_dir / "model.onnx", q, excluded)
        else:
            files["model.onnx"] = _int8(src_dir, out_dir, q, selected, calibration_texts, source)
        if blocks and blocks.enabled and not weight_only:
            name = f"model_q{blocks.bits}.onnx"
            files[name] = _matmul_nbits(src_dir / "model.onnx", out_dir / name, q, excluded)
    copy_side_files(onnx_dir, out_dir)

    for name, info in files.items():
        info["mb"] = round((out_dir / name).stat().st_size / 1e6, 3)
        if info["quantized_nodes"] == 0:
            raise ArtifactError(out_dir / name, "quantization", "no node was quantized: the graph has no weight MatMul")
    return {"target": target.name, "fp32_mb": round(fp32.stat().st_size / 1e6, 3), "files": files,
            "weight_matmuls": len(weight_matmuls), "lm_head": {"node": head, "quantized": head in selected,
                                                                "untied_from_embedding": bool(untied)},
            "fp32_matmuls": sorted(excluded & set(weight_matmuls))}


def _untie_head(model: onnx.ModelProto, base_dir: Path) -> bool:
    """Give a tied output head its own transposed weight so the quantizer can quantize it.

    Optimum exports tied embeddings as ``MatMul(x, Transpose(embed_tokens))``: a MatMul with a
    computed weight, which ONNX Runtime's quantizers leave fp32. The head is the largest matrix read
    per token, so an fp32 head costs more latency than a second (quantized) copy costs in size.
    """
    from onnx import numpy_helper

    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    head = producer.get("logits")
    while head is not None and head.op_type in _HEAD_PASSTHROUGH:
        head = next((producer[i] for i in head.input if i in producer), None)
    if head is None or head.op_type != "MatMul":
        return False
    transpose = producer.get(head.input[1])
    initializers = {t.name: t for t in graph.initializer}
    if transpose is None or transpose.op_type != "Transpose" or transpose.input[0] not in initializers:
        return False
    perm = next((list(a.ints) for a in transpose.attribute if a.name == "perm"), [1, 0])
    if perm != [1, 0]:
        return False
    weight = numpy_helper.to_array(initializers[transpose.input[0]], base_dir=str(base_dir))
    name = f"{transpose.input[0]}.lm_head_transposed"
    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight.T), name))
    head.input[1] = name
    if not any(transpose.output[0] in n.input for n in graph.node):
        graph.node.remove(transpose)
    return True


def _int8(onnx_dir: Path, out_dir: Path, q, selected: list[str], texts: Sequence[str] | None, source) -> dict:
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import (AutoQuantizationConfig, QuantizationConfig,
                                                   default_quantization_parameters)
    from onnxruntime.quantization import QuantType

    static = q.activations.mode == "static"
    per_channel = q.weights.granularity == "per_channel"
    if q.weights.granularity == "per_group":
        raise InputError(source, "quant.weights.granularity",
                         'per_group 8-bit weights ship as MatMulNBits: set activations.dtype = "none" '
                         "and enable weight_only_blocks")
    common = dict(is_static=static, use_symmetric_activations=q.activations.symmetric,
                  use_symmetric_weights=q.weights.symmetric, per_channel=per_channel,
                  nodes_to_quantize=selected, operators_to_quantize=["MatMul"])
    if q.ort_preset:
        config = getattr(AutoQuantizationConfig, q.ort_preset)(**common)
    else:
        quant_format, mode, _ = default_quantization_parameters(static)
        config = QuantizationConfig(is_static=static, format=quant_format, mode=mode,
                                    activations_symmetric=q.activations.symmetric,
                                    weights_symmetric=q.weights.symmetric, per_channel=per_channel,
                                    nodes_to_quantize=selected, operators_to_quantize=["MatMul"])
    # The target's dtypes win over the preset's (e.g. the avx2 preset's u8 weights).
    qtype = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    config.weights_dtype = qtype[q.weights.dtype]
    # Dynamic activations are always u8 in ONNX Runtime (DynamicQuantizeLinear); an "int8" target
    # means the same asymmetric 256-level grid, shifted by 128.
    config.activations_dtype = qtype[q.activations.dtype] if static else QuantType.QUInt8
    config.reduce_range = q.reduce_range

    quantizer = ORTQuantizer.from_pretrained(onnx_dir, file_name="model.onnx")
    ranges = None
    if static:
        ranges = _calibrate(quantizer, onnx_dir, q, texts, source)
    quantizer.quantize(config, out_dir, file_suffix=None, calibration_tensors_range=ranges)
    kind = f"int8-{'static' if static else 'dynamic'}"
    return {"kind": kind, "requested_nodes": len(selected), "quantized_nodes": _count_quantized(out_dir / "model.onnx"),
            "preset": q.ort_preset, "per_channel": per_channel, "reduce_range": q.reduce_range,
            "weights_dtype": config.weights_dtype.name, "activations_dtype": config.activations_dtype.name}


def _calibrate(quantizer, onnx_dir: Path, q, texts: Sequence[str] | None, source) -> dict:
    from onnxruntime.quantization import CalibrationMethod
    from optimum.onnxruntime.configuration import CalibrationConfig

    if not texts:
        raise InputError(source, "quant.activations.mode", "static quantization needs calibration texts from the task")
    samples = _calibration_samples(onnx_dir, list(texts)[: q.activations.calibration_samples])
    config = CalibrationConfig(dataset_name="task", dataset_config_name="calibration", dataset_split="train",
                               dataset_num_samples=len(samples), method=CalibrationMethod.MinMax)
    with tempfile.TemporaryDirectory() as tmp:
        return quantizer.fit(samples, config, onnx_augmented_model_name=Path(tmp) / "augmented.onnx",
                             operators_to_quantize=["MatMul"])


def _calibration_samples(onnx_dir: Path, texts: list[str]) -> list[dict]:
    """Prefill and cached-decode inputs: each text's first half as a prompt, its second half on top of that KV cache."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(onnx_dir / "tokenizer.json"))
    session = ort.InferenceSession(str(onnx_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    past_inputs = [i for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    present_names = [i.name.replace("past_key_values", "present") for i in past_inputs]
    samples = []
    for text in texts:
        ids = np.array(tokenizer.encode(text).ids, dtype=np.int64)
        if len(ids) < 2:
            continue
        cut = len(ids) // 2
        empty = {i.name: np.zeros((i.shape[1], 0, i.shape[3]), dtype=np.float32) for i in past_inputs}
        prefill = {"input_ids": ids[:cut], "attention_mask": np.ones(cut, dtype=np.int64),
                   "position_ids": np.arange(cut, dtype=np.int64), **empty}
        feed = {k: v[None] for k, v in prefill.items()}
        presents = session.run(present_names, feed)
        decode = {"input_ids": ids[cut:], "attention_mask": np.ones(len(ids), dtype=np.int64),
                  "position_ids": np.arange(cut, len(ids), dtype=np.int64),
                  **{i.name: p[0] for i, p in zip(past_inputs, presents)}}
        samples += [prefill, decode]
    if not samples:
        raise InputError("calibration texts", None, "every text is shorter than 2 tokens")
    return samples  # unbatched: Optimum's calibration reader adds the batch axis


def _matmul_nbits(fp32: Path, out: Path, q, excluded: set[str]) -> dict:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    blocks = q.weight_only_blocks
    quantizer = MatMulNBitsQuantizer(onnx.load(str(fp32)), bits=blocks.bits, block_size=blocks.block_size,
                                     is_symmetric=q.weights.symmetric, accuracy_level=blocks.accuracy_level,
                                     nodes_to_exclude=sorted(excluded), op_types_to_quantize=("MatMul",))
    quantizer.process()
    quantizer.model.save_model_to_file(str(out), use_external_data_format=False)
    return {"kind": f"weight-only-{blocks.bits}bit", "quantized_nodes": _count_quantized(out), "bits": blocks.bits,
            "block_size": blocks.block_size, "accuracy_level": blocks.accuracy_level}


def _weight_matmuls(graph: onnx.GraphProto) -> list[str]:
    constants = {t.name for t in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in constants]


def _lm_head(graph: onnx.GraphProto, weight_matmuls: list[str]) -> str | None:
    """The weight MatMul that feeds the ``logits`` output, through at most a bias, cast or soft-cap."""
    producer = {o: n for n in graph.node for o in n.output}
    frontier, seen = ["logits"], set()
    while frontier:
        node = producer.get(frontier.pop(0))
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.name in weight_matmuls:
            return node.name
        if node.op_type in _HEAD_PASSTHROUGH:
            frontier += list(node.input)
    return None


def _fallback_nodes(graph: onnx.GraphProto, patterns: list[str], source) -> set[str]:
    names = [n.name for n in graph.node]
    chosen = set()
    for i, pattern in enumerate(patterns):
        hits = fnmatch.filter(names, pattern)
        if not hits:
            raise InputError(source, f"quant.fallback_fp32_nodes[{i}]",
                             f"pattern {pattern!r} matches no node (names look like {names[len(names) // 2]!r})")
        chosen.update(hits)
    return chosen


def _count_quantized(path: Path) -> int:
    graph = onnx.load(str(path), load_external_data=False).graph
    ops = Counter(n.op_type for n in graph.node)
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    qdq = sum(1 for n in graph.node if n.op_type == "MatMul" and n.input[1] in dequantized)
    return sum(ops[o] for o in _QUANTIZED_OPS) + qdq
