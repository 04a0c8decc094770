"""The align (DPO) and distill (SFT) training code runs unchanged under `accelerate launch`.

Two CPU processes: accelerate 1.15's `--cpu --num_processes 2` starts a single process unless MPI is
installed (checked here), so the torchrun-based launcher (`--multi_gpu`) starts the two processes and
the trainers, which run with use_cpu on a machine without CUDA, join a gloo (MULTI_CPU) group.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ENTRY = Path(__file__).with_name("accelerate_entry.py")


@pytest.mark.parametrize("mode", ["dpo", "sft"])
def test_two_cpu_processes(mode, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    accelerate = Path(sys.executable).with_name("accelerate")  # the console script of this environment
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(ENTRY), mode, str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / f"{mode}.json").read_text())
    assert result["world_size"] == 2 and result["steps"] == 2
    if mode == "dpo":
        assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()


def _launch(args: list[str], env: dict) -> subprocess.CompletedProcess:
    accelerate = Path(sys.executable).with_name("accelerate")  # the console script of this environment
    return subprocess.run([str(accelerate), "launch", *args], env=env, capture_output=True, text=True, timeout=1200)


def test_the_pipeline_on_two_processes_writes_one_run_with_the_data_of_one_process(tmp_path):
    """`accelerate launch --cpu --num_processes 2` (handed to torchrun's launcher, gloo on this CPU): every
    stage's generated data equals a one-process run's with the same seed; one run directory, one bundle; the
    report says 2 processes; the other rank's scratch folder is gone."""
    from edge_tailor.cli import main
    from small_runs import overrides

    args = overrides("ddp")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(scratch), "HF_HUB_OFFLINE": "1"}
    done = _launch(["--cpu", "--num_processes", "2", "-m", "edge_tailor.cli", "run", "--out", str(tmp_path / "two"),
                    *args], env)
    two = tmp_path / "two" / "ddp"
    report = json.loads((two / "report.json").read_text())
    assert done.returncode == (0 if report["passed"] else 1), done.stderr[-3000:]
    assert report["world_size"] == 2 and "starting 2 with torchrun's launcher" in done.stderr
    assert [p.name for p in (tmp_path / "two").iterdir()] == ["ddp"] and not list(scratch.glob("edge-tailor-rank*"))
    assert main(["verify", str(two / "bundle")]) == 0

    assert main(["run", "--out", str(tmp_path / "one"), *args]) in (0, 1)
    one = tmp_path / "one" / "ddp"
    assert json.loads((one / "report.json").read_text())["world_size"] == 1
    # everything generated before any training is the same text; the aligned teachers' data is not: it samples
    # from DPO weights that data-parallel reductions change in the last bits (full default: 67 of 500 equal)
    for data in ["baseline/completions.jsonl", "elicit/drafts.jsonl", "prefer/scores.jsonl", "align/pairs.jsonl",
                 "generate/questions.jsonl", "generate/original.jsonl"]:
        assert (two / data).read_text() == (one / data).read_text(), data


def test_accelerate_cpu_launch_that_starts_one_process_is_handed_to_torchrun(monkeypatch):
    """accelerate 1.15's `--cpu --num_processes 2` starts one process unless MPI runs them: that process becomes
    torchrun's launcher for the 2 it asked for; a launch over several machines is refused, naming what works."""
    from edge_tailor import distributed
    from edge_tailor.errors import InputError

    for key in ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(sys, "argv", ["cli.py", "run", "--out", "runs"])
    assert distributed.cpu_launch_left_to_mpi() is None  # no accelerate: nothing to do
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29511")
    parent = ["python", "accelerate", "launch", "--cpu", "--num_processes=2", "-m", "edge_tailor.cli", "run",
              "--num_machines", "9"]
    monkeypatch.setattr("psutil.Process.cmdline", lambda self: parent)
    command = distributed.cpu_launch_left_to_mpi()
    assert command[1:] == ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                           "--master_port", "29511", "-m", "edge_tailor.cli", "run", "--out", "runs"]
    parent[4:5] = ["--num_processes", "4", "--num_machines", "2"]
    with pytest.raises(InputError, match="--multi_gpu --num_processes N"):
        distributed.cpu_launch_left_to_mpi()
    monkeypatch.setenv("WORLD_SIZE", "2")  # a process torchrun started: nothing to do
    assert distributed.cpu_launch_left_to_mpi() is None


def test_a_global_batch_that_does_not_split_over_the_processes_is_refused_before_anything_is_written(
        tmp_path, monkeypatch, capsys):
    from edge_tailor.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it; preflight refuses before joining any group
    assert main(["run", "--out", str(tmp_path / "runs"), "distill.batch_size=3"]) == 2
    err = capsys.readouterr().err
    assert "distill.batch_size" in err and "3 does not split over 2 processes" in err
    assert not (tmp_path / "runs").exists()


def test_another_rank_reads_finished_stages_from_rank_0_and_writes_its_own_into_scratch(tmp_path):
    from edge_tailor.rundir import FollowerRunDir, RunDir

    main_run = RunDir(tmp_path / "run")
    main_run.start_stage("elicit")
    (main_run.stage_dir("elicit") / "drafts.jsonl").write_text("{}\n")
    main_run.finish_stage("elicit", "fp", {"metrics": {}}, 1.0)
    follower = FollowerRunDir(main_run.root, tmp_path / "scratch")
    folder = follower.start_stage("prefer")
    assert folder == tmp_path / "scratch" / "prefer" and folder.is_dir()
    assert follower.stage_dir("elicit") == main_run.stage_dir("elicit") and follower.record("elicit")["fingerprint"] == "fp"
    (folder / "scores.jsonl").write_text("{}\n")
    record = follower.finish_stage("prefer", "fp2", {"metrics": {"n": 1}}, 2.0)
    assert record["metrics"] == {"n": 1} and not folder.exists()
    # nothing of the follower's reached rank 0's run directory: no folder, no record, no manifest entry
    assert not main_run.stage_dir("prefer").exists() and main_run.record("prefer") is None
    assert "prefer" not in main_run.manifest()["stages"]
    assert follower.stage_dir("prefer") == main_run.stage_dir("prefer")  # after the stage: rank 0's files
