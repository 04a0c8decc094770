"""Bundle safety: built aside and renamed into place (an interrupted bundling leaves nothing half
written), manifest.json covered by manifest.sha256 (and a pinnable digest), no unlisted file
anywhere (``__pycache__/`` included), and the edge runtime checking the hashes before it runs.

One bundle per module, from the shipped embedded student exported once to ONNX (fp32: bundling
does not care whether the model was quantized); each test damages its own copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import py_compile
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from edge_tailor.cli import main
from edge_tailor.errors import ArtifactError, InputError
from edge_tailor.export import bundle as bundle_mod
from edge_tailor.export import runtime
from edge_tailor.export.bundle import make_bundle, verify_bundle

pytestmark = pytest.mark.slow

REPORT = {"target": "ci-x86", "accuracy": {"student_fp32": 0.8, "student_int8": 0.79},
          "latency": {"ms_per_token_p50": 0.3, "model_mb": 2.5},
          "budgets": {"model_mb": {"limit": 16.0, "measured": 2.5, "passed": True}}, "passed": True}
CARD = {"summary": "A test student.", "training_data": "The embedded world.", "smoke_prompt": "Q: 3+4=?\nA:"}
DECODING = {"calculator": True}


def _make(source: Path, out: Path, report: dict | None = None, **kwargs) -> Path:
    return make_bundle(source, "ci-x86", out, report or REPORT, CARD, decoding=DECODING, **kwargs)


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory) -> Path:
    from edge_tailor.export.onnx_export import export_onnx
    from edge_tailor.toyworld.assets import embedded_model_dir

    return export_onnx(embedded_model_dir("student"), tmp_path_factory.mktemp("embedded") / "fp32")


@pytest.fixture(scope="module")
def built(onnx_dir, tmp_path_factory) -> Path:
    return _make(onnx_dir, tmp_path_factory.mktemp("built") / "bundle")


@pytest.fixture
def copy(built, tmp_path) -> Path:
    return Path(shutil.copytree(built, tmp_path / "bundle"))


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file()}


def _rewrite_manifest(bundle: Path, change) -> None:
    """Edit manifest.json; the sha file is left as it was (a careless edit)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    change(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))


def _reseal(bundle: Path) -> None:
    """What a deliberate tamperer does after editing manifest.json: rewrite manifest.sha256 to match."""
    digest = hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()
    (bundle / "manifest.sha256").write_text(f"{digest}  manifest.json\n")


# --- interrupted and repeated bundling ------------------------------------------------------------

def _fail_after_copy(monkeypatch, seen: list[Path]):
    real = bundle_mod._smoke_decode

    def boom(folder, model_file, prompt, verify=None):  # runs after model.onnx was copied
        assert (folder / "model.onnx").is_file()
        seen.append(folder)
        raise KeyboardInterrupt("killed while bundling")

    monkeypatch.setattr(bundle_mod, "_smoke_decode", boom)
    return real


def test_interrupted_bundling_leaves_nothing_and_is_redone(onnx_dir, tmp_path, monkeypatch):
    out = tmp_path / "runs" / "bundle"
    seen: list[Path] = []
    real = _fail_after_copy(monkeypatch, seen)
    with pytest.raises(KeyboardInterrupt):
        _make(onnx_dir, out)
    assert seen and seen[0] != out and seen[0].parent == out.parent  # assembled in a sibling temp folder
    assert not out.exists()  # the old code left model.onnx there, without a manifest
    assert _leftovers(out.parent) == []  # the temp folder is gone too

    monkeypatch.setattr(bundle_mod, "_smoke_decode", real)
    assert _make(onnx_dir, out) == out
    assert verify_bundle(out)["passed"] and _leftovers(out.parent) == []


def test_interrupted_rebuild_keeps_the_older_bundle(onnx_dir, built, tmp_path, monkeypatch):
    out = Path(shutil.copytree(built, tmp_path / "bundle"))
    before = _snapshot(out)
    _fail_after_copy(monkeypatch, [])
    with pytest.raises(KeyboardInterrupt):
        _make(onnx_dir, out, report={**REPORT, "passed": False})
    assert _snapshot(out) == before and _leftovers(tmp_path) == []


def test_leftovers_of_a_killed_bundling_are_removed(onnx_dir, tmp_path):
    out = tmp_path / "bundle"
    for name in (".bundle.tmp-dead1234", ".bundle.old-dead5678"):  # what kill -9 mid-bundling leaves
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.onnx").write_bytes(b"half")
    (tmp_path / ".other.tmp-keep").mkdir()  # another folder's: not ours to remove
    _make(onnx_dir, out)
    assert _leftovers(tmp_path) == [".other.tmp-keep"]
    assert verify_bundle(out)["passed"]


def test_older_bundle_is_replaced_atomically(onnx_dir, built, tmp_path, monkeypatch):
    out = Path(shutil.copytree(built, tmp_path / "bundle"))
    (out / "__pycache__").mkdir()
    (out / "__pycache__" / "edge_runtime.cpython-312.pyc").write_bytes(b"stale")
    renames: list[tuple[Path, Path, bool]] = []
    real_rename = os.rename

    def spy(src, dst):
        renames.append((Path(src), Path(dst), (Path(src) / "manifest.sha256").is_file()))
        real_rename(src, dst)

    monkeypatch.setattr(bundle_mod.os, "rename", spy)
    _make(onnx_dir, out, report={**REPORT, "passed": False})
    monkeypatch.undo()
    # two renames: the old bundle aside, then the complete new one (sha file written) into place
    (aside, aside_to, _), (work, work_to, complete) = renames
    assert aside == out and aside_to.parent == tmp_path and aside_to.name.startswith(".bundle.old-")
    assert work_to == out and work.parent == tmp_path and work.name.startswith(".bundle.tmp-") and complete
    assert json.loads((out / "report.json").read_text())["passed"] is False
    assert not (out / "__pycache__").exists() and _leftovers(tmp_path) == []
    assert verify_bundle(out)["passed"]


def test_failed_final_rename_restores_the_older_bundle(onnx_dir, built, tmp_path, monkeypatch):
    out = Path(shutil.copytree(built, tmp_path / "bundle"))
    before = _snapshot(out)
    real_rename = os.rename

    def failing(src, dst):
        if Path(dst) == out and Path(src).name.startswith(".bundle.tmp-"):
            raise OSError("disk trouble")
        real_rename(src, dst)

    monkeypatch.setattr(bundle_mod.os, "rename", failing)
    with pytest.raises(OSError, match="disk trouble"):
        _make(onnx_dir, out, report={**REPORT, "passed": False})
    monkeypatch.undo()
    assert _snapshot(out) == before and _leftovers(tmp_path) == []


def test_foreign_folder_is_refused_but_an_owned_half_bundle_is_replaced(onnx_dir, tmp_path):
    out = tmp_path / "bundle"
    out.mkdir()
    shutil.copy2(onnx_dir / "model.onnx", out / "model.onnx")  # half-written by an older, killed version
    (out / "config.json").write_text("{}")
    before = _snapshot(out)
    with pytest.raises(InputError, match="exists and is not empty .*refusing to overwrite"):
        _make(onnx_dir, out)
    assert _snapshot(out) == before and _leftovers(tmp_path) == []
    _make(onnx_dir, out, replace_partial=True)
    assert verify_bundle(out)["passed"]


def test_report_stage_replaces_a_half_written_bundle_and_lists_the_sha_file(onnx_dir, tmp_path, monkeypatch):
    from edge_tailor.stages import report as stage

    root = tmp_path / "run"
    (root / "export").mkdir(parents=True)
    shutil.copytree(onnx_dir, root / "export" / "quantized")
    (root / "bundle").mkdir()
    shutil.copy2(onnx_dir / "model.onnx", root / "bundle" / "model.onnx")  # a killed older report stage
    for name in ("report.json", "report.md"):
        (root / name).write_text("{}")
    run_dir = SimpleNamespace(root=root, stage_dir=lambda s: root / s,
                              record=lambda s: {"metrics": {"training": {"examples": 3}}})
    monkeypatch.setattr(stage, "write_report", lambda run_dir, target: REPORT)
    monkeypatch.setattr(stage, "load_task", lambda spec: SimpleNamespace(style=SimpleNamespace(query="Q:", stop=["\n"])))
    monkeypatch.setattr(stage, "student_uses_calculator", lambda cfg, task: True)
    monkeypatch.setattr(stage, "card_info", lambda *a: CARD)
    cfg = SimpleNamespace(target="ci-x86", task=None, distill=SimpleNamespace(use_annotations=False),
                          elicit=SimpleNamespace(annotate=None))
    record = stage.run(cfg, run_dir)
    bundle = root / "bundle"
    assert record["metrics"]["verified"] and verify_bundle(bundle)["passed"]
    shipped = {p.relative_to(root).as_posix() for p in record["extra_files"]}
    assert {"bundle/manifest.json", "bundle/manifest.sha256", "bundle/model.onnx"} <= shipped
    assert shipped == {"report.json", "report.md"} | {f"bundle/{p.name}" for p in bundle.iterdir()}


# --- verify: manifest.json covered, no unlisted file ----------------------------------------------

def test_sha_file_is_sha256sum_of_the_manifest(built):
    digest = hashlib.sha256((built / "manifest.json").read_bytes()).hexdigest()
    assert (built / "manifest.sha256").read_text() == f"{digest}  manifest.json\n"
    manifest = json.loads((built / "manifest.json").read_text())
    assert {"format", "target", "models", "decoding", "smoke", "files", "versions"} <= set(manifest)
    assert set(manifest["files"]) == {p.name for p in built.iterdir()} - {"manifest.json", "manifest.sha256"}
    assert verify_bundle(built)["manifest_sha256"] == digest


def test_flipped_calculator_in_manifest_fails_verify(copy):
    assert runtime.bundle_uses_calculator(copy)
    _rewrite_manifest(copy, lambda m: m["decoding"].update(calculator=False))  # changes the answers
    with pytest.raises(ArtifactError) as caught:
        verify_bundle(copy)
    assert str(caught.value).startswith(f"{copy / 'manifest.json'}: sha256: hash mismatch: manifest.sha256 says")


def test_missing_or_malformed_sha_file_fails_verify(copy):
    (copy / "manifest.sha256").write_text("not a hash\n")
    with pytest.raises(ArtifactError, match=r"manifest.sha256: not a sha256sum line for manifest.json"):
        verify_bundle(copy)
    (copy / "manifest.sha256").unlink()
    with pytest.raises(ArtifactError) as caught:
        verify_bundle(copy)
    assert str(caught.value).startswith(f"{copy / 'manifest.sha256'}: missing")


def test_pycache_in_bundle_fails_verify(copy):
    pyc = Path(py_compile.compile(str(copy / "edge_runtime.py"), doraise=True))  # what an import writes
    assert pyc.parent == copy / "__pycache__"
    with pytest.raises(ArtifactError) as caught:
        verify_bundle(copy)
    message = str(caught.value)
    assert message.startswith(f"{pyc}: not listed in manifest.json") and "python -B" in message


def test_unlisted_hidden_file_in_subfolder_fails_verify(copy):
    (copy / "sub").mkdir()
    (copy / "sub" / ".hidden").write_text("x")
    with pytest.raises(ArtifactError) as caught:
        verify_bundle(copy)
    assert str(caught.value).startswith(f"{copy / 'sub' / '.hidden'}: not listed in manifest.json")


def test_verify_bundle_uses_the_runtimes_check(copy, monkeypatch):
    def fake(bundle, digest=None, public_key=None):
        raise runtime.BundleError(Path(bundle) / "x.bin", "sha256", "from the runtime")

    monkeypatch.setattr(runtime, "verify_files", fake)
    with pytest.raises(ArtifactError, match=r"x.bin: sha256: from the runtime"):
        verify_bundle(copy)


def test_cli_verify_digest(copy, capsys):
    digest = hashlib.sha256((copy / "manifest.json").read_bytes()).hexdigest()
    assert main(["verify", str(copy), "--digest", digest]) == 0
    assert f"manifest sha256: {digest}" in capsys.readouterr().out
    assert main(["verify", str(copy), "--digest", "0" * 64]) == 1
    assert f"{copy / 'manifest.json'}: sha256: digest {digest} is not the pinned {'0' * 64}" in capsys.readouterr().err
    assert main(["verify", str(copy), "--digest", "abc"]) == 2

    # deliberate tampering: manifest edited and manifest.sha256 rewritten to match; only the pin catches it
    _rewrite_manifest(copy, lambda m: m["decoding"].update(calculator=False))
    _reseal(copy)
    assert main(["verify", str(copy)]) == 0
    assert main(["verify", str(copy), "--digest", digest]) == 1
    assert "is not the pinned" in capsys.readouterr().err


# --- edge runtime ---------------------------------------------------------------------------------

def _edge(bundle: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-B", str(bundle / "edge_runtime.py"), str(bundle), "--prompt", "Q: 3+4=?\nA:",
           "--max-new-tokens", "2", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_edge_runtime_cli_refuses_a_flipped_byte(copy):
    _flip_byte(copy / "model.onnx")
    done = _edge(copy)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == [lines[0]] and lines[0].startswith(f"error: {copy / 'model.onnx'}: sha256: hash mismatch")
    assert done.stdout == ""
    skipped = _edge(copy, "--no-verify")
    assert skipped.returncode == 0, skipped.stderr
    assert not (copy / "__pycache__").exists()


def test_edge_model_load_verify_modes(copy, onnx_dir, tmp_path):
    plain = Path(shutil.copytree(onnx_dir, tmp_path / "plain"))  # an export folder: no manifest
    (plain / "notes.txt").write_text("unlisted, but this is no bundle")
    assert runtime.EdgeModel.load(plain).generate("Q:", 2).tokens  # verify=None: nothing to verify against
    with pytest.raises(runtime.BundleError, match=r"manifest.json: missing: not a bundle"):
        runtime.EdgeModel.load(plain, verify=True)

    _flip_byte(copy / "README.md")  # the model itself still loads
    with pytest.raises(runtime.BundleError) as caught:
        runtime.EdgeModel.load(copy)  # verify=None on a bundle: verified
    assert str(caught.value).startswith(f"{copy / 'README.md'}: sha256: hash mismatch")
    assert runtime.EdgeModel.load(copy, verify=False).generate("Q:", 2).tokens


# --- edge runtime: requests it refuses with one line, exit 2 ----------------------------------------

LONG_495 = "".join(chr(97 + (i * 7) % 26) for i in range(495))  # one token a character: 495 + 32 > 512


def _edge_prompt(bundle: Path, prompt: str, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-B", str(bundle / "edge_runtime.py"), str(bundle), "--prompt", prompt, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and done.stdout == "", done.stderr
    return lines[0]


def test_edge_runtime_cli_refuses_what_cannot_run(built, tmp_path):
    model = runtime.EdgeModel.load(built)
    assert model.context == 512 and len(model.encode_prompt(LONG_495)) + 32 > 512
    line = _one_error_line(_edge_prompt(built, LONG_495))  # the case: ONNX Runtime threw here
    assert line.startswith("error: --prompt: 495 prompt tokens + 32 new tokens exceed the context of 512 tokens")
    line = _one_error_line(_edge_prompt(built, "x" * 100_000))
    assert "--prompt: 100000 characters cannot fit the context of 512 tokens" in line
    line = _one_error_line(_edge_prompt(built, "Q: 3+4=?\nA:", "--max-new-tokens", "-5"))
    assert line == "error: --max-new-tokens: -5: must be a whole number of at least 1"
    cut = _edge_prompt(built, LONG_495, "--truncate", "left", "--json")  # --max-new-tokens 32
    assert cut.returncode == 0, cut.stderr
    assert json.loads(cut.stdout)["prompt_tokens"] == 512 - 32


def test_edge_runtime_cli_names_a_model_that_will_not_load(copy, onnx_dir):
    data = (copy / "model.onnx").read_bytes()
    (copy / "model.onnx").write_bytes(data[: len(data) // 3])
    line = _one_error_line(_edge(copy, "--no-verify"))
    assert line.startswith(f"error: {copy / 'model.onnx'}: cannot be loaded: ")
    (copy / "model.onnx").unlink()
    assert _one_error_line(_edge(copy, "--no-verify")) == f"error: {copy / 'model.onnx'}: missing"
    shutil.copy2(onnx_dir / "model.onnx", copy / "model.onnx")
    (copy / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    assert _one_error_line(_edge(copy, "--no-verify")).startswith(f"error: {copy / 'tokenizer.json'}: cannot be loaded")


def test_edge_model_raises_request_errors(built, monkeypatch):
    model = runtime.EdgeModel.load(built)
    for kwargs, where in (({"max_new_tokens": -5}, "max_new_tokens"), ({"max_new_tokens": 0}, "max_new_tokens"),
                          ({"temperature": float("nan")}, "temperature"), ({"top_p": 0}, "top_p"),
                          ({"truncate": "right"}, "truncate")):
        with pytest.raises(runtime.RequestError) as caught:
            model.generate("Q: 3+4=?\nA:", **kwargs)
        assert caught.value.where == where and isinstance(caught.value, ValueError)
    with pytest.raises(runtime.RequestError, match="exceed the context of 512"):
        model.generate(LONG_495)
    with pytest.raises(runtime.RequestError, match="exceed the context"):
        model.generate_batch(["Q: 3+4=?\nA:", LONG_495])
    with pytest.raises(runtime.RequestError, match="empty"):
        model.generate([])
    assert model.generate(LONG_495, 32, truncate="left").prompt_tokens == 480
    assert model.generate(LONG_495, 8).prompt_tokens == 495  # it fits with fewer new tokens
    with pytest.raises(runtime.RequestError, match="at most 5120 characters"):
        model.generate("x" * (model.max_prompt_chars + 1))
    monkeypatch.setattr(model, "encode_prompt", lambda prompt: pytest.fail("tokenized a prompt that cannot fit"))
    with pytest.raises(runtime.RequestError, match="100000 characters"):
        model.generate("x" * 100_000)


# --- symbolic links and signatures ----------------------------------------------------------------

def test_a_listed_file_symlinked_outside_the_bundle_is_refused(copy, tmp_path):
    outside = tmp_path / "elsewhere" / "tokenizer.json"
    outside.parent.mkdir()
    shutil.move(copy / "tokenizer.json", outside)
    (copy / "tokenizer.json").symlink_to(outside)  # same bytes, so its hash still matches the manifest
    with pytest.raises(ArtifactError, match=r"tokenizer.json: a symbolic link \(to .*elsewhere/tokenizer.json\)"):
        verify_bundle(copy)
    assert main(["verify", str(copy)]) == 1
    line = _one_error_line(_edge(copy))
    assert line.startswith(f"error: {copy / 'tokenizer.json'}: a symbolic link")


def test_a_symlinked_seal_or_folder_is_refused(copy, tmp_path):
    (copy / "sub").mkdir()
    (tmp_path / "real").mkdir()
    (copy / "sub" / "link").symlink_to(tmp_path / "real")
    with pytest.raises(ArtifactError, match="sub/link: a symbolic link"):
        verify_bundle(copy)
    shutil.rmtree(copy / "sub")
    shutil.move(copy / "manifest.sha256", tmp_path / "manifest.sha256")
    (copy / "manifest.sha256").symlink_to(tmp_path / "manifest.sha256")
    with pytest.raises(ArtifactError, match="manifest.sha256: a symbolic link"):
        verify_bundle(copy)


def _keypair(tmp_path: Path, name: str = "release") -> tuple[Path, Path]:
    assert main(["keygen", str(tmp_path / "keys" / name)]) == 0
    private, public = tmp_path / "keys" / name, tmp_path / "keys" / f"{name}.pub"
    assert private.stat().st_mode & 0o777 == 0o600 and public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    return private, public


def test_sign_and_verify_round_trip_and_a_changed_manifest_fails(copy, tmp_path, capsys):
    private, public = _keypair(tmp_path)
    assert main(["keygen", str(private)]) == 2  # never overwrites a key
    assert main(["sign", str(copy), "--key", str(private)]) == 0
    assert (copy / "manifest.sig").is_file()
    capsys.readouterr()
    assert main(["verify", str(copy), "--public-key", str(public)]) == 0
    assert "signature OK" in capsys.readouterr().out
    assert main(["verify", str(copy)]) == 0  # manifest.sig is a seal, not an unlisted file
    assert _edge(copy, "--public-key", str(public)).returncode == 0
    assert runtime.EdgeModel.load(copy, public_key=public).generate("Q:", 2).tokens

    _, other = _keypair(tmp_path, "other")
    assert main(["verify", str(copy), "--public-key", str(other)]) == 1
    assert "signature: does not match manifest.sig" in capsys.readouterr().err

    _flip_byte(copy / "manifest.json")
    _reseal(copy)  # the sha file matches again: only the signature tells
    assert main(["verify", str(copy), "--public-key", str(public)]) == 1
    assert f"verify FAILED: {copy / 'manifest.json'}: signature: does not match" in capsys.readouterr().err
    line = _one_error_line(_edge(copy, "--public-key", str(public)))
    assert line.startswith(f"error: {copy / 'manifest.json'}: signature: does not match")


def test_signature_required_only_with_a_key_and_bad_keys_are_bad_input(copy, tmp_path, capsys):
    private, public = _keypair(tmp_path)
    assert main(["verify", str(copy), "--public-key", str(public)]) == 1
    assert "manifest.sig: missing: the bundle is not signed" in capsys.readouterr().err
    assert main(["verify", str(copy), "--public-key", str(private)]) == 2  # a private key is no public key
    assert main(["verify", str(copy), "--public-key", str(tmp_path / "nope.pub")]) == 2
    assert main(["sign", str(copy), "--key", str(public)]) == 2
    _flip_byte(copy / "README.md")
    assert main(["sign", str(copy), "--key", str(private)]) == 2  # a changed bundle is never signed
    assert "README.md: sha256: hash mismatch" in capsys.readouterr().err and not (copy / "manifest.sig").exists()
