"""Export a merged Hugging Face causal LM to ONNX (fp32, with KV cache) and check it against PyTorch.

Usage::

    onnx_dir = export_onnx("runs/x/distill/student", "runs/x/export/fp32")
    parity = check_parity("runs/x/distill/student", onnx_dir, prompts, max_new_tokens=16)
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Sequence

from edge_tailor.errors import ArtifactError, InputError

# What a decoder needs beside its weights; tokenizer files come in several flavours.
SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "tokenizer.model", "chat_template.jinja", "added_tokens.json",
              "prompt_format.json")
FP32_ATOL = 1e-3
PICKLED = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.ckpt")  # torch.load would run code from these


def check_safetensors_only(folder: Path) -> None:
    """Refuse a model folder whose weights are pickles: internal artifacts are safetensors, always.

    The run directory is an input too (a later stage reads what an earlier one wrote), so a
    ``pytorch_model.bin`` put in place of ``model.safetensors`` must not be loaded.
    """
    pickled = sorted(p.name for pattern in PICKLED for p in folder.glob(pattern))
    if pickled:
        raise InputError(folder / pickled[0], None, "pickled weights in a model folder the toolkit wrote: only "
                                                    "*.safetensors are loaded (remove the file, or rerun the stage "
                                                    "that writes this folder)")
    if not any(folder.glob("*.safetensors")):
        raise InputError(folder, "weights", "no *.safetensors file: rerun the stage that writes this folder")


class ParityError(ArtifactError):
    """The exported model does not reproduce the reference model within tolerance."""


def export_onnx(model_dir: str | Path, out_dir: str | Path, opset: int | None = None) -> Path:
    """``main_export`` with task ``text-generation-with-past``: one ``model.onnx`` taking and returning the KV cache."""
    from optimum.exporters.onnx import main_export

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if not (model_dir / "config.json").is_file():
        raise InputError(model_dir, "config.json", "missing: not a Hugging Face model folder")
    check_safetensors_only(model_dir)
    main_export(str(model_dir), out_dir, task="text-generation-with-past", opset=opset, device="cpu", dtype="fp32",
                library_name="transformers", local_files_only=True,
                do_validation=False)  # check_parity below is stricter: logits and greedy tokens on task prompts
    copy_side_files(model_dir, out_dir)
    if not (out_dir / "model.onnx").is_file():
        raise ArtifactError(out_dir, "model.onnx", "main_export finished without writing the model")
    return out_dir


def copy_side_files(src: Path, dst: Path) -> list[str]:
    """Copy config, generation config and tokenizer files that ``dst`` lacks (ORTQuantizer writes only the model)."""
    copied = []
    for name in SIDE_FILES:
        if (src / name).is_file() and not (dst / name).is_file():
            shutil.copy2(src / name, dst / name)
            copied.append(name)
    return copied


def check_parity(model_dir: str | Path, onnx_dir: str | Path, prompts: Sequence[str], max_new_tokens: int = 16,
                 atol: float = FP32_ATOL, model_file: str = "model.onnx") -> dict:
    """Compare the ONNX model with PyTorch: logits (prompt pass and each cached decode step) and greedy tokens.

    Raises ``ParityError`` with the numbers when the largest logit difference exceeds ``atol`` or any
    prompt's greedy tokens differ. Decode-step logits are compared only while the tokens still agree
    (after a divergence the two models see different inputs).
    """
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not prompts:
        raise InputError(model_dir, "prompts", "parity needs at least one prompt")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    check_safetensors_only(Path(model_dir))
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True).eval()
    exported = ORTModelForCausalLM.from_pretrained(onnx_dir, file_name=model_file, use_cache=True,
                                                   provider="CPUExecutionProvider")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    settings = dict(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, output_logits=True,
                    return_dict_in_generate=True, pad_token_id=pad)
    worst, worst_at, mismatches = 0.0, None, []
    with torch.inference_mode():
        for i, prompt in enumerate(prompts):
            enc = tokenizer(prompt, return_tensors="pt")
            diff = (reference(**enc).logits - exported(**enc).logits).abs().max().item()
            ref, onx = reference.generate(**enc, **settings), exported.generate(**enc, **settings)
            n = enc.input_ids.shape[1]
            ref_tokens, onx_tokens = ref.sequences[0, n:].tolist(), onx.sequences[0, n:].tolist()
            same = _common_prefix(ref_tokens, onx_tokens)
            for a, b in zip(ref.logits[:same + 1], onx.logits[:same + 1]):
                diff = max(diff, (a - b).abs().max().item())
            if diff > worst:
                worst, worst_at = diff, i
            if ref_tokens != onx_tokens:
                mismatches.append({"prompt": i, "step": same, "torch": ref_tokens[same:same + 1],
                                   "onnx": onx_tokens[same:same + 1]})
    result = {"prompts": len(prompts), "max_new_tokens": max_new_tokens, "max_abs_logit_diff": worst,
              "worst_prompt": worst_at, "atol": atol, "greedy_match": len(prompts) - len(mismatches),
              "mismatches": mismatches, "passed": worst <= atol and not mismatches}
    if not result["passed"]:
        problems = []
        if worst > atol:
            problems.append(f"max |logit diff| {worst:.3g} > atol {atol:g} (prompt {worst_at})")
        if mismatches:
            m = mismatches[0]
            problems.append(f"greedy tokens differ on {len(mismatches)}/{len(prompts)} prompts (first: prompt "
                            f"{m['prompt']} at step {m['step']}: torch {m['torch']} vs onnx {m['onnx']})")
        raise ParityError(Path(onnx_dir) / model_file, "parity vs PyTorch", "; ".join(problems))
    return result


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n
