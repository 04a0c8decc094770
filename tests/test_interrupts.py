"""Ctrl-C (SIGINT to the process group) and SIGTERM (to the pid) in the middle of a stage whose jobs
run in worker processes: `tailor run` ends within 5 s with one line and exit 130 / 143, the workers
are gone, no stage folder is left, `tailor status` says interrupted, and the same command resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_tailor.cli import main

ENTRY = Path(__file__).with_name("interrupt_entry.py")


def _children(pid: int) -> list[int]:
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            ppid = next(line.split()[1] for line in status.read_text().splitlines() if line.startswith("PPid:"))
        except (OSError, StopIteration):
            continue
        if ppid == str(pid):
            found.append(int(status.parent.name))
    return found


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:\t", 1)[1][0] == "Z"
    except (OSError, IndexError):
        return True


def _start(tmp: Path, **env: str) -> subprocess.Popen:
    marks = tmp / "marks"
    marks.mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, str(ENTRY), "--out", str(tmp / "runs")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "INTERRUPT_MARKS": str(marks), **env})


@pytest.mark.parametrize("signum, to_group, code", [(signal.SIGINT, True, 130), (signal.SIGTERM, False, 143)],
                         ids=["sigint-to-group", "sigterm-to-pid"])
def test_signal_mid_stage_ends_the_run_and_the_rerun_resumes(signum, to_group, code, tmp_path, capsys):
    proc = _start(tmp_path)
    deadline = time.monotonic() + 120
    while len(list((tmp_path / "marks").glob("started-*"))) < 2:  # both workers are inside their job
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the workers never started"
        time.sleep(0.05)
    workers = _children(proc.pid)
    assert len(workers) >= 2
    sent = time.monotonic()
    os.killpg(proc.pid, signum) if to_group else proc.send_signal(signum)
    out, err = proc.communicate(timeout=30)
    took = time.monotonic() - sent
    assert proc.returncode == code, err
    assert took < 5, f"took {took:.1f} s to end"
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"interrupted ({signal.Signals(signum).name}) in stage 'elicit'") and "resume" in last, err
    # the workers are ended before the run exits; multiprocessing's resource tracker leaves on its own once
    # every process that shares its pipe has gone
    until = time.monotonic() + 3
    while not all(_gone(pid) for pid in workers) and time.monotonic() < until:
        time.sleep(0.05)
    alive = {pid: Path(f"/proc/{pid}/cmdline").read_bytes()[:120] for pid in workers if not _gone(pid)}
    assert not alive, f"outlived the run: {alive}"

    run = tmp_path / "runs" / "default"
    assert not (run / "elicit").exists() and not (run / "records" / "elicit.json").exists()
    assert (run / "records" / "baseline.json").exists()
    assert json.loads((run / "manifest.json").read_text())["stages"]["elicit"]["status"] == "interrupted"
    capsys.readouterr()
    assert main(["status", str(run)]) == 0
    status = capsys.readouterr().out
    assert "elicit" in status and "interrupted" in status

    rerun = _start(tmp_path, INTERRUPT_JOB_SECONDS="0")
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    assert "baseline: up to date, skipped" in err
    record = json.loads((run / "records" / "elicit.json").read_text())
    assert record["status"] == "done" and record["metrics"] == {"jobs": [0, 1]}
