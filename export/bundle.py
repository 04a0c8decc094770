"""The bundle: the one folder that ships to a device, and ``verify_bundle`` that re-checks it.

A bundle holds the quantized model(s), tokenizer, config and generation config, the target file,
``edge_runtime.py`` (a copy of ``runtime.py``: onnxruntime + numpy + tokenizers only),
``genai_config.json`` (so onnxruntime-genai runs ``model.onnx`` too: ``genai_config.py``), the
measured ``report.json``, a model card (``README.md``), ``manifest.json`` with the sha256 of every
other file, the target's name and hash, and the greedy tokens of a smoke decode that
``verify_bundle`` must reproduce, and, written last, ``manifest.sha256`` (the sha256 of
manifest.json, as ``sha256sum`` writes it). It loads as it is in Optimum's ``ORTModelForCausalLM``.

The bundle is assembled in a temporary sibling folder and renamed into place only when complete,
so an interrupted bundling leaves the previous bundle (or nothing) behind, never half a bundle.

Usage::

    make_bundle("export/int8", "ci-x86", "runs/x/bundle", report, {"summary": "..."})
    verify_bundle("runs/x/bundle", target="ci-x86")  # raises ArtifactError naming the bad file
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import tempfile
import time
from pathlib import Path

from edge_tailor.errors import ArtifactError, InputError
from edge_tailor.rundir import package_versions, sha256_file, write_json_atomic
from edge_tailor.target import Target, load_target, target_hash, target_path

from . import runtime
from .genai_config import GENAI_CONFIG, write_genai_config
from .model_card import render_model_card
from .onnx_export import SIDE_FILES

FORMAT = "edge-tailor-bundle/1"
MANIFEST = runtime.MANIFEST
MANIFEST_SHA = runtime.MANIFEST_SHA
SMOKE_PROMPT = "Hello"
SMOKE_TOKENS = 8
REFERENCE = "fidelity_reference.json"  # the fp32 graph's next tokens on held-out sequences (verify compares)


def make_bundle(quantized_dir: str | Path, target: Target | str | Path, out_dir: str | Path, report: dict,
                card_info: dict, smoke_prompt: str | None = None, decoding: dict | None = None,
                replace_partial: bool = False, reference: dict | None = None) -> Path:
    """Assemble the bundle and move it to ``out_dir`` (absent, empty or an older bundle, which it replaces).

    ``reference``: ``{"sequences": [[ids]], "fp32_top1": [[ids]], "decode_from": [int]}`` from the export (the fp32 graph's
    next token at every position of held-out sequences); the bundle ships it and ``verify_bundle``
    checks that the quantized model still agrees with it within the target's ``max_top1_disagreement``.

    A non-empty ``out_dir`` without a manifest.json is refused, unless ``replace_partial`` (the
    caller owns ``out_dir``, e.g. a run's ``bundle/``: whatever is there is replaced).
    """
    quantized_dir, given = Path(quantized_dir), out_dir
    out_dir = Path(os.path.abspath(out_dir))
    target_file, target = _target_file(target)
    models = sorted(p.name for p in quantized_dir.glob("*.onnx"))
    if "model.onnx" not in models:
        raise ArtifactError(quantized_dir, "model.onnx", "missing: run quantize_for_target first")
    _check_out_dir(out_dir, replace_partial)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(out_dir)
    work = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=_temp_prefix(out_dir, "tmp")))
    try:
        os.chmod(work, 0o755)  # mkdtemp makes 0700; a bundle is meant to be shared
        _assemble(work, quantized_dir, models, target_file, target, report, card_info, smoke_prompt, decoding,
                  reference)
        _move_into_place(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return Path(given)


def _assemble(out_dir: Path, quantized_dir: Path, models: list[str], target_file: Path, target: Target,
              report: dict, card_info: dict, smoke_prompt: str | None, decoding: dict | None,
              reference: dict | None) -> None:
    for name in models + [p.name for p in quantized_dir.glob("*.onnx_data")]:
        shutil.copy2(quantized_dir / name, out_dir / name)
    for name in SIDE_FILES:
        if (quantized_dir / name).is_file():
            shutil.copy2(quantized_dir / name, out_dir / name)
    if not (out_dir / "tokenizer.json").is_file():
        raise ArtifactError(quantized_dir, "tokenizer.json", "missing: the edge runtime needs a fast tokenizer file")
    shutil.copy2(target_file, out_dir / "target.toml")
    shutil.copy2(Path(runtime.__file__), out_dir / "edge_runtime.py")
    write_json_atomic(out_dir / "report.json", report)

    prompt = smoke_prompt or card_info.get("smoke_prompt") or SMOKE_PROMPT
    smoke = {"prompt": prompt, "max_new_tokens": SMOKE_TOKENS,
             "tokens": {m: _smoke_decode(out_dir, m, prompt) for m in models}}
    # for model.onnx only (genai reads one genai_config.json per folder); the other model files share
    # its inputs and cache layout: point genai at one with Config.overlay (genai_config.py's docstring)
    write_genai_config(out_dir, "model.onnx", target)
    fidelity = None
    if reference:
        write_json_atomic(out_dir / REFERENCE, reference)
        limit = target.budgets.max_top1_disagreement
        fidelity = {"file": REFERENCE, "model_file": "model.onnx", "top1_agreement": _agreement(out_dir, reference),
                    "min_top1_agreement": round(1 - (0.02 if limit is None else limit), 4)}
    (out_dir / "README.md").write_text(render_model_card(target, report, card_info, _sizes(out_dir, models)),
                                       encoding="utf-8")

    files = {p.relative_to(out_dir).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
             for p in sorted(_bundle_files(out_dir))}
    manifest = {"format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "target": {"name": target.name, "hash": target_hash(target), "file": "target.toml"},
                "model_file": "model.onnx", "models": models, "runtime": "edge_runtime.py",
                "genai_config": GENAI_CONFIG,  # onnxruntime-genai's config, for model_file
                # how the student was scored and should be decoded (read by edge_runtime.py --calculator auto)
                "decoding": {"calculator": False, **(decoding or {})},
                "versions": _versions(), "smoke": smoke, "fidelity": fidelity, "files": files}
    write_json_atomic(out_dir / MANIFEST, manifest)
    (out_dir / MANIFEST_SHA).write_text(f"{sha256_file(out_dir / MANIFEST)}  {MANIFEST}\n", encoding="utf-8")


def verify_bundle(bundle_dir: str | Path, target: Target | str | Path | None = None, digest: str | None = None,
                  public_key: str | Path | None = None) -> dict:
    """Re-check every file's hash (manifest.json's against manifest.sha256, and ``digest`` when given),
    the signature in manifest.sig when ``public_key`` (a PEM file) is given, the file list (plain files
    inside the bundle only), the target, and the recorded smoke decode.

    Raises ``ArtifactError`` naming the file for a changed byte, a missing or unlisted file, a bundle
    built for another target, or greedy tokens that differ from the ones recorded at bundling. The
    result's ``manifest_sha256`` is the digest to pin (``tailor verify BUNDLE --digest HEX``).
    """
    bundle = Path(bundle_dir)
    if digest is not None and not re.fullmatch(r"[0-9a-f]{64}", digest.strip().lower()):
        raise InputError("--digest", None, f"{digest!r} is not a sha256 digest (64 hex digits)")
    if public_key is not None:
        try:
            runtime.load_public_key(public_key)
        except runtime.BundleError as e:  # the key, not the bundle, is wrong: bad input
            raise InputError(e.path, e.where, e.problem) from None
    try:
        manifest_sha, manifest = runtime.verify_files(bundle, digest, public_key)
    except runtime.BundleError as e:
        raise ArtifactError(e.path, e.where, e.problem) from None
    _check_format(bundle / MANIFEST, manifest)
    listed = manifest["files"]

    recorded = manifest["target"]
    shipped = load_target(bundle / recorded["file"])
    if target_hash(shipped) != recorded["hash"] or shipped.name != recorded["name"]:
        raise ArtifactError(bundle / recorded["file"], "target", "does not match the target recorded in manifest.json")
    if target is not None:
        expected = target if isinstance(target, Target) else load_target(target)
        if expected.name != shipped.name or target_hash(expected) != recorded["hash"]:
            same_name = expected.name == shipped.name
            raise ArtifactError(bundle / recorded["file"], "target",
                                f"bundle was built for {shipped.name} ({recorded['hash'][:12]}), expected "
                                f"{expected.name} ({target_hash(expected)[:12]})"
                                + ("; same name, different values: rebuild the bundle" if same_name else ""))

    fidelity = manifest.get("fidelity")
    if fidelity:  # reproducing the recorded tokens is not enough: they must still be the fp32 model's
        reference = json.loads((bundle / fidelity["file"]).read_text(encoding="utf-8"))
        agreement = _agreement(bundle, reference, fidelity["model_file"])
        if agreement < fidelity["min_top1_agreement"]:
            raise ArtifactError(bundle / fidelity["model_file"], "fidelity",
                                f"top-1 agreement with the fp32 reference {agreement:.3f} < "
                                f"{fidelity['min_top1_agreement']:.3f} (at bundling: {fidelity['top1_agreement']:.3f})")
    smoke = manifest["smoke"]
    for model, expected_tokens in smoke["tokens"].items():
        tokens = _smoke_decode(bundle, model, smoke["prompt"], verify=False)  # just verified
        if tokens != expected_tokens:
            raise ArtifactError(bundle / model, "smoke decode",
                                f"greedy tokens {tokens} differ from {expected_tokens} recorded at bundling")
    return {"bundle": str(bundle), "target": shipped.name, "files": len(listed), "models": list(smoke["tokens"]),
            "smoke_tokens": smoke["tokens"], "manifest_sha256": manifest_sha, "signature": public_key is not None,
            "passed": True}


def _target_file(target: Target | str | Path) -> tuple[Path, Target]:
    if not isinstance(target, Target):
        path = target_path(target)
        return path, load_target(path)
    # A Target object carries no path: use the shipped file of that name if its values match.
    try:
        path = target_path(target.name)
    except InputError:
        path = None
    if path is None or target_hash(load_target(path)) != target_hash(target):
        raise InputError(f"target {target.name}", None, "pass the target's .toml path: the bundle ships the file")
    return path, target


def _temp_prefix(out_dir: Path, kind: str) -> str:
    return f".{out_dir.name}.{kind}-"


def _check_out_dir(out_dir: Path, replace_partial: bool) -> None:
    if replace_partial or not (out_dir.exists() or out_dir.is_symlink()):
        return
    if not out_dir.is_dir():
        raise InputError(out_dir, None, "exists and is not a folder: refusing to overwrite")
    if any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file():
        raise InputError(out_dir, None, "exists and is not empty (nor an older bundle): refusing to overwrite")


def _remove_leftovers(out_dir: Path) -> None:
    """Temporary folders of an earlier make_bundle into ``out_dir`` that was killed before it cleaned up."""
    prefixes = tuple(_temp_prefix(out_dir, kind) for kind in ("tmp", "old"))
    for path in out_dir.parent.iterdir():
        if path.name.startswith(prefixes) and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)


def _move_into_place(work: Path, out_dir: Path) -> None:
    """Rename the finished bundle to ``out_dir``; an older one there is renamed aside first, then deleted."""
    old = None
    if out_dir.is_dir() and not out_dir.is_symlink() and not any(out_dir.iterdir()):
        out_dir.rmdir()
    elif out_dir.exists() or out_dir.is_symlink():
        old = out_dir.with_name(_temp_prefix(out_dir, "old") + secrets.token_hex(4))
        os.rename(out_dir, old)
    try:
        os.rename(work, out_dir)
    except BaseException:
        if old is not None:
            os.rename(old, out_dir)
        raise
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()


def _bundle_files(bundle: Path) -> list[Path]:
    return [p for p in bundle.rglob("*") if p.is_file() and p.name not in (MANIFEST, MANIFEST_SHA)]


def _check_format(path: Path, manifest: dict) -> None:
    missing = [k for k in ("format", "target", "files", "smoke") if k not in manifest]
    if missing or manifest["format"] != FORMAT:
        detail = f" (missing {', '.join(missing)})" if missing else ""
        raise ArtifactError(path, "format", f"not an {FORMAT} manifest{detail}")


def _smoke_decode(bundle: Path, model_file: str, prompt: str, verify: bool | None = None) -> list[int]:
    try:
        model = runtime.EdgeModel.load(bundle, model_file=model_file, verify=verify)
        return model.generate(prompt, SMOKE_TOKENS).tokens
    except Exception as e:  # onnxruntime raises its own types for a corrupt or incompatible graph
        raise ArtifactError(bundle / model_file, "smoke decode", f"{type(e).__name__}: {e}") from None


def _sizes(out_dir: Path, models: list[str]) -> dict[str, float]:
    return {m: round((out_dir / m).stat().st_size / 2**20, 3) for m in models}  # MiB, as everywhere


def _agreement(bundle: Path, reference: dict, model_file: str = "model.onnx") -> float:
    """Share of positions where ``model_file`` picks the fp32 reference's next token (teacher-forced), from
    each sequence's ``decode_from`` on where the reference gives it (the positions the export counted)."""
    model = runtime.EdgeModel.load(bundle, model_file=model_file, verify=False)
    hits = total = 0
    starts = reference.get("decode_from") or [0] * len(reference["sequences"])
    for sequence, expected, start in zip(reference["sequences"], reference["fp32_top1"], starts):
        got = model.prefill_logits(sequence).argmax(-1).tolist()
        hits += sum(a == b for a, b in zip(got[start:], expected[start:]))
        total += len(expected) - start
    return round(hits / max(1, total), 4)


def _versions() -> dict[str, str | None]:
    return package_versions(("edge-tailor", "onnxruntime", "numpy", "tokenizers", "optimum-onnx", "onnx"))
