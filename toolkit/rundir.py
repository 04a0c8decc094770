"""The run directory: resolved config, manifest, one folder and one record per stage.

A stage's record is written last and atomically, so "record present" means "stage finished";
its fingerprint (config sections + target + upstream fingerprints) decides whether a rerun
may skip it.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from .errors import InputError, RunLocked

LOCK = ".lock"  # <run>/.lock: flock-ed by the process running the pipeline (released by the OS when it dies)
RECORDS = "records"  # <run>/records/<stage>.json: kept apart so a stage folder (bundle/) holds only its files
TRACKED_PACKAGES = ("edge-tailor", "torch", "transformers", "trl", "peft", "torchao", "bitsandbytes",
                    "optimum", "optimum-onnx", "onnx", "onnxruntime", "tokenizers", "numpy")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def naming(path: Path) -> Iterator[None]:
    """An OSError from writing ``path`` names it: a full disk fails in ``write()``, whose error has no file name."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc


def write_text_atomic(path: Path, text: str) -> None:
    """Write text to a temp file in the same folder, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with naming(path), os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temp file in the same folder, then rename: readers never see half a file."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> Any:
    """A JSON state file (manifest, record); a truncated or hand-broken one is an InputError with its line."""
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(path, f"line {exc.lineno}", f"not valid JSON ({exc.msg}, column {exc.colno}): a truncated "
                         "or edited state file; remove it (or the run directory) to start over") from None


def write_jsonl(path: Path, rows) -> None:
    """A stage's row file (drafts, scores, pairs, training data): one JSON object per line. Not atomic: a stage
    that fails has its whole folder removed (RunDir.abort_stage)."""
    with naming(path), open(path, "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution (None where it is not installed)."""
    versions: dict[str, str | None] = {}
    for name in names:
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

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def lock_path(self) -> Path:
        return self.root / LOCK

    def record(self, stage: str) -> dict | None:
        path = self.record_path(stage)
        if not path.exists():
            return None
        data = read_json(path)
        if not isinstance(data, dict):
            raise InputError(path, None, f"expected a JSON object, got {type(data).__name__}")
        return data

    def check_state(self, stages: tuple[str, ...] = ()) -> None:
        """Read the manifest and the records of ``stages``: an InputError now, before anything is written."""
        self.manifest()
        for stage in stages:
            self.record(stage)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold ``<run>/.lock`` (flock, exclusive, non-blocking) or fail at once with RunLocked.

        The OS drops a flock when its process dies, so a killed run never leaves a lock that
        blocks; the file itself stays (removing it would let two processes lock different files).
        """
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                pid = holder if holder.isdigit() else "unknown"
                raise RunLocked(self.lock_path, f"another tailor process (pid {pid}) is using this run directory") \
                    from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the flock

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

    def fail_stage(self, stage: str, error: str, status: str = "failed") -> None:
        self._update_manifest(stage, {"status": status, "error": error})

    def abort_stage(self, stage: str, error: str, status: str = "failed") -> None:
        """A stage failed or was interrupted: remove what it half-wrote (its folder and record) and mark it
        with ``status``.

        Best effort: it runs while an exception propagates (which may be a full disk), and must
        not replace that exception with its own.
        """
        self.record_path(stage).unlink(missing_ok=True)
        shutil.rmtree(self.stage_dir(stage), ignore_errors=True)
        try:
            self.fail_stage(stage, error, status)
        except (OSError, InputError):
            pass

    def manifest(self) -> dict:
        if self.manifest_path.exists():
            data = read_json(self.manifest_path)
            if not isinstance(data, dict):
                raise InputError(self.manifest_path, None, f"expected a JSON object, got {type(data).__name__}")
            return data
        return {}

    def begin(self, config_text: str | None, config_hash: str, seed: int) -> None:
        """Write config.yaml (if given) and the manifest's header, both or neither: the config goes
        to a temp file first and is renamed into place only once the manifest is written."""
        tmp = None
        if config_text is not None:
            tmp = self.root / f".config.yaml.{os.getpid()}.tmp"
            try:
                write_text_atomic(tmp, config_text)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        before = self.manifest_path.read_bytes() if self.manifest_path.exists() else None
        written = False
        try:
            self.init_manifest(config_hash, seed)
            written = True
            if tmp is not None:
                os.replace(tmp, self.config_path)
        except BaseException:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            if written:  # put the old manifest back: both files as before, or both new
                try:
                    if before is None:
                        self.manifest_path.unlink(missing_ok=True)
                    else:
                        write_text_atomic(self.manifest_path, before.decode())
                except OSError:
                    pass
            raise

    def init_manifest(self, config_hash: str, seed: int) -> None:
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


class FollowerRunDir(RunDir):
    """A rank other than the main one, in a run of several processes (edge_tailor.distributed): it reads every
    finished stage from the main process's run directory and writes the stage it runs beside the main process
    into its own scratch folder, dropped when the stage ends: the run directory has one writer."""

    def __init__(self, root: str | Path, scratch: str | Path):
        super().__init__(root)
        self.scratch = Path(scratch)
        self.running: str | None = None

    def stage_dir(self, stage: str) -> Path:
        return self.scratch / stage if stage == self.running else self.root / stage

    def start_stage(self, stage: str) -> Path:
        self.running = stage
        folder = self.stage_dir(stage)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder

    def finish_stage(self, stage: str, fingerprint: str, record: dict, seconds: float,
                     extra_files: tuple[Path, ...] = ()) -> dict:
        self._drop(stage)
        return {"stage": stage, "status": "done", "fingerprint": fingerprint, "seconds": round(seconds, 2), **record}

    def fail_stage(self, stage: str, error: str, status: str = "failed") -> None:
        self._drop(stage)

    def abort_stage(self, stage: str, error: str, status: str = "failed") -> None:
        self._drop(stage)

    def _drop(self, stage: str) -> None:
        shutil.rmtree(self.scratch / stage, ignore_errors=True)
        self.running = None
