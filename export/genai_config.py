"""``genai_config.json``: what onnxruntime-genai needs to run a bundle's ``model.onnx``.

onnxruntime-genai (``pip install onnxruntime-genai``, runtime only) opens a folder holding a
``genai_config.json``, the ONNX decoder and the tokenizer files (``tokenizer.json``,
``tokenizer_config.json``); a bundle ships all of them, so it runs as it is::

    import onnxruntime_genai as og
    model = og.Model("bundle/")
    tokenizer = og.Tokenizer(model)

The config is filled the way onnxruntime-genai's model builder fills its own (``make_genai_config``),
but from what the bundle holds: input/output names, layers and KV heads from the ONNX graph (read
without its weights), sizes and special tokens from ``config.json`` / ``generation_config.json``
(eos and pad resolved by the same rule as the edge runtime, so both stop at the same token),
session options from the target's ``[runtime]`` block. ``past_present_share_buffer`` is true
exactly when the graph says ``edge_tailor.kv_cache = shared`` (the exporter's attention fusion:
GroupQueryAttention reads and appends to one preallocated cache buffer per tensor, the layout
onnxruntime-genai allocates with that flag); an unfused graph concatenates and must get false.

One config per folder, for ``model.onnx`` (onnxruntime-genai reads only ``genai_config.json``).
Another model file of the bundle (``model_q4.onnx``, ``model_q8.onnx``: same inputs, outputs and
cache layout, weight-only quantized) runs with the same config pointed at it::

    config = og.Config("bundle/")
    config.overlay('{"model": {"decoder": {"filename": "model_q4.onnx"}}}')
    model = og.Model(config)

(or ``write_genai_config(folder, "model_q4.onnx")`` into a copy of the folder). onnxruntime-genai
has no calculator: a bundle whose manifest says ``decoding.calculator`` decodes differently there.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

from edge_tailor.errors import ArtifactError
from edge_tailor.target import Target, load_target

from .runtime import _KV_CACHE_META as KV_CACHE_META
from .runtime import _special_ids

GENAI_CONFIG = "genai_config.json"
_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
_PRESENT = re.compile(r"^present\.(\d+)\.(key|value)$")
# onnxruntime-genai's decoder-only model types (src/models/model_type.h, IsLLM); any other family
# runs as the generic "decoder": an Optimum export carries all its model-specific math in the graph.
GENAI_LLM_TYPES = {"chatglm", "decoder", "ernie4_5", "gemma", "gemma2", "gemma3_text", "gpt2", "gptoss", "granite",
                   "internlm2", "lfm2", "llama", "mistral", "nemotron", "olmo", "phi", "phimoe", "phi3", "phi3small",
                   "qwen2", "qwen3", "smollm3"}
_OPT_LEVELS = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
               "all": "ORT_ENABLE_ALL"}
# ONNX Runtime provider name -> onnxruntime-genai's provider_options key (the CPU provider takes none)
_PROVIDERS = {"CUDAExecutionProvider": "cuda", "DmlExecutionProvider": "dml", "QNNExecutionProvider": "QNN",
              "OpenVINOExecutionProvider": "OpenVINO", "WebGpuExecutionProvider": "WebGPU",
              "VitisAIExecutionProvider": "VitisAI", "NvTensorRTRTXExecutionProvider": "NvTensorRtRtx"}
# generation_config.json keys copied into "search", with onnxruntime-genai's builder defaults
_SEARCH_DEFAULTS = {"diversity_penalty": 0.0, "do_sample": False, "length_penalty": 1.0, "no_repeat_ngram_size": 0,
                    "num_beams": 1, "num_return_sequences": 1, "repetition_penalty": 1.0, "temperature": 1.0,
                    "top_k": 50, "top_p": 1.0}


def write_genai_config(model_dir: str | Path, model_file: str = "model.onnx",
                       target: Target | str | Path | None = None) -> Path:
    """Write ``model_dir/genai_config.json`` for ``model_file``; return its path.

    ``target``: a Target, a target name or .toml path whose ``[runtime]`` block gives the session
    options; None reads ``model_dir/target.toml`` when there is one (a bundle), else leaves
    ONNX Runtime's defaults. Raises ``ArtifactError`` for a graph without Optimum's KV-cache inputs.
    """
    model_dir = Path(model_dir)
    path = model_dir / GENAI_CONFIG
    path.write_text(json.dumps(genai_config(model_dir, model_file, target), indent=4) + "\n", encoding="utf-8")
    return path


def genai_config(model_dir: str | Path, model_file: str = "model.onnx",
                 target: Target | str | Path | None = None) -> dict:
    """The ``genai_config.json`` contents for ``model_dir/model_file`` (see ``write_genai_config``)."""
    import onnx
    from tokenizers import Tokenizer

    model_dir = Path(model_dir)
    model_path = model_dir / model_file
    if not model_path.is_file():
        raise ArtifactError(model_dir, model_file, "missing: nothing to write a genai_config.json for")
    config = _read_json(model_dir / "config.json")
    generation = _read_json(model_dir / "generation_config.json")
    proto = onnx.load(str(model_path), load_external_data=False)
    graph = proto.graph
    inputs = {i.name: i for i in graph.input}
    outputs = {o.name: o for o in graph.output}
    past = sorted(n for n in inputs if _PAST.match(n))
    if "input_ids" not in inputs or "logits" not in outputs or not past:
        raise ArtifactError(model_path, "genai_config", "no input_ids, logits or past_key_values.* in the graph: "
                                                        "export it with task text-generation-with-past")
    layers = sorted({int(_PAST.match(n)[1]) for n in past})
    presents = {int(_PRESENT.match(n)[1]) for n in outputs if _PRESENT.match(n)}
    if layers != list(range(len(layers))) or presents != set(layers):
        raise ArtifactError(model_path, "genai_config", f"past_key_values layers {layers} and present.* layers "
                                                        f"{sorted(presents)} are not the same 0..N-1")
    kv_heads, head_size = (_dim(inputs["past_key_values.0.key"], axis) for axis in (1, 3))
    vocab_size = _dim(outputs["logits"], -1) or config.get("vocab_size")
    heads = config.get("num_attention_heads")
    hidden = config.get("hidden_size")
    if None in (kv_heads, head_size, vocab_size, heads, hidden):
        raise ArtifactError(model_path, "genai_config", "cannot tell KV heads, head size, vocabulary size, "
                                                        "attention heads and hidden size from the graph and config.json")
    context = next((config[k] for k in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
                    if isinstance(config.get(k), int)), None)
    if context is None:
        raise ArtifactError(model_dir / "config.json", "max_position_embeddings", "missing: genai needs the context length")

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    eos_ids, pad_id = _special_ids(model_dir, tokenizer)  # the edge runtime's rule: both stop at the same eos
    if not eos_ids:
        raise ArtifactError(model_dir, "eos_token_id", "no eos token in generation_config.json, config.json or "
                                                       "tokenizer_config.json: onnxruntime-genai would never stop")
    bos = generation.get("bos_token_id", config.get("bos_token_id"))
    metadata = {p.key: p.value for p in proto.metadata_props}
    shared = metadata.get(KV_CACHE_META) == "shared"

    decoder_inputs = {"input_ids": "input_ids"}
    for name in ("attention_mask", "position_ids"):
        if name in inputs:
            decoder_inputs[name] = name
    decoder_inputs |= {"past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"}
    model_type = str(config.get("model_type", "decoder"))
    model = {
        "context_length": context,
        "decoder": {
            "session_options": _session_options(model_dir, target),
            "filename": model_file,
            "head_size": head_size,
            "hidden_size": hidden,
            "inputs": decoder_inputs,
            "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                        "present_value_names": "present.%d.value"},
            "num_attention_heads": heads,
            "num_hidden_layers": len(layers),
            "num_key_value_heads": kv_heads,
        },
        "eos_token_id": eos_ids[0] if len(eos_ids) == 1 else eos_ids,
        "pad_token_id": pad_id,
        "type": model_type if model_type in GENAI_LLM_TYPES else "decoder",
        "vocab_size": vocab_size,
    }
    if isinstance(bos, int):
        model["bos_token_id"] = bos
    search = {k: default if generation.get(k) is None else generation[k] for k, default in _SEARCH_DEFAULTS.items()}
    search |= {"early_stopping": True, "max_length": context, "min_length": 0, "past_present_share_buffer": shared}
    return {"model": dict(sorted(model.items())), "search": dict(sorted(search.items()))}


def _session_options(model_dir: Path, target: Target | str | Path | None) -> dict:
    """onnxruntime-genai's decoder session options from a target's ``[runtime]`` block.

    Threads and optimization level have their own keys; any other string key is an ONNX Runtime
    session config entry (``allow_spinning``). The execution mode has no key: ONNX Runtime's default
    is sequential, what the edge runtime sets.
    """
    options: dict = {"log_id": "onnxruntime-genai", "provider_options": []}
    if target is None:
        file = model_dir / "target.toml"
        runtime = tomllib.loads(file.read_text(encoding="utf-8")).get("runtime", {}) if file.is_file() else {}
    else:
        runtime = (target if isinstance(target, Target) else load_target(target)).runtime.model_dump()
    provider = runtime.get("execution_provider", "CPUExecutionProvider")
    if provider != "CPUExecutionProvider":
        options["provider_options"].append({_PROVIDERS.get(provider, provider.removesuffix("ExecutionProvider")): {}})
    if runtime.get("intra_op_threads"):
        options["intra_op_num_threads"] = int(runtime["intra_op_threads"])
    if runtime.get("inter_op_threads"):
        options["inter_op_num_threads"] = int(runtime["inter_op_threads"])
    if runtime.get("graph_optimization") in _OPT_LEVELS:
        options["graph_optimization_level"] = _OPT_LEVELS[runtime["graph_optimization"]]
    if "allow_spinning" in runtime:
        spin = "1" if runtime["allow_spinning"] else "0"
        options["session.intra_op.allow_spinning"] = spin
        options["session.inter_op.allow_spinning"] = spin
    return options


def _dim(value, axis: int) -> int | None:
    """A fixed size of one axis of a graph input or output; None for a symbolic or missing axis."""
    dims = value.type.tensor_type.shape.dim
    try:
        return dims[axis].dim_value or None
    except IndexError:
        return None


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(path, None, f"not valid JSON: {e}") from None
    return data if isinstance(data, dict) else {}
