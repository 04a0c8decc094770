"""The bundle: the one folder that ships to a device, and ``verify_bundle`` that re-checks it.

A bundle holds the quantized model(s), tokenizer, config and generation config, the target file,
``edge_runtime.py`` (a copy of ``runtime.py``: onnxruntime + numpy + tokenizers only), the
measured ``report.json``, a model card (``README.md``) and, written last, ``manifest.json`` with
the sha256 of every other file, the target's name and hash, and the greedy tokens of a smoke
decode that ``verify_bundle`` must reproduce. It loads as it is in Optimum's ``ORTModelForCausalLM``.

Usage::

    make_bundle("export/int8", "ci-x86", "runs/x/bundle", report, {"summary": "..."})
    verify_bundle("runs/x/bundle", target="ci-x86")  # raises ArtifactError naming the bad file
"""

from __future__ import annotations

import json
import shutil
import time
from importlib import metadata
from pathlib import Path

from edge_tailor.errors import ArtifactError, InputError
from edge_tailor.rundir import sha256_file, write_json_atomic
from edge_tailor.target import Target, load_target, target_hash, target_path

from . import runtime
from .model_card import render_model_card
from .onnx_export import SIDE_FILES

FORMAT = "edge-tailor-bundle/1"
MANIFEST = "manifest.json"
SMOKE_PROMPT = "Hello"
SMOKE_TOKENS = 8
# Written by Python itself when edge_runtime.py is imported from inside the bundle.
_IGNORED_DIRS = {"__pycache__"}


def make_bundle(quantized_dir: str | Path, target: Target | str | Path, out_dir: str | Path, report: dict,
                card_info: dict, smoke_prompt: str | None = None, decoding: dict | None = None) -> Path:
    """Assemble the bundle in ``out_dir`` (which must be empty, absent or an older bundle)."""
    quantized_dir, out_dir = Path(quantized_dir), Path(out_dir)
    target_file, target = _target_file(target)
    models = sorted(p.name for p in quantized_dir.glob("*.onnx"))
    if "model.onnx" not in models:
        raise ArtifactError(quantized_dir, "model.onnx", "missing: run quantize_for_target first")
    _prepare(out_dir)

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
    (out_dir / "README.md").write_text(render_model_card(target, report, card_info, _sizes(out_dir, models)),
                                       encoding="utf-8")

    files = {p.relative_to(out_dir).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
             for p in sorted(_bundle_files(out_dir))}
    manifest = {"format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "target": {"name": target.name, "hash": target_hash(target), "file": "target.toml"},
                "model_file": "model.onnx", "models": models, "runtime": "edge_runtime.py",
                # how the student was scored and should be decoded (read by edge_runtime.py --calculator auto)
                "decoding": {"calculator": False, **(decoding or {})},
                "versions": _versions(), "smoke": smoke, "files": files}
    write_json_atomic(out_dir / MANIFEST, manifest)
    return out_dir


def verify_bundle(bundle_dir: str | Path, target: Target | str | Path | None = None) -> dict:
    """Re-check every file's hash, the file list, the target, and the recorded smoke decode.

    Raises ``ArtifactError`` naming the file for a changed byte, a missing or unlisted file, a bundle
    built for another target, or greedy tokens that differ from the ones recorded at bundling.
    """
    bundle = Path(bundle_dir)
    manifest = _read_manifest(bundle)
    listed = manifest["files"]
    for name, entry in listed.items():
        path = bundle / name
        if not path.is_file():
            raise ArtifactError(path, None, "missing: listed in manifest.json")
        actual = sha256_file(path)
        if actual != entry["sha256"]:
            raise ArtifactError(path, "sha256", f"hash mismatch: manifest says {entry['sha256'][:16]}..., "
                                                f"file is {actual[:16]}... (changed after bundling)")
    for path in _bundle_files(bundle):
        if path.relative_to(bundle).as_posix() not in listed:
            raise ArtifactError(path, None, "not listed in manifest.json (added after bundling)")

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

    smoke = manifest["smoke"]
    for model, expected_tokens in smoke["tokens"].items():
        tokens = _smoke_decode(bundle, model, smoke["prompt"])
        if tokens != expected_tokens:
            raise ArtifactError(bundle / model, "smoke decode",
                                f"greedy tokens {tokens} differ from {expected_tokens} recorded at bundling")
    return {"bundle": str(bundle), "target": shipped.name, "files": len(listed), "models": list(smoke["tokens"]),
            "smoke_tokens": smoke["tokens"], "passed": True}


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


def _prepare(out_dir: Path) -> None:
    if out_dir.exists() and any(out_dir.iterdir()):
        if not (out_dir / MANIFEST).is_file():
            raise InputError(out_dir, None, "exists and is not empty (nor an older bundle): refusing to overwrite")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)


def _bundle_files(bundle: Path) -> list[Path]:
    return [p for p in bundle.rglob("*") if p.is_file() and p.name != MANIFEST
            and not _IGNORED_DIRS.intersection(p.relative_to(bundle).parts)]


def _read_manifest(bundle: Path) -> dict:
    path = bundle / MANIFEST
    if not bundle.is_dir():
        raise ArtifactError(bundle, None, "no such bundle folder")
    if not path.is_file():
        raise ArtifactError(path, None, "missing: not a bundle, or bundling did not finish")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(path, None, f"not valid JSON: {e}") from None
    missing = [k for k in ("format", "target", "files", "smoke") if k not in manifest]
    if missing or manifest["format"] != FORMAT:
        detail = f" (missing {', '.join(missing)})" if missing else ""
        raise ArtifactError(path, "format", f"not an {FORMAT} manifest{detail}")
    return manifest


def _smoke_decode(bundle: Path, model_file: str, prompt: str) -> list[int]:
    try:
        model = runtime.EdgeModel.load(bundle, model_file=model_file)
        return model.generate(prompt, SMOKE_TOKENS).tokens
    except Exception as e:  # onnxruntime raises its own types for a corrupt or incompatible graph
        raise ArtifactError(bundle / model_file, "smoke decode", f"{type(e).__name__}: {e}") from None


def _sizes(out_dir: Path, models: list[str]) -> dict[str, float]:
    return {m: round((out_dir / m).stat().st_size / 1e6, 3) for m in models}


def _versions() -> dict[str, str | None]:
    out = {}
    for name in ("edge-tailor", "onnxruntime", "numpy", "tokenizers", "optimum-onnx", "onnx"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
