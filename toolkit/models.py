"""Load teacher and student models from a local folder, a hub id, or the embedded world.

Safe by default: safetensors only and no remote code unless the user opts in.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import ModelSpec
from .errors import InputError

EMBEDDED_PREFIX = "embedded:"


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise InputError("config", "device", "cuda was asked for but no CUDA device is visible")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested != "auto":
        return getattr(torch, requested)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32  # CPU: fp32 is both the fastest and the exact reference for ONNX parity


def resolve_model_path(path: str) -> str:
    """Map 'embedded:teacher' / 'embedded:student' to the toy world's folder; others unchanged."""
    if path.startswith(EMBEDDED_PREFIX):
        from .toyworld.assets import embedded_model_dir

        return str(embedded_model_dir(path[len(EMBEDDED_PREFIX):]))
    return path


def check_model_folder(folder: Path, allow_pickle: bool) -> None:
    if not folder.is_dir():
        raise InputError(folder, None, "model folder does not exist")
    config = folder / "config.json"
    if not config.exists():
        raise InputError(folder, "config.json", "missing: not a Hugging Face model folder")
    try:
        json.loads(config.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(config, f"line {exc.lineno}", f"not valid JSON: {exc.msg}") from None
    has_safetensors = any(folder.glob("*.safetensors"))
    has_pickle = any(folder.glob("*.bin")) or any(folder.glob("*.pt"))
    if not has_safetensors and not (has_pickle and allow_pickle):
        what = "only pickled weights (.bin/.pt); set allow_pickle: true to load them" if has_pickle else "no weights"
        raise InputError(folder, "weights", f"{what} (*.safetensors expected)")


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    path: str


def load_tokenizer(path: str, spec: ModelSpec | None = None):
    from transformers import AutoTokenizer

    spec = spec or ModelSpec(path=path)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(path), trust_remote_code=spec.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # decoder-only batched generation pads on the left
    return tokenizer


def load_model(spec: ModelSpec, device: str = "auto") -> LoadedModel:
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    path = resolve_model_path(spec.path)
    if Path(path).exists() or path.startswith((".", "/")):
        check_model_folder(Path(path), spec.allow_pickle)
    dev = pick_device(device)
    dtype = pick_dtype(spec.dtype, dev)
    kwargs: dict = {"dtype": dtype, "trust_remote_code": spec.trust_remote_code,
                    "use_safetensors": None if spec.allow_pickle else True}
    if spec.load_in_4bit or spec.load_in_8bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=spec.load_in_4bit, load_in_8bit=spec.load_in_8bit,
            bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype if dtype != torch.float32 else torch.float32)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as exc:
        hint = " (no internet here: give a local folder)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise InputError(path, None, f"cannot load model: {str(exc).splitlines()[0]}{hint}") from None
    if not (spec.load_in_4bit or spec.load_in_8bit):
        model.to(dev)
    model.eval()
    return LoadedModel(model, load_tokenizer(spec.path, spec), dev, path)
