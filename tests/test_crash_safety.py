"""Kill -9 at several points of `export`, `bench` and `report`, rerun, and get what an uninterrupted run
writes, byte for byte; a killed stage takes its child processes with it; internal model folders
load safetensors only."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from small_runs import overrides

pytestmark = pytest.mark.slow
SMALL = overrides("crash", workers=1, elicit__drafts=8, elicit__batch_size=16, prefer__preference_questions=8,
                  prefer__probe_demos=2, align__max_steps=2, generate__examples=16, generate__compare_questions=4,
                  generate__compare_preference=4, distill__max_steps=4, distill__ablation_seeds=1,
                  evaluate__test_questions=16, export__parity_prompts=1)
# what a rerun must reproduce exactly: the exported and quantized graphs and what the bundle ships
DETERMINISTIC = ["export/fp32/model.onnx", "export/quantized/model.onnx", "bundle/model.onnx", "bundle/tokenizer.json",
                 "bundle/config.json", "bundle/target.toml", "bundle/edge_runtime.py"]


def _tailor(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from edge_tailor.cli import main; sys.exit(main())", *args]


def _digests(run: Path) -> dict[str, str]:
    return {name: hashlib.sha256((run / name).read_bytes()).hexdigest() for name in DETERMINISTIC}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    done = subprocess.run(_tailor("run", "--out", str(out), *SMALL), capture_output=True, text=True)
    assert done.returncode in (0, 1), done.stderr[-2000:]
    run = out / "crash"
    digests = _digests(run)
    print("uninterrupted run:", json.dumps({k: v[:16] for k, v in digests.items()}))  # shown with -s
    return run, digests, json.loads((run / "bundle" / "manifest.json").read_text())["smoke"]


def _kill_when(cmd: list[str], ready, timeout: float = 300) -> subprocess.Popen:
    """Start `cmd` and SIGKILL it as soon as `ready()` holds; fail if it finishes first."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, "the command finished before the kill point was reached"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc


def _children_of(pid: int) -> list[int]:
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid):
            found.append(int(status.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text().split("State:\t", 1)[1][0]
    except (OSError, IndexError):
        return False
    return state != "Z"


KILL_POINTS = {
    "export: fp32 graph written": ("export", lambda run: (run / "export" / "fp32" / "model.onnx").is_file()),
    "export: quantized graph written": ("export", lambda run: (run / "export" / "quantized" / "model.onnx").is_file()),
    "report: bundle half-assembled": ("report", lambda run: any(p.is_file() for p in run.glob(".bundle.tmp-*/*.onnx"))),
    "report: report.json written, bundle not yet": ("report", lambda run: (run / "report.json").is_file()),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_killed_stage_is_redone_to_the_same_bytes(finished, tmp_path, point):
    run, expected, smoke = finished
    stage, ready = KILL_POINTS[point]
    copy = tmp_path / "runs" / "crash"
    shutil.copytree(run, copy)
    started = time.time()
    # the kill point is a file the stage writes: clear this copy's earlier one so it is the new one that counts
    if stage == "report":
        (copy / "report.json").unlink()
    else:
        shutil.rmtree(copy / stage)
    # `tailor report DIR` only rebuilds report.json / report.md; the stage (with the bundle) runs through `run`
    cmd = _tailor("run", "--out", str(copy.parent), *SMALL, "--only", stage, "--force", stage)
    _kill_when(cmd, lambda: ready(copy))
    assert time.time() - started < 300
    done = subprocess.run(_tailor("run", "--out", str(copy.parent), *SMALL), capture_output=True, text=True)
    assert done.returncode in (0, 1), done.stderr[-2000:]
    assert _digests(copy) == expected
    assert json.loads((copy / "bundle" / "manifest.json").read_text())["smoke"] == smoke
    assert not list(copy.glob(".bundle.*")), "a temporary bundle folder was left behind"
    assert subprocess.run(_tailor("verify", str(copy / "bundle")), capture_output=True).returncode == 0


def test_killed_bench_takes_its_latency_subprocess_with_it(finished, tmp_path):
    run, expected, _ = finished
    copy = tmp_path / "runs" / "crash"
    shutil.copytree(run, copy)
    proc = subprocess.Popen(_tailor("bench", "--run", str(copy), "--force"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline, children = time.monotonic() + 120, []
    while not children:
        assert proc.poll() is None and time.monotonic() < deadline, "bench ended before its subprocess started"
        children = [c for c in _children_of(proc.pid) if "benchmarks.latency" in
                    Path(f"/proc/{c}/cmdline").read_bytes().decode(errors="replace")]
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 5
    while any(_alive(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(c) for c in children), "the latency subprocess outlived the killed stage"
    done = subprocess.run(_tailor("run", "--out", str(copy.parent), *SMALL), capture_output=True, text=True)
    assert done.returncode in (0, 1), done.stderr[-2000:]
    assert _digests(copy) == expected


def test_internal_model_folders_load_safetensors_only(finished, tmp_path):
    """A pickle put in place of the distilled student's weights is refused, not loaded (exit 2, names the file)."""
    run, _, _ = finished
    copy = tmp_path / "runs" / "crash"
    shutil.copytree(run, copy)
    student = copy / "distill" / "student"
    (student / "model.safetensors").rename(student / "pytorch_model.bin")
    done = subprocess.run(_tailor("export", "--run", str(copy), "--force"), capture_output=True, text=True)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "pytorch_model.bin" in done.stderr and "Traceback" not in done.stderr
