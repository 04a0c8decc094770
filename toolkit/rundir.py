"""The run directory: resolved config, manifest, one folder and one record per stage.

A stage's record is written last and atomically, so "record present" means "stage finished";
its fingerprint (config sections + target + upstream fingerprints) decides whether a rerun
may skip it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

RECORDS = "records"  # <run>/records/<stage>.json: kept apart so a stage folder (bundle/) holds only its files
TRACKED_PACKAGES = ("edge-tailor", "torch", "transformers", "trl", "peft", "torchao", "bitsandbytes",
                    "optimum", "optimum-onnx", "onnx", "onnxruntime", "tokenizers", "numpy")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temp file in the same folder, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=False, default=str)
            handle.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: Path, rows) -> None:
    """A stage's row file (drafts, scores, pairs, training data): one JSON object per line."""
    with open(path, "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_revision(cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd or Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def record_path(self, stage: str) -> Path:
        return self.root / RECORDS / f"{stage}.json"

    def record(self, stage: str) -> dict | None:
        path = self.record_path(stage)
        if not path.exists():
            return None
        return json.loads(path.read_text())

    def start_stage(self, stage: str) -> Path:
        """Clear what an interrupted or outdated attempt left and return an empty stage folder."""
        self.record_path(stage).unlink(missing_ok=True)
        folder = self.stage_dir(stage)
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        return folder

    def finish_stage(self, stage: str, fingerprint: str, record: dict, seconds: float,
                     extra_files: tuple[Path, ...] = ()) -> dict:
        folder = self.stage_dir(stage)
        files = [p for p in sorted(folder.rglob("*")) if p.is_file()] + [Path(p) for p in extra_files]
        artifacts = {str(p.relative_to(self.root)): sha256_file(p) for p in files}
        full = {"stage": stage, "status": "done", "fingerprint": fingerprint, "seconds": round(seconds, 2),
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "artifacts": artifacts, **record}
        write_json_atomic(self.record_path(stage), full)
        self._update_manifest(stage, full)
        return full

    def fail_stage(self, stage: str, error: str) -> None:
        self._update_manifest(stage, {"status": "failed", "error": error})

    def manifest(self) -> dict:
        if self.manifest_path.exists():
            return json.loads(self.manifest_path.read_text())
        return {}

    def init_manifest(self, config: dict, config_hash: str, seed: int) -> None:
        manifest = self.manifest()
        manifest.update({
            "edge_tailor_version": package_versions().get("edge-tailor"),
            "packages": package_versions(),
            "python": platform.python_version(),
            "machine": platform.machine(),
            "git_revision": git_revision(),
            "seed": seed,
            "config_hash": config_hash,
        })
        manifest.setdefault("stages", {})
        write_json_atomic(self.manifest_path, manifest)

    def _update_manifest(self, stage: str, record: dict) -> None:
        manifest = self.manifest()
        summary = {k: record[k] for k in ("status", "fingerprint", "seconds", "artifacts", "metrics", "error")
                   if k in record}
        manifest.setdefault("stages", {})[stage] = summary
        write_json_atomic(self.manifest_path, manifest)
